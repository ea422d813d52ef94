//! The calling side of the peer transport: one multiplexed rpc connection
//! per peer, shared by openraft's RPCs and the server's own calls, opened
//! lazily and reopened after a failure (with backoff); dedicated
//! connections for append streams.
//!
//! A call writes one frame and waits for the frame with its id; many calls
//! are in flight on one connection at once. A writer task coalesces the
//! frames queued since its last write into one `write` (under load one
//! syscall carries many calls); a reader task hands each response to its
//! caller. The queue is bounded, so a slow or dead peer backs up into its
//! callers instead of growing memory.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_channel::{mpsc, oneshot};
use futures_lite::io::{BufReader, ReadHalf, WriteHalf};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use futures_util::StreamExt;
use glommio::net::TcpStream;

use super::wire::{self, Frame, Hello, RESP_ERR, RESP_OK};

/// How many frames may wait for the writer of one connection.
const QUEUE: usize = 4096;
/// Longest wait between reconnect attempts to a failed peer.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
const FIRST_BACKOFF: Duration = Duration::from_millis(20);

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The peer could not be reached, or the connection broke before the
    /// answer arrived (the request may or may not have been handled).
    #[error("peer {0:x} unreachable: {1}")]
    Unreachable(u64, String),
    /// The peer handled the request and answered with an error.
    #[error("{0}")]
    Remote(String),
    #[error("peer {0:x} did not answer within {1:?}")]
    Timeout(u64, Duration),
    /// No connection to the peer: the request was certainly not sent.
    #[error("peer {0:x} unreachable: {1}")]
    NotSent(u64, String),
}

/// Who this member is on the peer network.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    pub member_id: u64,
    /// 0 until known (a member joining an existing cluster learns it).
    pub cluster_id: Rc<Cell<u64>>,
    /// Outgoing connections are bound to this address (the host of the
    /// member's own `--listen-peer-urls`, when it names one), so a peer
    /// sees where a connection comes from.
    pub source_ip: Option<IpAddr>,
    pub connect_timeout: Duration,
}

/// Resolves the first usable address of a peer URL list.
pub fn resolve(urls: &[String]) -> Result<SocketAddr, String> {
    let mut last = format!("no peer URLs in {urls:?}");
    for url in urls {
        let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")).unwrap_or(url);
        let hostport = rest.trim_end_matches('/');
        match hostport.to_socket_addrs() {
            Ok(mut it) => {
                if let Some(a) = it.next() {
                    return Ok(a);
                }
            }
            Err(e) => last = format!("resolving {url}: {e}"),
        }
    }
    Err(last)
}

/// Opens a TCP connection to `addr` (bound to `source` if given) and
/// performs the handshake.
pub async fn connect(cfg: &PeerConfig, addr: SocketAddr, kind: u8, to: u64) -> Result<TcpStream, String> {
    let source = cfg.source_ip;
    let timeout = cfg.connect_timeout;
    // socket2's bind + connect_timeout on a blocking thread; the connected
    // socket is then handed to glommio.
    let fd = glommio::executor()
        .spawn_blocking(move || -> std::io::Result<i32> {
            let domain = socket2::Domain::for_address(addr);
            let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
            if let Some(ip) = source {
                if ip.is_ipv4() == addr.is_ipv4() {
                    s.bind(&SocketAddr::new(ip, 0).into())?;
                }
            }
            s.connect_timeout(&addr.into(), timeout)?;
            s.set_tcp_nodelay(true)?;
            s.set_nonblocking(true)?;
            Ok(s.into_raw_fd())
        })
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    // SAFETY: `fd` is a connected TCP socket we own (into_raw_fd above).
    let mut stream = unsafe { TcpStream::from_raw_fd(fd) };
    let hello = Hello { kind, cluster_id: cfg.cluster_id.get(), from: cfg.member_id, to };
    let handshake = async {
        stream.write_all(&hello.encode()).await?;
        stream.flush().await?;
        let mut status = [0u8; 5];
        stream.read_exact(&mut status).await?;
        let n = u32::from_le_bytes(status[1..5].try_into().unwrap_or_default()) as usize;
        let mut reason = vec![0u8; n.min(4096)];
        stream.read_exact(&mut reason).await?;
        Ok::<_, std::io::Error>((status[0], String::from_utf8_lossy(&reason).into_owned()))
    };
    let (status, reason) = glommio::timer::timeout(timeout, async { Ok(handshake.await) })
        .await
        .map_err(|_| format!("handshake with {addr} timed out"))?
        .map_err(|e| format!("handshake with {addr}: {e}"))?;
    if status != 0 {
        return Err(format!("refused by {addr}: {reason}"));
    }
    Ok(stream)
}

type Pending = Rc<RefCell<HashMap<u64, oneshot::Sender<Frame>>>>;

/// One multiplexed rpc connection.
struct Conn {
    tx: mpsc::Sender<Bytes>,
    pending: Pending,
    next_id: Cell<u64>,
    dead: Rc<Cell<bool>>,
}

impl Conn {
    fn open(stream: TcpStream, peer: u64) -> Conn {
        let (r, w) = futures_lite::io::split(stream);
        let (tx, rx) = mpsc::channel::<Bytes>(QUEUE);
        let pending: Pending = Rc::default();
        let dead = Rc::new(Cell::new(false));
        glommio::spawn_local(write_loop(w, rx, dead.clone())).detach();
        glommio::spawn_local(read_loop(BufReader::with_capacity(64 << 10, r), pending.clone(), dead.clone(), peer))
            .detach();
        Conn { tx, pending, next_id: Cell::new(1), dead }
    }
}

async fn write_loop(mut w: WriteHalf<TcpStream>, mut rx: mpsc::Receiver<Bytes>, dead: Rc<Cell<bool>>) {
    let mut buf = Vec::with_capacity(64 << 10);
    while let Some(first) = rx.next().await {
        buf.clear();
        buf.extend_from_slice(&first);
        while buf.len() < (1 << 20) {
            match rx.try_recv() {
                Ok(b) => buf.extend_from_slice(&b),
                Err(_) => break,
            }
        }
        if dead.get() || wire::write_all(&mut w, &buf).await.is_err() {
            dead.set(true);
            break;
        }
    }
    dead.set(true);
    let _ = w.close().await;
}

async fn read_loop(mut r: BufReader<ReadHalf<TcpStream>>, pending: Pending, dead: Rc<Cell<bool>>, peer: u64) {
    loop {
        match wire::read_frame(&mut r).await {
            Ok(Some(f)) => {
                if let Some(tx) = pending.borrow_mut().remove(&f.id) {
                    let _ = tx.send(f);
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(peer = %format!("{peer:x}"), error = %e, "peer connection failed");
                break;
            }
        }
        if dead.get() {
            break;
        }
    }
    dead.set(true);
    // Dropping the senders fails every waiting call.
    pending.borrow_mut().clear();
}

struct Slot {
    conn: Option<Rc<Conn>>,
    connecting: bool,
    backoff: Duration,
    retry_at: Option<Instant>,
    last_error: String,
}

/// Clears a slot's `connecting` flag when dropped.
struct Connecting<'a>(&'a Peers, u64);

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.0.slots.borrow_mut().get_mut(&self.1) {
            slot.connecting = false;
        }
    }
}

/// Connections to every peer, by member id.
pub struct Peers {
    pub cfg: PeerConfig,
    /// Members that refused our raft messages because we are not in their
    /// membership (we were removed).
    refused_by: RefCell<std::collections::HashSet<u64>>,
    urls: RefCell<HashMap<u64, Vec<String>>>,
    slots: RefCell<HashMap<u64, Slot>>,
}

impl Peers {
    pub fn new(cfg: PeerConfig) -> Rc<Peers> {
        Rc::new(Peers { cfg, refused_by: RefCell::default(), urls: RefCell::default(), slots: RefCell::default() })
    }

    /// Records (or updates) where member `id` listens.
    /// Called for every forwarded request: allocates only on a change.
    pub fn set_urls(&self, id: u64, urls: &[String]) {
        let changed = self.urls.borrow().get(&id).is_none_or(|u| u.as_slice() != urls);
        if changed {
            self.urls.borrow_mut().insert(id, urls.to_vec());
            self.slots.borrow_mut().remove(&id);
        }
    }

    pub fn urls(&self, id: u64) -> Option<Vec<String>> {
        self.urls.borrow().get(&id).cloned()
    }

    /// Forgets a removed member.
    pub fn forget(&self, id: u64) {
        self.urls.borrow_mut().remove(&id);
        self.slots.borrow_mut().remove(&id);
    }

    async fn conn(&self, to: u64) -> Result<Rc<Conn>, CallError> {
        loop {
            {
                let mut slots = self.slots.borrow_mut();
                let slot = slots.entry(to).or_insert(Slot {
                    conn: None,
                    connecting: false,
                    backoff: FIRST_BACKOFF,
                    retry_at: None,
                    last_error: String::new(),
                });
                if let Some(c) = &slot.conn {
                    if !c.dead.get() {
                        return Ok(c.clone());
                    }
                    slot.conn = None;
                }
                if let Some(at) = slot.retry_at {
                    if Instant::now() < at {
                        return Err(CallError::Unreachable(to, slot.last_error.clone()));
                    }
                }
                if !slot.connecting {
                    slot.connecting = true;
                    break;
                }
            }
            // Someone else is connecting: wait for them.
            glommio::timer::sleep(Duration::from_millis(2)).await;
        }
        // The caller may be cancelled (timed out) while connecting: the
        // guard clears `connecting` however this ends, or the peer would
        // stay "being connected" forever.
        let _guard = Connecting(self, to);
        let urls = self.urls(to).unwrap_or_default();
        let res = match resolve(&urls) {
            Ok(addr) => connect(&self.cfg, addr, wire::KIND_RPC, to).await,
            Err(e) => Err(e),
        };
        let mut slots = self.slots.borrow_mut();
        let Some(slot) = slots.get_mut(&to) else {
            return Err(CallError::Unreachable(to, "member removed".into()));
        };
        match res {
            Ok(stream) => {
                let c = Rc::new(Conn::open(stream, to));
                slot.conn = Some(c.clone());
                slot.backoff = FIRST_BACKOFF;
                slot.retry_at = None;
                Ok(c)
            }
            Err(e) => {
                slot.retry_at = Some(Instant::now() + slot.backoff);
                slot.backoff = (slot.backoff * 2).min(MAX_BACKOFF);
                if slot.last_error != e {
                    tracing::debug!(peer = %format!("{to:x}"), error = %e, "cannot reach peer");
                }
                slot.last_error = e.clone();
                Err(CallError::Unreachable(to, e))
            }
        }
    }

    /// Sends a request of type `ty` to member `to` and waits (at most
    /// `timeout`) for its answer.
    pub async fn call(&self, to: u64, ty: u8, payload: &[u8], timeout: Duration) -> Result<Bytes, CallError> {
        let conn = self.conn(to).await.map_err(|e| match e {
            CallError::Unreachable(id, m) => CallError::NotSent(id, m),
            e => e,
        })?;
        let id = conn.next_id.get();
        conn.next_id.set(id + 1);
        let (tx, rx) = oneshot::channel();
        conn.pending.borrow_mut().insert(id, tx);
        let mut frame = BytesMut::with_capacity(17 + payload.len());
        wire::put_frame(&mut frame, ty, id, payload);
        let pending = conn.pending.clone();
        let mut sender = conn.tx.clone();
        let fut = async move {
            use futures_util::SinkExt;
            if sender.send(frame.freeze()).await.is_err() {
                return Err(CallError::Unreachable(to, "connection closed".into()));
            }
            rx.await.map_err(|_| CallError::Unreachable(to, "connection closed before the answer".into()))
        };
        let res = crate::runtime::timeout(timeout, fut).await;
        let f = match res {
            Ok(r) => r,
            Err(_) => {
                pending.borrow_mut().remove(&id);
                Err(CallError::Timeout(to, timeout))
            }
        }?;
        match f.ty {
            RESP_OK => Ok(f.payload),
            RESP_ERR => {
                let m = String::from_utf8_lossy(&f.payload).into_owned();
                if m.starts_with(super::server::NOT_A_MEMBER) {
                    self.refused_by.borrow_mut().insert(to);
                }
                Err(CallError::Remote(m))
            }
            t => Err(CallError::Remote(format!("unexpected response type {t}"))),
        }
    }

    /// How many members refused us as a non-member (see `refused_by`).
    pub fn refused_count(&self) -> usize {
        self.refused_by.borrow().len()
    }
}

/// One request to whoever listens at `urls`, on a connection of its own
/// (for a member that does not know the IDs of its peers yet).
pub async fn call_once(cfg: &PeerConfig, urls: &[String], ty: u8, payload: &[u8], timeout: Duration) -> Result<Bytes, CallError> {
    let addr = resolve(urls).map_err(|e| CallError::Unreachable(0, e))?;
    let fut = async {
        let stream = connect(cfg, addr, wire::KIND_RPC, 0).await.map_err(|e| CallError::Unreachable(0, e))?;
        let (r, mut w) = futures_lite::io::split(stream);
        let mut frame = BytesMut::new();
        wire::put_frame(&mut frame, ty, 1, payload);
        wire::write_all(&mut w, &frame).await.map_err(|e| CallError::Unreachable(0, e.to_string()))?;
        let mut r = BufReader::new(r);
        let f = wire::read_frame(&mut r)
            .await
            .map_err(|e| CallError::Unreachable(0, e.to_string()))?
            .ok_or_else(|| CallError::Unreachable(0, "closed".into()))?;
        let _ = w.close().await;
        match f.ty {
            RESP_OK => Ok(f.payload),
            _ => Err(CallError::Remote(String::from_utf8_lossy(&f.payload).into_owned())),
        }
    };
    crate::runtime::timeout(timeout, fut).await.unwrap_or(Err(CallError::Timeout(0, timeout)))
}
