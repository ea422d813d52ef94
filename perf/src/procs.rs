//! Server processes the side-by-side runner starts: real etcd and ironcd on
//! loopback ports, each with its own data dir. Every process started here is
//! registered by PID and stopped by PID (SIGTERM, then SIGKILL after a grace
//! period) when dropped, on error, and on SIGINT/SIGTERM of the runner.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    Etcd,
    Ironcd,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Etcd => "etcd",
            Kind::Ironcd => "ironcd",
        }
    }
}

static STARTED: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn register(pid: u32) {
    STARTED.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
}

fn unregister(pid: u32) {
    STARTED.lock().unwrap_or_else(|e| e.into_inner()).retain(|p| *p != pid);
}

fn alive(pid: u32) -> bool {
    // Reaped children are gone; zombies still answer kill(0), so check /proc state.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

/// Stops every process this runner started (SIGTERM, 5 s grace, SIGKILL).
/// Used by the signal handler; normal paths stop servers one by one.
pub fn stop_all_started() {
    let pids: Vec<u32> = STARTED.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for &p in &pids {
        unsafe { libc::kill(p as libc::pid_t, libc::SIGTERM) };
    }
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) && pids.iter().any(|&p| alive(p)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for &p in &pids {
        if alive(p) {
            unsafe { libc::kill(p as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// On SIGINT/SIGTERM/SIGHUP: stop what we started, then exit(130).
pub fn install_signal_handler() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]).expect("signal handler");
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            eprintln!("\nsignal {sig}: stopping the servers this run started");
            stop_all_started();
            std::process::exit(130);
        }
    });
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().expect("local addr").port()
}

/// `n` distinct loopback ports nobody listens on right now.
pub fn free_ports(n: usize) -> Vec<u16> {
    let mut out: Vec<u16> = Vec::with_capacity(n);
    while out.len() < n {
        let p = free_port();
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// Resident and peak memory of a process, bytes (`VmRSS`, `VmHWM`).
pub fn mem_of(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some((status_kb(&s, "VmRSS:")? * 1024, status_kb(&s, "VmHWM:")? * 1024))
}

pub fn status_kb(status: &str, field: &str) -> Option<u64> {
    status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time (user + system) a process has used so far (`/proc/<pid>/stat`).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_from_stat(&s)
}

pub fn cpu_from_stat(stat: &str) -> Option<Duration> {
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (u, s): (u64, u64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(Duration::from_secs_f64((u + s) as f64 / hz))
}

/// Anonymous and file-backed resident memory, bytes (`RssAnon`, `RssFile`):
/// file-backed pages of a memory-mapped data file are page cache the kernel
/// can drop, anonymous ones are heap.
pub fn rss_split(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some((status_kb(&s, "RssAnon:")? * 1024, status_kb(&s, "RssFile:")? * 1024))
}

/// Resets a process's peak RSS (VmHWM) to its current RSS (`clear_refs` 5).
pub fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// A server process this runner started.
pub struct Server {
    pub kind: Kind,
    pub bin: PathBuf,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub client_port: u16,
    pub peer_port: u16,
    pub child: Option<Child>,
    pub started_at: Instant,
    pub extra_args: Vec<String>,
    /// Member name (`--name`); `n` for a single member.
    pub name: String,
    /// For a member of a cluster: `--initial-cluster` (all members) and the
    /// cluster token; `None` for a single member (`--initial-cluster n=<own peer URL>`).
    pub cluster: Option<(String, String)>,
}

impl Server {
    /// Prepares (does not start) a server with a data dir `dir/<kind>` and fresh loopback ports.
    pub fn new(kind: Kind, bin: &Path, dir: &Path, extra_args: Vec<String>) -> Server {
        let data_dir = dir.join(kind.name());
        Server {
            kind,
            bin: bin.to_path_buf(),
            log: dir.join(format!("{}.log", kind.name())),
            data_dir,
            client_port: free_port(),
            peer_port: free_port(),
            child: None,
            started_at: Instant::now(),
            extra_args,
            name: "n".into(),
            cluster: None,
        }
    }

    /// Prepares (does not start) member `name` of a static cluster: data dir
    /// `dir/<kind>-<name>`, log `dir/<kind>-<name>.log`, the given loopback
    /// ports, `--initial-cluster <initial_cluster> --initial-cluster-state new
    /// --initial-cluster-token <token>`.
    #[allow(clippy::too_many_arguments)]
    pub fn member(
        kind: Kind,
        bin: &Path,
        dir: &Path,
        name: &str,
        client_port: u16,
        peer_port: u16,
        initial_cluster: &str,
        token: &str,
        extra_args: Vec<String>,
    ) -> Server {
        Server {
            kind,
            bin: bin.to_path_buf(),
            log: dir.join(format!("{}-{name}.log", kind.name())),
            data_dir: dir.join(format!("{}-{name}", kind.name())),
            client_port,
            peer_port,
            child: None,
            started_at: Instant::now(),
            extra_args,
            name: name.to_string(),
            cluster: Some((initial_cluster.to_string(), token.to_string())),
        }
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// The last `n` lines of the server's log (for error messages).
    pub fn log_tail(&self, n: usize) -> String {
        let s = std::fs::read(&self.log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Starts the process (same flags for both: etcd's).
    pub fn start(&mut self) -> std::io::Result<()> {
        assert!(self.child.is_none(), "already started");
        std::fs::create_dir_all(self.data_dir.parent().expect("parent"))?;
        let peer = self.peer_url();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen-client-urls")
            .arg(self.client_url())
            .arg("--advertise-client-urls")
            .arg(self.client_url())
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer);
        match &self.cluster {
            None => {
                cmd.arg("--initial-cluster").arg(format!("{}={peer}", self.name));
            }
            Some((initial, token)) => {
                cmd.arg("--initial-cluster")
                    .arg(initial)
                    .arg("--initial-cluster-state")
                    .arg("new")
                    .arg("--initial-cluster-token")
                    .arg(token);
            }
        }
        cmd.args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Own process group: a terminal's ctrl-c reaches the runner, which stops servers in order.
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        self.started_at = Instant::now();
        let child = cmd.spawn()?;
        register(child.id());
        self.child = Some(child);
        Ok(())
    }

    /// Has the process exited (and why)?
    pub fn exited(&mut self) -> Option<String> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(st)) => Some(format!("{} exited: {st} (log: {})", self.kind.name(), self.log.display())),
            _ => None,
        }
    }

    pub fn mem(&self) -> Option<(u64, u64)> {
        mem_of(self.pid()?)
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. Returns the time it took to exit after SIGTERM.
    pub fn stop(&mut self, grace: Duration) -> Duration {
        let Some(mut c) = self.child.take() else { return Duration::ZERO };
        let pid = c.id();
        let t = Instant::now();
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        loop {
            match c.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if t.elapsed() >= grace => {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        unregister(pid);
        t.elapsed()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

/// Total size of the files under `dir`, bytes.
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    let mut n = 0;
    while let Some(d) = stack.pop() {
        n += 1;
        if n > 100_000 {
            break;
        }
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status() {
        let s = "Name:\tetcd\nVmPeak:\t  100 kB\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\n";
        assert_eq!(status_kb(s, "VmRSS:"), Some(1024));
        assert_eq!(status_kb(s, "VmHWM:"), Some(2048));
        assert_eq!(status_kb(s, "VmSwap:"), None);
    }

    #[test]
    fn parses_cpu_time() {
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let st = "42 (my (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 100 1000 10";
        let d = cpu_from_stat(st).unwrap();
        assert!((d.as_secs_f64() - 300.0 / hz).abs() < 1e-9);
        assert!(cpu_time(std::process::id()).is_some());
    }

    #[test]
    fn own_memory_is_readable() {
        let (rss, hwm) = mem_of(std::process::id()).expect("/proc/self/status");
        assert!(rss > 0 && hwm >= rss);
    }
}
