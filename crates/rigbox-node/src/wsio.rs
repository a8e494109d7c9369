//! Byte streams over WebSocket binary frames.

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// Copies bytes between `io` and the binary frames of `ws` until both directions end.
pub async fn copy_ws_bidirectional<IO, S>(io: IO, ws: tokio_tungstenite::WebSocketStream<S>) -> std::io::Result<()>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut r, mut w) = tokio::io::split(io);
    let (mut sink, mut stream) = ws.split();
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink.send(Message::Binary(bytes::Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = sink.close().await;
    };
    let down = async {
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
    tokio::join!(up, down);
    Ok(())
}
