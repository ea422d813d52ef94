//! A glommio [`AsyncRuntime`] for openraft (built with `single-threaded`).
//!
//! Everything here lives on one glommio executor: tasks are spawned with
//! `glommio::spawn_local`, timers are glommio timers, and the channels are
//! `Rc`/`RefCell` based (no atomics, no locks), which is what openraft's
//! `single-threaded` feature allows (it drops the `Send`/`Sync` bounds).
//!
//! Semantics that openraft relies on and that differ from glommio's defaults:
//! - **Spawned tasks are detached.** Dropping a glommio `Task` cancels it;
//!   dropping a tokio `JoinHandle` does not. [`GlommioRuntime::spawn`]
//!   detaches the task at once and returns a [`JoinHandle`] that only
//!   observes it.
//! - **Panics are caught** inside the task and reported through the
//!   [`JoinHandle`] as [`JoinError::Panicked`] (as tokio does), instead of
//!   unwinding through the executor.
//! - **Bounded MPSC with exact capacity**: `channel(n)` holds at most `n`
//!   messages (tokio's semantics; `futures::mpsc` would allow `n + senders`).
//! - **Watch** follows tokio's `watch`: versioned, `changed()` marks the
//!   newest value seen, fails once every sender is gone and nothing is
//!   unseen; `send` fails (and does not store the value) without receivers.
//!
//! [`AsyncRuntime::block_on`] builds a fresh glommio `LocalExecutor` per
//! call (used by test suites and `TypeConfigExt::run`); it must not be called
//! from inside a glommio executor. The server creates its own executors and
//! never calls it.
//!
//! Validated by `openraft_rt::testing::Suite::<GlommioRuntime>::test_all()`
//! (`raft-net/tests/runtime_suite.rs`).

use std::any::Any;
use std::cell::{Cell, Ref, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use glommio::timer::Timer;
use openraft_rt::{
    AsyncRuntime, Mpsc, MpscReceiver, MpscSender, MpscWeakSender, Oneshot, OneshotSender, OptionalSend,
    OptionalSync, SendError, TryRecvError, Watch, WatchReceiver, WatchSender,
};

/// The glommio runtime for openraft. A zero-sized marker: all state lives in
/// the current thread's glommio executor.
#[derive(Debug, Default, Clone, Copy)]
pub struct GlommioRuntime;

impl AsyncRuntime for GlommioRuntime {
    type JoinError = JoinError;
    type JoinHandle<T: OptionalSend + 'static> = JoinHandle<T>;
    type Sleep = Sleep;
    type Instant = Instant;
    type TimeoutError = Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = Timeout<T>;
    type ThreadLocalRng = rand::rngs::ThreadRng;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        let task = glommio::spawn_local(AssertUnwindSafe(future).catch_unwind()).detach();
        JoinHandle { inner: task }
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        Sleep::until(Instant::now() + duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Sleep::until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(duration: Duration, future: F) -> Self::Timeout<R, F> {
        Timeout { future, sleep: Self::sleep(duration) }
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(deadline: Self::Instant, future: F) -> Self::Timeout<R, F> {
        Timeout { future, sleep: Self::sleep_until(deadline) }
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        matches!(join_error, JoinError::Panicked(_))
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        rand::rng()
    }

    type Mpsc = LocalMpsc;
    type Watch = LocalWatch;
    type Oneshot = LocalOneshot;
    type Mutex<T: OptionalSend + 'static> = Mutex<T>;

    fn new(_threads: usize) -> Self {
        GlommioRuntime
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .name("openraft-block-on")
            .make()
            .expect("cannot create a glommio executor (is this thread already running one?)");
        ex.run(future)
    }
}

// ---------------------------------------------------------------- tasks

/// Why a spawned task produced no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinError {
    /// The task panicked; the panic message, when it was a string.
    Panicked(String),
    /// The task was dropped before it finished (its executor shut down).
    Cancelled,
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinError::Panicked(m) => write!(f, "task panicked: {m}"),
            JoinError::Cancelled => write!(f, "task was cancelled"),
        }
    }
}

impl std::error::Error for JoinError {}

fn panic_message(p: Box<dyn Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Handle to a detached task. Dropping it does **not** cancel the task.
pub struct JoinHandle<T> {
    inner: glommio::task::JoinHandle<std::thread::Result<T>>,
}

impl<T> JoinHandle<T> {
    /// Cancels the task (like tokio's `abort`); awaiting the handle then
    /// yields [`JoinError::Cancelled`] unless it already finished.
    pub fn abort(&self) {
        self.inner.cancel();
    }
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinHandle")
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.inner).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(Err(JoinError::Cancelled)),
            Poll::Ready(Some(Ok(v))) => Poll::Ready(Ok(v)),
            Poll::Ready(Some(Err(p))) => Poll::Ready(Err(JoinError::Panicked(panic_message(p)))),
        }
    }
}

// ---------------------------------------------------------------- time

/// A glommio timer to a deadline. The timer is registered with the executor
/// on first poll, so a `Sleep` may be created outside an executor.
#[derive(Debug)]
pub struct Sleep {
    deadline: Instant,
    timer: Option<Timer>,
}

impl Sleep {
    fn until(deadline: Instant) -> Sleep {
        Sleep { deadline, timer: None }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let now = Instant::now();
        if now >= self.deadline {
            self.timer = None;
            return Poll::Ready(());
        }
        let deadline = self.deadline;
        let timer = self.timer.get_or_insert_with(|| Timer::new(deadline - now));
        match Pin::new(timer).poll(cx) {
            Poll::Ready(_) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The deadline of a [`Timeout`] passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline has elapsed")
    }
}

impl std::error::Error for Elapsed {}

pin_project_lite::pin_project! {
    /// A future bounded by a deadline `D`: a timer of its own ([`Sleep`]) or
    /// a place in a shared bucket ([`Deadlines::bound`]). The inner future is
    /// polled first, so one that is ready wins over an elapsed deadline.
    #[derive(Debug)]
    pub struct Timeout<F, D = Sleep> {
        #[pin]
        future: F,
        sleep: D,
    }
}

impl<F: Future, D: Future<Output = ()> + Unpin> Future for Timeout<F, D> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.future.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match Pin::new(this.sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// `future`, bounded by `duration`. Unlike `glommio::timer::timeout` (an
/// `async fn`, whose state keeps its argument *and* the running future:
/// twice the inner future's size, measured 3.7 KB for a proposal against
/// 1.8 KB), this is a plain struct around the future, and its timer is
/// created only when the future is not ready at its first poll.
pub fn timeout<F: Future>(duration: Duration, future: F) -> Timeout<F> {
    Timeout { future, sleep: Sleep::until(Instant::now() + duration) }
}

// ---------------------------------------------------------------- shared deadlines

/// Deadlines of one duration for many futures (a server's request
/// timeout), shared at a coarse grain. Futures that start within the same
/// `grain` share a bucket; one glommio timer per bucket fires it, between 0
/// and `grain` after each future's own deadline (never before). A future
/// joins and leaves its bucket with a slab insert and remove, where a timer
/// of its own costs an allocation and an insert into and a removal from the
/// reactor's timer map (docs/server.md, "Future sizes").
///
/// Must be used on a glommio executor (the bucket's timer is a task).
pub struct Deadlines {
    duration: Duration,
    grain: Duration,
    current: RefCell<Option<Rc<Bucket>>>,
}

#[derive(Debug)]
struct Bucket {
    opened: Instant,
    fired: Cell<bool>,
    wakers: RefCell<slab::Slab<Waker>>,
}

impl Deadlines {
    pub fn new(duration: Duration, grain: Duration) -> Deadlines {
        Deadlines { duration, grain, current: RefCell::new(None) }
    }

    /// `future`, failing with [`Elapsed`] once the deadline has passed.
    pub fn bound<F: Future>(&self, future: F) -> Bounded<F> {
        let now = Instant::now();
        let mut current = self.current.borrow_mut();
        let bucket = match &*current {
            Some(b) if now < b.opened + self.grain => b.clone(),
            _ => {
                let b = Rc::new(Bucket { opened: now, fired: Cell::new(false), wakers: RefCell::default() });
                let fire = b.clone();
                let after = self.duration + self.grain;
                glommio::spawn_local(async move {
                    glommio::timer::sleep(after).await;
                    fire.fired.set(true);
                    for (_, w) in fire.wakers.borrow().iter() {
                        w.wake_by_ref();
                    }
                })
                .detach();
                *current = Some(b.clone());
                b
            }
        };
        Timeout { future, sleep: Slot { bucket, key: None } }
    }
}

/// A future bounded by a shared deadline ([`Deadlines::bound`]).
pub type Bounded<F> = Timeout<F, Slot>;

/// A future's place in its bucket, ready once the bucket has fired; leaves
/// the bucket when dropped.
#[derive(Debug)]
pub struct Slot {
    bucket: Rc<Bucket>,
    key: Option<usize>,
}

impl Future for Slot {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let slot = &mut *self;
        if slot.bucket.fired.get() {
            return Poll::Ready(());
        }
        let mut wakers = slot.bucket.wakers.borrow_mut();
        match slot.key.and_then(|k| wakers.get_mut(k)) {
            Some(w) if w.will_wake(cx.waker()) => {}
            Some(w) => w.clone_from(cx.waker()),
            None => slot.key = Some(wakers.insert(cx.waker().clone())),
        }
        Poll::Pending
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            self.bucket.wakers.borrow_mut().try_remove(k);
        }
    }
}

// ---------------------------------------------------------------- wakers

/// Wakers of tasks waiting on a channel. Everyone is woken on a change and
/// re-checks, so a waiter that went away cannot swallow a wake-up.
#[derive(Default)]
struct WaitList(Vec<Waker>);

impl WaitList {
    fn register(&mut self, w: &Waker) {
        if !self.0.iter().any(|x| x.will_wake(w)) {
            self.0.push(w.clone());
        }
    }

    fn wake_all(&mut self) {
        for w in self.0.drain(..) {
            w.wake();
        }
    }
}

// ---------------------------------------------------------------- mpsc

/// Bounded multi-producer single-consumer channel of one executor.
pub struct LocalMpsc;

struct MpscState<T> {
    queue: VecDeque<T>,
    capacity: usize,
    senders: usize,
    receiver_alive: bool,
    recv_waker: Option<Waker>,
    send_waiters: WaitList,
}

type MpscShared<T> = Rc<RefCell<MpscState<T>>>;

pub struct MpscTx<T> {
    shared: MpscShared<T>,
}

pub struct MpscWeakTx<T> {
    shared: Weak<RefCell<MpscState<T>>>,
}

pub struct MpscRx<T> {
    shared: MpscShared<T>,
}

impl Mpsc for LocalMpsc {
    type Sender<T: OptionalSend> = MpscTx<T>;
    type Receiver<T: OptionalSend> = MpscRx<T>;
    type WeakSender<T: OptionalSend> = MpscWeakTx<T>;

    fn channel<T: OptionalSend>(buffer: usize) -> (Self::Sender<T>, Self::Receiver<T>) {
        let shared = Rc::new(RefCell::new(MpscState {
            queue: VecDeque::new(),
            capacity: buffer.max(1),
            senders: 1,
            receiver_alive: true,
            recv_waker: None,
            send_waiters: WaitList::default(),
        }));
        (MpscTx { shared: shared.clone() }, MpscRx { shared })
    }
}

impl<T> Clone for MpscTx<T> {
    fn clone(&self) -> Self {
        self.shared.borrow_mut().senders += 1;
        MpscTx { shared: self.shared.clone() }
    }
}

impl<T> Drop for MpscTx<T> {
    fn drop(&mut self) {
        let mut st = self.shared.borrow_mut();
        st.senders -= 1;
        if st.senders == 0 {
            if let Some(w) = st.recv_waker.take() {
                w.wake();
            }
        }
    }
}

impl<T> MpscTx<T> {
    /// Sends without waiting; fails with the message if the channel is full
    /// or closed.
    pub fn try_send(&self, msg: T) -> Result<(), SendError<T>> {
        let mut st = self.shared.borrow_mut();
        if !st.receiver_alive || st.queue.len() >= st.capacity {
            return Err(SendError(msg));
        }
        st.queue.push_back(msg);
        if let Some(w) = st.recv_waker.take() {
            w.wake();
        }
        Ok(())
    }
}

impl<T: OptionalSend> MpscSender<LocalMpsc, T> for MpscTx<T> {
    fn send(&self, msg: T) -> impl Future<Output = Result<(), SendError<T>>> + OptionalSend {
        MpscSend { shared: &self.shared, msg: Some(msg) }
    }

    fn downgrade(&self) -> MpscWeakTx<T> {
        MpscWeakTx { shared: Rc::downgrade(&self.shared) }
    }
}

struct MpscSend<'a, T> {
    shared: &'a MpscShared<T>,
    msg: Option<T>,
}

impl<T> Unpin for MpscSend<'_, T> {}

impl<T> Future for MpscSend<'_, T> {
    type Output = Result<(), SendError<T>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(msg) = this.msg.take() else {
            panic!("MpscSend polled after completion");
        };
        let mut st = this.shared.borrow_mut();
        if !st.receiver_alive {
            return Poll::Ready(Err(SendError(msg)));
        }
        if st.queue.len() < st.capacity {
            st.queue.push_back(msg);
            if let Some(w) = st.recv_waker.take() {
                w.wake();
            }
            return Poll::Ready(Ok(()));
        }
        st.send_waiters.register(cx.waker());
        drop(st);
        this.msg = Some(msg);
        Poll::Pending
    }
}

impl<T> Clone for MpscWeakTx<T> {
    fn clone(&self) -> Self {
        MpscWeakTx { shared: self.shared.clone() }
    }
}

impl<T: OptionalSend> MpscWeakSender<LocalMpsc, T> for MpscWeakTx<T> {
    fn upgrade(&self) -> Option<MpscTx<T>> {
        let shared = self.shared.upgrade()?;
        {
            let mut st = shared.borrow_mut();
            if st.senders == 0 {
                return None;
            }
            st.senders += 1;
        }
        Some(MpscTx { shared })
    }
}

impl<T> Drop for MpscRx<T> {
    fn drop(&mut self) {
        let (waiters, queued) = {
            let mut st = self.shared.borrow_mut();
            st.receiver_alive = false;
            (std::mem::take(&mut st.send_waiters.0), std::mem::take(&mut st.queue))
        };
        // Drop queued messages and wake blocked senders outside the borrow:
        // either may run code that touches this channel.
        drop(queued);
        for w in waiters {
            w.wake();
        }
    }
}

impl<T> MpscRx<T> {
    fn take(&self) -> Result<T, TryRecvError> {
        let mut st = self.shared.borrow_mut();
        match st.queue.pop_front() {
            Some(v) => {
                st.send_waiters.wake_all();
                Ok(v)
            }
            None if st.senders == 0 => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }
}

impl<T: OptionalSend> MpscReceiver<T> for MpscRx<T> {
    fn recv(&mut self) -> impl Future<Output = Option<T>> + OptionalSend {
        std::future::poll_fn(move |cx| match self.take() {
            Ok(v) => Poll::Ready(Some(v)),
            Err(TryRecvError::Disconnected) => Poll::Ready(None),
            Err(TryRecvError::Empty) => {
                self.shared.borrow_mut().recv_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }

    fn try_recv(&mut self) -> Result<T, TryRecvError> {
        self.take()
    }
}

// ---------------------------------------------------------------- watch

/// Single-value broadcast channel of one executor, with tokio's `watch`
/// semantics.
pub struct LocalWatch;

struct WatchMeta {
    version: u64,
    senders: usize,
    receivers: usize,
    waiters: WaitList,
}

struct WatchShared<T> {
    value: RefCell<T>,
    meta: RefCell<WatchMeta>,
}

pub struct WatchTx<T> {
    shared: Rc<WatchShared<T>>,
}

pub struct WatchRx<T> {
    shared: Rc<WatchShared<T>>,
    seen: Cell<u64>,
}

impl Watch for LocalWatch {
    type Sender<T: OptionalSend + OptionalSync> = WatchTx<T>;
    type Receiver<T: OptionalSend + OptionalSync> = WatchRx<T>;
    type Ref<'a, T: OptionalSend + 'a> = Ref<'a, T>;

    fn channel<T: OptionalSend + OptionalSync>(init: T) -> (Self::Sender<T>, Self::Receiver<T>) {
        let shared = Rc::new(WatchShared {
            value: RefCell::new(init),
            meta: RefCell::new(WatchMeta { version: 0, senders: 1, receivers: 1, waiters: WaitList::default() }),
        });
        (WatchTx { shared: shared.clone() }, WatchRx { shared, seen: Cell::new(0) })
    }
}

impl<T> WatchTx<T> {
    fn notify(&self) {
        let waiters = {
            let mut m = self.shared.meta.borrow_mut();
            m.version += 1;
            std::mem::take(&mut m.waiters.0)
        };
        for w in waiters {
            w.wake();
        }
    }
}

impl<T> Clone for WatchTx<T> {
    fn clone(&self) -> Self {
        self.shared.meta.borrow_mut().senders += 1;
        WatchTx { shared: self.shared.clone() }
    }
}

impl<T> Drop for WatchTx<T> {
    fn drop(&mut self) {
        let waiters = {
            let mut m = self.shared.meta.borrow_mut();
            m.senders -= 1;
            if m.senders > 0 {
                return;
            }
            std::mem::take(&mut m.waiters.0)
        };
        for w in waiters {
            w.wake();
        }
    }
}

impl<T: OptionalSend + OptionalSync> WatchSender<LocalWatch, T> for WatchTx<T> {
    fn send(&self, value: T) -> Result<(), openraft_rt::watch::SendError<T>> {
        if self.shared.meta.borrow().receivers == 0 {
            return Err(openraft_rt::watch::SendError(value));
        }
        let old = std::mem::replace(&mut *self.shared.value.borrow_mut(), value);
        drop(old);
        self.notify();
        Ok(())
    }

    fn send_if_modified<F>(&self, modify: F) -> bool
    where
        F: FnOnce(&mut T) -> bool,
    {
        let modified = modify(&mut self.shared.value.borrow_mut());
        if modified {
            self.notify();
        }
        modified
    }

    fn borrow_watched(&self) -> Ref<'_, T> {
        self.shared.value.borrow()
    }

    fn subscribe(&self) -> WatchRx<T> {
        let version = {
            let mut m = self.shared.meta.borrow_mut();
            m.receivers += 1;
            m.version
        };
        WatchRx { shared: self.shared.clone(), seen: Cell::new(version) }
    }
}

impl<T> Clone for WatchRx<T> {
    fn clone(&self) -> Self {
        self.shared.meta.borrow_mut().receivers += 1;
        WatchRx { shared: self.shared.clone(), seen: Cell::new(self.seen.get()) }
    }
}

impl<T> Drop for WatchRx<T> {
    fn drop(&mut self) {
        self.shared.meta.borrow_mut().receivers -= 1;
    }
}

impl<T: OptionalSend + OptionalSync> WatchReceiver<LocalWatch, T> for WatchRx<T> {
    async fn changed(&mut self) -> Result<(), openraft_rt::RecvError> {
        std::future::poll_fn(|cx| {
            let mut m = self.shared.meta.borrow_mut();
            if m.version != self.seen.get() {
                self.seen.set(m.version);
                return Poll::Ready(Ok(()));
            }
            if m.senders == 0 {
                return Poll::Ready(Err(openraft_rt::RecvError(())));
            }
            m.waiters.register(cx.waker());
            Poll::Pending
        })
        .await
    }

    fn borrow_watched(&self) -> Ref<'_, T> {
        self.shared.value.borrow()
    }

    fn borrow_and_update(&mut self) -> Ref<'_, T> {
        self.seen.set(self.shared.meta.borrow().version);
        self.shared.value.borrow()
    }
}

// ---------------------------------------------------------------- oneshot

/// One-value channel (`futures_channel::oneshot` underneath).
pub struct LocalOneshot;

pub struct OneshotTx<T>(futures_channel::oneshot::Sender<T>);

impl Oneshot for LocalOneshot {
    type Sender<T: OptionalSend> = OneshotTx<T>;
    type Receiver<T: OptionalSend> = futures_channel::oneshot::Receiver<T>;
    type ReceiverError = futures_channel::oneshot::Canceled;

    fn channel<T: OptionalSend>() -> (Self::Sender<T>, Self::Receiver<T>) {
        let (tx, rx) = futures_channel::oneshot::channel();
        (OneshotTx(tx), rx)
    }
}

impl<T: OptionalSend> OneshotSender<T> for OneshotTx<T> {
    fn send(self, t: T) -> Result<(), T> {
        self.0.send(t)
    }
}

// ---------------------------------------------------------------- mutex

/// Async mutex (`futures_util::lock::Mutex` underneath).
pub struct Mutex<T>(futures_util::lock::Mutex<T>);

impl<T: OptionalSend + 'static> openraft_rt::Mutex<T> for Mutex<T> {
    type Guard<'a>
        = futures_util::lock::MutexGuard<'a, T>
    where
        Self: 'a;

    fn new(value: T) -> Self {
        Mutex(futures_util::lock::Mutex::new(value))
    }

    fn lock(&self) -> impl Future<Output = Self::Guard<'_>> + OptionalSend {
        self.0.lock()
    }
}
