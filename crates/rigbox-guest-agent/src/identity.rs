//! Identity and configuration pushed by the node: hostname, clock, entropy,
//! SSH host keys, environment, authorized keys, metadata.

use crate::server::{AgentError, AgentState};
use rigbox_guest_proto::{Health, InitRequest, PROTOCOL_VERSION};
use std::collections::BTreeMap;
use std::path::Path;
use tokio::process::Command;

const ENV_SH: &str = "/etc/rigbox/env.sh";
const ENV_FILE: &str = "/etc/rigbox/env";
const METADATA: &str = "/etc/rigbox/workspace.json";

pub async fn health(initialized: bool) -> Health {
    let boot_id = tokio::fs::read_to_string("/proc/sys/kernel/random/boot_id").await.unwrap_or_default();
    let uptime = tokio::fs::read_to_string("/proc/uptime")
        .await
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0);
    let hostname = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    let system_state = Command::new("systemctl")
        .arg("is-system-running")
        .output()
        .await
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    Health {
        ok: true,
        version: env!("CARGO_PKG_VERSION").into(),
        protocol: PROTOCOL_VERSION,
        boot_id: boot_id.trim().into(),
        uptime_secs: uptime,
        hostname,
        system_state,
        initialized,
    }
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 63
        && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !h.starts_with('-')
        && !h.ends_with('-')
}

pub async fn apply(st: &AgentState, req: InitRequest) -> Result<(), AgentError> {
    if let Some(ms) = req.clock_unix_ms {
        let ts = nix::sys::time::TimeSpec::new((ms / 1000) as i64, ((ms % 1000) * 1_000_000) as i64);
        nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts)
            .map_err(|e| AgentError::internal(format!("setting the clock: {e}")))?;
    }
    if let Some(hex_seed) = &req.entropy_hex {
        let seed = hex::decode(hex_seed).map_err(|e| AgentError::bad_request(format!("entropy_hex: {e}")))?;
        rigbox_sys::add_entropy_and_reseed(&seed).map_err(|e| AgentError::internal(e.to_string()))?;
    }
    if let Some(h) = &req.hostname {
        if !valid_hostname(h) {
            return Err(AgentError::bad_request(format!("invalid hostname {h:?}")));
        }
        set_hostname(h).await?;
    }
    if let Some(keys) = &req.ssh_host_keys {
        install_host_keys(keys).await?;
    } else if req.regenerate_identity {
        regenerate_host_keys().await?;
    }
    if let Some(env) = &req.env {
        write_env(env).await?;
        *st.env.write().await = env.clone();
    }
    if let Some(keys) = &req.authorized_keys {
        write_authorized_keys(keys).await?;
    }
    if let Some(meta) = &req.metadata {
        tokio::fs::create_dir_all("/etc/rigbox").await?;
        tokio::fs::write(METADATA, serde_json::to_vec_pretty(meta).unwrap_or_default()).await?;
    }
    if let Some(bytes) = req.root_disk_bytes {
        grow_root(bytes).await?;
    }
    Ok(())
}

/// The root block device (the kernel command line says `root=/dev/vda`).
const ROOT_DEV: &str = "vda";

fn device_bytes() -> Option<u64> {
    let sectors: u64 = std::fs::read_to_string(format!("/sys/block/{ROOT_DEV}/size")).ok()?.trim().parse().ok()?;
    Some(sectors * 512)
}

/// Size of the ext4 filesystem on the root device, from its superblock.
fn ext4_bytes() -> Option<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(format!("/dev/{ROOT_DEV}")).ok()?;
    let mut sb = [0u8; 1024];
    f.seek(SeekFrom::Start(1024)).ok()?;
    f.read_exact(&mut sb).ok()?;
    ext4_size(&sb)
}

/// Bytes covered by an ext4 superblock's block count.
fn ext4_size(sb: &[u8; 1024]) -> Option<u64> {
    let le32 = |o: usize| u32::from_le_bytes([sb[o], sb[o + 1], sb[o + 2], sb[o + 3]]);
    if u16::from_le_bytes([sb[0x38], sb[0x39]]) != 0xEF53 {
        return None;
    }
    let block_size = 1024u64 << le32(0x18);
    let is_64bit = le32(0x60) & 0x80 != 0;
    let hi = if is_64bit { u64::from(le32(0x150)) } else { 0 };
    Some(((hi << 32) | u64::from(le32(0x04))) * block_size)
}

/// Waits until the root device is at least `bytes` long (a disk grown while
/// the guest runs shows up after a configuration interrupt), then grows the
/// mounted root filesystem to fill it.
async fn grow_root(bytes: u64) -> Result<(), AgentError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let dev = loop {
        let dev = device_bytes().unwrap_or(0);
        if dev >= bytes {
            break dev;
        }
        if std::time::Instant::now() > deadline {
            return Err(AgentError::internal(format!("the root disk is {dev} bytes, expected {bytes}")));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let Some(fs) = ext4_bytes() else { return Ok(()) };
    if dev.saturating_sub(fs) < 1 << 20 {
        return Ok(());
    }
    let out = Command::new("resize2fs").arg(format!("/dev/{ROOT_DEV}")).output().await?;
    if !out.status.success() {
        return Err(AgentError::internal(format!("resize2fs: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    tracing::info!(from = fs, to = dev, "grew the root filesystem");
    Ok(())
}

async fn set_hostname(h: &str) -> Result<(), AgentError> {
    nix::unistd::sethostname(h).map_err(|e| AgentError::internal(format!("sethostname: {e}")))?;
    tokio::fs::write("/etc/hostname", format!("{h}\n")).await?;
    let hosts = tokio::fs::read_to_string("/etc/hosts").await.unwrap_or_default();
    let mut lines: Vec<String> = hosts.lines().filter(|l| !l.starts_with("127.0.1.1")).map(str::to_string).collect();
    lines.insert(1.min(lines.len()), format!("127.0.1.1 {h}"));
    tokio::fs::write("/etc/hosts", lines.join("\n") + "\n").await?;
    Ok(())
}

async fn regenerate_host_keys() -> Result<(), AgentError> {
    if let Ok(mut rd) = tokio::fs::read_dir("/etc/ssh").await {
        while let Ok(Some(e)) = rd.next_entry().await {
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                let _ = tokio::fs::remove_file(e.path()).await;
            }
        }
    }
    // Ed25519 and ECDSA keys are quick to make even under emulation; RSA is
    // not, so it is made in the background and sshd restarted once more.
    for t in ["ed25519", "ecdsa"] {
        let path = format!("/etc/ssh/ssh_host_{t}_key");
        let out = Command::new("ssh-keygen").args(["-q", "-t", t, "-N", "", "-f", &path]).output().await?;
        if !out.status.success() {
            return Err(AgentError::internal(format!("ssh-keygen -t {t}: {}", String::from_utf8_lossy(&out.stderr))));
        }
    }
    let _ = Command::new("systemctl").args(["try-restart", "--no-block", "ssh.service"]).status().await;
    tokio::spawn(async {
        let ok = Command::new("ssh-keygen")
            .args(["-q", "-t", "rsa", "-b", "3072", "-N", "", "-f", "/etc/ssh/ssh_host_rsa_key"])
            .status()
            .await
            .is_ok_and(|s| s.success());
        if ok {
            let _ = Command::new("systemctl").args(["try-restart", "--no-block", "ssh.service"]).status().await;
        }
    });
    Ok(())
}

async fn install_host_keys(keys: &[rigbox_guest_proto::SshHostKey]) -> Result<(), AgentError> {
    use std::os::unix::fs::PermissionsExt;
    for k in keys {
        if !matches!(k.kind.as_str(), "ed25519" | "ecdsa" | "rsa") {
            return Err(AgentError::bad_request(format!("unknown host key kind {:?}", k.kind)));
        }
    }
    if let Ok(mut rd) = tokio::fs::read_dir("/etc/ssh").await {
        while let Ok(Some(e)) = rd.next_entry().await {
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                let _ = tokio::fs::remove_file(e.path()).await;
            }
        }
    }
    for k in keys {
        let path = format!("/etc/ssh/ssh_host_{}_key", k.kind);
        tokio::fs::write(&path, &k.private_key).await?;
        tokio::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).await?;
        tokio::fs::write(format!("{path}.pub"), format!("{}\n", k.public_key.trim())).await?;
    }
    let _ = Command::new("systemctl").args(["try-restart", "--no-block", "ssh.service"]).status().await;
    Ok(())
}

fn shell_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "'\\''"))
}

fn valid_env_name(k: &str) -> bool {
    !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Persists the workspace environment for login shells (`env.sh`, sourced by
/// `/etc/profile.d/rigbox-env.sh`) and services (`env`, an EnvironmentFile),
/// and sets it in the system manager so new services see it.
pub async fn write_env(env: &BTreeMap<String, String>) -> Result<(), AgentError> {
    if let Some(bad) = env.keys().find(|k| !valid_env_name(k)) {
        return Err(AgentError::bad_request(format!("invalid variable name {bad:?}")));
    }
    tokio::fs::create_dir_all("/etc/rigbox").await?;
    let mut sh = String::from("# Written by rigbox-agent; set through the Rigbox API.\n");
    let mut ef = String::new();
    for (k, v) in env {
        sh.push_str(&format!("export {k}={}\n", shell_quote(v)));
        ef.push_str(&format!("{k}=\"{}\"\n", v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")));
    }
    tokio::fs::write(ENV_SH, sh).await?;
    tokio::fs::write(ENV_FILE, ef).await?;
    if !env.is_empty() {
        let mut cmd = Command::new("systemctl");
        cmd.arg("set-environment");
        for (k, v) in env {
            cmd.arg(format!("{k}={v}"));
        }
        let _ = cmd.status().await;
    }
    Ok(())
}

/// Reads the persisted environment (the agent may restart at any time).
pub fn load_env() -> BTreeMap<String, String> {
    let Ok(text) = std::fs::read_to_string(ENV_FILE) else {
        return BTreeMap::new();
    };
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim_matches('"').replace("\\n", "\n").replace("\\\"", "\"").replace("\\\\", "\\");
            (k.to_string(), v)
        })
        .collect()
}

async fn write_authorized_keys(keys: &[String]) -> Result<(), AgentError> {
    let user = crate::exec::lookup_user(None)?;
    let dir = Path::new(&user.home).join(".ssh");
    tokio::fs::create_dir_all(&dir).await?;
    let file = dir.join("authorized_keys");
    let mut body = keys.iter().map(|k| k.trim()).filter(|k| !k.is_empty()).collect::<Vec<_>>().join("\n");
    body.push('\n');
    tokio::fs::write(&file, body).await?;
    let uid = nix::unistd::Uid::from_raw(user.uid);
    let gid = nix::unistd::Gid::from_raw(user.gid);
    nix::unistd::chown(&dir, Some(uid), Some(gid)).map_err(|e| AgentError::internal(e.to_string()))?;
    nix::unistd::chown(&file, Some(uid), Some(gid)).map_err(|e| AgentError::internal(e.to_string()))?;
    use std::os::unix::fs::PermissionsExt;
    tokio::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).await?;
    tokio::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_validated() {
        assert!(valid_hostname("ws-abc123"));
        assert!(!valid_hostname("-x"));
        assert!(!valid_hostname("a b"));
        assert!(!valid_hostname(""));
    }

    #[test]
    fn ext4_superblocks_give_the_filesystem_size() {
        use std::io::{Read, Seek, SeekFrom};
        let dir = std::env::temp_dir().join(format!("rbx-sb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("fs.ext4");
        let made = std::process::Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img).arg("40M").status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("SKIP: mkfs.ext4 is not available");
            return;
        }
        let mut sb = [0u8; 1024];
        let mut f = std::fs::File::open(&img).unwrap();
        f.seek(SeekFrom::Start(1024)).unwrap();
        f.read_exact(&mut sb).unwrap();
        assert_eq!(ext4_size(&sb), Some(40 << 20));
        sb[0x38] = 0;
        assert_eq!(ext4_size(&sb), None, "not ext4");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn env_values_are_quoted_for_the_shell() {
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert!(valid_env_name("OPENAI_BASE_URL"));
        assert!(!valid_env_name("1X"));
        assert!(!valid_env_name("A-B"));
    }
}
