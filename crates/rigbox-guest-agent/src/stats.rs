//! The guest's own view: memory, disk, CPU, network, listeners, journal.

use crate::server::AgentError;
use axum::extract::Query;
use axum::Json;
use rigbox_guest_proto::{GuestStats, JournalLine, ListeningPort};
use serde::Deserialize;
use std::collections::HashMap;

fn meminfo(text: &str, key: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

pub async fn stats() -> Json<GuestStats> {
    let mem = read("/proc/meminfo");
    let (disk_total, disk_used) = match nix::sys::statvfs::statvfs("/") {
        Ok(s) => {
            let bs = s.fragment_size();
            let total = s.blocks() * bs;
            (total, total.saturating_sub(s.blocks_free() * bs))
        }
        Err(_) => (0, 0),
    };
    let cpu = read("/proc/stat");
    let fields: Vec<u64> = cpu
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    let cpus = cpu.lines().filter(|l| l.starts_with("cpu") && !l.starts_with("cpu ")).count() as u32;
    let num = |p: &str| read(p).trim().parse::<u64>().unwrap_or(0);
    Json(GuestStats {
        mem_total_kb: meminfo(&mem, "MemTotal"),
        mem_available_kb: meminfo(&mem, "MemAvailable"),
        disk_total_bytes: disk_total,
        disk_used_bytes: disk_used,
        load1: read("/proc/loadavg").split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0.0),
        cpu_total_jiffies: total,
        cpu_idle_jiffies: idle,
        cpus,
        uptime_secs: read("/proc/uptime").split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0.0),
        net_rx_bytes: num("/sys/class/net/eth0/statistics/rx_bytes"),
        net_tx_bytes: num("/sys/class/net/eth0/statistics/tx_bytes"),
    })
}

/// Parses /proc/net/tcp{,6}: (address, port, inode) of listening sockets.
fn listeners(text: &str, v6: bool) -> Vec<(String, u16, u64)> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                return None;
            }
            let (addr, port) = f[1].split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            let inode = f[9].parse().ok()?;
            let address = if v6 {
                if addr.chars().all(|c| c == '0') {
                    "::".to_string()
                } else if addr == "00000000000000000000000001000000" {
                    "::1".to_string()
                } else {
                    addr.to_string()
                }
            } else {
                let n = u32::from_str_radix(addr, 16).ok()?;
                std::net::Ipv4Addr::from(n.to_le_bytes()).to_string()
            };
            Some((address, port, inode))
        })
        .collect()
}

fn socket_owners() -> HashMap<u64, u32> {
    let mut map = HashMap::new();
    let Ok(rd) = std::fs::read_dir("/proc") else { return map };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let t = target.to_string_lossy();
                if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                    if let Ok(i) = inode.parse() {
                        map.entry(i).or_insert(pid);
                    }
                }
            }
        }
    }
    map
}

fn unit_of(pid: u32) -> Option<String> {
    read(&format!("/proc/{pid}/cgroup"))
        .lines()
        .next()
        .and_then(|l| l.rsplit('/').find(|c| c.ends_with(".service")).map(str::to_string))
}

pub async fn ports() -> Json<Vec<ListeningPort>> {
    let list = tokio::task::spawn_blocking(|| {
        let mut all = listeners(&read("/proc/net/tcp"), false);
        all.extend(listeners(&read("/proc/net/tcp6"), true));
        let owners = socket_owners();
        let mut out: Vec<ListeningPort> = all
            .into_iter()
            .map(|(address, port, inode)| {
                let pid = owners.get(&inode).copied();
                ListeningPort {
                    port,
                    address,
                    pid,
                    process: pid.map(|p| read(&format!("/proc/{p}/comm")).trim().to_string()),
                    command: pid.map(|p| read(&format!("/proc/{p}/cmdline")).replace('\0', " ").trim().to_string()),
                    cwd: pid.and_then(|p| std::fs::read_link(format!("/proc/{p}/cwd")).ok()).map(|c| c.display().to_string()),
                    systemd_unit: pid.and_then(unit_of),
                }
            })
            .filter(|p| p.port != rigbox_guest_proto::AGENT_PORT)
            .collect();
        out.sort_by_key(|p| (p.port, p.address.clone()));
        out.dedup_by_key(|p| p.port);
        out
    })
    .await
    .unwrap_or_default();
    Json(list)
}

#[derive(Deserialize)]
pub struct JournalQuery {
    unit: Option<String>,
    lines: Option<u32>,
    after_cursor: Option<String>,
    user: Option<bool>,
}

pub async fn journal(Query(q): Query<JournalQuery>) -> Result<Json<Vec<JournalLine>>, AgentError> {
    let mut cmd = tokio::process::Command::new("journalctl");
    cmd.args(["-o", "json", "--no-pager", "-q"]);
    cmd.arg(format!("-n{}", q.lines.unwrap_or(200).min(10_000)));
    if let Some(u) = &q.unit {
        if q.user.unwrap_or(false) {
            cmd.arg(format!("--user-unit={u}"));
        } else {
            cmd.arg(format!("--unit={u}"));
        }
    }
    if let Some(c) = &q.after_cursor {
        cmd.arg(format!("--after-cursor={c}"));
    }
    let out = cmd.output().await?;
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
            JournalLine {
                timestamp_us: s("__REALTIME_TIMESTAMP").parse().unwrap_or(0),
                source: {
                    let u = s("_SYSTEMD_UNIT");
                    if u.is_empty() { s("SYSLOG_IDENTIFIER") } else { u }
                },
                message: match v.get("MESSAGE") {
                    Some(serde_json::Value::String(m)) => m.clone(),
                    Some(serde_json::Value::Array(bytes)) => String::from_utf8_lossy(
                        &bytes.iter().filter_map(|b| b.as_u64().map(|x| x as u8)).collect::<Vec<_>>(),
                    )
                    .into_owned(),
                    _ => String::new(),
                },
                cursor: s("__CURSOR"),
            }
        })
        .collect();
    Ok(Json(lines))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_listeners_are_parsed() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 12345 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:0016 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 999 1\n";
        let l = listeners(t, false);
        assert_eq!(l, vec![("0.0.0.0".to_string(), 8080, 12345)]);
    }

    #[test]
    fn meminfo_fields_are_read() {
        let m = "MemTotal:        1000 kB\nMemFree: 10 kB\nMemAvailable:     600 kB\n";
        assert_eq!(meminfo(m, "MemTotal"), 1000);
        assert_eq!(meminfo(m, "MemAvailable"), 600);
    }
}
