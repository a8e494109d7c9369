//! Workspace root disks: a sparse private copy of the template image, with
//! the ext4 filesystem grown to the requested size.

use crate::error::{io, NodeError};
use std::path::Path;
use tokio::process::Command;

async fn run(cmd: &mut Command, what: &str, ok_codes: &[i32]) -> Result<(), NodeError> {
    let out = cmd.output().await.map_err(io(format!("running {what}")))?;
    let code = out.status.code().unwrap_or(-1);
    if !ok_codes.contains(&code) {
        return Err(NodeError::Command(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Size of a file in MiB (rounded up).
pub fn size_mb(path: &Path) -> std::io::Result<u64> {
    Ok(std::fs::metadata(path)?.len().div_ceil(1 << 20))
}

/// Creates `dest` from `image`, grown to `size_mb`. Writes to a temporary
/// name and renames, so a failure leaves nothing at `dest`.
pub async fn create_from_image(image: &Path, dest: &Path, size_mb: u64) -> Result<(), NodeError> {
    let tmp = dest.with_extension("creating");
    let _ = tokio::fs::remove_file(&tmp).await;
    let r = async {
        run(Command::new("cp").arg("--sparse=always").arg(image).arg(&tmp), "cp", &[0]).await?;
        // A fresh copy of a clean image: no fsck needed before growing.
        grow_fs(&tmp, size_mb, false).await?;
        tokio::fs::rename(&tmp, dest).await.map_err(io("installing the disk"))
    }
    .await;
    if r.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    r
}

/// Grows the file and its ext4 filesystem to `size_mb` (never shrinks),
/// checking the filesystem first (it may have been used by a guest).
pub async fn grow(path: &Path, size_mb: u64) -> Result<(), NodeError> {
    grow_fs(path, size_mb, true).await
}

async fn grow_fs(path: &Path, size_mb: u64, check: bool) -> Result<(), NodeError> {
    let current = size_mb_of(path)?;
    if size_mb < current {
        return Err(NodeError::Invalid(format!("the disk cannot shrink (it is {current} MiB, asked for {size_mb} MiB)")));
    }
    if size_mb == current {
        return Ok(());
    }
    let f = std::fs::OpenOptions::new().write(true).open(path).map_err(io("opening the disk"))?;
    f.set_len(size_mb << 20).map_err(io("growing the disk file"))?;
    drop(f);
    if check {
        // e2fsck exits 1 when it fixed something (e.g. after an unclean stop).
        run(Command::new("e2fsck").args(["-f", "-y"]).arg(path), "e2fsck", &[0, 1]).await?;
        run(Command::new("resize2fs").arg(path), "resize2fs", &[0]).await
    } else {
        run(Command::new("resize2fs").arg("-f").arg(path), "resize2fs", &[0]).await
    }
}

/// Makes (once) the read-only base for disks of `size_mb` from the template
/// image `image`: a private sparse copy grown to `size_mb`, in `bases` under
/// `name`. Workspaces of that template and size share it under their qcow2
/// overlays, and pruning the image cache never pulls it away. Returns its
/// path. Bases are made one at a time; each appears under its final name
/// atomically.
pub async fn base_for(image: &Path, bases: &Path, name: &str, size_mb: u64) -> Result<std::path::PathBuf, NodeError> {
    static MAKING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let base = bases.join(name);
    if tokio::fs::try_exists(&base).await.unwrap_or(false) {
        return Ok(base);
    }
    let _one = MAKING.lock().await;
    if tokio::fs::try_exists(&base).await.unwrap_or(false) {
        return Ok(base);
    }
    tokio::fs::create_dir_all(bases).await.map_err(io("creating the bases dir"))?;
    let tmp = bases.join(format!(".{name}.making"));
    create_from_image(image, &tmp, size_mb).await?;
    let r = tokio::fs::rename(&tmp, &base).await.map_err(io("installing the base"));
    if r.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    r.map(|_| base)
}

/// Creates `dest`, a qcow2 disk over the raw `base`, of the base's size
/// (copy on write: the disk holds only what the guest changes).
pub async fn create_overlay(base: &Path, dest: &Path) -> Result<(), NodeError> {
    let tmp = dest.with_extension("creating");
    let r = async {
        run(
            Command::new("qemu-img").args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"]).arg(base).arg(&tmp),
            "qemu-img create",
            &[0],
        )
        .await?;
        tokio::fs::rename(&tmp, dest).await.map_err(io("installing the disk"))
    }
    .await;
    if r.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    r
}

/// Grows the virtual size of a qcow2 overlay to `size_mb` (the filesystem is
/// grown by the guest when it boots); a no-op when it is already that large.
pub async fn grow_qcow2(path: &Path, size_mb: u64) -> Result<(), NodeError> {
    let out = Command::new("qemu-img").args(["info", "--output=json", "-U"]).arg(path).output().await.map_err(io("running qemu-img info"))?;
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| NodeError::Command(format!("qemu-img info: {e}")))?;
    let virtual_size = info["virtual-size"].as_u64().unwrap_or(0);
    if virtual_size >= size_mb << 20 {
        return Ok(());
    }
    run(Command::new("qemu-img").args(["resize", "-q", "-f", "qcow2"]).arg(path).arg(format!("{size_mb}M")), "qemu-img resize", &[0]).await
}

fn size_mb_of(path: &Path) -> Result<u64, NodeError> {
    size_mb(path).map_err(io(format!("reading {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_disk_is_a_grown_private_copy() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image.ext4");
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("hello"), b"hi").unwrap();
        let st = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&src)
            .arg(&image)
            .arg("16M")
            .status()
            .unwrap();
        assert!(st.success());
        let disk = dir.path().join("disk.raw");
        create_from_image(&image, &disk, 48).await.unwrap();
        assert_eq!(size_mb(&disk).unwrap(), 48);
        assert_eq!(size_mb(&image).unwrap(), 16, "the image is untouched");
        let out = std::process::Command::new("dumpe2fs").arg("-h").arg(&disk).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let blocks: u64 = text.lines().find(|l| l.starts_with("Block count:")).unwrap().split_whitespace().last().unwrap().parse().unwrap();
        let bs: u64 = text.lines().find(|l| l.starts_with("Block size:")).unwrap().split_whitespace().last().unwrap().parse().unwrap();
        assert_eq!(blocks * bs, 48 << 20, "the filesystem fills the disk");
        assert!(grow(&disk, 32).await.is_err(), "never shrinks");
        grow(&disk, 64).await.unwrap();
        assert_eq!(size_mb(&disk).unwrap(), 64);
        // A failed create leaves nothing behind.
        let bad = create_from_image(&dir.path().join("missing"), &dir.path().join("x.raw"), 32).await;
        assert!(bad.is_err());
        assert!(!dir.path().join("x.raw").exists() && !dir.path().join("x.creating").exists());
    }
}
