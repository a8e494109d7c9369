//! Firecracker backend (placeholder until the driver lands).

use crate::{Accel, BackendKind, SnapshotFiles, VmConfig, VmProcess, Vmm, VmmError};
use std::path::{Path, PathBuf};

/// The Firecracker backend.
#[derive(Debug, Clone)]
pub struct FirecrackerVmm {
    binary: PathBuf,
    jailer: Option<PathBuf>,
}

impl FirecrackerVmm {
    /// Uses `binary`, and `jailer` when given.
    pub fn new(binary: PathBuf, jailer: Option<PathBuf>) -> Self {
        FirecrackerVmm { binary, jailer }
    }
}

fn todo(what: &str) -> VmmError {
    VmmError::Unsupported { backend: BackendKind::Firecracker, what: what.into() }
}

#[async_trait::async_trait]
impl Vmm for FirecrackerVmm {
    fn kind(&self) -> BackendKind {
        BackendKind::Firecracker
    }
    fn accel(&self) -> Accel {
        Accel::Kvm
    }
    async fn launch(&self, _cfg: &VmConfig) -> Result<VmProcess, VmmError> {
        let _ = (&self.binary, &self.jailer);
        Err(todo("launch"))
    }
    async fn pause(&self, _cfg: &VmConfig, _vm: &VmProcess) -> Result<(), VmmError> {
        Err(todo("pause"))
    }
    async fn resume(&self, _cfg: &VmConfig, _vm: &VmProcess) -> Result<(), VmmError> {
        Err(todo("resume"))
    }
    async fn snapshot(&self, _cfg: &VmConfig, _vm: &VmProcess, _dir: &Path) -> Result<SnapshotFiles, VmmError> {
        Err(todo("snapshot"))
    }
    async fn restore(&self, _cfg: &VmConfig, _files: &SnapshotFiles) -> Result<VmProcess, VmmError> {
        Err(todo("restore"))
    }
}
