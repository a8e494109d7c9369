//! What every command needs: the client, the output format, error handling.

use crate::{config, Output};
use rigbox_client::{Client, ClientError};
use serde::Serialize;

/// Command context.
pub struct Ctx {
    /// Output format.
    pub output: Output,
    /// API URL.
    pub url: String,
    key: Option<String>,
}

/// A command's failure with its exit code.
#[derive(Debug)]
pub struct Exit(pub i32);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}

impl std::error::Error for Exit {}

impl Ctx {
    /// From the environment and the saved config.
    pub fn new(output: Output) -> Self {
        let (url, key) = config::effective();
        Ctx { output, url, key }
    }

    /// An authenticated client; fails (exit 2) without a key.
    pub fn client(&self) -> anyhow::Result<Client> {
        match &self.key {
            Some(k) => Ok(Client::new(&self.url, Some(k.clone()))),
            None => Err(ClientError::Api {
                status: 401,
                code: "no_api_key".into(),
                message: "no API key: run `rig login` or set RIG_API_KEY".into(),
                retry_after: None,
            }
            .into()),
        }
    }

    /// A client without a key (public endpoints).
    pub fn anonymous(&self) -> Client {
        Client::new(&self.url, self.key.clone())
    }

    /// Whether output is JSON.
    pub fn json(&self) -> bool {
        self.output == Output::Json
    }

    /// Prints `value` as JSON, or `human()` for people.
    pub fn print<T: Serialize>(&self, value: &T, human: impl FnOnce() -> String) {
        if self.json() {
            println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
        } else {
            let s = human();
            if !s.is_empty() {
                println!("{s}");
            }
        }
    }

    /// Prints one NDJSON event (JSON mode only).
    pub fn event(&self, v: serde_json::Value) {
        if self.json() {
            println!("{v}");
        }
    }

    /// Reports the result and returns the exit code.
    pub fn finish(&self, r: anyhow::Result<()>) -> i32 {
        let Err(e) = r else { return 0 };
        if let Some(Exit(code)) = e.downcast_ref::<Exit>() {
            return *code;
        }
        let (code, status, api_code) = match e.downcast_ref::<ClientError>() {
            Some(ce) if ce.is_auth() => (2, ce.status(), ce.code().map(str::to_string)),
            Some(ce) => (1, ce.status(), ce.code().map(str::to_string)),
            None => (1, None, None),
        };
        if self.json() {
            eprintln!("{}", serde_json::json!({"type": "error", "code": api_code.unwrap_or_else(|| "error".into()), "status": status, "message": e.to_string()}));
        } else {
            eprintln!("error: {e:#}");
        }
        code
    }
}

/// Fails with "not available yet" for commands whose server side is missing.
pub fn not_yet(what: &str) -> anyhow::Result<()> {
    anyhow::bail!("{what} is not available in this build yet")
}
