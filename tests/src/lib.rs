//! Helpers for the end-to-end suites in `tests/tests/`: start real `ironcd`
//! and real `etcd` processes on loopback ports, drive them with the real
//! `etcdctl`, stop only what was started, by PID.
//!
//! The `ironcd` binary is built (`cargo build -p ironcd`, same profile) once
//! per test process, so the suites always test the current code.

pub mod cluster;
pub mod linearizability;
pub mod proxy;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a server gets to start serving.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Path of a freshly built `ironcd` binary (`$IRONCD_BIN` overrides).
pub fn ironcd_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("IRONCD_BIN") {
            return PathBuf::from(p);
        }
        let release = !cfg!(debug_assertions);
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(workspace_root()).args(["build", "-q", "-p", "ironcd"]);
        if release {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("running cargo build -p ironcd");
        assert!(st.success(), "cargo build -p ironcd failed");
        let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"));
        target.join(if release { "release" } else { "debug" }).join("ironcd")
    })
    .clone()
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().expect("local addr").port()
}

/// A scratch directory under the target dir, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let base = workspace_root().join("target").join("e2e");
        std::fs::create_dir_all(&base).expect("create target/e2e");
        let dir = base.join(format!("{name}-{}-{}", std::process::id(), free_port()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Ironcd,
    Etcd,
}

/// A server process this test started.
pub struct Server {
    pub kind: Kind,
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub extra: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
    /// Served at least once (restarts keep their ports).
    started_once: bool,
}

/// ironcd's flags for [`Server::ironcd_forwarding`].
pub const FORWARDING: &[&str] = &["--ironcd-cores", "2", "--ironcd-raft-core-conns", "0"];

impl Server {
    /// Starts a single-member ironcd with its data in `dir`.
    pub fn ironcd(dir: &Path) -> Server {
        Server::start(Kind::Ironcd, dir, &[])
    }

    /// Starts a single-member ironcd that serves every client connection on
    /// a client executor, so each call crosses to the raft core
    /// (`docs/server.md`, "Threading"): the differential tests use it, the
    /// others the default (a lone connection stays on the raft core).
    pub fn ironcd_forwarding(dir: &Path) -> Server {
        Server::start(Kind::Ironcd, dir, FORWARDING)
    }

    /// Starts a single-member real etcd (Debian's etcd-server) with its data in `dir`.
    pub fn etcd(dir: &Path) -> Server {
        Server::start(Kind::Etcd, dir, &[])
    }

    pub fn start(kind: Kind, dir: &Path, extra: &[&str]) -> Server {
        let mut s = Server::new(kind, dir, extra);
        s.launch();
        s
    }

    /// A server not started yet: adjust ports or flags, then [`Server::launch`].
    pub fn new(kind: Kind, dir: &Path, extra: &[&str]) -> Server {
        let client_port = free_port();
        let base = format!("{}-{client_port}", format!("{kind:?}").to_lowercase());
        Server {
            kind,
            name: "default".to_string(),
            client_port,
            peer_port: free_port(),
            data_dir: dir.join(format!("{base}.data")),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            log: dir.join(format!("{base}.log")),
            started_once: false,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    fn command(&self) -> Command {
        let mut c = Command::new(match self.kind {
            Kind::Ironcd => ironcd_bin(),
            Kind::Etcd => PathBuf::from("etcd"),
        });
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        c.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("{}={peer}", self.name)])
            .args(&self.extra);
        c
    }

    /// Starts the process and waits until it answers a KV request.
    pub fn launch(&mut self) {
        // A port picked by `free_port` can be taken by a parallel test before
        // this server binds it: on a first start, pick new ports and retry.
        for _ in 0..3 {
            if self.try_launch() || self.started_once {
                break;
            }
            let log = self.log_text();
            assert!(
                log.contains("ddress already in use"),
                "{:?} exited while starting; log:\n{log}",
                self.kind
            );
            self.client_port = free_port();
            self.peer_port = free_port();
        }
        assert!(self.child.is_some(), "{:?} could not start; log:\n{}", self.kind, self.log_text());
        self.started_once = true;
    }

    /// Starts the process; `false` if it exited before serving.
    fn try_launch(&mut self) -> bool {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("open log");
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {:?}: {e}", self.kind));
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let out = etcdctl(&self.endpoint(), &["get", "--command-timeout=2s", "ready-probe"]);
            if out.status.success() {
                return true;
            }
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                if self.started_once {
                    panic!("{:?} exited with {st} while restarting; log:\n{}", self.kind, self.log_text());
                }
                self.child = None;
                return false;
            }
            assert!(Instant::now() < deadline, "{:?} did not serve within {START_TIMEOUT:?}; log:\n{}", self.kind, self.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn signal(&mut self, sig: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
        }
    }

    /// `kill -9`: the process dies at once, with no chance to flush anything.
    pub fn kill9(&mut self) {
        self.signal("-KILL");
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits (bounded) for a clean exit; returns whether it was clean.
    pub fn stop(&mut self) -> bool {
        self.signal("-TERM");
        let Some(mut c) = self.child.take() else { return true };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs the real `etcdctl` (API v3) against `endpoint`.
pub fn etcdctl(endpoint: &str, args: &[&str]) -> Output {
    etcdctl_stdin(endpoint, args, None)
}

/// Runs `etcdctl` with `stdin` fed to it (interactive `txn`).
pub fn etcdctl_stdin(endpoint: &str, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut c = Command::new("etcdctl");
    c.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--dial-timeout=3s")
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("etcdctl not installed? run scripts/test.sh");
    if let Some(input) = stdin {
        let mut si = child.stdin.take().expect("stdin");
        si.write_all(input.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("etcdctl output")
}

/// etcdctl's stdout, asserting it succeeded.
pub fn ok(endpoint: &str, args: &[&str]) -> String {
    let out = etcdctl(endpoint, args);
    assert!(
        out.status.success(),
        "etcdctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The last line of etcdctl's stderr, asserting it failed (`Error: ...`).
pub fn fails(endpoint: &str, args: &[&str]) -> String {
    let out = etcdctl(endpoint, args);
    assert!(!out.status.success(), "etcdctl {args:?} should fail but printed {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).lines().rev().find(|l| l.starts_with("Error:")).unwrap_or_default().to_string()
}
