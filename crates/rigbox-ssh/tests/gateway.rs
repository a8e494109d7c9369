//! The gateway's authentication and its messages, with Debian's OpenSSH
//! client, without a VM: the directory is an in-memory table whose
//! workspaces are never running, so no node is ever contacted. (The whole
//! path to a real guest is `vm_ssh.rs`.)

use rigbox_node_api::NodeClient;
use rigbox_ssh::{DirectoryError, GatewayConfig, SshDirectory, WorkspaceTarget};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Table {
    /// fingerprint → user id
    keys: Vec<(String, String)>,
    /// (user id, name, id, status)
    workspaces: Vec<(String, String, String, String)>,
    starts: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl SshDirectory for Table {
    async fn user_for_key(&self, fingerprint: &str) -> Result<Option<String>, DirectoryError> {
        Ok(self.keys.iter().find(|(f, _)| f == fingerprint).map(|(_, u)| u.clone()))
    }

    async fn workspace(&self, user_id: &str, name_or_id: &str) -> Result<Option<WorkspaceTarget>, DirectoryError> {
        Ok(self.workspaces.iter().find(|(u, n, i, _)| u == user_id && (n == name_or_id || i == name_or_id)).map(|(_, n, i, s)| {
            WorkspaceTarget {
                id: i.clone(),
                name: n.clone(),
                status: s.clone(),
                // Never contacted: nothing here is running.
                node: NodeClient::new("http://127.0.0.1:9", "unused"),
            }
        }))
    }

    async fn start_workspace(&self, _user_id: &str, workspace_id: &str) -> Result<(), DirectoryError> {
        self.starts.lock().unwrap().push(workspace_id.to_string());
        Err(DirectoryError("quota exceeded".into()))
    }
}

fn keygen(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let st = std::process::Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&path).status().unwrap();
    assert!(st.success());
    path
}

fn fingerprint(key: &Path) -> String {
    let text = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    rigbox_ssh::keys::parse_public_key(&text).unwrap().fingerprint
}

async fn ssh(port: u16, key: &Path, user: &str, extra: &[&str]) -> (i32, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("ssh")
            .args(rigbox_ssh::batch_client_options(key))
            .args(["-p", &port.to_string(), &format!("{user}@127.0.0.1")])
            .args(extra)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("ssh timed out")
    .expect("ssh runs");
    let r = (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    eprintln!("$ ssh {user} {extra:?} -> {r:?}");
    r
}

#[tokio::test]
async fn refusals_and_messages_without_a_vm() {
    if std::process::Command::new("ssh").arg("-V").output().is_err() {
        eprintln!("SKIP: the OpenSSH client is not installed (apt-get install openssh-client)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob, stranger) = (keygen(dir.path(), "alice"), keygen(dir.path(), "bob"), keygen(dir.path(), "stranger"));
    let table = Arc::new(Table {
        keys: vec![(fingerprint(&alice), "u-alice".into()), (fingerprint(&bob), "u-bob".into())],
        workspaces: vec![
            ("u-alice".into(), "box".into(), "ws-alicebox".into(), "stopped".into()),
            ("u-bob".into(), "bobs".into(), "ws-bobsbox".into(), "failed".into()),
        ],
        starts: Mutex::new(vec![]),
    });
    let host_key = rigbox_ssh::keys::load_or_generate_host_key(&dir.path().join("host_key")).unwrap();
    let mut cfg = GatewayConfig::new(host_key);
    cfg.public_port = 2222;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = Arc::new(tokio::sync::Notify::new());
    let s = stop.clone();
    let d: Arc<dyn SshDirectory> = table.clone();
    let server = tokio::spawn(rigbox_ssh::serve(listener, cfg, d, async move { s.notified().await }));

    // Unregistered key, another user's workspace, unknown workspace, bad user
    // name: one and the same refusal.
    let mut seen = Vec::new();
    for (key, user) in [(&stranger, "box"), (&alice, "bobs"), (&alice, "nope"), (&bob, "box"), (&alice, "../etc")] {
        let (code, out, err) = ssh(port, key, user, &["--", "true"]).await;
        assert_eq!(code, 255);
        assert!(out.is_empty());
        assert!(err.contains("Permission denied (publickey)"), "{err}");
        seen.push(err.replace(user, "USER"));
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "refusals differ: {seen:?}");

    // The owner of a stopped workspace gets a clear message and exit code 1.
    let (code, _, err) = ssh(port, &alice, "box", &["--", "true"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("\"box\" is stopped, not running") && err.contains("box+start@127.0.0.1"), "{err}");
    let (code, _, err) = ssh(port, &alice, "ws-alicebox", &["--", "true"]).await;
    assert_eq!(code, 1, "the id works as user name too: {err}");
    // A failed workspace is not startable from SSH.
    let (code, _, err) = ssh(port, &bob, "bobs+start", &["--", "true"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("is failed") && !err.contains("+start"), "{err}");
    // +start asks the control plane; its refusal is shown.
    let (code, _, err) = ssh(port, &alice, "box+start", &["--", "true"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("cannot start workspace \"box\": quota exceeded"), "{err}");
    assert_eq!(table.starts.lock().unwrap().as_slice(), ["ws-alicebox"]);

    stop.notify_one();
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
}
