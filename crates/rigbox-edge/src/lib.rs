//! The app edge: serves `{subdomain}.{base_domain}` from a port inside a
//! workspace.
//!
//! User traffic goes edge → node agent → VM and never through the API
//! process. The edge knows nothing of the database: it asks a
//! [`RouteLookup`] (host → app, workspace, node, visibility, owner, allowed
//! users) and an [`Authenticator`] (API key → user), which the control plane
//! implements over its storage; [`CachedRoutes`] and [`CachedAuth`] cache
//! them for a second or so and drop everything when the [`Epoch`] moves (the
//! apps API bumps it on every change, so a new visibility applies on the
//! next request). Drained [`metrics::Recorder`] samples go to a
//! [`metrics::MetricsSink`].
//!
//! ## Route flow
//!
//! 1. **Accept.** A plain listener (`RIGBOX_EDGE_LISTEN`, default
//!    `127.0.0.1:8081`) and optionally a TLS one (`RIGBOX_EDGE_TLS_LISTEN`,
//!    rustls with a wildcard certificate from files, or per-host ACME
//!    certificates ordered on the first handshake). Each connection speaks
//!    HTTP/1.1 or HTTP/2 (h2c with prior knowledge on plain connections,
//!    ALPN `h2` on TLS), through hyper-util's auto builder with upgrades.
//! 2. **ACME / HTTPS.** `/.well-known/acme-challenge/{token}` is answered
//!    from pending HTTP-01 challenges on any host; with `https_redirect`
//!    everything else on plain HTTP gets a 308 to HTTPS.
//! 3. **Host.** `Host` (or the HTTP/2 `:authority`) must be
//!    `{label}.{base_domain}`: the base domain itself, nested names and
//!    other domains answer 404, as does a label no app has.
//! 4. **Edge pages.** `/_rigbox/login` (a form, or `?key=`, setting a
//!    host-only HttpOnly session cookie signed with the edge's secret) and
//!    `/_rigbox/logout` belong to the edge on every app host.
//! 5. **Access.** Public apps pass. Private apps need the owner; privileged
//!    apps the owner or a user whose email is listed; the caller proves
//!    who they are with `X-Rigbox-Key` or the session cookie. No
//!    credentials: browsers get a 302 to the login page, others a 401; a
//!    wrong key is a 401; someone else is a 403. CORS preflights always
//!    pass.
//! 6. **State.** A stopped app (`inactive`) answers 503 `app_stopped`; a
//!    workspace that is not running answers 503 with `Retry-After`.
//! 7. **Upstream.** The request goes out as HTTP/1.1 to
//!    `169.254.0.2:{port}` in the workspace through a node tunnel
//!    (`GET /v1/workspaces/{id}/tunnel`, an HTTP upgrade to raw bytes),
//!    taken from a keep-alive pool keyed by workspace and port.
//!    Hop-by-hop headers, `X-Rigbox-Key` and the session cookie are
//!    removed; `Host` is kept; `X-Forwarded-For/Proto/Host` are set. Bodies
//!    stream both ways (no buffering); a `101` answer joins the two
//!    upgraded connections (WebSockets).
//! 8. **Errors.** Refused connection → 502 `connection_refused`; no tunnel
//!    or no response headers in time → 504 `upstream_timeout`; workspace
//!    gone from its node → 503. Edge pages are HTML for browsers and the
//!    API's JSON error envelope otherwise, with `X-Rigbox-Error: {code}`.
//! 9. **Metrics.** Every answer (the app's or the edge's own error for a
//!    routed app) counts in 10-second buckets per app and host: requests,
//!    status classes, 5xx, latency to response headers (histogram), body
//!    bytes out. The control plane drains them into its database.
#![warn(missing_docs)]

pub mod access;
pub mod acme;
pub mod metrics;
pub mod names;
pub mod proxy;
pub mod route;
pub mod server;
pub mod tls;
pub mod upstream;

pub use proxy::{Edge, EdgeConfig, Scheme};
pub use route::{AppRunState, Authenticator, CachedAuth, CachedRoutes, EdgeUser, Epoch, KeyIdentity, LookupError, Route, RouteLookup, Visibility};
pub use server::{serve, Tls};
pub use upstream::{probe_http, Probe, UpstreamError};
