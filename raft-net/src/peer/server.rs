//! The answering side of the peer transport: accepts connections on the
//! peer port, checks the handshake (cluster and member IDs), and hands
//! requests to openraft or to the server's [`AppHandler`].
//!
//! A peer that sends garbage, a bad checksum, an oversized frame or the
//! wrong cluster ID is refused and logged; its connection is closed and the
//! member carries on.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_channel::mpsc;
use futures_lite::io::{BufReader, ReadHalf, WriteHalf};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use futures_util::{SinkExt, StreamExt};
use glommio::net::{TcpListener, TcpStream};
use openraft::storage::{RaftStateMachine, Snapshot};

use super::network::{SnapshotSink, SnapshotTransfer};
use super::wire::{self, Frame, Hello, Msg, RESP_ERR, RESP_OK};
use crate::types::{Raft, TypeConfig, Vote};

/// How a raft message from a non-member is refused (the sender recognises it).
pub const NOT_A_MEMBER: &str = "not a member of this cluster";

/// A boxed local future.
pub type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// The server's own peer requests (types from [`Msg::APP_FIRST`]).
pub trait AppHandler: 'static {
    fn handle(&self, from: u64, ty: u8, payload: Bytes) -> LocalFuture<Result<Bytes, String>>;
}

/// What a peer connection is served with.
pub struct PeerServer<SM: RaftStateMachine<TypeConfig>> {
    pub raft: Raft<SM>,
    pub member_id: u64,
    pub cluster_id: Rc<Cell<u64>>,
    pub app: Rc<dyn AppHandler>,
    pub snapshots: Rc<dyn SnapshotTransfer<SM::SnapshotData>>,
}

/// Accepts peer connections until the listener fails.
pub async fn serve<SM: RaftStateMachine<TypeConfig> + 'static>(listener: TcpListener, srv: Rc<PeerServer<SM>>) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let srv = srv.clone();
                glommio::spawn_local(async move {
                    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                    if let Err(e) = handle_conn(stream, srv).await {
                        tracing::warn!(remote = %peer, error = %e, "closed a peer connection");
                    }
                })
                .detach();
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting a peer connection failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn ack(stream: &mut TcpStream, status: u8, reason: &str) -> std::io::Result<()> {
    let mut b = vec![status];
    b.extend_from_slice(&(reason.len() as u32).to_le_bytes());
    b.extend_from_slice(reason.as_bytes());
    wire::write_all(stream, &b).await
}

async fn handle_conn<SM: RaftStateMachine<TypeConfig> + 'static>(
    mut stream: TcpStream,
    srv: Rc<PeerServer<SM>>,
) -> Result<(), String> {
    stream.set_nodelay(true).ok();
    let mut h = [0u8; wire::HELLO_LEN];
    glommio::timer::timeout(Duration::from_secs(5), async { Ok(stream.read_exact(&mut h).await) })
        .await
        .map_err(|_| "no handshake within 5s".to_string())?
        .map_err(|e| format!("reading the handshake: {e}"))?;
    let hello = Hello::decode(&h)?;
    let mine = srv.cluster_id.get();
    let refuse = if hello.cluster_id != 0 && mine != 0 && hello.cluster_id != mine {
        Some(format!(
            "cluster ID mismatch: member {:x} is in cluster {:x}, this member is in cluster {mine:x}",
            hello.from, hello.cluster_id
        ))
    } else if hello.to != 0 && hello.to != srv.member_id {
        Some(format!("member ID mismatch: expected {:x}, this is member {:x}", hello.to, srv.member_id))
    } else if hello.kind != wire::KIND_RPC && hello.kind != wire::KIND_STREAM {
        Some(format!("unknown connection kind {}", hello.kind))
    } else {
        None
    };
    if let Some(reason) = refuse {
        let _ = ack(&mut stream, 1, &reason).await;
        return Err(format!("refused peer {:x}: {reason}", hello.from));
    }
    ack(&mut stream, 0, "").await.map_err(|e| e.to_string())?;
    let (r, w) = futures_lite::io::split(stream);
    let r = BufReader::with_capacity(64 << 10, r);
    if hello.kind == wire::KIND_STREAM {
        serve_stream(r, w, srv, hello.from).await
    } else {
        serve_rpc(r, w, srv, hello.from).await
    }
}

fn respond(ok: Result<Bytes, String>, id: u64) -> Bytes {
    let mut b = BytesMut::new();
    match ok {
        Ok(p) => wire::put_frame(&mut b, RESP_OK, id, &p),
        Err(e) => wire::put_frame(&mut b, RESP_ERR, id, e.as_bytes()),
    }
    b.freeze()
}

struct Receiving<S> {
    vote: Vote,
    meta: wire::Meta,
    sink: Box<dyn SnapshotSink<S>>,
    offset: u64,
}

async fn serve_rpc<SM: RaftStateMachine<TypeConfig> + 'static>(
    mut r: BufReader<ReadHalf<TcpStream>>,
    w: WriteHalf<TcpStream>,
    srv: Rc<PeerServer<SM>>,
    from: u64,
) -> Result<(), String> {
    let (tx, mut rx) = mpsc::channel::<Bytes>(1024);
    let writer = glommio::spawn_local(async move {
        let mut w = w;
        let mut buf = Vec::with_capacity(64 << 10);
        while let Some(first) = rx.next().await {
            buf.clear();
            buf.extend_from_slice(&first);
            while let Ok(b) = rx.try_recv() {
                buf.extend_from_slice(&b);
                if buf.len() > (1 << 20) {
                    break;
                }
            }
            if wire::write_all(&mut w, &buf).await.is_err() {
                break;
            }
        }
        let _ = w.close().await;
    });
    let receiving: Rc<RefCell<Option<Receiving<SM::SnapshotData>>>> = Rc::default();
    let res = loop {
        let f = match wire::read_frame(&mut r).await {
            Ok(Some(f)) => f,
            Ok(None) => break Ok(()),
            Err(e) => break Err(format!("peer {from:x}: {e}")),
        };
        let id = f.id;
        // Snapshot chunks are handled in order, inline.
        if f.ty == Msg::SNAPSHOT_BEGIN || f.ty == Msg::SNAPSHOT_CHUNK {
            let out = snapshot_part(&srv, &receiving, f);
            if tx.clone().send(respond(out, id)).await.is_err() {
                break Ok(());
            }
            continue;
        }
        let srv = srv.clone();
        let mut tx = tx.clone();
        let receiving = receiving.clone();
        glommio::spawn_local(async move {
            let out = handle_request(&srv, &receiving, from, f).await;
            let _ = tx.send(respond(out, id)).await;
        })
        .detach();
    };
    drop(tx);
    writer.await;
    res
}

fn snapshot_part<SM: RaftStateMachine<TypeConfig> + 'static>(
    srv: &PeerServer<SM>,
    receiving: &RefCell<Option<Receiving<SM::SnapshotData>>>,
    f: Frame,
) -> Result<Bytes, String> {
    if f.ty == Msg::SNAPSHOT_BEGIN {
        let (vote, meta) = wire::decode_snapshot_begin(&f.payload).map_err(|e| e.to_string())?;
        let sink = srv.snapshots.sink().map_err(|e| format!("cannot receive a snapshot: {e}"))?;
        tracing::info!(last_log_id = ?meta.last_log_id, "receiving a snapshot");
        *receiving.borrow_mut() = Some(Receiving { vote, meta, sink, offset: 0 });
        return Ok(Bytes::new());
    }
    let mut slot = receiving.borrow_mut();
    let rcv = slot.as_mut().ok_or("snapshot chunk without a snapshot begin")?;
    if f.payload.len() < 8 {
        return Err("short snapshot chunk".into());
    }
    let offset = u64::from_le_bytes(f.payload[..8].try_into().unwrap_or_default());
    let expected = rcv.offset;
    let data = &f.payload[8..];
    let res = if offset != expected {
        Err(format!("snapshot chunk at offset {offset}, expected {expected}"))
    } else {
        rcv.sink.write(data).map_err(|e| format!("writing the snapshot: {e}"))
    };
    match res {
        Ok(()) => {
            rcv.offset += data.len() as u64;
            Ok(Bytes::new())
        }
        Err(e) => {
            *slot = None;
            Err(e)
        }
    }
}

async fn handle_request<SM: RaftStateMachine<TypeConfig> + 'static>(
    srv: &PeerServer<SM>,
    receiving: &RefCell<Option<Receiving<SM::SnapshotData>>>,
    from: u64,
    f: Frame,
) -> Result<Bytes, String> {
    let e = |e: wire::WireError| e.to_string();
    if f.ty < Msg::APP_FIRST && !is_member(&srv.raft, from) {
        // A removed member must not disturb the cluster with its elections.
        return Err(format!("{NOT_A_MEMBER}: {from:x} (removed?)"));
    }
    match f.ty {
        Msg::VOTE => {
            let req = wire::decode_vote_request(&f.payload).map_err(e)?;
            let resp = srv.raft.vote(req).await.map_err(|e| e.to_string())?;
            Ok(wire::encode_vote_response(&resp))
        }
        Msg::PRE_VOTE => {
            let req = wire::decode_vote_request(&f.payload).map_err(e)?;
            let resp = srv.raft.pre_vote(req).await.map_err(|e| e.to_string())?;
            Ok(wire::encode_vote_response(&resp))
        }
        Msg::APPEND => {
            let req = wire::decode_append_request(&f.payload).map_err(e)?;
            let resp = srv.raft.append_entries(req).await.map_err(|e| e.to_string())?;
            Ok(wire::encode_append_response(&resp))
        }
        Msg::TRANSFER_LEADER => {
            let req = wire::decode_transfer_leader(&f.payload).map_err(e)?;
            srv.raft.handle_transfer_leader(req).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
            Ok(Bytes::new())
        }
        Msg::SNAPSHOT_END => {
            let total = f.payload.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
            let rcv = receiving.borrow_mut().take().ok_or("snapshot end without a snapshot")?;
            if total != Some(rcv.offset) {
                return Err(format!("snapshot ended at {:?} bytes, received {}", total, rcv.offset));
            }
            let data = rcv.sink.finish().map_err(|e| format!("snapshot rejected: {e}"))?;
            let resp = srv
                .raft
                .install_full_snapshot(rcv.vote, Snapshot { meta: rcv.meta, snapshot: data })
                .await
                .map_err(|e| e.to_string())?;
            Ok(wire::encode_snapshot_response(&resp))
        }
        t if t >= Msg::APP_FIRST => srv.app.handle(from, t, f.payload).await,
        t => Err(format!("unknown peer request type {t}")),
    }
}

/// Whether `id` is in this member's current membership (an uninitialized
/// member, which knows no membership yet, accepts anyone).
fn is_member<SM: RaftStateMachine<TypeConfig>>(raft: &Raft<SM>, id: u64) -> bool {
    use openraft::async_runtime::WatchReceiver;
    let m = raft.metrics().borrow_watched().membership_config.clone();
    let mut nodes = m.membership().nodes().peekable();
    nodes.peek().is_none() || m.membership().get_node(&id).is_some()
}

async fn serve_stream<SM: RaftStateMachine<TypeConfig> + 'static>(
    mut r: BufReader<ReadHalf<TcpStream>>,
    mut w: WriteHalf<TcpStream>,
    srv: Rc<PeerServer<SM>>,
    from: u64,
) -> Result<(), String> {
    let (mut tx, rx) = mpsc::channel(64);
    let bad = Rc::new(RefCell::new(None::<String>));
    let reader = {
        let bad = bad.clone();
        glommio::spawn_local(async move {
            loop {
                match wire::read_frame(&mut r).await {
                    Ok(Some(f)) if f.ty == Msg::APPEND => match wire::decode_append_request(&f.payload) {
                        Ok(req) => {
                            if tx.send(req).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            *bad.borrow_mut() = Some(e.to_string());
                            return;
                        }
                    },
                    Ok(Some(f)) => {
                        *bad.borrow_mut() = Some(format!("unexpected type {} on an append stream", f.ty));
                        return;
                    }
                    Ok(None) => return,
                    Err(e) => {
                        *bad.borrow_mut() = Some(e.to_string());
                        return;
                    }
                }
            }
        })
    };
    let out = srv.raft.stream_append(rx);
    let mut out = Box::pin(out).ready_chunks(64);
    let mut seq = 0u64;
    let mut buf = BytesMut::with_capacity(4096);
    while let Some(items) = out.next().await {
        buf.clear();
        let mut stop = false;
        for item in items {
            let item: wire::StreamItem = item.map_err(|fatal| fatal.to_string());
            stop |= !matches!(item, Ok(Ok(_)));
            wire::put_frame(&mut buf, Msg::APPEND, seq, &wire::encode_stream_item(&item));
            seq += 1;
        }
        if wire::write_all(&mut w, &buf).await.is_err() || stop {
            break;
        }
    }
    drop(reader);
    let _ = w.close().await;
    let bad = bad.borrow_mut().take();
    match bad {
        Some(e) => Err(format!("peer {from:x} append stream: {e}")),
        None => Ok(()),
    }
}
