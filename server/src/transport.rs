//! Serving tonic's gRPC services with hyper on glommio executors, with no
//! tokio runtime: an adapter from glommio's `TcpStream` to hyper's I/O
//! traits, a hyper executor that spawns on the current glommio executor, and
//! the accept loop. One client port serves HTTP/2 (gRPC) and HTTP/1.1.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener, ToSocketAddrs};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_lite::{AsyncBufRead, AsyncWrite};
use glommio::net::{Preallocated, TcpListener, TcpStream};

/// A glommio TCP stream seen through hyper's I/O traits. Reads go through
/// glommio's receive buffer, so no uninitialized memory is ever exposed.
pub struct HyperIo(TcpStream<Preallocated>);

impl HyperIo {
    pub fn new(stream: TcpStream) -> HyperIo {
        HyperIo(stream.buffered())
    }
}

impl hyper::rt::Read for HyperIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let inner = Pin::new(&mut self.0);
        let data = ready!(inner.poll_fill_buf(cx))?;
        let n = data.len().min(buf.remaining());
        buf.put_slice(&data[..n]);
        Pin::new(&mut self.0).consume(n);
        Poll::Ready(Ok(()))
    }
}

impl hyper::rt::Write for HyperIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

/// hyper's executor: spawns connection-internal tasks on the current glommio
/// executor, detached (a dropped glommio task handle would cancel the task).
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalExec;

impl<F: Future + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, fut: F) {
        glommio::spawn_local(fut).detach();
    }
}

/// Parses an etcd URL (`http://host:port`, `https://…`, `unix://…` not
/// supported) into a socket address.
pub fn parse_url(url: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("URL scheme must be http or https: {url:?}"))?;
    let hostport = rest.trim_end_matches('/');
    if hostport.contains('/') {
        return Err(format!("URL must not have a path: {url:?}"));
    }
    hostport
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {url:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url:?} resolves to no address"))
}

/// Binds `addr` exclusively (no SO_REUSEPORT, unlike glommio's own bind), so
/// a second server on the same port fails with "address in use".
///
/// "Address in use" is retried for [`BIND_RETRY`]: a previous ironcd that
/// just died (even by `kill -9`) keeps its listening socket open until the
/// kernel finishes tearing down its io_uring, a few milliseconds after the
/// process is gone. A live server on the port still fails the bind.
pub fn bind_exclusive(addr: SocketAddr) -> io::Result<StdListener> {
    let deadline = std::time::Instant::now() + BIND_RETRY;
    let l = loop {
        match StdListener::bind(addr) {
            Ok(l) => break l,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    };
    l.set_nonblocking(true)?;
    Ok(l)
}

/// How long a bind keeps retrying "address in use" (see [`bind_exclusive`]).
pub const BIND_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// Hands a bound listener to the current glommio executor.
pub fn into_glommio(listener: StdListener) -> TcpListener {
    // SAFETY: the fd comes from a live, owned std listener that gives it up.
    unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) }
}

/// Accepts connections forever, serving each with `routes` (gRPC over
/// HTTP/2, HTTP/1.1 for the rest) on the current executor.
pub async fn serve(listener: TcpListener, routes: crate::v3rpc::LearnerGuard) -> io::Result<()> {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let svc = hyper_util::service::TowerToHyperService::new(routes.clone());
        glommio::spawn_local(async move {
            let conn = hyper_util::server::conn::auto::Builder::new(LocalExec);
            if let Err(e) = conn.serve_connection(HyperIo::new(stream), svc).await {
                tracing::debug!(error = %e, "client connection ended");
            }
        })
        .detach();
    }
}
