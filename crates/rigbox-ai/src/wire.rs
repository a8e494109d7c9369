//! Wire formats: request rewriting, usage in JSON bodies, SSE parsing and
//! per-format stream meters.

use crate::pricing::MicroPrice;
use crate::route::Format;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Token usage of one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Input (prompt) tokens, cache reads and writes included.
    pub input_tokens: u64,
    /// Output tokens, reasoning included.
    pub output_tokens: u64,
}

/// What the proxy needs to know about a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestInfo {
    /// Model named in the body.
    pub model: Option<String>,
    /// Streaming requested.
    pub stream: bool,
    /// The output-token bound the request sets.
    pub max_output: Option<u64>,
    /// End user named in the body (`user`, Anthropic `metadata.user_id`).
    pub user: Option<String>,
}

fn u(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
}

/// Reads the request facts from a JSON body.
pub fn inspect(format: Format, body: &Value) -> RequestInfo {
    let s = |v: &Value| v.as_str().map(str::to_string);
    let max_output = match format {
        Format::OpenaiChat => u(&body["max_completion_tokens"]).or_else(|| u(&body["max_tokens"])),
        Format::OpenaiResponses => u(&body["max_output_tokens"]),
        Format::OpenaiEmbeddings => None,
        Format::Anthropic => u(&body["max_tokens"]),
        Format::Gemini => u(&body["generationConfig"]["maxOutputTokens"]),
    };
    let user = match format {
        Format::Anthropic => s(&body["metadata"]["user_id"]),
        Format::Gemini => None,
        _ => s(&body["user"]),
    };
    RequestInfo {
        model: s(&body["model"]),
        stream: body["stream"].as_bool().unwrap_or(false),
        max_output,
        user,
    }
}

/// Rewrites a request body for upstream: the provider's model name, and for
/// OpenAI-format streams `stream_options.include_usage = true` (so the
/// stream reports its usage).
pub fn rewrite(format: Format, body: &mut Value, upstream_model: Option<&str>, stream: bool) {
    let Some(obj) = body.as_object_mut() else { return };
    if let Some(m) = upstream_model {
        obj.insert("model".into(), json!(m));
    }
    if stream && format == Format::OpenaiChat {
        let so = obj.entry("stream_options").or_insert_with(|| json!({}));
        if !so.is_object() {
            *so = json!({});
        }
        so["include_usage"] = json!(true);
    }
}

/// Usage in a complete (non-streamed) response body.
pub fn usage_of(format: Format, body: &Value) -> Option<Usage> {
    match format {
        Format::OpenaiChat | Format::OpenaiEmbeddings => {
            let us = body.get("usage").filter(|v| v.is_object())?;
            Some(Usage { input_tokens: u(&us["prompt_tokens"]).unwrap_or(0), output_tokens: u(&us["completion_tokens"]).unwrap_or(0) })
        }
        Format::OpenaiResponses => {
            let us = body.get("usage").filter(|v| v.is_object())?;
            Some(Usage { input_tokens: u(&us["input_tokens"]).unwrap_or(0), output_tokens: u(&us["output_tokens"]).unwrap_or(0) })
        }
        Format::Anthropic => {
            let us = body.get("usage").filter(|v| v.is_object())?;
            Some(anthropic_usage(us))
        }
        Format::Gemini => {
            let us = body.get("usageMetadata").filter(|v| v.is_object())?;
            Some(gemini_usage(us))
        }
    }
}

fn anthropic_usage(us: &Value) -> Usage {
    let input = ["input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"].iter().filter_map(|k| u(&us[*k])).sum();
    Usage { input_tokens: input, output_tokens: u(&us["output_tokens"]).unwrap_or(0) }
}

fn gemini_usage(us: &Value) -> Usage {
    Usage {
        input_tokens: u(&us["promptTokenCount"]).unwrap_or(0),
        output_tokens: u(&us["candidatesTokenCount"]).unwrap_or(0) + u(&us["thoughtsTokenCount"]).unwrap_or(0),
    }
}

/// Adds `cost_micro` and `cost_credits` to an OpenAI-format `usage` object
/// (other formats are left alone: their SDKs are strict about fields).
pub fn add_cost(format: Format, body: &mut Value, cost_micro: i64) {
    if matches!(format, Format::OpenaiChat | Format::OpenaiEmbeddings | Format::OpenaiResponses) {
        if let Some(us) = body.get_mut("usage").and_then(Value::as_object_mut) {
            us.insert("cost_micro".into(), json!(cost_micro));
            us.insert("cost_credits".into(), json!(crate::credits(cost_micro)));
        }
    }
}

/// Splits a byte stream into complete SSE events (each with its
/// terminating blank line), as soon as each is complete.
#[derive(Debug, Default)]
pub struct SseSplitter {
    buf: Vec<u8>,
}

fn event_end(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\n' => {
                if b.get(i + 1) == Some(&b'\n') {
                    return Some(i + 2);
                }
                if b.get(i + 1) == Some(&b'\r') && b.get(i + 2) == Some(&b'\n') {
                    return Some(i + 3);
                }
            }
            b'\r' => {
                if b.get(i + 1) == Some(&b'\r') {
                    return Some(i + 2);
                }
                if b.get(i + 1) == Some(&b'\n') && b.get(i + 2) == Some(&b'\r') && b.get(i + 3) == Some(&b'\n') {
                    return Some(i + 4);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

impl SseSplitter {
    /// Feeds bytes; returns the events completed by them.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Vec<u8>> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(end) = event_end(&self.buf) {
            out.push(self.buf.drain(..end).collect());
        }
        out
    }

    /// Bytes of an unfinished event.
    pub fn take_rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

/// A parsed SSE event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:` field.
    pub event: Option<String>,
    /// `data:` lines joined with `\n`.
    pub data: String,
}

/// Parses one raw event.
pub fn parse_event(raw: &[u8]) -> SseEvent {
    let text = String::from_utf8_lossy(raw);
    let mut ev = SseEvent::default();
    let mut data: Vec<String> = Vec::new();
    for line in text.split(['\n', '\r']) {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => ev.event = Some(value.to_string()),
            "data" => data.push(value.to_string()),
            _ => {}
        }
    }
    ev.data = data.join("\n");
    ev
}

/// Reads usage out of a response stream while it passes through.
#[derive(Debug)]
pub struct StreamMeter {
    format: Format,
    sse: bool,
    split: SseSplitter,
    usage: Usage,
    seen: bool,
    final_usage: bool,
    ended: bool,
    raw: Vec<u8>,
    price: Option<MicroPrice>,
}

const RAW_CAP: usize = 16 << 20;

impl StreamMeter {
    /// A meter for `format`. `sse`: the body is `text/event-stream` (else a
    /// Gemini JSON array). With `price`, OpenAI-format usage chunks get
    /// `cost_micro`/`cost_credits` added.
    pub fn new(format: Format, sse: bool, price: Option<MicroPrice>) -> Self {
        StreamMeter { format, sse, split: SseSplitter::default(), usage: Usage::default(), seen: false, final_usage: false, ended: false, raw: Vec::new(), price }
    }

    /// Feeds upstream bytes; returns the bytes to send on now (whole events).
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        if !self.sse {
            if self.raw.len() < RAW_CAP {
                self.raw.extend_from_slice(chunk);
            }
            return chunk.to_vec();
        }
        let mut out = Vec::with_capacity(chunk.len() + 64);
        for raw in self.split.push(chunk) {
            match self.observe(&raw) {
                Some(rewritten) => out.extend_from_slice(&rewritten),
                None => out.extend_from_slice(&raw),
            }
        }
        out
    }

    /// The stream ended cleanly; returns leftover bytes to send.
    pub fn end(&mut self) -> Vec<u8> {
        self.ended = true;
        if !self.sse {
            if let Ok(Value::Array(items)) = serde_json::from_slice::<Value>(&self.raw) {
                if let Some(us) = items.iter().rev().find_map(|i| i.get("usageMetadata").filter(|v| v.is_object())) {
                    self.usage = gemini_usage(us);
                    self.seen = true;
                }
            }
            return Vec::new();
        }
        let rest = self.split.take_rest();
        if !rest.is_empty() {
            let _ = self.observe(&rest);
        }
        rest
    }

    /// Whether the body is `text/event-stream`.
    pub fn is_sse(&self) -> bool {
        self.sse
    }

    /// Usage seen so far (possibly partial).
    pub fn usage_so_far(&self) -> Option<Usage> {
        self.seen.then_some(self.usage)
    }

    /// The final usage, once the stream has reported it.
    pub fn final_usage(&self) -> Option<Usage> {
        let done = match self.format {
            Format::Gemini => self.ended && self.seen,
            _ => self.final_usage,
        };
        done.then_some(self.usage)
    }

    /// Looks at one event; returns a rewritten event when it changed it.
    fn observe(&mut self, raw: &[u8]) -> Option<Vec<u8>> {
        let ev = parse_event(raw);
        if ev.data.is_empty() || ev.data == "[DONE]" {
            return None;
        }
        let mut v: Value = serde_json::from_str(&ev.data).ok()?;
        match self.format {
            Format::OpenaiChat | Format::OpenaiEmbeddings => {
                let us = v.get("usage").filter(|x| x.is_object())?;
                self.usage = Usage { input_tokens: u(&us["prompt_tokens"]).unwrap_or(0), output_tokens: u(&us["completion_tokens"]).unwrap_or(0) };
                self.seen = true;
                self.final_usage = true;
                let price = self.price?;
                add_cost(self.format, &mut v, price.cost(&self.usage));
                Some(format!("data: {v}\n\n").into_bytes())
            }
            Format::OpenaiResponses => {
                let kind = v["type"].as_str().unwrap_or("");
                if !matches!(kind, "response.completed" | "response.incomplete" | "response.failed") {
                    return None;
                }
                let us = v["response"].get("usage").filter(|x| x.is_object())?;
                self.usage = Usage { input_tokens: u(&us["input_tokens"]).unwrap_or(0), output_tokens: u(&us["output_tokens"]).unwrap_or(0) };
                self.seen = true;
                self.final_usage = true;
                None
            }
            Format::Anthropic => {
                match v["type"].as_str().unwrap_or("") {
                    "message_start" => {
                        if let Some(us) = v["message"].get("usage").filter(|x| x.is_object()) {
                            self.usage = anthropic_usage(us);
                            self.seen = true;
                        }
                    }
                    "message_delta" => {
                        if let Some(us) = v.get("usage").filter(|x| x.is_object()) {
                            if let Some(o) = u(&us["output_tokens"]) {
                                self.usage.output_tokens = o;
                            }
                            let input = anthropic_usage(us).input_tokens;
                            if input > 0 {
                                self.usage.input_tokens = input;
                            }
                            self.seen = true;
                            self.final_usage = true;
                        }
                    }
                    _ => {}
                }
                None
            }
            Format::Gemini => {
                if let Some(us) = v.get("usageMetadata").filter(|x| x.is_object()) {
                    self.usage = gemini_usage(us);
                    self.seen = true;
                }
                let _ = &mut v;
                None
            }
        }
    }
}

/// The SSE comment appended to a metered stream once it is settled:
/// `: rigbox-cost {"request_id":…,"cost_micro":…,"cost_credits":…,"input_tokens":…,"output_tokens":…}`.
/// SSE parsers ignore comments, so SDKs are unaffected.
pub fn cost_comment(request_id: &str, cost_micro: i64, usage: &Usage) -> Vec<u8> {
    let v = json!({
        "request_id": request_id,
        "cost_micro": cost_micro,
        "cost_credits": crate::credits(cost_micro),
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
    });
    format!(": rigbox-cost {v}\n\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_inspected_and_rewritten() {
        let mut b = json!({"model": "rigbox/fast", "stream": true, "max_tokens": 50, "user": "alice", "messages": []});
        let i = inspect(Format::OpenaiChat, &b);
        assert_eq!(i, RequestInfo { model: Some("rigbox/fast".into()), stream: true, max_output: Some(50), user: Some("alice".into()) });
        rewrite(Format::OpenaiChat, &mut b, Some("gpt-4o-mini"), true);
        assert_eq!(b["model"], "gpt-4o-mini");
        assert_eq!(b["stream_options"]["include_usage"], true);
        let mut b = json!({"model": "x", "stream": true, "stream_options": {"include_usage": false, "other": 1}});
        rewrite(Format::OpenaiChat, &mut b, None, true);
        assert_eq!(b["stream_options"], json!({"include_usage": true, "other": 1}));
        let a = json!({"model": "claude", "max_tokens": 64, "metadata": {"user_id": "u1"}});
        assert_eq!(inspect(Format::Anthropic, &a).max_output, Some(64));
        assert_eq!(inspect(Format::Anthropic, &a).user.as_deref(), Some("u1"));
        let g = json!({"generationConfig": {"maxOutputTokens": 12}});
        assert_eq!(inspect(Format::Gemini, &g).max_output, Some(12));
        let r = json!({"model": "gpt", "max_output_tokens": 7});
        assert_eq!(inspect(Format::OpenaiResponses, &r).max_output, Some(7));
    }

    #[test]
    fn usage_in_bodies() {
        let o = json!({"usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}});
        assert_eq!(usage_of(Format::OpenaiChat, &o), Some(Usage { input_tokens: 10, output_tokens: 5 }));
        let r = json!({"usage": {"input_tokens": 3, "output_tokens": 4}});
        assert_eq!(usage_of(Format::OpenaiResponses, &r), Some(Usage { input_tokens: 3, output_tokens: 4 }));
        let a = json!({"usage": {"input_tokens": 3, "cache_read_input_tokens": 2, "output_tokens": 4}});
        assert_eq!(usage_of(Format::Anthropic, &a), Some(Usage { input_tokens: 5, output_tokens: 4 }));
        let g = json!({"usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 2, "thoughtsTokenCount": 1}});
        assert_eq!(usage_of(Format::Gemini, &g), Some(Usage { input_tokens: 8, output_tokens: 3 }));
        assert_eq!(usage_of(Format::OpenaiChat, &json!({"usage": null})), None);
        let mut o = o;
        add_cost(Format::OpenaiChat, &mut o, 1_500_000);
        assert_eq!(o["usage"]["cost_micro"], 1_500_000);
        assert_eq!(o["usage"]["cost_credits"], 1.5);
    }

    #[test]
    fn sse_splits_across_chunks_and_line_endings() {
        let mut s = SseSplitter::default();
        assert!(s.push(b"data: {\"a\"").is_empty());
        let evs = s.push(b":1}\n\ndata: 2\r\n\r\nevent: x\ndata: 3\n");
        assert_eq!(evs.len(), 2);
        assert_eq!(parse_event(&evs[0]).data, "{\"a\":1}");
        assert_eq!(parse_event(&evs[1]).data, "2");
        let evs = s.push(b"data: 4\n\n");
        let e = parse_event(&evs[0]);
        assert_eq!((e.event.as_deref(), e.data.as_str()), (Some("x"), "3\n4"));
        assert!(s.take_rest().is_empty());
        assert_eq!(parse_event(b": comment\n\n"), SseEvent::default());
    }

    #[test]
    fn openai_stream_meter_reads_usage_and_adds_cost() {
        let price = MicroPrice { input: 1_000_000, output: 2_000_000 };
        let mut m = StreamMeter::new(Format::OpenaiChat, true, Some(price));
        let a = m.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\ndata: {\"choices\":[],\"us");
        assert!(a.starts_with(b"data: {\"choices\":[{\"delta\""));
        assert!(m.final_usage().is_none());
        let b = m.feed(b"age\":{\"prompt_tokens\":10,\"completion_tokens\":5}}\n\ndata: [DONE]\n\n");
        let text = String::from_utf8(b).unwrap();
        assert!(text.contains("\"cost_micro\":20"), "{text}");
        assert!(text.ends_with("data: [DONE]\n\n"));
        assert_eq!(m.final_usage(), Some(Usage { input_tokens: 10, output_tokens: 5 }));
        assert!(m.end().is_empty());
    }

    #[test]
    fn anthropic_and_responses_and_gemini_meters() {
        let mut m = StreamMeter::new(Format::Anthropic, true, None);
        m.feed(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n");
        assert_eq!(m.usage_so_far(), Some(Usage { input_tokens: 12, output_tokens: 1 }));
        assert!(m.final_usage().is_none());
        m.feed(b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\"}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}\n\n");
        assert_eq!(m.final_usage(), Some(Usage { input_tokens: 12, output_tokens: 9 }));

        let mut m = StreamMeter::new(Format::OpenaiResponses, true, None);
        m.feed(b"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":4,\"output_tokens\":6}}}\n\n");
        assert_eq!(m.final_usage(), Some(Usage { input_tokens: 4, output_tokens: 6 }));

        let mut m = StreamMeter::new(Format::Gemini, true, None);
        m.feed(b"data: {\"candidates\":[],\"usageMetadata\":{\"promptTokenCount\":3,\"candidatesTokenCount\":1}}\r\n\r\n");
        m.feed(b"data: {\"candidates\":[],\"usageMetadata\":{\"promptTokenCount\":3,\"candidatesTokenCount\":7}}\r\n\r\n");
        assert!(m.final_usage().is_none(), "Gemini usage is final only at the end");
        m.end();
        assert_eq!(m.final_usage(), Some(Usage { input_tokens: 3, output_tokens: 7 }));

        let mut m = StreamMeter::new(Format::Gemini, false, None);
        let out = m.feed(b"[{\"usageMetadata\":{\"promptTokenCount\":1,\"candidatesTokenCount\":1}},\n{\"usageMetadata\":{\"promptTokenCount\":1,\"candidatesTokenCount\":4}}]");
        assert!(!out.is_empty());
        m.end();
        assert_eq!(m.final_usage(), Some(Usage { input_tokens: 1, output_tokens: 4 }));
        let c = String::from_utf8(cost_comment("ai-1", 5, &Usage { input_tokens: 1, output_tokens: 2 })).unwrap();
        assert!(c.starts_with(": rigbox-cost {") && c.ends_with("}\n\n"));
        assert_eq!(parse_event(c.as_bytes()), SseEvent::default(), "a comment, invisible to SSE parsers");
    }
}
