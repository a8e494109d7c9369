//! The one place in Rigbox where `unsafe` is allowed.
//!
//! Every other crate denies `unsafe_code`. Each wrapper here is small, takes
//! safe Rust types, and documents its invariants in a `// SAFETY:` comment.
#![warn(missing_docs)]

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

/// Errors of the syscall wrappers.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    /// Opening a device failed.
    #[error("Opening {path}: {source}")]
    Open {
        /// Device path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// An ioctl failed.
    #[error("ioctl {name} failed: {source}")]
    Ioctl {
        /// The request name.
        name: &'static str,
        /// The cause.
        source: std::io::Error,
    },
}

// From <linux/random.h>.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
const RNDRESEEDCRNG: libc::c_ulong = 0x0000_5207;

/// Mixes `seed` into the kernel's entropy pool, credits it, and forces the
/// CRNG to reseed, so two guests restored from one snapshot diverge at once.
/// Needs `CAP_SYS_ADMIN`.
pub fn add_entropy_and_reseed(seed: &[u8]) -> Result<(), SysError> {
    let dev = OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|source| SysError::Open { path: "/dev/urandom".into(), source })?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut req: Vec<u8> = Vec::with_capacity(8 + seed.len() + 4);
    let bits = i32::try_from(seed.len() * 8).unwrap_or(i32::MAX);
    let len = i32::try_from(seed.len()).unwrap_or(i32::MAX);
    req.extend_from_slice(&bits.to_ne_bytes());
    req.extend_from_slice(&len.to_ne_bytes());
    req.extend_from_slice(seed);
    req.resize(req.len().div_ceil(4) * 4, 0);
    // SAFETY: `dev` is an open descriptor for /dev/urandom for the whole call;
    // `req` is a properly laid out `rand_pool_info` (two ints followed by
    // `buf_size` bytes, padded to whole u32 words) that lives until the ioctl
    // returns, and the kernel only reads from it.
    let rc = unsafe { libc::ioctl(dev.as_raw_fd(), RNDADDENTROPY as _, req.as_ptr()) };
    if rc != 0 {
        return Err(SysError::Ioctl { name: "RNDADDENTROPY", source: std::io::Error::last_os_error() });
    }
    // SAFETY: RNDRESEEDCRNG takes no argument; `dev` is open for the call.
    let rc = unsafe { libc::ioctl(dev.as_raw_fd(), RNDRESEEDCRNG as _) };
    if rc != 0 {
        return Err(SysError::Ioctl { name: "RNDRESEEDCRNG", source: std::io::Error::last_os_error() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_ioctl_works_as_root_or_reports_permission() {
        match add_entropy_and_reseed(&[7u8; 33]) {
            Ok(()) => {}
            Err(SysError::Ioctl { source, .. }) => {
                assert_eq!(source.raw_os_error(), Some(libc::EPERM));
            }
            Err(e) => panic!("{e}"),
        }
    }
}
