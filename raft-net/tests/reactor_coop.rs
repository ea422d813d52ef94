//! The vendored glommio sets up each executor's main io_uring with
//! `IORING_SETUP_COOP_TASKRUN` (vendor/glommio/IRONCD-PATCH.md, item 6): a
//! completion that must be posted from the submitting thread's context (data
//! arriving on a socket from another CPU, an `O_DSYNC` write finishing in a
//! kernel worker there) no longer interrupts that thread with an
//! inter-processor interrupt while it runs; the executor posts it at its next
//! system call, which a spinning executor makes between every two polls. On
//! a VM each such IPI costs an exit on both CPUs.
//!
//! The test pins a spinning executor that echoes on a TCP connection to one
//! CPU and a client doing round trips to another, and counts the machine's
//! rescheduling interrupts (`RES` in /proc/interrupts): without the flag
//! every request's arrival kicks the spinning executor (about one per round
//! trip), with it nearly none.

use std::io::{Read, Write};
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};

mod cpus;

const ROUND_TRIPS: u64 = 2000;

/// Rescheduling interrupts so far, summed over CPUs; `None` where the
/// kernel does not report them (not x86).
fn res_interrupts() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/interrupts").ok()?;
    let line = text.lines().find(|l| l.trim_start().starts_with("RES:"))?;
    Some(line.split_whitespace().skip(1).map_while(|f| f.parse::<u64>().ok()).sum())
}

#[test]
fn socket_completions_do_not_interrupt_a_spinning_executor() {
    let allowed = cpus::allowed_cpus();
    if allowed.len() < 2 || res_interrupts().is_none() {
        eprintln!("needs two CPUs and RES counts in /proc/interrupts (have {} CPUs); nothing to count", allowed.len());
        return;
    }
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let server = LocalExecutorBuilder::new(Placement::Fixed(allowed[0]))
        .spin_before_park(Duration::from_micros(300))
        .spawn(move || async move {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            addr_tx.send(listener.local_addr().expect("local addr")).expect("send addr");
            let mut conn = listener.accept().await.expect("accept");
            let mut buf = [0u8; 64];
            for _ in 0..ROUND_TRIPS {
                conn.read_exact(&mut buf).await.expect("read request");
                conn.write_all(&buf).await.expect("write answer");
            }
        })
        .expect("spawn executor");
    let addr = addr_rx.recv_timeout(Duration::from_secs(10)).expect("server address");
    let client = std::thread::spawn(move || {
        cpus::pin_to(allowed[1]);
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
        let mut buf = [7u8; 64];
        // Warm up, then count.
        for _ in 0..100 {
            s.write_all(&buf).expect("write");
            s.read_exact(&mut buf).expect("read");
        }
        let before = res_interrupts().unwrap();
        for _ in 100..ROUND_TRIPS {
            s.write_all(&buf).expect("write");
            s.read_exact(&mut buf).expect("read");
        }
        res_interrupts().unwrap() - before
    });
    let res = client.join().expect("client thread");
    server.join().expect("executor thread");
    let counted = ROUND_TRIPS - 100;
    eprintln!("{res} rescheduling interrupts over {counted} round trips");
    // Without the flag: about one per round trip. Other work adds a few.
    assert!(res < counted / 4, "{res} rescheduling interrupts over {counted} round trips: arrivals interrupt the spinning executor");
}
