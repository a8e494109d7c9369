//! Setup scripts and service units.
//!
//! `POST /v1/setup` starts a run in the background: scripts in order as
//! `developer` (who has sudo), first-boot scripts only once (a marker under
//! `/var/lib/rigbox/setup/done/` survives restarts), each one's output kept
//! in `/var/log/rigbox/setup/<id>.log` and sent to the journal
//! (`rigbox-setup`); a failing script is recorded and the next one runs. Then
//! the service units are written to `/etc/systemd/system` (they run as
//! `developer`) and the auto-enabled ones started. `GET /v1/setup` reports
//! the run and the services' systemd state.

use crate::exec::lookup_user;
use crate::server::AgentError;
use rigbox_guest_proto::{RunOn, ScriptStatus, ServiceState, SetupPlan, SetupStatus};
use std::process::Stdio;
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::sync::Mutex;

const STATE_DIR: &str = "/var/lib/rigbox/setup";
const LOG_DIR: &str = "/var/log/rigbox/setup";
const OUTPUT_TAIL: usize = 16 * 1024;

/// The runner's shared state.
#[derive(Clone, Default)]
pub struct Setup {
    status: Arc<Mutex<SetupStatus>>,
    plan: Arc<Mutex<SetupPlan>>,
    run: Arc<Mutex<()>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 64 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Setup {
    /// Loads the last status from disk (the agent may have restarted).
    pub fn load() -> Self {
        let s = Setup::default();
        if let Ok(b) = std::fs::read(format!("{STATE_DIR}/status.json")) {
            if let Ok(st) = serde_json::from_slice::<SetupStatus>(&b) {
                if let Ok(mut g) = s.status.try_lock() {
                    *g = st;
                }
            }
        }
        if let Ok(b) = std::fs::read(format!("{STATE_DIR}/plan.json")) {
            if let Ok(p) = serde_json::from_slice::<SetupPlan>(&b) {
                if let Ok(mut g) = s.plan.try_lock() {
                    *g = p;
                }
            }
        }
        s
    }

    /// Starts a run of `plan`.
    pub async fn start(&self, plan: SetupPlan) -> Result<SetupStatus, AgentError> {
        for sv in &plan.services {
            if !valid_name(&sv.name) {
                return Err(AgentError::bad_request(format!("invalid service name {:?}", sv.name)));
            }
        }
        for sc in &plan.scripts {
            if !valid_name(&sc.id) {
                return Err(AgentError::bad_request(format!("invalid script id {:?}", sc.id)));
            }
        }
        tokio::fs::create_dir_all(format!("{STATE_DIR}/done")).await?;
        tokio::fs::create_dir_all(LOG_DIR).await?;
        tokio::fs::write(format!("{STATE_DIR}/plan.json"), serde_json::to_vec(&plan).unwrap_or_default()).await?;
        *self.plan.lock().await = plan.clone();
        {
            let mut st = self.status.lock().await;
            *st = SetupStatus {
                state: "running".into(),
                scripts: plan
                    .scripts
                    .iter()
                    .map(|s| ScriptStatus {
                        id: s.id.clone(),
                        name: s.name.clone(),
                        run_on: s.run_on,
                        state: "pending".into(),
                        exit_code: None,
                        output: String::new(),
                        started_unix_ms: None,
                        finished_unix_ms: None,
                    })
                    .collect(),
                services: vec![],
                started_unix_ms: Some(now_ms()),
                finished_unix_ms: None,
            };
        }
        let me = self.clone();
        tokio::spawn(async move {
            let _one_at_a_time = me.run.lock().await;
            me.execute(plan).await;
        });
        Ok(self.status().await)
    }

    async fn save(&self) {
        let st = self.status.lock().await.clone();
        let _ = tokio::fs::write(format!("{STATE_DIR}/status.json"), serde_json::to_vec_pretty(&st).unwrap_or_default()).await;
    }

    async fn execute(&self, plan: SetupPlan) {
        for (i, sc) in plan.scripts.iter().enumerate() {
            let marker = format!("{STATE_DIR}/done/{}", sc.id);
            let skip = match sc.run_on {
                RunOn::FirstBoot => std::path::Path::new(&marker).exists(),
                RunOn::EveryStart => !plan.is_start,
            };
            if skip {
                self.update(i, |s| s.state = "skipped".into()).await;
                continue;
            }
            self.update(i, |s| {
                s.state = "running".into();
                s.started_unix_ms = Some(now_ms());
            })
            .await;
            let (code, output) = run_script(&sc.id, &sc.name, &sc.content).await;
            if sc.run_on == RunOn::FirstBoot {
                let _ = tokio::fs::write(&marker, format!("{}\n", now_ms())).await;
            }
            self.update(i, |s| {
                s.state = if code == Some(0) { "succeeded".into() } else { "failed".into() };
                s.exit_code = code;
                s.output = output;
                s.finished_unix_ms = Some(now_ms());
            })
            .await;
            self.save().await;
        }
        install_services(&plan).await;
        {
            let mut st = self.status.lock().await;
            st.state = "done".into();
            st.finished_unix_ms = Some(now_ms());
        }
        self.save().await;
    }

    async fn update(&self, i: usize, f: impl FnOnce(&mut ScriptStatus)) {
        if let Some(s) = self.status.lock().await.scripts.get_mut(i) {
            f(s);
        }
    }

    /// The current status with live service states.
    pub async fn status(&self) -> SetupStatus {
        let mut st = self.status.lock().await.clone();
        if st.state.is_empty() {
            st.state = "none".into();
        }
        let plan = self.plan.lock().await.clone();
        st.services = Vec::new();
        for sv in &plan.services {
            st.services.push(service_state(&sv.name).await);
        }
        st
    }
}

/// Runs a script as developer; returns (exit code, output tail).
async fn run_script(id: &str, name: &str, content: &str) -> (Option<i32>, String) {
    let path = format!("{STATE_DIR}/script-{id}.sh");
    if tokio::fs::write(&path, content).await.is_err() {
        return (None, "could not write the script".into());
    }
    let Ok(user) = lookup_user(None) else {
        return (None, "no developer user".into());
    };
    let mut cmd = Command::new("/usr/bin/setpriv");
    cmd.arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .arg("--init-groups")
        .args(["--", "/bin/bash", "-l", &path])
        .env_clear()
        .env("HOME", &user.home)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("RIGBOX_SETUP_SCRIPT", name)
        .current_dir(&user.home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return (None, format!("cannot start: {e}")),
    };
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let (mut o, mut e) = (Vec::new(), Vec::new());
    let read = async {
        if let Some(s) = out.as_mut() {
            let _ = s.read_to_end(&mut o).await;
        }
    };
    let read_err = async {
        if let Some(s) = err.as_mut() {
            let _ = s.read_to_end(&mut e).await;
        }
    };
    let (_, _, status) = tokio::join!(read, read_err, child.wait());
    let mut all = o;
    all.extend_from_slice(&e);
    let _ = tokio::fs::write(format!("{LOG_DIR}/{id}.log"), &all).await;
    // Into the journal too, so the logs API shows it.
    if let Ok(mut logger) = Command::new("logger").args(["-t", "rigbox-setup", "--"]).stdin(Stdio::piped()).spawn() {
        if let Some(mut stdin) = logger.stdin.take() {
            use tokio::io::AsyncWriteExt;
            let mut text = format!("[{name}] ").into_bytes();
            text.extend(all.iter().flat_map(|b| if *b == b'\n' { format!("\n[{name}] ").into_bytes() } else { vec![*b] }));
            let _ = stdin.write_all(&text).await;
        }
        let _ = logger.wait().await;
    }
    let tail = String::from_utf8_lossy(&all[all.len().saturating_sub(OUTPUT_TAIL)..]).into_owned();
    (status.ok().and_then(|s| s.code()), tail)
}

async fn systemctl(args: &[&str]) -> Option<String> {
    let out = Command::new("systemctl").args(args).output().await.ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn install_services(plan: &SetupPlan) {
    let mut names = Vec::new();
    for sv in &plan.services {
        let unit = format!("rigbox-svc-{}.service", sv.name);
        let _ = tokio::fs::write(format!("/etc/systemd/system/{unit}"), &sv.unit).await;
        names.push((unit, sv.auto_enable));
    }
    if names.is_empty() {
        return;
    }
    systemctl(&["daemon-reload"]).await;
    for (unit, auto) in names {
        if auto {
            systemctl(&["enable", "--now", &unit]).await;
        }
    }
}

/// The systemd state of `rigbox-svc-<name>.service`.
pub async fn service_state(name: &str) -> ServiceState {
    let unit = format!("rigbox-svc-{name}.service");
    let text = systemctl(&["show", &unit, "-p", "ActiveState,SubState,NRestarts,UnitFileState"]).await.unwrap_or_default();
    let get = |k: &str| text.lines().find_map(|l| l.strip_prefix(&format!("{k}="))).unwrap_or("").to_string();
    ServiceState {
        name: name.into(),
        unit,
        active_state: get("ActiveState"),
        sub_state: get("SubState"),
        restarts: get("NRestarts").parse().unwrap_or(0),
        enabled: get("UnitFileState") == "enabled",
    }
}
