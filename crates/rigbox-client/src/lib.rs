//! Typed client of the Rigbox public API.
//!
//! The request and response types are the API's own ([`rigbox_api::views`]),
//! so the CLI, the tests and the server cannot drift apart.
#![warn(missing_docs)]

pub use rigbox_api::views;
use rigbox_api::views::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached.
    #[error("cannot reach {url}: {message}")]
    Transport {
        /// Base URL.
        url: String,
        /// Cause.
        message: String,
    },
    /// The server answered with an error.
    #[error("{message} ({status} {code})")]
    Api {
        /// HTTP status.
        status: u16,
        /// Stable code.
        code: String,
        /// Message.
        message: String,
        /// `Retry-After` seconds.
        retry_after: Option<u64>,
    },
    /// The answer did not parse.
    #[error("unexpected answer: {0}")]
    Decode(String),
}

impl ClientError {
    /// HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Error code, when the server answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether the key is missing or rejected.
    pub fn is_auth(&self) -> bool {
        self.status() == Some(401)
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, ClientError>;

/// A client for one API base URL and key.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    key: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// `base` like `http://127.0.0.1:8080` (the `/api/v1` prefix is added).
    pub fn new(base: impl Into<String>, key: Option<String>) -> Self {
        let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).build().unwrap_or_default();
        Client { base: base.into().trim_end_matches('/').to_string(), key, http }
    }

    /// The API key.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// A request to `/api/v1{path}`.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}/api/v1{path}", self.base));
        if let Some(k) = &self.key {
            r = r.bearer_auth(k);
        }
        r
    }

    async fn check(&self, r: std::result::Result<reqwest::Response, reqwest::Error>) -> Result<reqwest::Response> {
        let r = r.map_err(|e| ClientError::Transport { url: self.base.clone(), message: e.to_string() })?;
        if r.status().is_success() {
            return Ok(r);
        }
        let status = r.status().as_u16();
        let retry_after = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        let text = r.text().await.unwrap_or_default();
        let (code, message) = match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(v) => (
                v["error"]["code"].as_str().unwrap_or("error").to_string(),
                v["error"]["message"].as_str().map(str::to_string).unwrap_or(text.clone()),
            ),
            Err(_) => ("error".into(), text),
        };
        Err(ClientError::Api { status, code, message, retry_after })
    }

    async fn json<T: DeserializeOwned>(&self, r: std::result::Result<reqwest::Response, reqwest::Error>) -> Result<T> {
        let r = self.check(r).await?;
        r.json().await.map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// GET returning JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.json(self.request(reqwest::Method::GET, path).send().await).await
    }

    /// Sends JSON, returns JSON.
    pub async fn send<B: Serialize, T: DeserializeOwned>(&self, method: reqwest::Method, path: &str, body: &B) -> Result<T> {
        self.json(self.request(method, path).json(body).send().await).await
    }

    /// A bodyless call returning JSON.
    pub async fn call<T: DeserializeOwned>(&self, method: reqwest::Method, path: &str) -> Result<T> {
        self.json(self.request(method, path).send().await).await
    }

    /// `GET /users/me`.
    pub async fn me(&self) -> Result<UserView> {
        self.get("/users/me").await
    }

    /// `GET /workspaces`.
    pub async fn list_workspaces(&self) -> Result<Vec<Vm>> {
        Ok(self.get::<ListWorkspacesResponse>("/workspaces").await?.vms)
    }

    /// `POST /workspaces`.
    pub async fn create_workspace(&self, req: &CreateWorkspaceRequest) -> Result<GetWorkspaceResponse> {
        self.send(reqwest::Method::POST, "/workspaces", req).await
    }

    /// `GET /workspaces/{id}` (id or name).
    pub async fn workspace(&self, id: &str) -> Result<GetWorkspaceResponse> {
        self.get(&format!("/workspaces/{id}")).await
    }

    /// `POST /workspaces/{id}/{action}` for start, stop, cancel, retry.
    pub async fn action(&self, id: &str, action: &str) -> Result<GetWorkspaceResponse> {
        self.call(reqwest::Method::POST, &format!("/workspaces/{id}/{action}")).await
    }

    /// `DELETE /workspaces/{id}`.
    pub async fn delete_workspace(&self, id: &str) -> Result<MessageResponse> {
        self.call(reqwest::Method::DELETE, &format!("/workspaces/{id}")).await
    }

    /// `PUT /workspaces/{id}/resources`.
    pub async fn resize(&self, id: &str, req: &ResizeWorkspaceRequest) -> Result<ResizeWorkspaceResponse> {
        self.send(reqwest::Method::PUT, &format!("/workspaces/{id}/resources"), req).await
    }

    /// `POST /workspaces/{id}/env`.
    pub async fn set_env(&self, id: &str, env: BTreeMap<String, Option<String>>) -> Result<MessageResponse> {
        self.send(reqwest::Method::POST, &format!("/workspaces/{id}/env"), &UpdateWorkspaceEnvRequest { env_vars: env }).await
    }

    /// `POST /workspaces/{id}/exec`.
    pub async fn exec(&self, id: &str, req: &ExecRequest) -> Result<ExecResponse> {
        self.send(reqwest::Method::POST, &format!("/workspaces/{id}/exec"), req).await
    }

    /// `POST /workspaces/{id}/exec/stream`: NDJSON lines as they come.
    pub async fn exec_stream(&self, id: &str, req: &ExecRequest) -> Result<reqwest::Response> {
        self.check(self.request(reqwest::Method::POST, &format!("/workspaces/{id}/exec/stream")).json(req).send().await).await
    }

    /// Uploads a file.
    pub async fn upload(&self, id: &str, path: &str, body: impl Into<reqwest::Body>) -> Result<serde_json::Value> {
        self.json(
            self.request(reqwest::Method::PUT, &format!("/workspaces/{id}/files"))
                .query(&[("path", path)])
                .body(body)
                .send()
                .await,
        )
        .await
    }

    /// Downloads a file.
    pub async fn download(&self, id: &str, path: &str) -> Result<bytes::Bytes> {
        let r = self.check(self.request(reqwest::Method::GET, &format!("/workspaces/{id}/files")).query(&[("path", path)]).send().await).await?;
        r.bytes().await.map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Waits until the workspace leaves transient states and returns it.
    pub async fn wait_settled(&self, id: &str, timeout: Duration, mut on_status: impl FnMut(&str)) -> Result<GetWorkspaceResponse> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = String::new();
        loop {
            let w = self.workspace(id).await?;
            if w.vm.status != last {
                on_status(&w.vm.status);
                last = w.vm.status.clone();
            }
            if !matches!(w.vm.status.as_str(), "provisioning" | "starting" | "stopping" | "deleting") {
                return Ok(w);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(ClientError::Api {
                    status: 408,
                    code: "timeout".into(),
                    message: format!("workspace still {} after {timeout:?}", w.vm.status),
                    retry_after: None,
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
