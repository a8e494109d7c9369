//! Running commands: one-shot exec, interactive sessions (pipes or PTY), and
//! TCP forwarding to ports inside the guest.

use crate::server::AgentError;
use axum::extract::ws::{Message, WebSocket};
use futures::{SinkExt, StreamExt};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::{Pid, User};
use rigbox_guest_proto::{
    ClientControl, ExecRequest, ExecResponse, PtySize, ServerEvent, SessionStart, EXEC_OUTPUT_LIMIT, STREAM_STDERR,
    STREAM_STDOUT,
};
use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::mpsc;

/// Who a command runs as.
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

pub fn lookup_user(name: Option<&str>) -> Result<RunAs, AgentError> {
    let name = name.unwrap_or("developer");
    let u = User::from_name(name)
        .map_err(|e| AgentError::internal(format!("looking up user {name}: {e}")))?
        .ok_or_else(|| AgentError::bad_request(format!("no such user {name:?}")))?;
    Ok(RunAs {
        name: u.name,
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
        home: u.dir.to_string_lossy().into_owned(),
        shell: u.shell.to_string_lossy().into_owned(),
    })
}

/// Builds the command line: argv, a `bash -lc` string, or a login shell.
fn program(argv: Option<Vec<String>>, shell: Option<String>, user: &RunAs) -> Result<Vec<String>, AgentError> {
    match (argv, shell) {
        (Some(_), Some(_)) => Err(AgentError::bad_request("give argv or shell, not both")),
        (Some(a), None) if a.is_empty() => Err(AgentError::bad_request("argv is empty")),
        (Some(a), None) => Ok(a),
        (None, Some(s)) => Ok(vec!["/bin/bash".into(), "-lc".into(), s]),
        (None, None) => {
            let sh = if user.shell.is_empty() { "/bin/bash".to_string() } else { user.shell.clone() };
            Ok(vec![sh, "-l".into()])
        }
    }
}

/// A `Command` that runs `argv` as `user` with the workspace environment.
fn command(argv: &[String], user: &RunAs, env: &BTreeMap<String, String>, extra: &BTreeMap<String, String>, cwd: Option<&str>) -> Command {
    let mut cmd = if user.uid == 0 {
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        c
    } else {
        // setpriv switches uid, gid and supplementary groups without any
        // unsafe pre-exec code in the agent.
        let mut c = Command::new("/usr/bin/setpriv");
        c.arg(format!("--reuid={}", user.uid))
            .arg(format!("--regid={}", user.gid))
            .arg("--init-groups")
            .arg("--")
            .args(argv);
        c
    };
    cmd.env_clear()
        .env("HOME", &user.home)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        .env("SHELL", if user.shell.is_empty() { "/bin/bash" } else { &user.shell })
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LANG", "C.UTF-8")
        .envs(env)
        .envs(extra)
        .current_dir(cwd.unwrap_or(&user.home));
    cmd
}

async fn collect_output<R: AsyncRead + Unpin>(r: Option<R>, buf: Arc<Mutex<(Vec<u8>, bool)>>) {
    let Some(mut r) = r else { return };
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let Ok(mut g) = buf.lock() else { break };
                let room = EXEC_OUTPUT_LIMIT.saturating_sub(g.0.len());
                if n > room {
                    g.1 = true;
                }
                g.0.extend_from_slice(&chunk[..n.min(room)]);
            }
        }
    }
}

/// `POST /v1/exec`.
pub async fn run(req: ExecRequest, env: &BTreeMap<String, String>) -> Result<ExecResponse, AgentError> {
    let user = lookup_user(req.user.as_deref())?;
    let argv = program(req.argv, req.shell, &user)?;
    let started = Instant::now();
    let mut cmd = command(&argv, &user, env, &req.env, req.cwd.as_deref());
    cmd.stdin(if req.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| AgentError::bad_request(format!("cannot start {}: {e}", argv[0])))?;
    let pid = child.id().unwrap_or(0) as i32;
    if let (Some(input), Some(mut stdin)) = (req.stdin, child.stdin.take()) {
        tokio::spawn(async move {
            let _ = stdin.write_all(input.as_bytes()).await;
        });
    }
    // Output is collected by tasks; the command is done when its process
    // exits. Background processes it left behind may keep the pipes open, so
    // after the exit we only drain briefly instead of waiting for EOF.
    let out_buf = Arc::new(Mutex::new((Vec::new(), false)));
    let err_buf = Arc::new(Mutex::new((Vec::new(), false)));
    let out = tokio::spawn(collect_output(child.stdout.take(), out_buf.clone()));
    let err = tokio::spawn(collect_output(child.stderr.take(), err_buf.clone()));
    let timeout = req.timeout_ms.map(Duration::from_millis).unwrap_or(Duration::from_secs(24 * 3600));
    let (status, timed_out) = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(s) => (s, false),
        Err(_) => {
            if pid > 0 {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            (child.wait().await, true)
        }
    };
    let drain = Duration::from_millis(300);
    let _ = tokio::time::timeout(drain, out).await;
    let _ = tokio::time::timeout(drain, err).await;
    let take = |b: &Arc<Mutex<(Vec<u8>, bool)>>| b.lock().map(|mut g| std::mem::take(&mut *g)).unwrap_or_default();
    let (stdout, t1) = take(&out_buf);
    let (mut stderr, t2) = take(&err_buf);
    let truncated = t1 || t2;
    if timed_out {
        stderr.extend_from_slice(b"\n[rigbox] timed out\n");
    }
    use std::os::unix::process::ExitStatusExt;
    let (exit_code, signal) = match status {
        Ok(s) => (s.code(), s.signal()),
        Err(_) => (None, Some(9)),
    };
    Ok(ExecResponse {
        exit_code,
        signal,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        timed_out,
        truncated,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

fn event(e: &ServerEvent) -> Message {
    Message::Text(serde_json::to_string(e).unwrap_or_default().into())
}

fn frame(tag: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(tag);
    v.extend_from_slice(data);
    Message::Binary(v.into())
}

/// Pumps a reader into the outgoing channel with a stream tag.
fn pump<R: AsyncRead + Unpin + Send + 'static>(mut r: R, tag: u8, tx: mpsc::Sender<Message>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(frame(tag, &buf[..n])).await.is_err() {
                        break;
                    }
                }
            }
        }
    })
}

/// `GET /v1/session`: an interactive process over a WebSocket.
pub async fn session(socket: WebSocket, env: BTreeMap<String, String>) {
    let (mut sink, mut stream) = socket.split();
    let start: SessionStart = loop {
        match stream.next().await {
            Some(Ok(Message::Text(t))) => match serde_json::from_str(&t) {
                Ok(s) => break s,
                Err(e) => {
                    let _ = sink.send(event(&ServerEvent::Error { message: format!("bad start message: {e}") })).await;
                    return;
                }
            },
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            _ => return,
        }
    };
    let (tx, mut rx) = mpsc::channel::<Message>(64);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    if let Err(e) = run_session(start, env, &mut stream, tx.clone()).await {
        let _ = tx.send(event(&ServerEvent::Error { message: e.message })).await;
    }
    drop(tx);
    let _ = writer.await;
}

async fn run_session(
    start: SessionStart,
    env: BTreeMap<String, String>,
    stream: &mut futures::stream::SplitStream<WebSocket>,
    tx: mpsc::Sender<Message>,
) -> Result<(), AgentError> {
    let user = lookup_user(start.user.as_deref())?;
    let argv = program(start.argv, start.shell, &user)?;
    let mut extra = start.env.clone();
    if let Some(size) = start.pty {
        extra.entry("TERM".into()).or_insert_with(|| start.term.clone().unwrap_or_else(|| "xterm-256color".into()));
        let cmd = command(&argv, &user, &env, &extra, start.cwd.as_deref());
        return pty_session(cmd, size, stream, tx).await;
    }
    let mut cmd = command(&argv, &user, &env, &extra, start.cwd.as_deref());
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| AgentError::bad_request(format!("cannot start {}: {e}", argv[0])))?;
    let pid = child.id().unwrap_or(0);
    let _ = tx.send(event(&ServerEvent::Started { pid })).await;
    let out = pump(child.stdout.take().expect("piped"), STREAM_STDOUT, tx.clone());
    let err = pump(child.stderr.take().expect("piped"), STREAM_STDERR, tx.clone());
    let mut stdin = child.stdin.take();
    let status = loop {
        tokio::select! {
            s = child.wait() => break s,
            m = stream.next() => match m {
                Some(Ok(Message::Binary(b))) => {
                    if let Some(w) = stdin.as_mut() {
                        if w.write_all(&b).await.is_err() { stdin = None; }
                    }
                }
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<ClientControl>(&t) {
                    Ok(ClientControl::Eof) => { stdin = None; }
                    Ok(ClientControl::Signal { signal }) => signal_group(pid, signal),
                    Ok(ClientControl::Resize { .. }) => {}
                    Err(_) => {}
                },
                Some(Ok(_)) => {}
                // Client went away: end the process.
                Some(Err(_)) | None => { signal_group(pid, 9); break child.wait().await; }
            }
        }
    };
    // Background processes may hold the pipes: drain briefly, do not wait for EOF.
    let _ = tokio::time::timeout(Duration::from_millis(300), out).await;
    let _ = tokio::time::timeout(Duration::from_millis(300), err).await;
    send_exit(&tx, status).await;
    Ok(())
}

fn signal_group(pid: u32, signal: i32) {
    if pid == 0 {
        return;
    }
    if let Ok(sig) = Signal::try_from(signal) {
        let _ = killpg(Pid::from_raw(pid as i32), sig);
    }
}

async fn send_exit(tx: &mpsc::Sender<Message>, status: std::io::Result<std::process::ExitStatus>) {
    use std::os::unix::process::ExitStatusExt;
    let (code, signal) = match status {
        Ok(s) => (s.code(), s.signal()),
        Err(_) => (None, None),
    };
    let _ = tx.send(event(&ServerEvent::Exit { code, signal })).await;
}

async fn pty_session(
    cmd: Command,
    size: PtySize,
    stream: &mut futures::stream::SplitStream<WebSocket>,
    tx: mpsc::Sender<Message>,
) -> Result<(), AgentError> {
    let (pty, pts) = pty_process::open().map_err(|e| AgentError::internal(format!("openpty: {e}")))?;
    pty.resize(pty_process::Size::new(size.rows, size.cols))
        .map_err(|e| AgentError::internal(format!("resize: {e}")))?;
    let pcmd = pty_process::Command::from(cmd);
    let mut child = pcmd.spawn(pts).map_err(|e| AgentError::bad_request(format!("cannot start: {e}")))?;
    let pid = child.id().unwrap_or(0);
    let _ = tx.send(event(&ServerEvent::Started { pid })).await;
    let (reader, mut writer) = pty.into_split();
    let out = pump(reader, STREAM_STDOUT, tx.clone());
    let status = loop {
        tokio::select! {
            s = child.wait() => break s,
            m = stream.next() => match m {
                Some(Ok(Message::Binary(b))) => { let _ = writer.write_all(&b).await; }
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<ClientControl>(&t) {
                    Ok(ClientControl::Resize { rows, cols }) => { let _ = writer.resize(pty_process::Size::new(rows, cols)); }
                    Ok(ClientControl::Signal { signal }) => signal_group(pid, signal),
                    // EOT, as a terminal would send it.
                    Ok(ClientControl::Eof) => { let _ = writer.write_all(&[4]).await; }
                    Err(_) => {}
                },
                Some(Ok(_)) => {}
                Some(Err(_)) | None => { signal_group(pid, 1); break child.wait().await; }
            }
        }
    };
    // Drain what the terminal still holds; background jobs may keep the PTY
    // open, so do not wait for them.
    let _ = tokio::time::timeout(Duration::from_millis(300), out).await;
    drop(writer);
    send_exit(&tx, status).await;
    Ok(())
}

/// `GET /v1/tcp?port=P`: bytes to and from `127.0.0.1:P` inside the guest.
pub async fn tcp_forward(socket: WebSocket, port: u16) {
    let (mut sink, mut stream) = socket.split();
    let conn = match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
        Ok(c) => c,
        Err(e) => {
            let _ = sink.send(event(&ServerEvent::Error { message: format!("connect 127.0.0.1:{port}: {e}") })).await;
            let _ = sink.close().await;
            return;
        }
    };
    let (mut r, mut w) = conn.into_split();
    let up = async {
        while let Some(Ok(m)) = stream.next().await {
            match m {
                Message::Binary(b)
                    if w.write_all(&b).await.is_err() => {
                        break;
                    }
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = w.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = sink.close().await;
    };
    tokio::join!(up, down);
}
