//! The connection limit of the client port: connections beyond `max_connections` are closed
//! at once (and counted), so a flood of clients cannot exhaust the node's memory or file
//! descriptors.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::metrics::Metrics;

/// A client connection that gives its slot back when dropped.
pub struct CountedStream {
    inner: TcpStream,
    metrics: Arc<Metrics>,
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        self.metrics.client_connections.fetch_sub(1, Relaxed);
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connected for CountedStream {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Accepted connections, at most `max` open at once.
pub fn limited_incoming(
    listener: TcpListener,
    max: usize,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = std::io::Result<CountedStream>> {
    futures::stream::unfold((listener, metrics), move |(listener, metrics)| async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    if metrics.client_connections.load(Relaxed) as usize >= max {
                        metrics.malformed_requests.fetch_add(1, Relaxed);
                        tracing::warn!(max, "client connection refused: max_connections reached");
                        drop(stream);
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    metrics.client_connections.fetch_add(1, Relaxed);
                    let counted = CountedStream { inner: stream, metrics: metrics.clone() };
                    return Some((Ok(counted), (listener, metrics)));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "client accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    })
}
