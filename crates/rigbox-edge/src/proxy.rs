//! The request path: host → route → access → state checks → upstream.

use crate::access::{self, Decision, Sessions, KEY_HEADER, SESSION_COOKIE};
use crate::acme::Challenges;
use crate::metrics::Recorder;
use crate::names::{self, HostMatch};
use crate::route::{AppRunState, Authenticator, EdgeUser, Route, RouteLookup, Visibility};
use crate::upstream::{Body, Upstream, UpstreamError};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The scheme a request arrived with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// TLS.
    Https,
}

impl Scheme {
    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Edge settings.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// Apps are `{subdomain}.{base_domain}`.
    pub base_domain: String,
    /// Plain-HTTP requests are redirected to HTTPS (except ACME challenges).
    pub https_redirect: bool,
    /// Deadline for an app's response headers, counted from the last progress of the request body.
    pub upstream_timeout: Duration,
    /// Deadline for opening a tunnel.
    pub connect_timeout: Duration,
    /// Idle upstream connections are kept this long.
    pub pool_idle: Duration,
    /// At most this many idle upstream connections per app.
    pub pool_max_idle: usize,
    /// Lifetime of a login session.
    pub session_ttl: Duration,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            base_domain: "localhost".into(),
            https_redirect: false,
            upstream_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            pool_idle: Duration::from_secs(60),
            pool_max_idle: 128,
            session_ttl: Duration::from_secs(12 * 3600),
        }
    }
}

/// The edge: shared by every connection.
pub struct Edge {
    cfg: EdgeConfig,
    routes: Arc<dyn RouteLookup>,
    auth: Arc<dyn Authenticator>,
    sessions: Sessions,
    upstream: Upstream,
    metrics: Arc<Recorder>,
    challenges: Arc<Challenges>,
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded.
const HOP_BY_HOP: [&str; 8] = ["connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding"];

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn empty() -> Body {
    full(Bytes::new())
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn wants_html(method: &Method, headers: &HeaderMap) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/html"))
}

/// An error answered by the edge itself: an HTML page for browsers, the
/// API's JSON error envelope otherwise, and `X-Rigbox-Error: code` always.
pub fn error_page(status: StatusCode, code: &str, title: &str, message: &str, html: bool, retry_after: Option<u64>) -> Response<Body> {
    let (ctype, body) = if html {
        (
            "text/html; charset=utf-8",
            format!(
                "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title>\
                 <style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#222}}\
                 code{{background:#eee;padding:0 .2rem}}</style></head>\
                 <body><h1>{t}</h1><p>{m}</p><p><small>{s} · <code>{c}</code> · Rigbox edge</small></p></body></html>\n",
                t = html_escape(title),
                m = html_escape(message),
                s = status.as_u16(),
                c = html_escape(code)
            ),
        )
    } else {
        ("application/json", format!("{}\n", serde_json::json!({"error": {"code": code, "message": message}})))
    };
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(code) {
        h.insert("x-rigbox-error", v);
    }
    if let Some(s) = retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    r
}

/// Counts response body bytes into the app's metrics as they stream.
struct Metered {
    inner: Incoming,
    metrics: Arc<Recorder>,
    app_id: Arc<str>,
    host: Arc<str>,
}

impl hyper::body::Body for Metered {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let p = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &p {
            if let Some(d) = f.data_ref() {
                self.metrics.bytes_out(&self.app_id, &self.host, d.len() as u64);
            }
        }
        p
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that records when it last made progress (ms after `t0`).
struct Tracked {
    inner: Incoming,
    progress: Arc<AtomicU64>,
    t0: Instant,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let p = Pin::new(&mut self.inner).poll_frame(cx);
        if p.is_ready() {
            let ms = u64::try_from(self.t0.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.progress.store(ms, Ordering::Relaxed);
        }
        p
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Whether a request asks for a protocol upgrade (WebSocket...), and to what.
fn upgrade_of(version: Version, headers: &HeaderMap) -> Option<HeaderValue> {
    if version != Version::HTTP_11 {
        return None;
    }
    let conn_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !conn_upgrade {
        return None;
    }
    headers.get(header::UPGRADE).cloned()
}

/// Removes hop-by-hop headers, including those named by `Connection`.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
    h.remove(header::UPGRADE);
}

fn sanitize_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.starts_with("/\\") && !n.contains(['\r', '\n']) => n.to_string(),
        _ => "/".to_string(),
    }
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

impl Edge {
    /// An edge over these lookups.
    pub fn new(cfg: EdgeConfig, routes: Arc<dyn RouteLookup>, auth: Arc<dyn Authenticator>, sessions: Sessions, metrics: Arc<Recorder>) -> Self {
        let upstream = Upstream::new(cfg.connect_timeout, cfg.pool_idle, cfg.pool_max_idle);
        Edge { cfg, routes, auth, sessions, upstream, metrics, challenges: Arc::new(Challenges::default()) }
    }

    /// The configuration.
    pub fn config(&self) -> &EdgeConfig {
        &self.cfg
    }

    /// Pending ACME HTTP-01 answers (served on every host).
    pub fn challenges(&self) -> Arc<Challenges> {
        self.challenges.clone()
    }

    /// The metrics recorder.
    pub fn metrics(&self) -> Arc<Recorder> {
        self.metrics.clone()
    }

    /// Whether the edge would serve `host` (the base domain, or an app that
    /// exists): the ACME client issues certificates only for those.
    pub async fn serves_host(&self, host: &str) -> bool {
        match names::parse_host(host, &self.cfg.base_domain) {
            HostMatch::Apex => true,
            HostMatch::App(s) => matches!(self.routes.route(&s).await, Ok(Some(_))),
            HostMatch::Foreign => false,
        }
    }

    /// Answers one request.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr, scheme: Scheme) -> Response<Body> {
        let started = Instant::now();
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| req.headers().get(header::HOST).and_then(|v| v.to_str().ok()).map(str::to_string))
            .unwrap_or_default();
        let host = names::host_only(&authority);
        let html = wants_html(req.method(), req.headers());
        let path = req.uri().path().to_string();

        if let Some(token) = path.strip_prefix("/.well-known/acme-challenge/") {
            if let Some(answer) = self.challenges.get(token) {
                let mut r = Response::new(full(answer));
                r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
                return r;
            }
        }
        if scheme == Scheme::Http && self.cfg.https_redirect {
            let pq = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let mut r = Response::new(empty());
            *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
            if let Ok(v) = HeaderValue::from_str(&format!("https://{host}{pq}")) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            return r;
        }
        let sub = match names::parse_host(&authority, &self.cfg.base_domain) {
            HostMatch::App(s) => s,
            HostMatch::Apex => {
                return error_page(StatusCode::NOT_FOUND, "no_app", "No app here", &format!("Apps live at https://<name>.{}.", self.cfg.base_domain), html, None)
            }
            HostMatch::Foreign => {
                return error_page(StatusCode::NOT_FOUND, "unknown_host", "Unknown host", &format!("{host} is not served by this edge."), html, None)
            }
        };
        let route = match self.routes.route(&sub).await {
            Ok(Some(r)) => r,
            Ok(None) => return error_page(StatusCode::NOT_FOUND, "app_not_found", "App not found", &format!("There is no app at {host}."), html, None),
            Err(e) => {
                tracing::error!(host, "route lookup failed: {e}");
                return error_page(StatusCode::SERVICE_UNAVAILABLE, "edge_unavailable", "Temporarily unavailable", "The edge could not look up this app.", html, Some(5));
            }
        };
        let app_id = route.app_id.clone();
        let metric_host = host.clone();
        let r = self.routed(req, route, authority, host, peer, scheme, html).await;
        self.metrics.response(&app_id, &metric_host, r.status().as_u16(), started.elapsed());
        r
    }

    /// Everything after the route is known (counted in the app's metrics).
    #[allow(clippy::too_many_arguments)]
    async fn routed(
        &self,
        req: Request<Incoming>,
        route: Route,
        authority: String,
        host: String,
        peer: SocketAddr,
        scheme: Scheme,
        html: bool,
    ) -> Response<Body> {
        if req.uri().path().starts_with("/_rigbox/") {
            return self.own_page(req, &route, &host, scheme).await;
        }

        // Who is calling, and may they?
        let preflight = req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        let caller = if route.visibility == Visibility::Public || preflight {
            None
        } else {
            match self.identify(req.headers(), &host).await {
                Ok(c) => c,
                Err(resp) => return resp,
            }
        };
        match access::decide(route.visibility, &route.owner, &route.allowed_emails, caller.as_ref(), preflight) {
            Decision::Allow => {}
            Decision::Unauthenticated => {
                if html {
                    let pq = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
                    let next: String = form_urlencoded::byte_serialize(pq.as_bytes()).collect();
                    let mut r = Response::new(empty());
                    *r.status_mut() = StatusCode::FOUND;
                    if let Ok(v) = HeaderValue::from_str(&format!("/_rigbox/login?next={next}")) {
                        r.headers_mut().insert(header::LOCATION, v);
                    }
                    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    return r;
                }
                return error_page(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "Sign in required",
                    &format!("This app is {}: send an X-Rigbox-Key header with an API key, or sign in at /_rigbox/login.", route.visibility.as_str()),
                    false,
                    None,
                );
            }
            Decision::Forbidden => {
                return error_page(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "Not allowed",
                    &format!("{} may not use this app.", caller.map(|c| c.email).unwrap_or_default()),
                    html,
                    None,
                )
            }
        }

        match route.status {
            AppRunState::Active => {}
            AppRunState::Inactive => {
                return error_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "app_stopped",
                    "This app is stopped",
                    &format!("The app {} is stopped. Its owner can start it again (rig app start, or POST /apps/{}/start).", route.app_name, route.app_id),
                    html,
                    None,
                )
            }
            AppRunState::Installing => {
                return error_page(StatusCode::SERVICE_UNAVAILABLE, "app_installing", "This app is being installed", "Try again in a moment.", html, Some(10))
            }
            AppRunState::Error => {
                return error_page(StatusCode::BAD_GATEWAY, "app_error", "This app failed", "The app's installation or start failed; see its logs.", html, None)
            }
        }
        if route.workspace_status != "running" {
            let retry = if matches!(route.workspace_status.as_str(), "starting" | "provisioning") { 5 } else { 30 };
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "workspace_not_running",
                "The workspace is not running",
                &format!("The workspace behind {} is {}. Start it and try again.", route.app_name, route.workspace_status),
                html,
                Some(retry),
            );
        }
        self.forward(req, route, authority, host, peer, scheme, html).await
    }

    /// The caller's identity from `X-Rigbox-Key` or the session cookie.
    /// A wrong key is an error (401); a bad or stale cookie counts as none.
    async fn identify(&self, headers: &HeaderMap, host: &str) -> Result<Option<EdgeUser>, Response<Body>> {
        if let Some(k) = headers.get(KEY_HEADER).and_then(|v| v.to_str().ok()) {
            return match self.auth.by_key(k.trim()).await {
                Ok(Some(id)) => Ok(Some(id.user)),
                Ok(None) => Err(error_page(StatusCode::UNAUTHORIZED, "invalid_key", "Invalid key", "The X-Rigbox-Key is not a valid API key.", false, None)),
                Err(e) => {
                    tracing::error!("key lookup failed: {e}");
                    Err(error_page(StatusCode::SERVICE_UNAVAILABLE, "edge_unavailable", "Temporarily unavailable", "Could not check the key.", false, Some(5)))
                }
            };
        }
        for v in headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()) {
            let Some(c) = access::cookie(v, SESSION_COOKIE) else { continue };
            let Some(s) = self.sessions.verify(host, c, now_secs()) else { continue };
            match self.auth.by_key_id(&s.user_id, &s.key_id).await {
                Ok(Some(u)) => return Ok(Some(u)),
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!("session lookup failed: {e}");
                    return Err(error_page(StatusCode::SERVICE_UNAVAILABLE, "edge_unavailable", "Temporarily unavailable", "Could not check the session.", false, Some(5)));
                }
            }
        }
        Ok(None)
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        route: Route,
        authority: String,
        host: String,
        peer: SocketAddr,
        scheme: Scheme,
        html: bool,
    ) -> Response<Body> {
        let upgrade = upgrade_of(req.version(), req.headers());
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let pq = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
        let uri = match self.upstream.uri(&route, &pq) {
            Ok(u) => u,
            Err(e) => return error_page(StatusCode::BAD_REQUEST, "bad_request", "Bad request", &e.to_string(), html, None),
        };

        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        headers.remove(KEY_HEADER);
        // HTTP/2 may split cookies over several headers: join, drop ours.
        let cookies: Vec<String> = headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok().map(str::to_string)).collect();
        headers.remove(header::COOKIE);
        if !cookies.is_empty() {
            if let Some(rest) = access::strip_cookie(&cookies.join("; "), SESSION_COOKIE) {
                if let Ok(v) = HeaderValue::from_str(&rest) {
                    headers.insert(header::COOKIE, v);
                }
            }
        }
        if let Ok(v) = HeaderValue::from_str(&authority) {
            headers.insert(header::HOST, v.clone());
            headers.insert("x-forwarded-host", v);
        }
        if let Ok(v) = HeaderValue::from_str(&peer.ip().to_string()) {
            headers.insert("x-forwarded-for", v);
        }
        headers.insert("x-forwarded-proto", HeaderValue::from_static(scheme.as_str()));
        if let Some(u) = &upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, u.clone());
        }

        // The deadline counts from the last progress of the request body, so
        // a long upload is not cut, but a stalled one or a silent app is.
        let t0 = Instant::now();
        let progress = Arc::new(AtomicU64::new(0));
        let body = Tracked { inner: body, progress: progress.clone(), t0 };
        let mut out = Request::new(body.boxed());
        *out.method_mut() = parts.method;
        *out.uri_mut() = uri;
        *out.version_mut() = Version::HTTP_11;
        *out.headers_mut() = headers;

        let send = self.upstream.send(out);
        tokio::pin!(send);
        let result = loop {
            let last = progress.load(Ordering::Relaxed);
            let deadline = t0 + Duration::from_millis(last) + self.cfg.upstream_timeout;
            tokio::select! {
                r = &mut send => break r,
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if progress.load(Ordering::Relaxed) == last {
                        break Err(UpstreamError::TimedOut(format!("no response within {:?}", self.cfg.upstream_timeout)));
                    }
                }
            }
        };
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => return self.upstream_error(&route, &e, html),
        };
        let status = resp.status();

        if status == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_side) = client_upgrade else {
                return error_page(StatusCode::BAD_GATEWAY, "bad_upgrade", "Bad gateway", "The app switched protocols unasked.", html, None);
            };
            let upstream_side = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                let (c, u) = tokio::join!(client_side, upstream_side);
                if let (Ok(c), Ok(u)) = (c, u) {
                    let mut c = hyper_util::rt::TokioIo::new(c);
                    let mut u = hyper_util::rt::TokioIo::new(u);
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
                }
            });
            let (parts, _) = resp.into_parts();
            return Response::from_parts(parts, empty());
        }

        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let body = Metered { inner: body, metrics: self.metrics.clone(), app_id: route.app_id.as_str().into(), host: host.as_str().into() };
        Response::from_parts(parts, body.boxed())
    }

    fn upstream_error(&self, route: &Route, e: &UpstreamError, html: bool) -> Response<Body> {
        tracing::debug!(app = %route.app_id, "upstream error: {e}");
        let port = route.port;
        match e {
            UpstreamError::Refused(_) => error_page(
                StatusCode::BAD_GATEWAY,
                "connection_refused",
                "Nothing is listening",
                &format!("The workspace refused the connection: nothing listens on port {port} (on 0.0.0.0) inside it."),
                html,
                None,
            ),
            UpstreamError::TimedOut(m) => error_page(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", "The app did not answer in time", &format!("Port {port}: {m}."), html, None),
            UpstreamError::NotRunning(_) => {
                error_page(StatusCode::SERVICE_UNAVAILABLE, "workspace_not_running", "The workspace is not running", "Start it and try again.", html, Some(10))
            }
            UpstreamError::NodeUnreachable(_) => {
                error_page(StatusCode::BAD_GATEWAY, "node_unreachable", "The workspace's host is unreachable", "Try again in a moment.", html, Some(5))
            }
            UpstreamError::Protocol(m) => error_page(StatusCode::BAD_GATEWAY, "bad_gateway", "Bad answer from the app", m, html, None),
        }
    }

    /// `/_rigbox/login` and `/_rigbox/logout` on app hosts.
    async fn own_page(&self, req: Request<Incoming>, route: &Route, host: &str, scheme: Scheme) -> Response<Body> {
        let path = req.uri().path().to_string();
        let query = req.uri().query().map(str::to_string);
        match path.as_str() {
            "/_rigbox/login" => {
                let (key, next) = if req.method() == Method::POST {
                    let body = match Limited::new(req.into_body(), 16 * 1024).collect().await {
                        Ok(b) => b.to_bytes(),
                        Err(_) => return error_page(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "Too large", "The login form is too large.", true, None),
                    };
                    let mut key = None;
                    let mut next = None;
                    for (k, v) in form_urlencoded::parse(&body) {
                        match k.as_ref() {
                            "key" => key = Some(v.into_owned()),
                            "next" => next = Some(v.into_owned()),
                            _ => {}
                        }
                    }
                    (key, next)
                } else if req.method() == Method::GET || req.method() == Method::HEAD {
                    (query_param(query.as_deref(), "key"), query_param(query.as_deref(), "next"))
                } else {
                    return error_page(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "Method not allowed", "Use GET or POST.", true, None);
                };
                let next = sanitize_next(next.as_deref());
                let Some(key) = key.filter(|k| !k.trim().is_empty()) else {
                    return login_form(route, &next, None, StatusCode::OK);
                };
                let id = match self.auth.by_key(key.trim()).await {
                    Ok(Some(id)) => id,
                    Ok(None) => return login_form(route, &next, Some("That key is not valid."), StatusCode::UNAUTHORIZED),
                    Err(e) => {
                        tracing::error!("key lookup failed: {e}");
                        return error_page(StatusCode::SERVICE_UNAVAILABLE, "edge_unavailable", "Temporarily unavailable", "Could not check the key.", true, Some(5));
                    }
                };
                if access::decide(route.visibility, &route.owner, &route.allowed_emails, Some(&id.user), false) == Decision::Forbidden {
                    return error_page(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        "Not allowed",
                        &format!("You are signed in as {}, who may not use this app.", id.user.email),
                        true,
                        None,
                    );
                }
                let ttl = self.cfg.session_ttl.as_secs().max(60);
                let value = self.sessions.issue(host, &id.user.id, &id.key_id, now_secs() + ttl);
                let secure = if scheme == Scheme::Https { "; Secure" } else { "" };
                let mut r = Response::new(empty());
                *r.status_mut() = StatusCode::SEE_OTHER;
                let h = r.headers_mut();
                if let Ok(v) = HeaderValue::from_str(&format!("{SESSION_COOKIE}={value}; Path=/; Max-Age={ttl}; HttpOnly; SameSite=Lax{secure}")) {
                    h.insert(header::SET_COOKIE, v);
                }
                if let Ok(v) = HeaderValue::from_str(&next) {
                    h.insert(header::LOCATION, v);
                }
                h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                r
            }
            "/_rigbox/logout" => {
                let mut r = Response::new(full("Signed out.\n"));
                let h = r.headers_mut();
                h.insert(header::SET_COOKIE, HeaderValue::from_static("__rigbox_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"));
                h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
                r
            }
            _ => error_page(StatusCode::NOT_FOUND, "not_found", "Not found", "Paths under /_rigbox/ belong to the edge.", true, None),
        }
    }
}

fn login_form(route: &Route, next: &str, error: Option<&str>, status: StatusCode) -> Response<Body> {
    let err = error.map(|e| format!("<p style=\"color:#b00\">{}</p>", html_escape(e))).unwrap_or_default();
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Sign in · {name}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:28rem;margin:4rem auto;padding:0 1rem}}\
         input{{width:100%;padding:.5rem;margin:.3rem 0;box-sizing:border-box}}</style></head><body>\
         <h1>Sign in to {name}</h1><p>This app is {vis}. Paste a Rigbox API key of an account allowed to use it \
         (<code>rig api-key create</code>).</p>{err}\
         <form method=\"post\" action=\"/_rigbox/login\"><input type=\"password\" name=\"key\" placeholder=\"rb_…\" autofocus>\
         <input type=\"hidden\" name=\"next\" value=\"{next}\"><input type=\"submit\" value=\"Sign in\"></form></body></html>\n",
        name = html_escape(&route.app_name),
        vis = route.visibility.as_str(),
        next = html_escape(next),
    );
    let mut r = Response::new(full(page));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_paths_stay_on_the_host() {
        assert_eq!(sanitize_next(Some("/a?b=c")), "/a?b=c");
        assert_eq!(sanitize_next(Some("//evil.test/")), "/");
        assert_eq!(sanitize_next(Some("/\\evil.test")), "/");
        assert_eq!(sanitize_next(Some("https://evil.test/")), "/");
        assert_eq!(sanitize_next(Some("/x\r\nSet-Cookie: a=b")), "/");
        assert_eq!(sanitize_next(None), "/");
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive, x-private"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn upgrades_are_detected() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive, Upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        assert_eq!(upgrade_of(Version::HTTP_11, &h).unwrap(), "websocket");
        assert!(upgrade_of(Version::HTTP_2, &h).is_none());
        h.remove("connection");
        assert!(upgrade_of(Version::HTTP_11, &h).is_none());
    }

    #[test]
    fn error_pages_are_html_or_json() {
        let r = error_page(StatusCode::SERVICE_UNAVAILABLE, "workspace_not_running", "T", "<m>", true, Some(30));
        assert_eq!(r.headers()["retry-after"], "30");
        assert_eq!(r.headers()["x-rigbox-error"], "workspace_not_running");
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
        let r = error_page(StatusCode::NOT_FOUND, "app_not_found", "T", "m", false, None);
        assert_eq!(r.headers()["content-type"], "application/json");
        assert!(!r.headers().contains_key("retry-after"));
    }
}
