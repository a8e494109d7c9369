//! The package proxy inside each workspace's slot (`169.254.0.1:3142`).
//!
//! Guests have no general network access. To install software (the tools
//! catalog, `apt-get`, `pip`) they go through this proxy, which the node
//! serves on the host side of the slot, like the AI proxy:
//!
//! - plain HTTP requests in absolute form (`GET http://deb.debian.org/...`,
//!   what apt sends to a proxy) are fetched by the node and streamed back;
//!   `.deb` files and other immutable pool files are kept in a cache shared
//!   by every workspace on the node (`<image cache>/packages/`), so the
//!   second install of a package never leaves the host;
//! - `CONNECT host:443` (what pip and npm send for HTTPS) is tunnelled.
//!
//! Only the package hosts in the allowlist (the Debian mirror the host uses,
//! Debian security, PyPI, the npm registry) can be reached; anything else is
//! a 403. The guest image points apt (`/etc/apt/apt.conf.d/90rigbox-proxy`)
//! and pip (`/etc/pip.conf`) at the proxy. This is also where an egress
//! policy per workspace will be enforced.

use crate::node::{Node, Ws};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Method, Request, Response, StatusCode};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// Port of the proxy on the host side of every slot.
pub const PROXY_PORT: u16 = 3142;

/// Hosts the proxy lets guests reach.
pub fn allowed_hosts() -> Vec<String> {
    let mut v: Vec<String> = ["deb.debian.org", "security.debian.org", "pypi.org", "files.pythonhosted.org", "registry.npmjs.org"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    // The mirror the host itself uses.
    if let Ok(u) = rigbox_image::debian_mirror().parse::<hyper::Uri>() {
        if let Some(h) = u.host() {
            if !v.iter().any(|x| x == h) {
                v.push(h.to_string());
            }
        }
    }
    v
}

type Listeners = Arc<Mutex<HashMap<String, CancellationToken>>>;

fn listeners(node_id: &str) -> Listeners {
    static ALL: std::sync::OnceLock<Mutex<HashMap<String, Listeners>>> = std::sync::OnceLock::new();
    let all = ALL.get_or_init(Default::default);
    let mut g = all.lock().unwrap_or_else(|e| e.into_inner());
    g.entry(node_id.to_string()).or_default().clone()
}

/// Opens the proxy in the workspace's slot.
pub(crate) async fn on_running(node: &Node, ws: &Ws) {
    let l = listeners(node.id());
    let token = CancellationToken::new();
    {
        let Ok(mut g) = l.lock() else { return };
        if g.get(&ws.id).is_some_and(|t| !t.is_cancelled()) {
            return;
        }
        g.insert(ws.id.clone(), token.clone());
    }
    let addr = SocketAddr::from((rigbox_guest_proto::HOST_ADDR, PROXY_PORT));
    match ws.slot().listen(addr).await {
        Ok(listener) => {
            let ctx = Ctx {
                cache: node.images().cache().root().join("packages"),
                allowed: Arc::new(allowed_hosts()),
                http: reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(15)).build().unwrap_or_default(),
            };
            tokio::spawn(serve(listener, ctx, token));
        }
        Err(e) => {
            tracing::warn!(workspace = %ws.id, "cannot open the package proxy in the slot: {e}");
            token.cancel();
        }
    }
}

/// Closes the proxy (record locked: do not lock `ws.rec`).
pub(crate) async fn on_halt(node: &Node, ws: &Ws) {
    if let Some(t) = listeners(node.id()).lock().ok().and_then(|mut g| g.remove(&ws.id)) {
        t.cancel();
    }
}

#[derive(Clone)]
struct Ctx {
    cache: PathBuf,
    allowed: Arc<Vec<String>>,
    http: reqwest::Client,
}

async fn serve(listener: tokio::net::TcpListener, ctx: Ctx, token: CancellationToken) {
    crate::slotsrv::accept_until(listener, token, |stream| {
        let ctx = ctx.clone();
        async move {
            let svc = hyper::service::service_fn(move |req| handle(ctx.clone(), req));
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).with_upgrades().await;
        }
    })
    .await
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn text(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{msg}\n"))).map_err(|never| match never {}).boxed());
    *r.status_mut() = status;
    r
}

fn is_allowed(ctx: &Ctx, host: &str) -> bool {
    ctx.allowed.iter().any(|h| h == host)
}

/// Immutable files worth caching: Debian pool files and Python wheels/sdists.
fn cacheable(path: &str) -> bool {
    path.contains("/pool/") && (path.ends_with(".deb") || path.ends_with(".udeb"))
}

fn cache_path(ctx: &Ctx, host: &str, path: &str) -> Option<PathBuf> {
    if path.contains("..") {
        return None;
    }
    Some(ctx.cache.join(host).join(path.trim_start_matches('/')))
}

async fn handle(ctx: Ctx, req: Request<hyper::body::Incoming>) -> Result<Response<Body>, std::convert::Infallible> {
    if req.method() == Method::CONNECT {
        return Ok(connect(ctx, req).await);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "the package proxy only fetches (GET, HEAD, CONNECT)"));
    }
    let uri = req.uri().clone();
    let (Some(host), Some("http")) = (uri.host(), uri.scheme_str()) else {
        return Ok(text(StatusCode::BAD_REQUEST, "use this as an HTTP proxy: absolute http:// URLs only"));
    };
    if !is_allowed(&ctx, host) {
        return Ok(text(StatusCode::FORBIDDEN, &format!("{host} is not a package host this proxy serves")));
    }
    let path = uri.path().to_string();
    if cacheable(&path) {
        if let Some(file) = cache_path(&ctx, host, &path) {
            if let Ok(r) = serve_file(&file).await {
                return Ok(r);
            }
            if fetch_to_cache(&ctx, &uri.to_string(), &file).await.is_ok() {
                if let Ok(r) = serve_file(&file).await {
                    return Ok(r);
                }
            }
        }
    }
    // Everything else (indexes, metadata) streams through, uncached.
    let upstream = match ctx.http.request(req.method().clone(), uri.to_string()).send().await {
        Ok(r) => r,
        Err(e) => return Ok(text(StatusCode::BAD_GATEWAY, &format!("upstream: {e}"))),
    };
    let mut b = Response::builder().status(upstream.status().as_u16());
    for h in ["content-type", "content-length", "last-modified", "etag"] {
        if let Some(v) = upstream.headers().get(h) {
            b = b.header(h, v.as_bytes());
        }
    }
    let stream = futures::StreamExt::map(upstream.bytes_stream(), |r| r.map(Frame::data).map_err(std::io::Error::other));
    Ok(b.body(BodyExt::boxed(StreamBody::new(stream))).unwrap_or_else(|_| text(StatusCode::BAD_GATEWAY, "bad upstream answer")))
}

async fn serve_file(file: &Path) -> std::io::Result<Response<Body>> {
    let f = tokio::fs::File::open(file).await?;
    let len = f.metadata().await?.len();
    let stream = futures::StreamExt::map(tokio_util::io::ReaderStream::new(f), |r| r.map(Frame::data));
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut().insert("content-length", len.into());
    r.headers_mut().insert("x-rigbox-cache", hyper::header::HeaderValue::from_static("hit"));
    Ok(r)
}

async fn fetch_to_cache(ctx: &Ctx, url: &str, file: &Path) -> Result<(), String> {
    let resp = ctx.http.get(url).send().await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("upstream {}", resp.status()));
    }
    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
    if let Some(d) = file.parent() {
        tokio::fs::create_dir_all(d).await.map_err(|e| e.to_string())?;
    }
    let tmp = file.with_extension(format!("part{}", std::process::id()));
    tokio::fs::write(&tmp, &bytes).await.map_err(|e| e.to_string())?;
    tokio::fs::rename(&tmp, file).await.map_err(|e| e.to_string())
}

async fn connect(ctx: Ctx, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let Some(auth) = req.uri().authority().cloned() else {
        return text(StatusCode::BAD_REQUEST, "CONNECT needs host:port");
    };
    if auth.port_u16() != Some(443) || !is_allowed(&ctx, auth.host()) {
        return text(StatusCode::FORBIDDEN, &format!("{auth} is not a package host this proxy serves"));
    }
    let target = match tokio::net::TcpStream::connect((auth.host(), 443)).await {
        Ok(s) => s,
        Err(e) => return text(StatusCode::BAD_GATEWAY, &format!("connect {auth}: {e}")),
    };
    tokio::spawn(async move {
        if let Ok(up) = hyper::upgrade::on(req).await {
            let mut io = hyper_util::rt::TokioIo::new(up);
            let mut target = target;
            let _ = tokio::io::copy_bidirectional(&mut io, &mut target).await;
        }
    });
    Response::new(Full::new(Bytes::new()).map_err(|never| match never {}).boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pool_files_are_cached_and_paths_stay_inside() {
        assert!(cacheable("/debian/pool/main/w/webfs/webfs_1.21+ds1-12_amd64.deb"));
        assert!(!cacheable("/debian/dists/bookworm/InRelease"));
        let ctx = Ctx { cache: "/c".into(), allowed: Arc::new(vec!["deb.debian.org".into()]), http: reqwest::Client::new() };
        assert!(cache_path(&ctx, "deb.debian.org", "/debian/pool/../../etc/passwd").is_none());
        assert!(is_allowed(&ctx, "deb.debian.org") && !is_allowed(&ctx, "example.com"));
        assert!(allowed_hosts().iter().any(|h| h == "pypi.org"));
    }
}
