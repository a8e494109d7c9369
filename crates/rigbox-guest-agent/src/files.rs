//! File read, write (streamed, atomic), stat and list.

use crate::server::AgentError;
use axum::body::Body;
use axum::extract::Query;
use axum::response::Response;
use axum::Json;
use futures::StreamExt;
use rigbox_guest_proto::FileInfo;
use serde::Deserialize;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

#[derive(Deserialize)]
pub struct PathQuery {
    path: String,
    /// Octal mode for writes.
    mode: Option<String>,
    /// Owner for writes (default `developer`).
    user: Option<String>,
}

fn absolute(p: &str) -> Result<PathBuf, AgentError> {
    let path = Path::new(p);
    if !path.is_absolute() {
        return Err(AgentError::bad_request(format!("path must be absolute: {p:?}")));
    }
    Ok(path.to_path_buf())
}

fn info(path: &Path, meta: &std::fs::Metadata) -> FileInfo {
    FileInfo {
        path: path.display().to_string(),
        name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "/".into()),
        size: meta.len(),
        mode: meta.permissions().mode() & 0o7777,
        is_dir: meta.is_dir(),
        modified_unix: meta.mtime(),
    }
}

pub async fn read(Query(q): Query<PathQuery>) -> Result<Response, AgentError> {
    let path = absolute(&q.path)?;
    let meta = tokio::fs::metadata(&path).await?;
    if meta.is_dir() {
        return Err(AgentError::bad_request(format!("{} is a directory", path.display())));
    }
    let f = tokio::fs::File::open(&path).await?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(f));
    Response::builder()
        .header("content-type", "application/octet-stream")
        .header("content-length", meta.len())
        .body(body)
        .map_err(|e| AgentError::internal(e.to_string()))
}

pub async fn write(Query(q): Query<PathQuery>, body: Body) -> Result<Json<FileInfo>, AgentError> {
    let path = absolute(&q.path)?;
    let mode = match &q.mode {
        Some(m) => u32::from_str_radix(m, 8).map_err(|_| AgentError::bad_request(format!("bad mode {m:?}")))?,
        None => 0o644,
    };
    let user = crate::exec::lookup_user(q.user.as_deref())?;
    let parent = path.parent().ok_or_else(|| AgentError::bad_request("no parent directory"))?;
    if !parent.exists() {
        tokio::fs::create_dir_all(parent).await?;
        // Directories created under the user's home belong to the user.
        if parent.starts_with(&user.home) {
            let mut d = parent.to_path_buf();
            while d.starts_with(&user.home) && d != Path::new(&user.home) {
                let _ = nix::unistd::chown(&d, Some(nix::unistd::Uid::from_raw(user.uid)), Some(nix::unistd::Gid::from_raw(user.gid)));
                if !d.pop() {
                    break;
                }
            }
        }
    }
    let tmp = parent.join(format!(".{}.rigbox-upload", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
    let result = async {
        let mut f = tokio::fs::File::create(&tmp).await?;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| AgentError::bad_request(format!("upload interrupted: {e}")))?;
            f.write_all(&chunk).await?;
        }
        f.sync_all().await?;
        drop(f);
        tokio::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).await?;
        nix::unistd::chown(&tmp, Some(nix::unistd::Uid::from_raw(user.uid)), Some(nix::unistd::Gid::from_raw(user.gid)))
            .map_err(|e| AgentError::internal(e.to_string()))?;
        tokio::fs::rename(&tmp, &path).await?;
        Ok::<_, AgentError>(())
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result?;
    let meta = tokio::fs::metadata(&path).await?;
    Ok(Json(info(&path, &meta)))
}

pub async fn stat(Query(q): Query<PathQuery>) -> Result<Json<FileInfo>, AgentError> {
    let path = absolute(&q.path)?;
    let meta = tokio::fs::metadata(&path).await?;
    Ok(Json(info(&path, &meta)))
}

pub async fn list(Query(q): Query<PathQuery>) -> Result<Json<Vec<FileInfo>>, AgentError> {
    let path = absolute(&q.path)?;
    let mut rd = tokio::fs::read_dir(&path).await?;
    let mut out = Vec::new();
    while let Some(e) = rd.next_entry().await? {
        if let Ok(meta) = e.metadata().await {
            out.push(info(&e.path(), &meta));
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(out))
}
