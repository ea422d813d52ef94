//! A fault-injecting TCP proxy on loopback, for cluster tests.
//!
//! [`Proxy::start`] listens on one address and forwards every accepted
//! connection to a target, bytes both ways, with std threads (one accept
//! thread, two per connection). Faults switch at run time:
//!
//! - [`Proxy::set_blocked_sources`]: connections whose source IP (the peer
//!   address of the accepted socket) is in the set are closed on accept, and
//!   current ones from those IPs are cut. Members of a test cluster bind
//!   their outgoing peer connections to their own loopback IP, so blocking
//!   IPs at each member's proxy partitions the cluster.
//! - [`Proxy::blackhole`]: stop forwarding in both directions without
//!   closing anything. Bytes are not read from the sockets meanwhile (they
//!   stay in the kernel's buffers and TCP backs the sender off, as when a
//!   network drops packets and TCP retransmits), and are delivered in order
//!   after the blackhole ends if the endpoints are still connected.
//! - [`Proxy::cut_all`]: close every current connection (new ones are
//!   accepted as usual).
//! - [`Proxy::delay`]: hold every chunk of bytes at least this long before
//!   forwarding it.
//! - [`Proxy::heal`]: no blocked sources, no blackhole, no delay.
//!
//! Dropping the proxy stops its threads and closes every connection; each
//! thread polls with a short timeout, so drop is bounded.

use std::collections::{HashMap, HashSet};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often blocked threads look at the fault switches and the stop flag.
const POLL: Duration = Duration::from_millis(10);
/// Bound on connecting to the target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Faults {
    blocked: HashSet<IpAddr>,
    blackhole: bool,
    delay: Duration,
}

struct Conn {
    source: IpAddr,
    client: TcpStream,
    /// Set once connected to the target.
    upstream: Option<TcpStream>,
    closed: Arc<AtomicBool>,
}

impl Conn {
    fn cut(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.client.shutdown(Shutdown::Both);
        if let Some(u) = &self.upstream {
            let _ = u.shutdown(Shutdown::Both);
        }
    }
}

struct Shared {
    target: SocketAddr,
    stop: AtomicBool,
    faults: Mutex<Faults>,
    conns: Mutex<HashMap<u64, Conn>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    next_id: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
}

impl Shared {
    fn blackholed(&self) -> bool {
        self.faults.lock().unwrap().blackhole
    }
    fn delay(&self) -> Duration {
        self.faults.lock().unwrap().delay
    }
    fn spawn(self: &Arc<Self>, f: impl FnOnce() + Send + 'static) {
        let h = std::thread::Builder::new().name("test-proxy".into()).spawn(f).expect("spawn proxy thread");
        let mut threads = self.threads.lock().unwrap();
        threads.retain(|t| !t.is_finished());
        threads.push(h);
    }
}

/// A running proxy; see the module docs.
pub struct Proxy {
    listen: SocketAddr,
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listens on `listen` (port 0 picks one: see [`Proxy::local_addr`]) and
    /// forwards to `target`. Panics if `listen` cannot be bound.
    pub fn start(listen: SocketAddr, target: SocketAddr) -> Proxy {
        Proxy::try_start(listen, target).unwrap_or_else(|e| panic!("proxy cannot listen on {listen}: {e}"))
    }

    pub fn try_start(listen: SocketAddr, target: SocketAddr) -> io::Result<Proxy> {
        let listener = TcpListener::bind(listen)?;
        Ok(Proxy::from_listener(listener, target))
    }

    /// Serves an already bound listener (so a caller can reserve the port).
    pub fn from_listener(listener: TcpListener, target: SocketAddr) -> Proxy {
        let listen = listener.local_addr().expect("proxy local addr");
        listener.set_nonblocking(true).expect("nonblocking listener");
        let shared = Arc::new(Shared {
            target,
            stop: AtomicBool::new(false),
            faults: Mutex::new(Faults::default()),
            conns: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let sh = shared.clone();
        let accept_thread = std::thread::Builder::new()
            .name(format!("test-proxy-{listen}"))
            .spawn(move || accept_loop(listener, sh))
            .expect("spawn proxy accept thread");
        Proxy { listen, shared, accept_thread: Some(accept_thread) }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listen
    }

    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// Refuses connections from these source IPs, and cuts current ones.
    /// Replaces the previous set.
    pub fn set_blocked_sources(&self, ips: impl IntoIterator<Item = IpAddr>) {
        let blocked: HashSet<IpAddr> = ips.into_iter().collect();
        self.shared.faults.lock().unwrap().blocked = blocked.clone();
        for c in self.shared.conns.lock().unwrap().values() {
            if blocked.contains(&c.source) {
                c.cut();
            }
        }
    }

    pub fn blocked_sources(&self) -> HashSet<IpAddr> {
        self.shared.faults.lock().unwrap().blocked.clone()
    }

    /// Stops (`true`) or resumes (`false`) forwarding, without closing.
    pub fn blackhole(&self, on: bool) {
        self.shared.faults.lock().unwrap().blackhole = on;
    }

    /// Holds every chunk at least `d` before forwarding it (zero: no delay).
    pub fn delay(&self, d: Duration) {
        self.shared.faults.lock().unwrap().delay = d;
    }

    /// Closes every current connection.
    pub fn cut_all(&self) {
        for c in self.shared.conns.lock().unwrap().values() {
            c.cut();
        }
    }

    /// Back to plain forwarding: no blocked sources, blackhole or delay.
    /// Connections cut meanwhile stay closed; peers reconnect.
    pub fn heal(&self) {
        *self.shared.faults.lock().unwrap() = Faults::default();
    }

    /// Connections open right now.
    pub fn open_connections(&self) -> usize {
        self.shared.conns.lock().unwrap().len()
    }

    /// Connections accepted and forwarded, and refused, since the start.
    pub fn counts(&self) -> (u64, u64) {
        (self.shared.accepted.load(Ordering::SeqCst), self.shared.refused.load(Ordering::SeqCst))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
        self.cut_all();
        // Every thread polls the stop flag at least every POLL (writes and
        // reads have timeouts), so these joins are bounded.
        let threads = std::mem::take(&mut *self.shared.threads.lock().unwrap());
        for t in threads {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, from)) => {
                if shared.faults.lock().unwrap().blocked.contains(&from.ip()) {
                    shared.refused.fetch_add(1, Ordering::SeqCst);
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
                let Ok(client_clone) = client.try_clone() else { continue };
                let closed = Arc::new(AtomicBool::new(false));
                shared
                    .conns
                    .lock()
                    .unwrap()
                    .insert(id, Conn { source: from.ip(), client: client_clone, upstream: None, closed: closed.clone() });
                let sh = shared.clone();
                shared.spawn(move || serve(sh, id, client, closed));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                std::thread::sleep(POLL);
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// Connects to the target, then pumps both ways until either side is done.
fn serve(shared: Arc<Shared>, id: u64, client: TcpStream, closed: Arc<AtomicBool>) {
    let finish = |shared: &Shared| {
        if let Some(c) = shared.conns.lock().unwrap().remove(&id) {
            c.cut();
        }
    };
    let _ = client.set_nonblocking(false);
    let upstream = match TcpStream::connect_timeout(&shared.target, CONNECT_TIMEOUT) {
        Ok(u) => u,
        Err(_) => return finish(&shared),
    };
    let _ = upstream.set_nodelay(true);
    let _ = client.set_nodelay(true);
    {
        let mut conns = shared.conns.lock().unwrap();
        // Cut meanwhile (or the proxy stopped): give up.
        let Some(c) = conns.get_mut(&id) else { return };
        if closed.load(Ordering::SeqCst) || shared.stop.load(Ordering::SeqCst) {
            drop(conns);
            return finish(&shared);
        }
        match upstream.try_clone() {
            Ok(u) => c.upstream = Some(u),
            Err(_) => {
                drop(conns);
                return finish(&shared);
            }
        }
    }
    let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else { return finish(&shared) };
    // Two directions; the connection is gone when both are done.
    let done = Arc::new(AtomicU64::new(0));
    {
        let (sh, closed, done) = (shared.clone(), closed.clone(), done.clone());
        shared.spawn(move || {
            pump(&sh, u2, c2, &closed);
            if done.fetch_add(1, Ordering::SeqCst) == 1 {
                if let Some(c) = sh.conns.lock().unwrap().remove(&id) {
                    c.cut();
                }
            }
        });
    }
    pump(&shared, client, upstream, &closed);
    if done.fetch_add(1, Ordering::SeqCst) == 1 {
        finish(&shared);
    }
}

/// Copies `from` to `to` until EOF (then half-closes `to`), an error (then
/// cuts both), a cut or the proxy's stop.
fn pump(shared: &Shared, mut from: TcpStream, mut to: TcpStream, closed: &AtomicBool) {
    let stopped = || closed.load(Ordering::SeqCst) || shared.stop.load(Ordering::SeqCst);
    let _ = from.set_read_timeout(Some(POLL));
    let _ = to.set_write_timeout(Some(POLL));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // While blackholed, read nothing: the bytes wait in the kernel.
        while shared.blackholed() {
            if stopped() {
                return;
            }
            std::thread::sleep(POLL);
        }
        if stopped() {
            return;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => continue,
            Err(_) => {
                closed.store(true, Ordering::SeqCst);
                let _ = from.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
        };
        let read_at = Instant::now();
        // Hold the chunk for the delay and while blackholed.
        loop {
            if stopped() {
                return;
            }
            let due = read_at + shared.delay();
            let now = Instant::now();
            if shared.blackholed() {
                std::thread::sleep(POLL);
            } else if now < due {
                std::thread::sleep((due - now).min(POLL));
            } else {
                break;
            }
        }
        let mut off = 0;
        while off < n {
            if stopped() {
                return;
            }
            match to.write(&buf[off..n]) {
                Ok(0) => {
                    closed.store(true, Ordering::SeqCst);
                    return;
                }
                Ok(k) => off += k,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
                Err(_) => {
                    closed.store(true, Ordering::SeqCst);
                    let _ = from.shutdown(Shutdown::Both);
                    let _ = to.shutdown(Shutdown::Both);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};

    /// An echo server on `ip`, one thread per connection, stopped on drop.
    struct Echo {
        addr: SocketAddr,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    }

    impl Echo {
        fn start(ip: Ipv4Addr) -> Echo {
            let l = TcpListener::bind(SocketAddrV4::new(ip, 0)).unwrap();
            l.set_nonblocking(true).unwrap();
            let addr = l.local_addr().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let st = stop.clone();
            let thread = std::thread::spawn(move || {
                let mut conns = Vec::new();
                while !st.load(Ordering::SeqCst) {
                    match l.accept() {
                        Ok((mut s, _)) => {
                            let st = st.clone();
                            conns.push(std::thread::spawn(move || {
                                s.set_nonblocking(false).unwrap();
                                s.set_read_timeout(Some(POLL)).unwrap();
                                let mut buf = [0u8; 4096];
                                while !st.load(Ordering::SeqCst) {
                                    match s.read(&mut buf) {
                                        Ok(0) => return,
                                        Ok(n) => {
                                            if s.write_all(&buf[..n]).is_err() {
                                                return;
                                            }
                                        }
                                        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                                        Err(_) => return,
                                    }
                                }
                            }));
                        }
                        Err(_) => std::thread::sleep(POLL),
                    }
                }
                for c in conns {
                    let _ = c.join();
                }
            });
            Echo { addr, stop, thread: Some(thread) }
        }
    }

    impl Drop for Echo {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn proxy_to(echo: &Echo, ip: Ipv4Addr) -> Proxy {
        Proxy::start(SocketAddr::V4(SocketAddrV4::new(ip, 0)), echo.addr)
    }

    /// A client connected to `to` from the source IP `from`.
    fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.bind(&SocketAddr::V4(SocketAddrV4::new(from, 0)).into()).unwrap();
        s.connect_timeout(&to.into(), Duration::from_secs(2)).unwrap();
        let s: TcpStream = s.into();
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        s
    }

    /// Sends `msg` and reads the echo; `Err` if the connection is closed or
    /// nothing comes back within the read timeout.
    fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> io::Result<Vec<u8>> {
        s.write_all(msg)?;
        let mut got = vec![0u8; msg.len()];
        let mut off = 0;
        while off < msg.len() {
            match s.read(&mut got[off..])? {
                0 => return Err(io::Error::new(ErrorKind::UnexpectedEof, "closed")),
                n => off += n,
            }
        }
        Ok(got)
    }

    fn is_closed(s: &mut TcpStream) -> bool {
        // A cut connection reads EOF or fails (reset); a live one times out.
        let mut b = [0u8; 1];
        let _ = s.write(b"x");
        match s.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        }
    }

    fn wait_until(mut f: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if f() {
                return true;
            }
            std::thread::sleep(POLL);
        }
        false
    }

    const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
    const B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
    const HOST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);

    #[test]
    fn forwards_both_ways() {
        let echo = Echo::start(Ipv4Addr::LOCALHOST);
        let p = proxy_to(&echo, HOST);
        let mut s = connect_from(A, p.local_addr());
        assert_eq!(roundtrip(&mut s, b"hello").unwrap(), b"hello");
        // A large payload, larger than the socket buffers.
        let big: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
        let mut w = s.try_clone().unwrap();
        let big2 = big.clone();
        let writer = std::thread::spawn(move || w.write_all(&big2).unwrap());
        let mut got = vec![0u8; big.len()];
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.read_exact(&mut got).unwrap();
        writer.join().unwrap();
        assert!(got == big);
        assert_eq!(p.counts(), (1, 0));
    }

    #[test]
    fn half_close_is_forwarded() {
        let echo = Echo::start(Ipv4Addr::LOCALHOST);
        let p = proxy_to(&echo, HOST);
        let mut s = connect_from(A, p.local_addr());
        s.write_all(b"abc").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"abc");
        assert!(wait_until(|| p.open_connections() == 0));
    }

    #[test]
    fn blocks_by_source_ip() {
        let echo = Echo::start(Ipv4Addr::LOCALHOST);
        let p = proxy_to(&echo, HOST);
        let mut from_a = connect_from(A, p.local_addr());
        let mut from_b = connect_from(B, p.local_addr());
        assert_eq!(roundtrip(&mut from_a, b"a1").unwrap(), b"a1");
        assert_eq!(roundtrip(&mut from_b, b"b1").unwrap(), b"b1");

        p.set_blocked_sources([IpAddr::V4(A)]);
        // The existing connection from A is cut; B's still works.
        assert!(is_closed(&mut from_a));
        assert_eq!(roundtrip(&mut from_b, b"b2").unwrap(), b"b2");
        // New connections from A are closed at once; from B they work.
        let mut again_a = connect_from(A, p.local_addr());
        assert!(roundtrip(&mut again_a, b"a2").is_err());
        let mut again_b = connect_from(B, p.local_addr());
        assert_eq!(roundtrip(&mut again_b, b"b3").unwrap(), b"b3");
        assert_eq!(p.counts(), (3, 1));

        p.heal();
        let mut healed = connect_from(A, p.local_addr());
        assert_eq!(roundtrip(&mut healed, b"a3").unwrap(), b"a3");
    }

    #[test]
    fn blackhole_holds_bytes_without_closing() {
        let echo = Echo::start(Ipv4Addr::LOCALHOST);
        let p = proxy_to(&echo, HOST);
        let mut s = connect_from(A, p.local_addr());
        assert_eq!(roundtrip(&mut s, b"one").unwrap(), b"one");
        p.blackhole(true);
        s.write_all(b"two").unwrap();
        let mut b = [0u8; 3];
        let e = s.read(&mut b).unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut), "{e}");
        // New connections are accepted but nothing flows either.
        let mut s2 = connect_from(B, p.local_addr());
        assert!(roundtrip(&mut s2, b"x").is_err());
        assert_eq!(p.open_connections(), 2);
        p.blackhole(false);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"two");
        s2.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut one = [0u8; 1];
        s2.read_exact(&mut one).unwrap();
        assert_eq!(&one, b"x");
    }

    #[test]
    fn cut_all_closes_current_connections_only() {
        let echo = Echo::start(Ipv4Addr::LOCALHOST);
        let p = proxy_to(&echo, HOST);
        let mut s1 = connect_from(A, p.local_addr());
        let mut s2 = connect_from(B, p.local_addr());
        assert_eq!(roundtrip(&mut s1, b"1").unwrap(), b"1");
        assert_eq!(roundtrip(&mut s2, b"2").unwrap(), b"2");
        p.cut_all();
        assert!(is_closed(&mut s1));
        assert!(is_closed(&mut s2));
        assert!(wait_until(|| p.open_connections() == 0));
        let mut s3 = connect_from(A, p.local_addr());
        assert_eq!(roundtrip(&mut s3, b"3").unwrap(), b"3");
    }

    #[test]
    fn delay_holds_each_chunk() {
        let echo = Echo::start(Ipv4Addr::LOCALHOST);
        let p = proxy_to(&echo, HOST);
        let mut s = connect_from(A, p.local_addr());
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        p.delay(Duration::from_millis(150));
        let t = Instant::now();
        assert_eq!(roundtrip(&mut s, b"slow").unwrap(), b"slow");
        // Delayed on the way there and on the way back.
        assert!(t.elapsed() >= Duration::from_millis(300), "{:?}", t.elapsed());
        p.heal();
        let t = Instant::now();
        assert_eq!(roundtrip(&mut s, b"fast").unwrap(), b"fast");
        assert!(t.elapsed() < Duration::from_millis(150), "{:?}", t.elapsed());
    }

    #[test]
    fn target_down_closes_the_client() {
        let dead = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = dead.local_addr().unwrap();
        drop(dead);
        let p = Proxy::start("127.0.0.1:0".parse().unwrap(), target);
        let mut s = connect_from(A, p.local_addr());
        assert!(roundtrip(&mut s, b"x").is_err());
    }

    #[test]
    fn drop_closes_everything_quickly() {
        let echo = Echo::start(Ipv4Addr::LOCALHOST);
        let p = proxy_to(&echo, HOST);
        let addr = p.local_addr();
        let mut s = connect_from(A, addr);
        assert_eq!(roundtrip(&mut s, b"1").unwrap(), b"1");
        p.blackhole(true);
        s.write_all(b"pending").unwrap();
        let t = Instant::now();
        drop(p);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(is_closed(&mut s));
        assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err());
    }
}
