//! A minimal QMP client: one connection per operation (QEMU serves one QMP
//! client at a time on a socket), JSON lines, events skipped.

use crate::{BackendKind, VmmError};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

fn ctl(message: impl Into<String>) -> VmmError {
    VmmError::Control { backend: BackendKind::Qemu, message: message.into() }
}

pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Qmp {
    /// Connects and negotiates capabilities, retrying while the socket appears.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, VmmError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) => {
                    if tokio::time::Instant::now() > deadline {
                        return Err(ctl(format!("connecting to {}: {e}", path.display())));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        let (r, w) = stream.into_split();
        let mut q = Qmp { reader: BufReader::new(r), writer: w };
        let greeting = q.read_msg().await?;
        if greeting.get("QMP").is_none() {
            return Err(ctl(format!("unexpected greeting {greeting}")));
        }
        q.execute("qmp_capabilities", None).await?;
        Ok(q)
    }

    async fn read_msg(&mut self) -> Result<Value, VmmError> {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(30), self.reader.read_line(&mut line))
            .await
            .map_err(|_| ctl("no answer from QMP within 30 s"))?
            .map_err(|e| ctl(format!("reading: {e}")))?;
        if n == 0 {
            return Err(ctl("QMP closed the connection"));
        }
        serde_json::from_str(&line).map_err(|e| ctl(format!("bad QMP message {line:?}: {e}")))
    }

    /// Runs a command and returns its `return` value.
    pub async fn execute(&mut self, command: &str, args: Option<Value>) -> Result<Value, VmmError> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap_or_default();
        bytes.push(b'\n');
        self.writer.write_all(&bytes).await.map_err(|e| ctl(format!("writing: {e}")))?;
        loop {
            let m = self.read_msg().await?;
            if m.get("event").is_some() {
                continue;
            }
            if let Some(r) = m.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = m.get("error") {
                return Err(VmmError::Refused {
                    backend: BackendKind::Qemu,
                    request: command.into(),
                    message: e.get("desc").and_then(Value::as_str).unwrap_or("error").into(),
                });
            }
        }
    }

    /// The run state (`running`, `paused`, `inmigrate`, `postmigrate`, ...).
    pub async fn status(&mut self) -> Result<String, VmmError> {
        let r = self.execute("query-status", None).await?;
        Ok(r.get("status").and_then(Value::as_str).unwrap_or("unknown").to_string())
    }
}
