//! Host probe: what can run VMs here, and which backend to use.
//!
//! Rules (a setting overrides each):
//! - no usable `/dev/kvm` → QEMU with TCG;
//! - `/dev/kvm` provided by PVM (`/sys/module/kvm_pvm`) → stock guest kernels
//!   cannot run on it, so QEMU with TCG unless a PVM guest kernel is configured;
//! - otherwise KVM: Firecracker if installed, else QEMU with KVM.

use crate::firecracker::FirecrackerVmm;
use crate::qemu::QemuVmm;
use crate::{Accel, BackendKind, Vmm, VmmError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A tool found on the host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Tool {
    /// Path.
    pub path: PathBuf,
    /// First line of `--version`.
    pub version: String,
}

/// What the host offers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostProbe {
    /// `/dev/kvm` exists.
    pub kvm_device: bool,
    /// `/dev/kvm` opens read-write.
    pub kvm_usable: bool,
    /// The KVM module is PVM (`kvm_pvm`), which needs PVM-enlightened guests.
    pub pvm: bool,
    /// CPU flags show vmx/svm.
    pub hw_virt_flags: bool,
    /// qemu-system-x86_64.
    pub qemu: Option<Tool>,
    /// firecracker.
    pub firecracker: Option<Tool>,
    /// jailer.
    pub jailer: Option<Tool>,
    /// cgroup v2 mounted at /sys/fs/cgroup.
    pub cgroup_v2: bool,
}

/// Backend preference from settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum VmmPreference {
    /// Let the probe decide.
    #[default]
    Auto,
    /// QEMU microvm.
    Qemu,
    /// Firecracker.
    Firecracker,
}

/// Acceleration preference from settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccelPreference {
    /// Let the probe decide.
    #[default]
    Auto,
    /// Require KVM.
    Kvm,
    /// Force software emulation.
    Tcg,
}

impl std::str::FromStr for VmmPreference {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" | "" => Ok(Self::Auto),
            "qemu" => Ok(Self::Qemu),
            "firecracker" => Ok(Self::Firecracker),
            o => Err(format!("unknown VMM {o:?} (auto, qemu, firecracker)")),
        }
    }
}

impl std::str::FromStr for AccelPreference {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" | "" => Ok(Self::Auto),
            "kvm" => Ok(Self::Kvm),
            "tcg" => Ok(Self::Tcg),
            o => Err(format!("unknown accel {o:?} (auto, kvm, tcg)")),
        }
    }
}

/// The decision and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Choice {
    /// Backend.
    pub backend: BackendKind,
    /// Acceleration.
    pub accel: Accel,
    /// Human-readable reasons, in order.
    pub reasons: Vec<String>,
}

fn tool(names: &[&str], version_arg: &str) -> Option<Tool> {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs: Vec<String> = path
        .split(':')
        .map(str::to_string)
        .chain(["/usr/local/bin", "/usr/bin", "/usr/sbin", "/usr/local/sbin"].map(String::from))
        .collect();
    for n in names {
        let found = if n.starts_with('/') {
            Path::new(n).is_file().then(|| PathBuf::from(n))
        } else {
            dirs.iter().map(|d| Path::new(d).join(n)).find(|p| p.is_file())
        };
        if let Some(p) = found {
            let version = std::process::Command::new(&p)
                .arg(version_arg)
                .output()
                .ok()
                .map(|o| {
                    let s = if o.stdout.is_empty() { o.stderr } else { o.stdout };
                    String::from_utf8_lossy(&s).lines().next().unwrap_or("").trim().to_string()
                })
                .unwrap_or_default();
            return Some(Tool { path: p, version });
        }
    }
    None
}

impl HostProbe {
    /// Looks at this host. `firecracker_bin` overrides where Firecracker is looked for.
    pub fn run(firecracker_bin: Option<&Path>) -> Self {
        let kvm_device = Path::new("/dev/kvm").exists();
        let kvm_usable = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let flags = cpuinfo.lines().find(|l| l.starts_with("flags")).unwrap_or("");
        let fc_names: Vec<String> = match firecracker_bin {
            Some(p) => vec![p.display().to_string()],
            None => vec!["firecracker".into()],
        };
        let fc_refs: Vec<&str> = fc_names.iter().map(String::as_str).collect();
        let jailer = firecracker_bin
            .and_then(|p| p.parent())
            .map(|d| d.join("jailer").display().to_string())
            .unwrap_or_else(|| "jailer".into());
        HostProbe {
            kvm_device,
            kvm_usable,
            pvm: Path::new("/sys/module/kvm_pvm").exists(),
            hw_virt_flags: flags.split_whitespace().any(|f| f == "vmx" || f == "svm"),
            qemu: tool(&["qemu-system-x86_64"], "--version"),
            firecracker: tool(&fc_refs, "--version"),
            jailer: tool(&[jailer.as_str()], "--version"),
            cgroup_v2: Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
        }
    }

    /// Whether guests can run at hardware speed (stock kernels under KVM).
    pub fn hardware_kvm(&self, pvm_guest_kernel: bool) -> bool {
        self.kvm_usable && (!self.pvm || pvm_guest_kernel)
    }

    /// Picks a backend.
    pub fn choose(&self, vmm: VmmPreference, accel: AccelPreference, pvm_guest_kernel: bool) -> Result<Choice, VmmError> {
        let mut reasons = Vec::new();
        let hw = self.hardware_kvm(pvm_guest_kernel);
        if !self.kvm_device {
            reasons.push("/dev/kvm is absent".to_string());
        } else if !self.kvm_usable {
            reasons.push("/dev/kvm cannot be opened read-write".to_string());
        } else if self.pvm && !pvm_guest_kernel {
            reasons.push("/dev/kvm is PVM (kvm_pvm loaded): stock guest kernels cannot run on it and no PVM guest kernel is configured".to_string());
        } else {
            reasons.push("/dev/kvm is usable hardware virtualization".to_string());
        }
        let accel = match accel {
            AccelPreference::Tcg => {
                reasons.push("software emulation forced by setting".into());
                Accel::Tcg
            }
            AccelPreference::Kvm => {
                if !self.kvm_usable {
                    return Err(VmmError::NotInstalled("a usable /dev/kvm (accel=kvm was requested)".into()));
                }
                reasons.push("KVM forced by setting".into());
                Accel::Kvm
            }
            AccelPreference::Auto => {
                if hw {
                    Accel::Kvm
                } else {
                    Accel::Tcg
                }
            }
        };
        let backend = match vmm {
            VmmPreference::Qemu => {
                reasons.push("QEMU forced by setting".into());
                BackendKind::Qemu
            }
            VmmPreference::Firecracker => {
                reasons.push("Firecracker forced by setting".into());
                BackendKind::Firecracker
            }
            VmmPreference::Auto => {
                if accel == Accel::Kvm && self.firecracker.is_some() {
                    reasons.push("Firecracker is installed and KVM is usable".into());
                    BackendKind::Firecracker
                } else {
                    if accel == Accel::Tcg {
                        reasons.push("software emulation needs QEMU (Firecracker requires KVM)".into());
                    } else {
                        reasons.push("Firecracker is not installed".into());
                    }
                    BackendKind::Qemu
                }
            }
        };
        match backend {
            BackendKind::Qemu if self.qemu.is_none() => {
                return Err(VmmError::NotInstalled("qemu-system-x86_64 (apt-get install qemu-system-x86)".into()))
            }
            BackendKind::Firecracker if self.firecracker.is_none() => {
                return Err(VmmError::NotInstalled("firecracker".into()))
            }
            BackendKind::Firecracker if accel == Accel::Tcg => {
                return Err(VmmError::Unsupported { backend: BackendKind::Firecracker, what: "software emulation".into() })
            }
            _ => {}
        }
        Ok(Choice { backend, accel, reasons })
    }

    /// Builds the chosen backend.
    pub fn build(&self, choice: &Choice) -> Result<Arc<dyn Vmm>, VmmError> {
        Ok(match choice.backend {
            BackendKind::Qemu => {
                let q = self.qemu.as_ref().ok_or_else(|| VmmError::NotInstalled("qemu-system-x86_64".into()))?;
                Arc::new(QemuVmm::new(q.path.clone(), choice.accel))
            }
            BackendKind::Firecracker => {
                let f = self.firecracker.as_ref().ok_or_else(|| VmmError::NotInstalled("firecracker".into()))?;
                Arc::new(FirecrackerVmm::new(f.path.clone(), self.jailer.as_ref().map(|j| j.path.clone())))
            }
        })
    }

    /// A human-readable report of the probe and the choice.
    pub fn report(&self, choice: Result<&Choice, &VmmError>) -> String {
        let yn = |b: bool| if b { "yes" } else { "no" };
        let t = |t: &Option<Tool>| match t {
            Some(t) => format!("{} ({})", t.path.display(), t.version),
            None => "not found".into(),
        };
        let mut s = String::new();
        s.push_str(&format!("/dev/kvm present:        {}\n", yn(self.kvm_device)));
        s.push_str(&format!("/dev/kvm usable (rw):    {}\n", yn(self.kvm_usable)));
        s.push_str(&format!("KVM is PVM (kvm_pvm):    {}\n", yn(self.pvm)));
        s.push_str(&format!("CPU vmx/svm flags:       {}\n", yn(self.hw_virt_flags)));
        s.push_str(&format!("cgroup v2:               {}\n", yn(self.cgroup_v2)));
        s.push_str(&format!("qemu-system-x86_64:      {}\n", t(&self.qemu)));
        s.push_str(&format!("firecracker:             {}\n", t(&self.firecracker)));
        s.push_str(&format!("jailer:                  {}\n", t(&self.jailer)));
        match choice {
            Ok(c) => {
                s.push_str(&format!("=> backend: {} ({})\n", c.backend, c.accel));
                for r in &c.reasons {
                    s.push_str(&format!("   because {r}\n"));
                }
            }
            Err(e) => s.push_str(&format!("=> no usable backend: {e}\n")),
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(kvm: bool, pvm: bool, fc: bool) -> HostProbe {
        let t = Tool { path: "/x".into(), version: "v".into() };
        HostProbe {
            kvm_device: kvm,
            kvm_usable: kvm,
            pvm,
            hw_virt_flags: kvm && !pvm,
            qemu: Some(t.clone()),
            firecracker: fc.then_some(t),
            jailer: None,
            cgroup_v2: true,
        }
    }

    #[test]
    fn pvm_hosts_use_qemu_tcg() {
        let c = probe(true, true, true).choose(VmmPreference::Auto, AccelPreference::Auto, false).unwrap();
        assert_eq!((c.backend, c.accel), (BackendKind::Qemu, Accel::Tcg));
        assert!(c.reasons[0].contains("PVM"));
    }

    #[test]
    fn hardware_kvm_prefers_firecracker_then_qemu_kvm() {
        let c = probe(true, false, true).choose(VmmPreference::Auto, AccelPreference::Auto, false).unwrap();
        assert_eq!((c.backend, c.accel), (BackendKind::Firecracker, Accel::Kvm));
        let c = probe(true, false, false).choose(VmmPreference::Auto, AccelPreference::Auto, false).unwrap();
        assert_eq!((c.backend, c.accel), (BackendKind::Qemu, Accel::Kvm));
        let c = probe(true, true, true).choose(VmmPreference::Auto, AccelPreference::Auto, true).unwrap();
        assert_eq!(c.backend, BackendKind::Firecracker);
    }

    #[test]
    fn no_kvm_means_tcg_and_settings_override() {
        let p = probe(false, false, false);
        let c = p.choose(VmmPreference::Auto, AccelPreference::Auto, false).unwrap();
        assert_eq!((c.backend, c.accel), (BackendKind::Qemu, Accel::Tcg));
        assert!(p.choose(VmmPreference::Auto, AccelPreference::Kvm, false).is_err());
        assert!(p.choose(VmmPreference::Firecracker, AccelPreference::Auto, false).is_err());
        let c = probe(true, false, true).choose(VmmPreference::Qemu, AccelPreference::Tcg, false).unwrap();
        assert_eq!((c.backend, c.accel), (BackendKind::Qemu, Accel::Tcg));
        assert!(p.report(Ok(&c)).contains("backend: qemu (tcg)"));
    }
}
