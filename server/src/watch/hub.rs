//! The watch hub: every watcher of this executor, the synced index live
//! events are fanned out through, the unsynced watchers that catch up from
//! the store, and each stream's bounded outbound queue. Design and etcd
//! correspondence: `docs/watch.md`.
//!
//! Invariants (everything runs on one executor thread, and nothing here
//! awaits while it holds state):
//! - a **synced** watcher is in the index and has been handed every event of
//!   its range up to the store's current revision (`min_rev` = the next
//!   revision it wants);
//! - an **unsynced** watcher is in its stream's `unsynced` queue and wants
//!   history from `min_rev` on; it is read from the store only while its
//!   stream's queue has room, and becomes synced in the same step that reads
//!   up to the current revision (no apply can run in between);
//! - a **compacted** watcher was told so and gets nothing more; its ID stays
//!   taken until the client cancels it (etcd does the same).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use ironcd_engine::btree::{Db, Snapshot};
use ironcd_engine::mvcc::{self, EventType, KvReader, KvStore};
use prost::Message;
use tonic::Status;

use super::index::{Index, Shape, WatcherKey};
use crate::convert::{self, HeaderInfo};
use crate::etcd_server::EtcdServer;
use crate::pb::etcdserverpb::{watch_request, WatchCreateRequest, WatchRequest, WatchResponse};
use crate::pb::mvccpb;

/// A stream's handle in the hub.
pub type StreamKey = u64;

/// etcd's `clientv3.InvalidWatchID`.
const INVALID_WATCH_ID: i64 = -1;
/// Revisions with events one history response carries at most (etcd's `watchBatchMaxRevs`).
const HISTORY_BATCH_REVS: usize = 1000;
/// Watchers caught up per turn of the sync task before it yields.
const SYNC_BUDGET: usize = 64;
/// How often the sync task looks for work it was not told about (etcd: 100 ms).
const SYNC_TICK: Duration = Duration::from_millis(100);

/// etcd's `grpcOverheadBytes`.
const GRPC_OVERHEAD: usize = 512 * 1024;

pub const ERR_EMPTY_RANGE: &str = "mvcc: watcher range is empty";
pub const ERR_DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

/// Bounds of one stream's outbound queue. Event responses are queued only
/// while both hold; control responses (created, canceled, progress) always
/// are, and the stream stops reading requests while the queue is full.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_responses: usize,
    pub max_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_responses: 256,
            max_bytes: 4 << 20,
        }
    }
}

impl Limits {
    /// Defaults, overridable (for tests) with `IRONCD_WATCH_BUFFER_RESPONSES`
    /// and `IRONCD_WATCH_BUFFER_BYTES`.
    pub fn from_env() -> Limits {
        let d = Limits::default();
        let get = |k: &str, d: usize| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|&n| n > 0)
                .unwrap_or(d)
        };
        Limits {
            max_responses: get("IRONCD_WATCH_BUFFER_RESPONSES", d.max_responses),
            max_bytes: get("IRONCD_WATCH_BUFFER_BYTES", d.max_bytes),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Synced,
    Unsynced,
    Compacted,
}

struct Watcher {
    stream: StreamKey,
    id: i64,
    key: Vec<u8>,
    /// In the store's form: empty = one key, "\0" = from key.
    range_end: Vec<u8>,
    shape: Shape,
    /// The next revision this watcher wants.
    min_rev: i64,
    state: State,
    prev_kv: bool,
    fragment: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    /// etcd's `progress[id]`: no events were sent since the last tick.
    progress_due: bool,
}

impl Watcher {
    fn keeps(&self, ty: EventType) -> bool {
        match ty {
            EventType::Put => !self.no_put,
            EventType::Delete => !self.no_delete,
        }
    }
}

struct Queued {
    resp: WatchResponse,
    bytes: usize,
}

struct StreamState {
    /// Watch ID -> watcher, compacted ones included.
    ids: BTreeMap<i64, WatcherKey>,
    next_id: i64,
    queue: VecDeque<Queued>,
    queued_bytes: usize,
    out_waker: Option<Waker>,
    recv_waker: Option<Waker>,
    unsynced: VecDeque<WatcherKey>,
    in_ready: bool,
    deferred_progress: bool,
    failed: Option<Status>,
    ended: bool,
}

#[derive(Default)]
struct Inner {
    watchers: HashMap<WatcherKey, Watcher>,
    streams: HashMap<StreamKey, StreamState>,
    index: Index,
    /// Streams with unsynced watchers and room in their queue.
    ready: VecDeque<StreamKey>,
    next_watcher: WatcherKey,
    next_stream: StreamKey,
}

/// A wake-up flag for the sync task.
#[derive(Default)]
struct Notify {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    fn wait(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.set.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }
}

pub struct WatchHub {
    kv: Arc<KvStore<Db>>,
    inner: RefCell<Inner>,
    server: RefCell<Weak<EtcdServer>>,
    /// Fragments stay under this (etcd: `--max-request-bytes` + 512 KiB).
    max_request_bytes: Cell<usize>,
    limits: Limits,
    progress_interval: Duration,
    sync: Notify,
}

fn has_room(st: &StreamState, l: &Limits) -> bool {
    st.queue.len() < l.max_responses && st.queued_bytes < l.max_bytes
}

fn wake(w: &mut Option<Waker>) {
    if let Some(w) = w.take() {
        w.wake();
    }
}

fn push(st: &mut StreamState, resp: WatchResponse) {
    let bytes = resp.encoded_len();
    st.queued_bytes += bytes;
    st.queue.push_back(Queued { resp, bytes });
    wake(&mut st.out_waker);
}

/// One event's contribution to a response's encoded size (field 11).
fn event_field_len(e: &mvccpb::Event) -> usize {
    let n = e.encoded_len();
    1 + prost::encoding::encoded_len_varint(n as u64) + n
}

/// etcd's `sendFragments`: splits a response whose encoding reaches
/// `max` bytes into pieces under it (at least one event each); every piece
/// but the last has `fragment` set.
fn fragments(mut resp: WatchResponse, max: usize) -> Vec<WatchResponse> {
    if resp.events.len() < 2 || resp.encoded_len() < max {
        return vec![resp];
    }
    let events = std::mem::take(&mut resp.events);
    resp.fragment = true;
    let base = resp.encoded_len();
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut size = base;
    for ev in events {
        let l = event_field_len(&ev);
        if !cur.is_empty() && size + l >= max {
            out.push(WatchResponse {
                events: std::mem::take(&mut cur),
                ..resp.clone()
            });
            size = base;
        }
        size += l;
        cur.push(ev);
    }
    out.push(WatchResponse {
        events: cur,
        fragment: false,
        ..resp
    });
    out
}

impl WatchHub {
    pub fn new(kv: Arc<KvStore<Db>>, limits: Limits, progress_interval: Duration) -> Rc<WatchHub> {
        Rc::new(WatchHub {
            kv,
            inner: RefCell::default(),
            server: RefCell::new(Weak::new()),
            max_request_bytes: Cell::new(1_572_864),
            limits,
            progress_interval,
            sync: Notify::default(),
        })
    }

    /// Connects the hub to the member (response headers, request size) and
    /// starts the task that catches unsynced watchers up.
    pub fn start(self: &Rc<Self>, srv: &Rc<EtcdServer>) {
        *self.server.borrow_mut() = Rc::downgrade(srv);
        // etcd's watch server: `--max-request-bytes` plus gRPC's overhead allowance.
        self.max_request_bytes
            .set(srv.cfg.max_request_bytes as usize + GRPC_OVERHEAD);
        let hub = self.clone();
        glommio::spawn_local(async move {
            loop {
                let tick = async {
                    glommio::timer::sleep(SYNC_TICK).await;
                };
                futures_lite::future::or(hub.sync.wait(), tick).await;
                while hub.sync_round() > 0 {
                    glommio::yield_if_needed().await;
                }
            }
        })
        .detach();
    }

    pub fn progress_interval(&self) -> Duration {
        self.progress_interval
    }

    fn header_info(&self) -> HeaderInfo {
        self.server
            .borrow()
            .upgrade()
            .map(|s| s.header_info())
            .unwrap_or_default()
    }

    fn reader(&self) -> Result<KvReader<Snapshot>, mvcc::MvccError> {
        self.kv.read()
    }

    // ------------------------------------------------------------ streams

    pub fn open_stream(&self) -> StreamKey {
        let mut g = self.inner.borrow_mut();
        let key = g.next_stream;
        g.next_stream += 1;
        g.streams.insert(
            key,
            StreamState {
                ids: BTreeMap::new(),
                next_id: 0,
                queue: VecDeque::new(),
                queued_bytes: 0,
                out_waker: None,
                recv_waker: None,
                unsynced: VecDeque::new(),
                in_ready: false,
                deferred_progress: false,
                failed: None,
                ended: false,
            },
        );
        key
    }

    /// Removes a stream and every watcher on it.
    pub fn close_stream(&self, s: StreamKey) {
        let removed = {
            let mut g = self.inner.borrow_mut();
            let Some(st) = g.streams.remove(&s) else {
                return;
            };
            for wk in st.ids.values() {
                g.remove_watcher(*wk);
            }
            st
        };
        drop(removed);
    }

    /// Ends the stream with `status` (a broken request stream).
    pub fn fail_stream(&self, s: StreamKey, status: Status) {
        let mut g = self.inner.borrow_mut();
        if let Some(st) = g.streams.get_mut(&s) {
            st.failed = Some(status);
            wake(&mut st.out_waker);
        }
    }

    /// The next response for the stream's client.
    pub fn poll_response(
        &self,
        s: StreamKey,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<WatchResponse, Status>>> {
        let mut g = self.inner.borrow_mut();
        let g = &mut *g;
        let Some(st) = g.streams.get_mut(&s) else {
            return Poll::Ready(None);
        };
        if st.ended {
            return Poll::Ready(None);
        }
        if let Some(e) = st.failed.take() {
            st.ended = true;
            return Poll::Ready(Some(Err(e)));
        }
        let Some(q) = st.queue.pop_front() else {
            st.out_waker = Some(cx.waker().clone());
            return Poll::Pending;
        };
        st.queued_bytes -= q.bytes;
        if st.queue.len() < self.limits.max_responses {
            wake(&mut st.recv_waker);
        }
        if !st.unsynced.is_empty() && !st.in_ready && has_room(st, &self.limits) {
            st.in_ready = true;
            g.ready.push_back(s);
            self.sync.notify();
        }
        Poll::Ready(Some(Ok(q.resp)))
    }

    /// Ready while the stream's queue can take another request's answer
    /// (etcd blocks its receive loop on a full control channel likewise).
    pub fn poll_recv_room(&self, s: StreamKey, cx: &mut Context<'_>) -> Poll<()> {
        let mut g = self.inner.borrow_mut();
        match g.streams.get_mut(&s) {
            Some(st) if st.queue.len() >= self.limits.max_responses => {
                st.recv_waker = Some(cx.waker().clone());
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    }

    // ----------------------------------------------------------- requests

    pub fn handle(&self, s: StreamKey, req: WatchRequest) {
        match req.request_union {
            Some(watch_request::RequestUnion::CreateRequest(c)) => self.create(s, c),
            Some(watch_request::RequestUnion::CancelRequest(c)) => self.cancel(s, c.watch_id),
            Some(watch_request::RequestUnion::ProgressRequest(_)) => self.progress_request(s),
            // etcd ignores a request it does not know.
            None => {}
        }
    }

    fn create(&self, s: StreamKey, c: WatchCreateRequest) {
        let hi = self.header_info();
        let reader = match self.reader() {
            Ok(r) => r,
            Err(e) => return self.fail_stream(s, crate::error::mvcc(e)),
        };
        let cur = reader.revision();
        let mut g = self.inner.borrow_mut();
        let g = &mut *g;
        let Some(st) = g.streams.get_mut(&s) else {
            return;
        };
        // etcd's watch server: an empty key is "\0", the smallest key.
        let key = if c.key.is_empty() { vec![0] } else { c.key };
        let range_end = c.range_end;
        let is_range = !(range_end.is_empty() || range_end == [0]);
        let refuse = |st: &mut StreamState, reason: &str| {
            push(
                st,
                WatchResponse {
                    header: hi.header(cur),
                    watch_id: INVALID_WATCH_ID,
                    created: true,
                    canceled: true,
                    cancel_reason: reason.to_string(),
                    ..Default::default()
                },
            )
        };
        if is_range && key >= range_end {
            return refuse(st, ERR_EMPTY_RANGE);
        }
        let id = if c.watch_id == 0 {
            // etcd's AutoWatchID: the next ID not in use.
            while st.ids.contains_key(&st.next_id) {
                st.next_id += 1;
            }
            st.next_id += 1;
            st.next_id - 1
        } else if st.ids.contains_key(&c.watch_id) {
            return refuse(st, ERR_DUPLICATE_ID);
        } else {
            c.watch_id
        };
        push(
            st,
            WatchResponse {
                header: hi.header(cur),
                watch_id: id,
                created: true,
                ..Default::default()
            },
        );
        let start = if c.start_revision == 0 {
            cur + 1
        } else {
            c.start_revision
        };
        let synced = start > cur;
        let shape = Shape::of(&key, &range_end);
        let w = Watcher {
            stream: s,
            id,
            key,
            range_end,
            shape,
            min_rev: if synced { start.max(cur + 1) } else { start },
            state: if synced {
                State::Synced
            } else {
                State::Unsynced
            },
            prev_kv: c.prev_kv,
            fragment: c.fragment,
            no_put: c.filters.contains(&0),
            no_delete: c.filters.contains(&1),
            progress_notify: c.progress_notify,
            progress_due: true,
        };
        let wk = g.next_watcher;
        g.next_watcher += 1;
        st.ids.insert(id, wk);
        if synced {
            g.index.insert(&w.key, &w.shape, wk);
        } else {
            st.unsynced.push_back(wk);
            if !st.in_ready && has_room(st, &self.limits) {
                st.in_ready = true;
                g.ready.push_back(s);
            }
            self.sync.notify();
        }
        g.watchers.insert(wk, w);
    }

    fn cancel(&self, s: StreamKey, id: i64) {
        let hi = self.header_info();
        let cur = self.kv.read().map(|r| r.revision()).unwrap_or_default();
        let mut g = self.inner.borrow_mut();
        let Some(wk) = g.streams.get_mut(&s).and_then(|st| st.ids.remove(&id)) else {
            return;
        };
        g.remove_watcher(wk);
        let st = g.streams.get_mut(&s).expect("stream checked above");
        push(
            st,
            WatchResponse {
                header: hi.header(cur),
                watch_id: id,
                canceled: true,
                ..Default::default()
            },
        );
        g.check_deferred_progress(s, &hi, cur);
    }

    /// Answered with watch ID -1 and the current revision once every
    /// watcher on the stream is synced (so the revision promises that
    /// nothing at or below it is still to come).
    fn progress_request(&self, s: StreamKey) {
        let hi = self.header_info();
        let cur = self.kv.read().map(|r| r.revision()).unwrap_or_default();
        let mut g = self.inner.borrow_mut();
        if let Some(st) = g.streams.get_mut(&s) {
            st.deferred_progress = true;
        }
        g.check_deferred_progress(s, &hi, cur);
    }

    /// etcd's progress ticker: idle synced watchers with `progress_notify`
    /// get an empty response at the current revision.
    pub fn progress_tick(&self, s: StreamKey) {
        let hi = self.header_info();
        let cur = self.kv.read().map(|r| r.revision()).unwrap_or_default();
        let mut g = self.inner.borrow_mut();
        let g = &mut *g;
        let Some(st) = g.streams.get_mut(&s) else {
            return;
        };
        let keys: Vec<WatcherKey> = st.ids.values().copied().collect();
        for wk in keys {
            let Some(w) = g.watchers.get_mut(&wk) else {
                continue;
            };
            if !w.progress_notify {
                continue;
            }
            if w.progress_due && w.state == State::Synced && has_room(st, &self.limits) {
                push(
                    st,
                    WatchResponse {
                        header: hi.header(cur),
                        watch_id: w.id,
                        ..Default::default()
                    },
                );
            }
            w.progress_due = true;
        }
    }

    // ------------------------------------------------------- live events

    /// The apply hook: `events` (revision order) were just published, and
    /// the store is at `revision`.
    pub fn on_apply(&self, events: &mut Vec<mvcc::Event>, _revision: i64) {
        if events.is_empty() {
            return;
        }
        let mut g = self.inner.borrow_mut();
        if g.index.len() == 0 {
            events.clear();
            return;
        }
        let hi = self.header_info();
        let max_fragment = self.max_request_bytes.get();
        let mut reader: Option<KvReader<Snapshot>> = None;
        let mut matches: Vec<(WatcherKey, usize)> = Vec::new();
        let mut start = 0;
        while start < events.len() {
            let rev = events[start].kv.mod_revision;
            let end = events[start..]
                .iter()
                .position(|e| e.kv.mod_revision != rev)
                .map_or(events.len(), |n| start + n);
            let group = &events[start..end];
            start = end;
            matches.clear();
            for (i, ev) in group.iter().enumerate() {
                g.index.stab(&ev.kv.key, |wk| matches.push((wk, i)));
            }
            if matches.is_empty() {
                continue;
            }
            matches.sort_by_key(|m| m.0);
            let mut pbs: Vec<Option<mvccpb::Event>> = vec![None; group.len()];
            let mut prevs: Vec<Option<Option<mvccpb::KeyValue>>> = vec![None; group.len()];
            let mut at = 0;
            while at < matches.len() {
                let wk = matches[at].0;
                let run_end = matches[at..]
                    .iter()
                    .position(|m| m.0 != wk)
                    .map_or(matches.len(), |n| at + n);
                let idxs = &matches[at..run_end];
                at = run_end;
                let g = &mut *g;
                let Some(w) = g.watchers.get_mut(&wk) else {
                    continue;
                };
                if rev < w.min_rev || w.state != State::Synced {
                    continue;
                }
                let mut out = Vec::with_capacity(idxs.len());
                for &(_, i) in idxs {
                    let ev = &group[i];
                    if !w.keeps(ev.r#type) {
                        continue;
                    }
                    let mut pb = pbs[i]
                        .get_or_insert_with(|| convert::event(ev.clone()))
                        .clone();
                    let is_create =
                        ev.r#type == EventType::Put && ev.kv.create_revision == ev.kv.mod_revision;
                    if w.prev_kv && !is_create && pb.prev_kv.is_none() {
                        pb.prev_kv = prevs[i]
                            .get_or_insert_with(|| {
                                if reader.is_none() {
                                    reader = self.reader().ok();
                                }
                                reader.as_ref().and_then(|r| prev_kv(r, &ev.kv.key, rev))
                            })
                            .clone();
                    }
                    out.push(pb);
                }
                if out.is_empty() {
                    continue;
                }
                let Some(st) = g.streams.get_mut(&w.stream) else {
                    continue;
                };
                if has_room(st, &self.limits) {
                    let resp = WatchResponse {
                        header: hi.header(rev),
                        watch_id: w.id,
                        events: out,
                        ..Default::default()
                    };
                    push_events(st, resp, w.fragment, max_fragment);
                    w.progress_due = false;
                } else {
                    // The client reads slower than the store changes: catch
                    // this watcher up from the store later, from `rev` on.
                    tracing::debug!(
                        watch_id = w.id,
                        revision = rev,
                        "watch stream is full; watcher falls back to catch-up"
                    );
                    w.min_rev = rev;
                    w.state = State::Unsynced;
                    g.index.remove(&w.key, &w.shape, wk);
                    st.unsynced.push_back(wk);
                }
            }
        }
        events.clear();
    }

    /// The store was replaced by a snapshot from the leader: every synced
    /// watcher (which had seen everything up to `prev_revision`) catches up
    /// from the new store after `prev_revision`, as if it had fallen behind.
    pub fn on_restore(&self, prev_revision: i64) {
        let mut g = self.inner.borrow_mut();
        let g = &mut *g;
        let keys: Vec<WatcherKey> = g.watchers.keys().copied().collect();
        for wk in keys {
            let Some(w) = g.watchers.get_mut(&wk) else { continue };
            if w.state != State::Synced {
                continue;
            }
            w.min_rev = w.min_rev.max(prev_revision + 1);
            w.state = State::Unsynced;
            g.index.remove(&w.key, &w.shape, wk);
            if let Some(st) = g.streams.get_mut(&w.stream) {
                st.unsynced.push_back(wk);
                if !st.in_ready {
                    st.in_ready = true;
                    g.ready.push_back(w.stream);
                }
            }
        }
        self.sync.notify();
    }

    // ----------------------------------------------------------- catch-up

    /// One turn of the sync task: catches up to `SYNC_BUDGET` unsynced
    /// watchers whose streams have room. Returns how many it served.
    fn sync_round(&self) -> usize {
        let reader = match self.reader() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "watch catch-up could not read the store");
                return 0;
            }
        };
        let hi = self.header_info();
        let max_fragment = self.max_request_bytes.get();
        let mut g = self.inner.borrow_mut();
        let g = &mut *g;
        let mut done = 0;
        while done < SYNC_BUDGET {
            let Some(s) = g.ready.pop_front() else { break };
            let Some(st) = g.streams.get_mut(&s) else {
                continue;
            };
            st.in_ready = false;
            while done < SYNC_BUDGET && has_room(st, &self.limits) {
                let Some(wk) = st.unsynced.pop_front() else {
                    break;
                };
                let Some(w) = g.watchers.get_mut(&wk) else {
                    continue;
                };
                if w.state != State::Unsynced {
                    continue;
                }
                done += 1;
                if sync_one(w, st, &reader, &hi, max_fragment) {
                    g.index.insert(&w.key, &w.shape, wk);
                } else if w.state == State::Unsynced {
                    st.unsynced.push_back(wk);
                }
            }
            if !st.unsynced.is_empty() && has_room(st, &self.limits) {
                st.in_ready = true;
                g.ready.push_back(s);
            }
            g.check_deferred_progress(s, &hi, reader.revision());
        }
        done
    }
}

/// The key at `rev - 1` (etcd's prev_kv), if still readable.
fn prev_kv(r: &KvReader<Snapshot>, key: &[u8], rev: i64) -> Option<mvccpb::KeyValue> {
    let req = mvcc::RangeRequest {
        key: key.to_vec(),
        revision: rev - 1,
        ..Default::default()
    };
    r.range(&req).ok()?.kvs.into_iter().next().map(convert::kv)
}

fn push_events(st: &mut StreamState, resp: WatchResponse, fragment: bool, max: usize) {
    if fragment {
        for r in fragments(resp, max) {
            push(st, r);
        }
    } else {
        push(st, resp);
    }
}

/// Sends one history batch to an unsynced watcher (or its compaction
/// notice). Returns true when the watcher reached the current revision and
/// is now synced (the caller indexes it).
fn sync_one(
    w: &mut Watcher,
    st: &mut StreamState,
    r: &KvReader<Snapshot>,
    hi: &HeaderInfo,
    max_fragment: usize,
) -> bool {
    let (cur, compact) = (r.revision(), r.compact_revision());
    let compacted = |w: &mut Watcher, st: &mut StreamState| {
        // etcd: the response carries only the compact revision (header
        // revision 0) and the watcher is dropped from the store's groups.
        push(
            st,
            WatchResponse {
                header: hi.header(0),
                watch_id: w.id,
                compact_revision: compact,
                canceled: true,
                ..Default::default()
            },
        );
        w.state = State::Compacted;
        false
    };
    if w.min_rev < compact {
        return compacted(w, st);
    }
    let req = mvcc::WatchEventsRequest {
        key: w.key.clone(),
        range_end: w.range_end.clone(),
        start_revision: w.min_rev,
        end_revision: cur,
        prev_kv: w.prev_kv,
        max_revisions: HISTORY_BATCH_REVS,
    };
    let resp = match r.watch_events(&req) {
        Ok(resp) => resp,
        Err(mvcc::MvccError::Compacted) => return compacted(w, st),
        Err(e) => {
            tracing::error!(error = %e, watch_id = w.id, "watch catch-up failed; cancelling the watcher");
            push(
                st,
                WatchResponse {
                    header: hi.header(cur),
                    watch_id: w.id,
                    canceled: true,
                    cancel_reason: e.to_string(),
                    ..Default::default()
                },
            );
            w.state = State::Compacted;
            return false;
        }
    };
    let events: Vec<mvccpb::Event> = resp
        .events
        .into_iter()
        .filter(|e| w.keeps(e.r#type))
        .map(convert::event)
        .collect();
    if !events.is_empty() {
        let out = WatchResponse {
            header: hi.header(cur),
            watch_id: w.id,
            events,
            ..Default::default()
        };
        push_events(st, out, w.fragment, max_fragment);
        w.progress_due = false;
    }
    match resp.next_revision {
        Some(n) => {
            w.min_rev = n;
            false
        }
        None => {
            w.min_rev = cur + 1;
            w.state = State::Synced;
            true
        }
    }
}

impl Inner {
    fn remove_watcher(&mut self, wk: WatcherKey) {
        let Some(w) = self.watchers.remove(&wk) else {
            return;
        };
        match w.state {
            State::Synced => {
                self.index.remove(&w.key, &w.shape, wk);
            }
            State::Unsynced => {
                if let Some(st) = self.streams.get_mut(&w.stream) {
                    st.unsynced.retain(|&x| x != wk);
                }
            }
            State::Compacted => {}
        }
    }

    /// Answers a pending progress request once every live watcher on the
    /// stream is synced.
    fn check_deferred_progress(&mut self, s: StreamKey, hi: &HeaderInfo, cur: i64) {
        let Some(st) = self.streams.get_mut(&s) else {
            return;
        };
        if !st.deferred_progress {
            return;
        }
        let all_synced = st.ids.values().all(|wk| {
            self.watchers
                .get(wk)
                .is_none_or(|w| w.state != State::Unsynced)
        });
        if all_synced {
            st.deferred_progress = false;
            push(
                st,
                WatchResponse {
                    header: hi.header(cur),
                    watch_id: INVALID_WATCH_ID,
                    ..Default::default()
                },
            );
        }
    }
}

/// A future that is ready when the hub's stream has room for another answer.
pub struct RecvRoom<'a> {
    pub hub: &'a WatchHub,
    pub stream: StreamKey,
}

impl Future for RecvRoom<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.hub.poll_recv_room(self.stream, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(key: &[u8], value_len: usize) -> mvccpb::Event {
        mvccpb::Event {
            r#type: 0,
            kv: Some(mvccpb::KeyValue {
                key: key.to_vec(),
                value: vec![7; value_len],
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    #[test]
    fn fragments_like_etcd() {
        let resp = WatchResponse {
            watch_id: 3,
            events: (0..10).map(|i| ev(&[i], 100)).collect(),
            ..Default::default()
        };
        // Under the limit, or a single event: untouched.
        assert_eq!(fragments(resp.clone(), 1 << 20).len(), 1);
        let one = WatchResponse {
            events: vec![ev(b"a", 5000)],
            ..Default::default()
        };
        assert_eq!(fragments(one, 100).len(), 1);
        let parts = fragments(resp.clone(), 350);
        assert!(parts.len() > 1);
        assert!(parts[..parts.len() - 1].iter().all(|p| p.fragment));
        assert!(!parts.last().unwrap().fragment);
        assert!(parts
            .iter()
            .all(|p| p.encoded_len() < 350 || p.events.len() == 1));
        let all: Vec<_> = parts.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(all, resp.events);
    }
}
