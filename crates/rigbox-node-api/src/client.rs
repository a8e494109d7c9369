//! Typed client of the node API.

use crate::{ConsoleChunk, CreateWorkspace, ErrorBody, NodeInfo, Resources, WorkspaceStats, WorkspaceStatus};
use rigbox_guest_proto::{EnvRequest, ExecRequest, ExecResponse, FileInfo, JournalLine, ListeningPort};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A WebSocket to the node.
pub type WsStream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw byte stream to a port inside a workspace.
pub type Tunnel = hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>;

/// Errors talking to a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeClientError {
    /// Transport failure (node down, connection reset).
    #[error("Node unreachable: {0}")]
    Transport(String),
    /// The node answered with an error.
    #[error("Node error {status} {code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Stable code.
        code: String,
        /// Message.
        message: String,
    },
    /// The answer did not parse.
    #[error("Bad answer from node: {0}")]
    Decode(String),
}

impl NodeClientError {
    /// The error code, when the node gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            NodeClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Client of one node agent.
#[derive(Debug, Clone)]
pub struct NodeClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl NodeClient {
    /// A client of the node at `base` (e.g. `http://127.0.0.1:9100`).
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        NodeClient { base: base.into().trim_end_matches('/').to_string(), token: token.into(), http }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v1{path}", self.base)
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path)).bearer_auth(&self.token)
    }

    async fn check(resp: Result<reqwest::Response, reqwest::Error>) -> Result<reqwest::Response, NodeClientError> {
        let resp = resp.map_err(|e| NodeClientError::Transport(e.to_string()))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(b) => Err(NodeClientError::Api { status, code: b.error.code, message: b.error.message }),
            Err(_) => Err(NodeClientError::Api { status, code: "http".into(), message: text }),
        }
    }

    async fn json<T: DeserializeOwned>(resp: Result<reqwest::Response, reqwest::Error>) -> Result<T, NodeClientError> {
        let r = Self::check(resp).await?;
        r.json().await.map_err(|e| NodeClientError::Decode(e.to_string()))
    }

    /// `PUT /v1/ai/control-plane`.
    pub async fn set_ai_control_plane(&self, url: &str) -> Result<(), NodeClientError> {
        let body = crate::AiControlPlane { url: url.to_string() };
        Self::check(self.req(reqwest::Method::PUT, "/ai/control-plane").json(&body).send().await).await.map(|_| ())
    }

    /// `PUT /v1/workspaces/{id}/ai-env`.
    pub async fn set_ai_env(&self, id: &str, env: &BTreeMap<String, String>) -> Result<(), NodeClientError> {
        let body = crate::AiEnv { env: env.clone() };
        Self::check(self.req(reqwest::Method::PUT, &format!("/workspaces/{id}/ai-env")).json(&body).send().await).await.map(|_| ())
    }

    /// `GET /v1/node`.
    pub async fn info(&self) -> Result<NodeInfo, NodeClientError> {
        Self::json(self.req(reqwest::Method::GET, "/node").send().await).await
    }

    /// `GET /v1/workspaces`.
    pub async fn list(&self) -> Result<Vec<WorkspaceStatus>, NodeClientError> {
        Self::json(self.req(reqwest::Method::GET, "/workspaces").send().await).await
    }

    /// `PUT /v1/workspaces/{id}`.
    pub async fn create(&self, id: &str, req: &CreateWorkspace) -> Result<WorkspaceStatus, NodeClientError> {
        Self::json(self.req(reqwest::Method::PUT, &format!("/workspaces/{id}")).json(req).send().await).await
    }

    /// `GET /v1/workspaces/{id}`.
    pub async fn get(&self, id: &str) -> Result<WorkspaceStatus, NodeClientError> {
        Self::json(self.req(reqwest::Method::GET, &format!("/workspaces/{id}")).send().await).await
    }

    /// `DELETE /v1/workspaces/{id}`.
    pub async fn delete(&self, id: &str) -> Result<(), NodeClientError> {
        Self::check(self.req(reqwest::Method::DELETE, &format!("/workspaces/{id}")).send().await).await.map(|_| ())
    }

    async fn action(&self, id: &str, action: &str) -> Result<WorkspaceStatus, NodeClientError> {
        Self::json(self.req(reqwest::Method::POST, &format!("/workspaces/{id}/{action}")).send().await).await
    }

    /// `POST /v1/workspaces/{id}/start`.
    pub async fn start(&self, id: &str) -> Result<WorkspaceStatus, NodeClientError> {
        self.action(id, "start").await
    }

    /// `POST /v1/workspaces/{id}/stop`.
    pub async fn stop(&self, id: &str, force: bool) -> Result<WorkspaceStatus, NodeClientError> {
        self.action(id, if force { "stop?force=true" } else { "stop" }).await
    }

    /// `POST /v1/workspaces/{id}/cancel`.
    pub async fn cancel(&self, id: &str) -> Result<WorkspaceStatus, NodeClientError> {
        self.action(id, "cancel").await
    }

    /// `PUT /v1/workspaces/{id}/resources`.
    pub async fn resize(&self, id: &str, r: &Resources) -> Result<WorkspaceStatus, NodeClientError> {
        Self::json(self.req(reqwest::Method::PUT, &format!("/workspaces/{id}/resources")).json(r).send().await).await
    }

    /// `POST /v1/workspaces/{id}/env`.
    pub async fn set_env(&self, id: &str, env: &BTreeMap<String, String>) -> Result<(), NodeClientError> {
        let body = EnvRequest { env: env.clone() };
        Self::check(self.req(reqwest::Method::POST, &format!("/workspaces/{id}/env")).json(&body).send().await)
            .await
            .map(|_| ())
    }

    /// `POST /v1/workspaces/{id}/exec`.
    pub async fn exec(&self, id: &str, req: &ExecRequest) -> Result<ExecResponse, NodeClientError> {
        Self::json(self.req(reqwest::Method::POST, &format!("/workspaces/{id}/exec")).json(req).send().await).await
    }

    /// Reads a file (the whole response; use [`NodeClient::read_file_stream`] for big files).
    pub async fn read_file(&self, id: &str, path: &str) -> Result<bytes::Bytes, NodeClientError> {
        let r = self.read_file_stream(id, path).await?;
        r.bytes().await.map_err(|e| NodeClientError::Transport(e.to_string()))
    }

    /// Starts reading a file; the response body streams.
    pub async fn read_file_stream(&self, id: &str, path: &str) -> Result<reqwest::Response, NodeClientError> {
        Self::check(self.req(reqwest::Method::GET, &format!("/workspaces/{id}/files")).query(&[("path", path)]).send().await).await
    }

    /// Writes a file (body may stream).
    pub async fn write_file(
        &self,
        id: &str,
        path: &str,
        body: impl Into<reqwest::Body>,
        mode: Option<&str>,
    ) -> Result<FileInfo, NodeClientError> {
        let mut q = vec![("path", path.to_string())];
        if let Some(m) = mode {
            q.push(("mode", m.to_string()));
        }
        Self::json(self.req(reqwest::Method::PUT, &format!("/workspaces/{id}/files")).query(&q).body(body).send().await).await
    }

    /// Lists a directory.
    pub async fn list_dir(&self, id: &str, path: &str) -> Result<Vec<FileInfo>, NodeClientError> {
        Self::json(self.req(reqwest::Method::GET, &format!("/workspaces/{id}/files/list")).query(&[("path", path)]).send().await).await
    }

    /// Stats a path.
    pub async fn stat(&self, id: &str, path: &str) -> Result<FileInfo, NodeClientError> {
        Self::json(self.req(reqwest::Method::GET, &format!("/workspaces/{id}/files/stat")).query(&[("path", path)]).send().await).await
    }

    /// Reads the serial console from `offset`.
    pub async fn console(&self, id: &str, offset: u64) -> Result<ConsoleChunk, NodeClientError> {
        Self::json(
            self.req(reqwest::Method::GET, &format!("/workspaces/{id}/console"))
                .query(&[("offset", offset)])
                .send()
                .await,
        )
        .await
    }

    /// Host and guest statistics.
    pub async fn stats(&self, id: &str) -> Result<WorkspaceStats, NodeClientError> {
        Self::json(self.req(reqwest::Method::GET, &format!("/workspaces/{id}/stats")).send().await).await
    }

    /// TCP listeners inside the guest.
    pub async fn ports(&self, id: &str) -> Result<Vec<ListeningPort>, NodeClientError> {
        Self::json(self.req(reqwest::Method::GET, &format!("/workspaces/{id}/ports")).send().await).await
    }

    /// Journal lines from the guest.
    pub async fn journal(&self, id: &str, unit: Option<&str>, lines: u32, user: bool) -> Result<Vec<JournalLine>, NodeClientError> {
        let mut q = vec![("lines", lines.to_string()), ("user", user.to_string())];
        if let Some(u) = unit {
            q.push(("unit", u.to_string()));
        }
        Self::json(self.req(reqwest::Method::GET, &format!("/workspaces/{id}/journal")).query(&q).send().await).await
    }

    async fn ws(&self, path_and_query: &str) -> Result<WsStream, NodeClientError> {
        let url = format!("{}/v1{path_and_query}", self.base.replacen("http", "ws", 1));
        let mut req = url
            .into_client_request()
            .map_err(|e| NodeClientError::Transport(e.to_string()))?;
        let auth = format!("Bearer {}", self.token)
            .parse()
            .map_err(|_| NodeClientError::Transport("bad token".into()))?;
        req.headers_mut().insert(http::header::AUTHORIZATION, auth);
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let body = resp.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
                match serde_json::from_str::<ErrorBody>(&body) {
                    Ok(b) => Err(NodeClientError::Api { status, code: b.error.code, message: b.error.message }),
                    Err(_) => Err(NodeClientError::Api { status, code: "http".into(), message: body }),
                }
            }
            Err(e) => Err(NodeClientError::Transport(e.to_string())),
        }
    }

    /// Takes a snapshot (disk of a stopped workspace, or live).
    pub async fn snapshot(&self, id: &str, req: &crate::CreateSnapshot) -> Result<crate::SnapshotMeta, NodeClientError> {
        Self::json(self.req(reqwest::Method::POST, &format!("/workspaces/{id}/snapshots")).json(req).send().await).await
    }

    /// Restores a snapshot into its workspace.
    pub async fn restore(&self, id: &str, snapshot_id: &str) -> Result<WorkspaceStatus, NodeClientError> {
        let body = crate::RestoreSnapshot { snapshot_id: snapshot_id.into() };
        Self::json(self.req(reqwest::Method::POST, &format!("/workspaces/{id}/restore")).json(&body).send().await).await
    }

    /// Pauses a running workspace (memory saved, VM gone).
    pub async fn pause(&self, id: &str) -> Result<WorkspaceStatus, NodeClientError> {
        self.action(id, "pause").await
    }

    /// Resumes a paused workspace.
    pub async fn resume(&self, id: &str) -> Result<WorkspaceStatus, NodeClientError> {
        self.action(id, "resume").await
    }

    /// Forks a running workspace.
    pub async fn fork(&self, id: &str, req: &crate::ForkRequest) -> Result<crate::ForkResponse, NodeClientError> {
        Self::json(self.req(reqwest::Method::POST, &format!("/workspaces/{id}/fork")).json(req).send().await).await
    }

    /// All snapshot artifacts on the node.
    pub async fn snapshots(&self) -> Result<Vec<crate::SnapshotMeta>, NodeClientError> {
        Self::json(self.req(reqwest::Method::GET, "/snapshots").send().await).await
    }

    /// Deletes a snapshot artifact.
    pub async fn delete_snapshot(&self, sid: &str) -> Result<(), NodeClientError> {
        Self::check(self.req(reqwest::Method::DELETE, &format!("/snapshots/{sid}")).send().await).await.map(|_| ())
    }

    /// Opens an interactive session (the guest agent's session protocol).
    pub async fn session(&self, id: &str) -> Result<WsStream, NodeClientError> {
        self.ws(&format!("/workspaces/{id}/session")).await
    }

    /// Opens a byte stream to `127.0.0.1:port` inside the guest.
    pub async fn tcp(&self, id: &str, port: u16) -> Result<WsStream, NodeClientError> {
        self.ws(&format!("/workspaces/{id}/tcp?port={port}")).await
    }

    /// Opens a raw tunnel (HTTP upgrade) to `port` on the guest's interface,
    /// or on the guest's loopback with `loopback`.
    pub async fn tunnel(&self, id: &str, port: u16, loopback: bool) -> Result<Tunnel, NodeClientError> {
        let url: http::Uri = self.base.parse().map_err(|e| NodeClientError::Transport(format!("bad node URL: {e}")))?;
        let host = url.host().unwrap_or("127.0.0.1").to_string();
        let port_n = url.port_u16().unwrap_or(80);
        let stream = tokio::net::TcpStream::connect((host.as_str(), port_n))
            .await
            .map_err(|e| NodeClientError::Transport(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| NodeClientError::Transport(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let via = if loopback { "&via=loopback" } else { "" };
        let req = http::Request::builder()
            .method("GET")
            .uri(format!("/v1/workspaces/{id}/tunnel?port={port}{via}"))
            .header("host", format!("{host}:{port_n}"))
            .header("authorization", format!("Bearer {}", self.token))
            .header("connection", "upgrade")
            .header("upgrade", crate::TUNNEL_PROTOCOL)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| NodeClientError::Transport(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(|e| NodeClientError::Transport(e.to_string()))?;
        if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            let status = resp.status().as_u16();
            use http_body_util::BodyExt;
            let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            return Err(match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(b) => NodeClientError::Api { status, code: b.error.code, message: b.error.message },
                Err(_) => NodeClientError::Api { status, code: "http".into(), message: String::from_utf8_lossy(&body).into_owned() },
            });
        }
        let upgraded = hyper::upgrade::on(resp).await.map_err(|e| NodeClientError::Transport(e.to_string()))?;
        Ok(hyper_util::rt::TokioIo::new(upgraded))
    }

    /// Opens a byte stream to the guest's interface address on `port`.
    pub async fn connect(&self, id: &str, port: u16) -> Result<WsStream, NodeClientError> {
        self.ws(&format!("/workspaces/{id}/connect?port={port}")).await
    }

    /// Replaces the setup plan (applies from the next start).
    pub async fn set_setup(&self, id: &str, plan: &rigbox_guest_proto::SetupPlan) -> Result<(), NodeClientError> {
        Self::check(self.req(reqwest::Method::PUT, &format!("/workspaces/{id}/setup")).json(plan).send().await).await.map(|_| ())
    }

    /// Status of the last setup run.
    pub async fn setup_status(&self, id: &str) -> Result<rigbox_guest_proto::SetupStatus, NodeClientError> {
        Self::json(self.req(reqwest::Method::GET, &format!("/workspaces/{id}/setup")).send().await).await
    }

    /// Starts warming a template (or reports it).
    pub async fn warm_template(&self, template: &str, req: &crate::WarmRequest) -> Result<crate::WarmTemplate, NodeClientError> {
        Self::json(self.req(reqwest::Method::POST, &format!("/templates/{template}/warm")).json(req).send().await).await
    }

    /// Warm templates of the node.
    pub async fn warm_templates(&self) -> Result<Vec<crate::WarmTemplate>, NodeClientError> {
        Self::json(self.req(reqwest::Method::GET, "/templates/warm").send().await).await
    }
}

/// Usage samples, logs and Prometheus metrics (see [`crate::usage`]).
impl NodeClient {
    /// `GET /v1/usage`: samples and events after `after`; asks the node to
    /// sample every `interval_ms`.
    pub async fn usage(&self, after: u64, interval_ms: u64) -> Result<crate::usage::UsageBatch, NodeClientError> {
        Self::json(self.req(reqwest::Method::GET, "/usage").query(&[("after", after), ("interval_ms", interval_ms)]).send().await).await
    }

    /// `GET /v1/workspaces/{id}/usage`: the latest sample.
    pub async fn latest_usage(&self, id: &str) -> Result<crate::usage::UsageSample, NodeClientError> {
        Self::json(self.req(reqwest::Method::GET, &format!("/workspaces/{id}/usage")).send().await).await
    }

    /// `GET /v1/workspaces/{id}/logs`: a page of the console or the journal.
    pub async fn logs(&self, id: &str, q: &crate::usage::LogQuery) -> Result<crate::usage::LogPage, NodeClientError> {
        Self::json(self.req(reqwest::Method::GET, &format!("/workspaces/{id}/logs")).query(q).timeout(Duration::from_secs(60)).send().await).await
    }

    /// `GET /metrics`: the node's Prometheus text exposition.
    pub async fn prometheus(&self) -> Result<String, NodeClientError> {
        let url = format!("{}/metrics", self.base);
        let r = Self::check(self.http.get(url).bearer_auth(&self.token).send().await).await?;
        r.text().await.map_err(|e| NodeClientError::Transport(e.to_string()))
    }
}
