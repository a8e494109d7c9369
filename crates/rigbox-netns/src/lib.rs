//! Network slots.
//!
//! Every workspace VM runs inside its own network namespace, named
//! `rbx-<workspace id>`, holding one tap device `tap0`. The address plan is
//! the same in every slot, which is what lets a memory snapshot restore into
//! any slot:
//!
//! | Address | Where | Role |
//! |---|---|---|
//! | `169.254.0.1/30` | `tap0`, host side, inside the namespace | node agent, AI proxy, package cache |
//! | `169.254.0.2/30` | `eth0` in the guest (kernel `ip=` and systemd-networkd) | guest agent, sshd, apps |
//! | MAC `06:00:a9:fe:00:02` | guest NIC | fixed |
//! | MAC `06:00:a9:fe:00:01` | `tap0` | fixed, so restored guests' ARP caches stay valid |
//!
//! The host never routes to a guest: the node agent reaches one only by
//! opening a socket *inside* its namespace ([`Slot::connect`]), and serves
//! slot-local services by listening inside it ([`Slot::listen`]). No route,
//! NAT or bridge connects a namespace to the host or to another namespace, so
//! two guests cannot reach each other. Egress, when it is added, will be a
//! veth pair from the namespace to a host-side policy point (nftables per slot);
//! nothing in this plan has to change for it.
#![warn(missing_docs)]

use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Prefix of every namespace the project creates.
pub const NETNS_PREFIX: &str = "rbx-";
/// Name of the tap device inside every slot.
pub const TAP_NAME: &str = "tap0";
/// Host side of the slot, with prefix length.
pub const HOST_CIDR: &str = "169.254.0.1/30";
/// The guest's MAC address.
pub const GUEST_MAC: &str = "06:00:a9:fe:00:02";
/// The host side's MAC address, the same in every slot, so a guest restored
/// into a new slot finds its gateway at the MAC its ARP cache remembers.
pub const HOST_MAC: &str = "06:00:a9:fe:00:01";

/// Errors of slot management.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// An `ip` command failed.
    #[error("`ip {args}` failed: {stderr}")]
    Ip {
        /// Arguments.
        args: String,
        /// What it printed.
        stderr: String,
    },
    /// Running `ip` failed.
    #[error("Cannot run ip (install iproute2): {0}")]
    Spawn(std::io::Error),
    /// The namespace does not exist.
    #[error("Network namespace {0} does not exist")]
    Missing(String),
    /// Entering the namespace failed.
    #[error("Entering network namespace {name}: {source}")]
    Enter {
        /// Namespace.
        name: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Socket error inside the namespace.
    #[error("{op} {addr} in {name}: {source}")]
    Socket {
        /// connect or bind.
        op: &'static str,
        /// Address.
        addr: SocketAddr,
        /// Namespace.
        name: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Invalid slot name.
    #[error("Invalid slot name {0:?}")]
    InvalidName(String),
}

fn ip(args: &[&str]) -> Result<String, NetnsError> {
    let out = Command::new("ip").args(args).output().map_err(NetnsError::Spawn)?;
    if !out.status.success() {
        return Err(NetnsError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One workspace's network slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    name: String,
}

impl Slot {
    /// The slot of workspace `id` (not created yet).
    pub fn for_workspace(id: &str) -> Result<Self, NetnsError> {
        let name = format!("{NETNS_PREFIX}{id}");
        if id.is_empty() || name.len() > 200 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(NetnsError::InvalidName(id.into()));
        }
        Ok(Slot { name })
    }

    /// The namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Path of the namespace handle.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Whether the namespace exists.
    pub fn exists(&self) -> bool {
        self.path().exists()
    }

    /// Creates the namespace and its tap (idempotent: an existing slot is
    /// rebuilt from scratch so no stale state survives).
    pub fn create(&self) -> Result<(), NetnsError> {
        if self.exists() {
            self.delete()?;
        }
        ip(&["netns", "add", &self.name])?;
        let setup = (|| {
            ip(&["-n", &self.name, "link", "set", "lo", "up"])?;
            ip(&["-n", &self.name, "tuntap", "add", "dev", TAP_NAME, "mode", "tap"])?;
            ip(&["-n", &self.name, "link", "set", TAP_NAME, "address", HOST_MAC])?;
            ip(&["-n", &self.name, "addr", "add", HOST_CIDR, "dev", TAP_NAME])?;
            ip(&["-n", &self.name, "link", "set", TAP_NAME, "up"])?;
            Ok(())
        })();
        if setup.is_err() {
            let _ = self.delete();
        }
        setup
    }

    /// Deletes the namespace (and with it the tap). Missing is fine.
    pub fn delete(&self) -> Result<(), NetnsError> {
        if !self.exists() {
            return Ok(());
        }
        ip(&["netns", "delete", &self.name]).map(|_| ())
    }

    /// Bytes (rx, tx) counted on the tap, from the host's point of view:
    /// rx is what the guest sent.
    pub fn tap_counters(&self) -> Option<(u64, u64)> {
        let out = ip(&["-n", &self.name, "-s", "-o", "link", "show", TAP_NAME]).ok()?;
        let rx = field_after(&out, "RX:")?;
        let tx = field_after(&out, "TX:")?;
        Some((rx, tx))
    }

    /// Runs `f` on a fresh thread that has entered this namespace. Sockets
    /// created there stay in the namespace after the thread ends.
    fn within<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> Result<std::io::Result<T>, NetnsError> {
        let path = self.path();
        let name = self.name.clone();
        let handle = std::thread::Builder::new()
            .name("netns".into())
            .spawn(move || {
                let fd = std::fs::File::open(&path).map_err(|_| NetnsError::Missing(name.clone()))?;
                nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| NetnsError::Enter { name, source: e.into() })?;
                Ok(f())
            })
            .map_err(|e| NetnsError::Enter { name: self.name.clone(), source: e })?;
        handle.join().unwrap_or_else(|_| Err(NetnsError::Enter {
            name: self.name.clone(),
            source: std::io::Error::other("thread panicked"),
        }))
    }

    /// Opens a TCP connection to `addr` from inside the slot.
    pub async fn connect(&self, addr: SocketAddr, timeout: Duration) -> Result<tokio::net::TcpStream, NetnsError> {
        let slot = self.clone();
        let std_stream = tokio::task::spawn_blocking(move || {
            slot.within(move || {
                let s = StdStream::connect_timeout(&addr, timeout)?;
                s.set_nodelay(true)?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
        })
        .await
        .map_err(|e| NetnsError::Enter { name: self.name.clone(), source: std::io::Error::other(e) })??
        .map_err(|source| NetnsError::Socket { op: "connect", addr, name: self.name.clone(), source })?;
        tokio::net::TcpStream::from_std(std_stream)
            .map_err(|source| NetnsError::Socket { op: "connect", addr, name: self.name.clone(), source })
    }

    /// Listens on `addr` inside the slot (for slot-local services).
    pub async fn listen(&self, addr: SocketAddr) -> Result<tokio::net::TcpListener, NetnsError> {
        let slot = self.clone();
        let l = tokio::task::spawn_blocking(move || {
            slot.within(move || {
                let l = StdListener::bind(addr)?;
                l.set_nonblocking(true)?;
                Ok(l)
            })
        })
        .await
        .map_err(|e| NetnsError::Enter { name: self.name.clone(), source: std::io::Error::other(e) })??
        .map_err(|source| NetnsError::Socket { op: "bind", addr, name: self.name.clone(), source })?;
        tokio::net::TcpListener::from_std(l)
            .map_err(|source| NetnsError::Socket { op: "bind", addr, name: self.name.clone(), source })
    }
}

fn field_after(text: &str, label: &str) -> Option<u64> {
    let i = text.find(label)?;
    // The line after the label holds the numbers; with `-o` lines are joined by "\".
    text[i + label.len()..]
        .split(['\\', '\n'])
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Names of all namespaces this project created (`rbx-*`).
pub fn list_slots() -> Result<Vec<String>, NetnsError> {
    let out = match std::fs::read_dir("/run/netns") {
        Ok(rd) => rd,
        Err(_) => return Ok(Vec::new()),
    };
    let mut v: Vec<String> = out
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(NETNS_PREFIX))
        .collect();
    v.sort();
    Ok(v)
}

/// The workspace id of a slot name, if it is one of ours.
pub fn workspace_of(slot_name: &str) -> Option<&str> {
    slot_name.strip_prefix(NETNS_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_are_checked() {
        assert_eq!(Slot::for_workspace("ws-abc").unwrap().name(), "rbx-ws-abc");
        assert!(Slot::for_workspace("../x").is_err());
        assert!(Slot::for_workspace("").is_err());
        assert_eq!(workspace_of("rbx-ws-1"), Some("ws-1"));
        assert_eq!(workspace_of("other"), None);
    }

    #[test]
    fn tap_counters_parse_ip_output() {
        let out = "5: tap0: <BROADCAST> mtu 1500 qdisc\\    link/ether 1a:2b brd ff\\    RX:  bytes packets errors dropped  missed   mcast           \\          1234      10      0       0       0       0 \\    TX:  bytes packets errors dropped carrier collsns           \\          5678      20      0       0       0       0 ";
        assert_eq!(field_after(out, "RX:"), Some(1234));
        assert_eq!(field_after(out, "TX:"), Some(5678));
    }

    /// Needs root: a real namespace, a listener inside it, and a connection
    /// that only works from inside.
    #[tokio::test]
    async fn sockets_live_inside_their_namespace() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIP: needs root");
            return;
        }
        let slot = Slot::for_workspace(&format!("unittest-{}", std::process::id())).unwrap();
        slot.create().unwrap();
        let addr: SocketAddr = "169.254.0.1:18080".parse().unwrap();
        let l = slot.listen(addr).await.unwrap();
        let accept = tokio::spawn(async move { l.accept().await.map(|(_, peer)| peer) });
        let _c = slot.connect(addr, Duration::from_secs(2)).await.unwrap();
        let peer = accept.await.unwrap().unwrap();
        assert_eq!(peer.ip().to_string(), "169.254.0.1");
        // Another slot has the same addresses but its own stack: the same
        // address:port there is not this slot's listener. (Never probe slot
        // addresses from the host namespace: that traffic would leave the host.)
        let other = Slot::for_workspace(&format!("unittest-{}-b", std::process::id())).unwrap();
        other.create().unwrap();
        let r = other.connect(addr, Duration::from_millis(500)).await;
        assert!(r.is_err(), "a second slot must not reach the first one's listener");
        other.delete().unwrap();
        assert!(slot.tap_counters().is_some());
        slot.delete().unwrap();
        assert!(!slot.exists());
        assert!(!list_slots().unwrap().contains(&slot.name().to_string()));
    }
}
