//! Serving tonic's gRPC services with hyper on glommio executors, with no
//! tokio runtime: an adapter from glommio's `TcpStream` to hyper's I/O
//! traits, a hyper executor that spawns on the current glommio executor, and
//! the accept loop. One client port serves HTTP/2 (gRPC) and HTTP/1.1.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener, ToSocketAddrs};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use futures_channel::mpsc;
use futures_lite::{AsyncBufRead, AsyncWrite};
use futures_util::StreamExt;
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

/// Where the raft core's accept loop puts connections: it serves up to
/// `keep` of them itself (a lone client then never pays a hop between
/// executors) and hands the others to the client executors in turn
/// (`docs/server.md`, "Threading").
pub struct Handoff {
    keep: usize,
    local: Cell<usize>,
    executors: Vec<mpsc::UnboundedSender<std::net::TcpStream>>,
    next: Cell<usize>,
}

impl Handoff {
    pub fn new(keep: usize, executors: Vec<mpsc::UnboundedSender<std::net::TcpStream>>) -> Handoff {
        Handoff { keep, local: Cell::new(0), executors, next: Cell::new(0) }
    }

    /// Hands `stream` to a client executor, or gives it back to be served
    /// here.
    fn place(&self, stream: TcpStream) -> Option<TcpStream> {
        if self.local.get() < self.keep || self.executors.is_empty() {
            return Some(stream);
        }
        // SAFETY: the fd is open for as long as `stream` lives, and the
        // borrow ends before it is dropped.
        let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
        let owned = match fd.try_clone_to_owned() {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand a connection to a client executor; serving it here");
                return Some(stream);
            }
        };
        let i = self.next.get() % self.executors.len();
        self.next.set(i + 1);
        match self.executors[i].unbounded_send(std::net::TcpStream::from(owned)) {
            // Our copy of the fd closes here; the client executor's stays.
            Ok(()) => None,
            Err(_) => Some(stream),
        }
    }
}

/// Accepts connections forever; each is served with `front` here or handed
/// to a client executor by `handoff`.
pub async fn serve(
    listener: TcpListener,
    front: crate::v3rpc::Front,
    handoff: Rc<Handoff>,
) -> io::Result<()> {
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
        let Some(stream) = handoff.place(stream) else { continue };
        handoff.local.set(handoff.local.get() + 1);
        let (front, handoff) = (front.clone(), handoff.clone());
        glommio::spawn_local(async move {
            serve_connection(stream, front).await;
            handoff.local.set(handoff.local.get() - 1);
        })
        .detach();
    }
}

/// A client executor's loop: serves each connection the raft core hands
/// it, until the raft core is gone.
pub async fn serve_handed(
    mut conns: mpsc::UnboundedReceiver<std::net::TcpStream>,
    front: crate::v3rpc::Front,
) {
    while let Some(s) = conns.next().await {
        // SAFETY: the fd comes from an owned std stream that gives it up.
        let stream = unsafe { TcpStream::from_raw_fd(s.into_raw_fd()) };
        glommio::spawn_local(serve_connection(stream, front.clone())).detach();
    }
}

/// One client connection: gRPC over HTTP/2, HTTP/1.1 for the rest.
async fn serve_connection(stream: TcpStream, front: crate::v3rpc::Front) {
    let mut conn = hyper_util::server::conn::auto::Builder::new(LocalExec);
    // No `date` header on gRPC answers, as from grpc-go (etcd): one header
    // less to build and encode per call.
    conn.http2().auto_date_header(false);
    if let Err(e) = conn.serve_connection(HyperIo::new(stream), front).await {
        tracing::debug!(error = %e, "client connection ended");
    }
}
