//! A fake AI provider on loopback for tests and benchmarks. It speaks the
//! real wire formats: OpenAI chat completions, legacy completions, responses
//! and embeddings (plain and streamed, with `stream_options.include_usage`),
//! Anthropic messages (plain and the streamed event sequence) and Gemini
//! generateContent / streamGenerateContent (`alt=sse` or a JSON array).
//! It serves every provider under a path prefix (`/openai/v1`, `/anthropic`,
//! `/anthropic/v1` for Anthropic's OpenAI-compatible API, `/google`,
//! `/google/v1beta/openai`, `/openrouter/v1`) and records what it was sent.
//!
//! Replies are deterministic: input tokens = the number of words in the
//! request's strings (the model name excluded), output = `words=N` from the
//! prompt (default 5) capped by the request's max tokens. Words in the
//! prompt steer it: `slow` (150 ms between stream chunks), `break` (the
//! stream stops after two chunks without a usage report), `fail` (500),
//! `denied` (401 echoing the key it got, as real providers half do).

use crate::route::Upstreams;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Provider prefix (`openai`, `anthropic`, `google`, `openrouter`).
    pub provider: String,
    /// Path (prefix included) and query.
    pub path: String,
    /// `Authorization`.
    pub authorization: Option<String>,
    /// `x-api-key`.
    pub x_api_key: Option<String>,
    /// `x-goog-api-key`.
    pub goog_api_key: Option<String>,
    /// All header names and values (to check nothing leaked through).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Value,
}

impl Seen {
    /// The key it was called with, whatever the header.
    pub fn key(&self) -> Option<String> {
        self.authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
            .map(str::to_string)
            .or_else(|| self.x_api_key.clone())
            .or_else(|| self.goog_api_key.clone())
    }
}

#[derive(Clone, Default)]
struct St {
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// A running fake provider.
pub struct FakeProvider {
    /// Where it listens (127.0.0.1).
    pub addr: SocketAddr,
    st: St,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeProvider {
    /// Starts one on `127.0.0.1:0`.
    pub async fn start() -> std::io::Result<Self> {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = l.local_addr()?;
        let st = St::default();
        let app = axum::Router::new().fallback(handle).with_state(st.clone());
        // Like real providers' front ends, stream events leave at once: with
        // Nagle on, a pooled (keep-alive) client's delayed ACKs would hold
        // every event after the first for up to 40 ms.
        let l = axum::serve::ListenerExt::tap_io(l, |t| {
            let _ = t.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });
        Ok(FakeProvider { addr, st, task })
    }

    /// Base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Upstream settings pointing every provider here.
    pub fn upstreams(&self) -> Upstreams {
        let u = self.url();
        Upstreams {
            openai: format!("{u}/openai/v1"),
            anthropic: format!("{u}/anthropic"),
            anthropic_openai: format!("{u}/anthropic/v1"),
            google: format!("{u}/google"),
            google_openai: format!("{u}/google/v1beta/openai"),
            openrouter: format!("{u}/openrouter/v1"),
            via_openrouter: false,
        }
    }

    /// What it received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.st.seen.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Forgets what it received.
    pub fn clear(&self) {
        if let Ok(mut v) = self.st.seen.lock() {
            v.clear();
        }
    }
}

fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.iter().filter(|(k, _)| k.as_str() != "model").for_each(|(_, x)| strings(x, out)),
        _ => {}
    }
}

/// Input tokens the fake reports for a request body.
pub fn input_tokens(body: &Value) -> u64 {
    let mut s = Vec::new();
    strings(body, &mut s);
    s.iter().map(|x| x.split_whitespace().count() as u64).sum()
}

fn header(h: &HeaderMap, k: &str) -> Option<String> {
    h.get(k).and_then(|v| v.to_str().ok()).map(str::to_string)
}

fn sse(chunks: Vec<String>, delay: Duration, broken: bool) -> Body {
    let n = chunks.len();
    let stream = futures::stream::unfold((chunks.into_iter(), 0usize), move |(mut it, i)| async move {
        if broken && i == 2 {
            return Some((Err(std::io::Error::other("fake provider broke the stream")), (it, usize::MAX)));
        }
        if i == usize::MAX {
            return None;
        }
        let c = it.next()?;
        if i > 0 && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Some((Ok::<Bytes, std::io::Error>(Bytes::from(c)), (it, i + 1)))
    });
    let _ = n;
    Body::from_stream(stream)
}

fn stream_response(body: Body, content_type: &str) -> Response {
    Response::builder()
        .status(200)
        .header("content-type", content_type)
        .header("cache-control", "no-cache")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn handle(State(st): State<St>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 64 << 20).await.unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let provider = path.trim_start_matches('/').split('/').next().unwrap_or("").to_string();
    let seen = Seen {
        provider: provider.clone(),
        path: if query.is_empty() { path.clone() } else { format!("{path}?{query}") },
        authorization: header(&parts.headers, "authorization"),
        x_api_key: header(&parts.headers, "x-api-key"),
        goog_api_key: header(&parts.headers, "x-goog-api-key"),
        headers: parts.headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())).collect(),
        body: body.clone(),
    };
    let key = seen.key();
    if let Ok(mut v) = st.seen.lock() {
        v.push(seen);
    }
    let Some(key) = key else {
        return (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": {"message": "no key", "type": "invalid_request_error"}}))).into_response();
    };
    let mut words = Vec::new();
    strings(&body, &mut words);
    let prompt = words.join(" ");
    if prompt.contains("denied") {
        let msg = format!("Incorrect API key provided: {key}");
        return (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": {"message": msg, "type": "invalid_request_error", "code": "invalid_api_key"}}))).into_response();
    }
    if prompt.contains("fail") {
        return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({"error": {"message": "the fake provider failed", "type": "server_error"}}))).into_response();
    }
    let delay = if prompt.contains("slow") { Duration::from_millis(150) } else { Duration::ZERO };
    let broken = prompt.contains("break");
    let n_words = prompt
        .split_whitespace()
        .find_map(|w| w.strip_prefix("words=").and_then(|n| n.trim_matches(|c: char| !c.is_ascii_digit()).parse::<u64>().ok()))
        .unwrap_or(5);
    let model = body["model"].as_str().unwrap_or("").to_string();
    let p = input_tokens(&body);
    let max = ["max_tokens", "max_completion_tokens", "max_output_tokens"]
        .iter()
        .find_map(|k| body[*k].as_u64())
        .or_else(|| body["generationConfig"]["maxOutputTokens"].as_u64());
    let c = max.map_or(n_words, |m| m.min(n_words));
    let out_words: Vec<String> = (1..=c).map(|i| format!("w{i}")).collect();
    let text = out_words.join(" ");
    let stream = body["stream"].as_bool().unwrap_or(false);
    let created = 1_700_000_000u64;

    if path.ends_with("/chat/completions") || (path.ends_with("/completions") && !path.ends_with("/chat/completions")) {
        let chat = path.ends_with("/chat/completions");
        let usage = json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c});
        if !stream {
            let v = if chat {
                json!({"id": "chatcmpl-fake", "object": "chat.completion", "created": created, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": null}],
                    "usage": usage})
            } else {
                json!({"id": "cmpl-fake", "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": null}], "usage": usage})
            };
            return axum::Json(v).into_response();
        }
        let include = body["stream_options"]["include_usage"].as_bool().unwrap_or(false);
        let mut chunks = Vec::new();
        for (i, w) in out_words.iter().enumerate() {
            let piece = if i == 0 { w.clone() } else { format!(" {w}") };
            let v = if chat {
                let delta = if i == 0 { json!({"role": "assistant", "content": piece}) } else { json!({"content": piece}) };
                json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": null}]})
            } else {
                json!({"id": "cmpl-fake", "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": 0, "text": piece, "finish_reason": null, "logprobs": null}]})
            };
            chunks.push(format!("data: {v}\n\n"));
        }
        let fin = if chat {
            json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        } else {
            json!({"id": "cmpl-fake", "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": "", "finish_reason": "stop", "logprobs": null}]})
        };
        chunks.push(format!("data: {fin}\n\n"));
        if include {
            let obj = if chat { "chat.completion.chunk" } else { "text_completion" };
            let u = json!({"id": "chatcmpl-fake", "object": obj, "created": created, "model": model, "choices": [], "usage": usage});
            chunks.push(format!("data: {u}\n\n"));
        }
        chunks.push("data: [DONE]\n\n".into());
        return stream_response(sse(chunks, delay, broken), "text/event-stream");
    }
    if path.ends_with("/responses") {
        let usage = json!({"input_tokens": p, "output_tokens": c, "total_tokens": p + c,
            "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}});
        let resp = |status: &str, text: &str, usage: Value| {
            json!({"id": "resp_fake", "object": "response", "created_at": created, "status": status, "model": model,
                "output": [{"type": "message", "id": "msg_fake", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]}],
                "parallel_tool_calls": true, "tool_choice": "auto", "tools": [], "usage": usage})
        };
        if !stream {
            return axum::Json(resp("completed", &text, usage)).into_response();
        }
        let mut chunks = vec![format!("event: response.created\ndata: {}\n\n", json!({"type": "response.created", "sequence_number": 0, "response": resp("in_progress", "", Value::Null)}))];
        for (i, w) in out_words.iter().enumerate() {
            let ev = json!({"type": "response.output_text.delta", "sequence_number": i + 1, "item_id": "msg_fake", "output_index": 0, "content_index": 0, "delta": format!("{w} ")});
            chunks.push(format!("event: response.output_text.delta\ndata: {ev}\n\n"));
        }
        let done = json!({"type": "response.completed", "sequence_number": out_words.len() + 1, "response": resp("completed", &text, usage)});
        chunks.push(format!("event: response.completed\ndata: {done}\n\n"));
        return stream_response(sse(chunks, delay, broken), "text/event-stream");
    }
    if path.ends_with("/embeddings") {
        return axum::Json(json!({"object": "list", "model": model,
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
            "usage": {"prompt_tokens": p, "total_tokens": p}}))
        .into_response();
    }
    if path.ends_with("/v1/messages") {
        if !stream {
            return axum::Json(json!({"id": "msg_fake", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": p, "output_tokens": c}}))
            .into_response();
        }
        let ev = |name: &str, v: Value| format!("event: {name}\ndata: {v}\n\n");
        let mut chunks = vec![
            ev("message_start", json!({"type": "message_start", "message": {"id": "msg_fake", "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": p, "output_tokens": 1}}})),
            ev("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})),
            ev("ping", json!({"type": "ping"})),
        ];
        for (i, w) in out_words.iter().enumerate() {
            let piece = if i == 0 { w.clone() } else { format!(" {w}") };
            chunks.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}})));
        }
        chunks.push(ev("content_block_stop", json!({"type": "content_block_stop", "index": 0})));
        chunks.push(ev("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": c}})));
        chunks.push(ev("message_stop", json!({"type": "message_stop"})));
        return stream_response(sse(chunks, delay, broken), "text/event-stream");
    }
    if let Some((_, verb)) = path.rsplit_once(':') {
        let gmodel = path.rsplit('/').next().and_then(|s| s.split(':').next()).unwrap_or("").to_string();
        let cand = |t: &str, fin: bool| {
            let mut c = json!({"content": {"parts": [{"text": t}], "role": "model"}, "index": 0});
            if fin {
                c["finishReason"] = json!("STOP");
            }
            c
        };
        let um = |out: u64| json!({"promptTokenCount": p, "candidatesTokenCount": out, "totalTokenCount": p + out});
        match verb {
            "generateContent" => {
                return axum::Json(json!({"candidates": [cand(&text, true)], "usageMetadata": um(c), "modelVersion": gmodel})).into_response();
            }
            "streamGenerateContent" => {
                let sse_mode = query.split('&').any(|kv| kv == "alt=sse");
                let n = out_words.len();
                let items: Vec<Value> = out_words
                    .iter()
                    .enumerate()
                    .map(|(i, w)| json!({"candidates": [cand(&format!("{w} "), i + 1 == n)], "usageMetadata": um(i as u64 + 1), "modelVersion": gmodel}))
                    .collect();
                if sse_mode {
                    let chunks = items.iter().map(|v| format!("data: {v}\r\n\r\n")).collect();
                    return stream_response(sse(chunks, delay, broken), "text/event-stream");
                }
                let mut chunks = Vec::new();
                for (i, v) in items.iter().enumerate() {
                    chunks.push(format!("{}{v}", if i == 0 { "[" } else { ",\r\n" }));
                }
                chunks.push("]".into());
                return stream_response(sse(chunks, delay, broken), "application/json");
            }
            _ => {}
        }
    }
    (StatusCode::NOT_FOUND, axum::Json(json!({"error": {"message": format!("fake provider: no route {path}")}}))).into_response()
}
