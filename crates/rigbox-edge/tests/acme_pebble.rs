//! ACME end to end against Pebble, the ACME test CA packaged by Debian
//! (`apt-get install pebble`), all on loopback: the edge orders a
//! certificate on the first TLS handshake for an app host, Pebble validates
//! the HTTP-01 challenge by fetching it from the edge's plain listener
//! (names resolved by `pebble-challtestsrv`'s mock DNS to 127.0.0.1), and
//! the handshake completes with a certificate that chains to Pebble's root.
//! No VM: the route lookup is a fixed table (nothing is proxied).

use rigbox_edge::access::Sessions;
use rigbox_edge::acme::{Acme, AcmeConfig};
use rigbox_edge::metrics::Recorder;
use rigbox_edge::{AppRunState, Authenticator, Edge, EdgeConfig, EdgeUser, KeyIdentity, LookupError, Route, RouteLookup, Tls, Visibility};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

struct Routes;

#[async_trait::async_trait]
impl RouteLookup for Routes {
    async fn route(&self, subdomain: &str) -> Result<Option<Route>, LookupError> {
        Ok((subdomain == "demo").then(|| Route {
            app_id: "app-demo".into(),
            app_name: "demo".into(),
            subdomain: "demo".into(),
            status: AppRunState::Active,
            workspace_id: "ws-none".into(),
            workspace_status: "stopped".into(),
            node_id: "n".into(),
            node: rigbox_node_api::NodeClient::new("http://127.0.0.1:9", "x"),
            port: 80,
            visibility: Visibility::Public,
            owner: EdgeUser { id: "u-1".into(), email: "o@x.test".into() },
            allowed_emails: vec![],
        }))
    }
}

struct NoAuth;

#[async_trait::async_trait]
impl Authenticator for NoAuth {
    async fn by_key(&self, _k: &str) -> Result<Option<KeyIdentity>, LookupError> {
        Ok(None)
    }
    async fn by_key_id(&self, _u: &str, _k: &str) -> Result<Option<EdgeUser>, LookupError> {
        Ok(None)
    }
}

struct Kill(Vec<Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn handshake(port: u16, name: &str, roots: rustls::RootCertStore) -> Result<Vec<CertificateDer<'static>>, String> {
    let cfg = rustls::ClientConfig::builder_with_provider(rigbox_edge::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
    let s = tokio::time::timeout(Duration::from_secs(120), conn.connect(ServerName::try_from(name.to_string()).unwrap(), tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(s.get_ref().1.peer_certificates().unwrap_or_default().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_http01_with_pebble() {
    if Command::new("pebble").arg("-h").stderr(Stdio::null()).stdout(Stdio::null()).status().is_err() {
        eprintln!("SKIP: pebble is not installed (apt-get install pebble)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Pebble's own HTTPS certificate, from a CA made here.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap().signed_by(&key, &issuer).unwrap();
    let (ca_path, cert_path, key_path) = (dir.path().join("ca.pem"), dir.path().join("pebble.pem"), dir.path().join("pebble.key"));
    std::fs::write(&ca_path, ca.pem()).unwrap();
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();

    // The edge: plain HTTP (serves HTTP-01 answers) and TLS with ACME.
    let (http_port, tls_port, acme_port, mgmt_port, dns_port, cts_mgmt) = (free_port(), free_port(), free_port(), free_port(), free_port(), free_port());
    let cfg = EdgeConfig { base_domain: "acme.test".into(), ..EdgeConfig::default() };
    let edge = Arc::new(Edge::new(cfg, Arc::new(Routes), Arc::new(NoAuth), Sessions::random(), Arc::new(Recorder::new())));
    let mut ac = AcmeConfig::new(dir.path().join("acme"), Some("ops@acme.test".into()));
    ac.directory_url = format!("https://localhost:{acme_port}/dir");
    ac.server_root_pem = Some(ca_path.clone());
    let acme = Arc::new(Acme::new(ac, edge.challenges()));
    let stop = CancellationToken::new();
    let plain = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], http_port))).await.unwrap();
    let tls = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], tls_port))).await.unwrap();
    tokio::spawn(rigbox_edge::serve(edge.clone(), plain, None, stop.clone()));
    tokio::spawn(rigbox_edge::serve(edge.clone(), tls, Some(Tls::Acme { acme, fallback: None }), stop.clone()));

    // Pebble, validating against the edge's port, names resolved by the mock DNS.
    let config = serde_json::json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{acme_port}"),
        "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
        "certificate": cert_path, "privateKey": key_path,
        "httpPort": http_port, "tlsPort": free_port(),
        "ocspResponderURL": "", "externalAccountBindingRequired": false
    }});
    let cfg_path = dir.path().join("pebble.json");
    std::fs::write(&cfg_path, config.to_string()).unwrap();
    let dns = Command::new("pebble-challtestsrv")
        .args(["-dns01", &format!("127.0.0.1:{dns_port}"), "-http01", "", "-https01", "", "-tlsalpn01", "", "-management", &format!("127.0.0.1:{cts_mgmt}")])
        .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pebble = Command::new("pebble")
        .args(["-config", cfg_path.to_str().unwrap(), "-dnsserver", &format!("127.0.0.1:{dns_port}")])
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Kill(vec![pebble, dns]);
    wait_port(acme_port).await;
    wait_port(mgmt_port).await;

    // Pebble's issuing root (it changes at every start).
    let http = reqwest::Client::builder().add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca_path).unwrap()).unwrap()).build().unwrap();
    let root_pem = http.get(format!("https://localhost:{mgmt_port}/roots/0")).send().await.unwrap().bytes().await.unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&root_pem) {
        roots.add(c.unwrap()).unwrap();
    }

    // First handshake: ordered on demand, validated over HTTP-01, verified.
    let started = Instant::now();
    let chain = handshake(tls_port, "demo.acme.test", roots.clone()).await.expect("TLS with an ACME certificate");
    eprintln!("certificate obtained and handshake done in {:?}", started.elapsed());
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    let sans: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .map(|s| s.value.general_names.iter().map(|n| format!("{n}")).collect())
        .unwrap_or_default();
    assert!(sans.iter().any(|n| n.contains("demo.acme.test")), "{sans:?}");
    assert!(dir.path().join("acme/certs/demo.acme.test/cert.pem").exists(), "kept on disk");
    assert!(dir.path().join("acme/account.json").exists(), "account kept");

    // Second handshake: from memory.
    let started = Instant::now();
    handshake(tls_port, "demo.acme.test", roots.clone()).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "cached certificate");

    // A host with no app gets no certificate (and no order is placed).
    assert!(handshake(tls_port, "nope.acme.test", roots).await.is_err());
    stop.cancel();
}
