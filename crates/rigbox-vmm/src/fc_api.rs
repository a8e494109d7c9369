//! A minimal client for Firecracker's REST API on its Unix socket.
//!
//! One HTTP/1.1 connection per request: Firecracker's API server handles one
//! connection at a time, and connecting to a local socket costs microseconds.

use crate::{BackendKind, VmmError};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{ACCEPT, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::UnixStream;

/// Default time limit of one API call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

fn ctl(message: impl Into<String>) -> VmmError {
    VmmError::Control { backend: BackendKind::Firecracker, message: message.into() }
}

/// The API socket of one Firecracker process.
#[derive(Debug, Clone)]
pub struct FcApi {
    sock: PathBuf,
}

impl FcApi {
    /// A client for the socket at `sock` (not connected yet).
    pub fn new(sock: impl Into<PathBuf>) -> Self {
        FcApi { sock: sock.into() }
    }

    /// Whether the API server accepts a connection now.
    pub async fn ready(&self) -> bool {
        UnixStream::connect(&self.sock).await.is_ok()
    }

    /// Sends `method path` with an optional JSON body and returns the JSON
    /// answer (`Null` for an empty one, e.g. `204 No Content`). A non-2xx
    /// answer becomes [`VmmError::Refused`] carrying Firecracker's
    /// `fault_message`.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>, timeout: Duration) -> Result<Value, VmmError> {
        let request = format!("{method} {path}");
        match tokio::time::timeout(timeout, self.call_inner(method, path, body)).await {
            Ok(r) => {
                let (status, bytes) = r?;
                interpret(&request, status, &bytes)
            }
            Err(_) => Err(VmmError::Timeout(format!(
                "Firecracker API {request} gave no answer within {} s",
                timeout.as_secs_f64()
            ))),
        }
    }

    async fn call_inner(&self, method: Method, path: &str, body: Option<&Value>) -> Result<(StatusCode, Bytes), VmmError> {
        let stream = UnixStream::connect(&self.sock)
            .await
            .map_err(|e| ctl(format!("connecting to {}: {e}", self.sock.display())))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ctl(format!("HTTP handshake: {e}")))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let payload = match body {
            Some(v) => Bytes::from(serde_json::to_vec(v).map_err(|e| ctl(format!("encoding the request: {e}")))?),
            None => Bytes::new(),
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "localhost")
            .header(ACCEPT, "application/json");
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        let req = builder.body(Full::new(payload)).map_err(|e| ctl(format!("building the request: {e}")))?;
        let result = async {
            let resp = sender.send_request(req).await.map_err(|e| ctl(format!("sending {path}: {e}")))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| ctl(format!("reading the answer to {path}: {e}")))?
                .to_bytes();
            Ok((status, bytes))
        }
        .await;
        driver.abort();
        result
    }
}

/// Turns a status and body into the JSON answer or an error.
fn interpret(request: &str, status: StatusCode, bytes: &[u8]) -> Result<Value, VmmError> {
    let json: Option<Value> = if bytes.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice(bytes).ok()
    };
    if status.is_success() {
        return match json {
            Some(v) => Ok(v),
            None if bytes.iter().all(u8::is_ascii_whitespace) => Ok(Value::Null),
            None => Err(ctl(format!("{request}: answer is not JSON: {}", String::from_utf8_lossy(bytes)))),
        };
    }
    let message = json
        .as_ref()
        .and_then(|v| v.get("fault_message"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(bytes).trim().to_string();
            if text.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {text}")
            }
        });
    Err(VmmError::Refused { backend: BackendKind::Firecracker, request: request.into(), message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_messages_become_refused() {
        let e = interpret(
            "PUT /boot-source",
            StatusCode::BAD_REQUEST,
            br#"{"fault_message":"The kernel file cannot be opened: No such file or directory (os error 2)"}"#,
        )
        .unwrap_err();
        match e {
            VmmError::Refused { backend, request, message } => {
                assert_eq!(backend, BackendKind::Firecracker);
                assert_eq!(request, "PUT /boot-source");
                assert!(message.starts_with("The kernel file cannot be opened"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
        let e = interpret("GET /", StatusCode::INTERNAL_SERVER_ERROR, b"").unwrap_err();
        assert!(e.to_string().contains("HTTP 500"), "{e}");
    }

    #[test]
    fn success_bodies_parse_or_are_null() {
        assert_eq!(interpret("PUT /actions", StatusCode::NO_CONTENT, b"").unwrap(), Value::Null);
        let v = interpret("GET /", StatusCode::OK, br#"{"state":"Running"}"#).unwrap();
        assert_eq!(v["state"], "Running");
        assert!(interpret("GET /", StatusCode::OK, b"not json").is_err());
    }
}
