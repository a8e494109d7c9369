//! Client of the guest agent, over sockets opened inside the workspace's slot.

use axum::body::Body;
use http_body_util::BodyExt;
use hyper::Request;
use hyper_util::rt::TokioIo;
use rigbox_guest_proto::{ErrorBody, Health, AGENT_PORT, GUEST_ADDR};
use rigbox_netns::{NetnsError, Slot};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::net::SocketAddr;
use std::time::Duration;

/// Errors talking to a guest agent.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// No connection (guest not up, or down).
    #[error("Guest agent unreachable: {0}")]
    Unreachable(String),
    /// The agent answered with an error.
    #[error("Guest agent error {status} {code}: {message}")]
    Agent {
        /// HTTP status.
        status: u16,
        /// Code.
        code: String,
        /// Message.
        message: String,
    },
    /// The request took too long.
    #[error("Guest agent did not answer within {0:?}")]
    Timeout(Duration),
    /// The answer did not parse.
    #[error("Bad answer from the guest agent: {0}")]
    Decode(String),
}

impl From<NetnsError> for GuestError {
    fn from(e: NetnsError) -> Self {
        GuestError::Unreachable(e.to_string())
    }
}

/// Address of the guest agent inside every slot.
pub fn agent_addr() -> SocketAddr {
    SocketAddr::from((GUEST_ADDR, AGENT_PORT))
}

/// The guest agent of one workspace.
#[derive(Debug, Clone)]
pub struct Guest {
    slot: Slot,
}

impl Guest {
    /// The agent behind `slot`.
    pub fn new(slot: Slot) -> Self {
        Guest { slot }
    }

    /// Opens a TCP connection to `port` on the guest's interface.
    pub async fn connect(&self, port: u16, timeout: Duration) -> Result<tokio::net::TcpStream, GuestError> {
        Ok(self.slot.connect(SocketAddr::from((GUEST_ADDR, port)), timeout).await?)
    }

    /// Sends a raw request (its body may stream) and returns the response.
    pub async fn send(
        &self,
        req: Request<Body>,
        timeout: Duration,
    ) -> Result<hyper::Response<hyper::body::Incoming>, GuestError> {
        let work = async {
            let stream = self.connect(AGENT_PORT, Duration::from_secs(2)).await?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| GuestError::Unreachable(e.to_string()))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            sender.send_request(req).await.map_err(|e| GuestError::Unreachable(e.to_string()))
        };
        tokio::time::timeout(timeout, work).await.map_err(|_| GuestError::Timeout(timeout))?
    }

    /// Turns an error response into a [`GuestError`].
    pub async fn error_of(resp: hyper::Response<hyper::body::Incoming>) -> GuestError {
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(b) => GuestError::Agent { status, code: b.error.code, message: b.error.message },
            Err(_) => GuestError::Agent { status, code: "http".into(), message: String::from_utf8_lossy(&body).into_owned() },
        }
    }

    /// A JSON request.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<T, GuestError> {
        let payload = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| GuestError::Decode(e.to_string()))?,
            None => Vec::new(),
        };
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "guest")
            .header("content-type", "application/json")
            .body(Body::from(payload))
            .map_err(|e| GuestError::Decode(e.to_string()))?;
        let resp = self.send(req, timeout).await?;
        if !resp.status().is_success() {
            return Err(Self::error_of(resp).await);
        }
        let bytes = tokio::time::timeout(timeout, resp.into_body().collect())
            .await
            .map_err(|_| GuestError::Timeout(timeout))?
            .map_err(|e| GuestError::Unreachable(e.to_string()))?
            .to_bytes();
        serde_json::from_slice(&bytes).map_err(|e| GuestError::Decode(e.to_string()))
    }

    /// `GET /v1/health` with a short timeout.
    pub async fn health(&self, timeout: Duration) -> Result<Health, GuestError> {
        self.call::<(), Health>(hyper::Method::GET, "/v1/health", None, timeout).await
    }

    /// Opens a WebSocket to the agent (`/v1/session`, `/v1/tcp?port=`).
    pub async fn websocket(
        &self,
        path_and_query: &str,
    ) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, GuestError> {
        let stream = self.connect(AGENT_PORT, Duration::from_secs(3)).await?;
        let url = format!("ws://guest{path_and_query}");
        let (ws, _) = tokio_tungstenite::client_async(url, stream)
            .await
            .map_err(|e| GuestError::Unreachable(e.to_string()))?;
        Ok(ws)
    }
}
