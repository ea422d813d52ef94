//! The vendored glommio honours `spin_before_park` on unbound executors
//! (the release silently dropped it unless the executor was pinned to a
//! CPU; vendor/glommio/IRONCD-PATCH.md), the spin stays bounded, and an
//! executor whose work comes at long intervals stops spinning.
//!
//! Whether the executor thread slept is read from its voluntary context
//! switches (`/proc/thread-self/status`): a thread that parks in
//! `io_uring_enter` switches voluntarily; one that spins (and yields, which
//! the kernel counts as involuntary) does not.

use std::time::Duration;

use glommio::{timer, LocalExecutorBuilder, Placement};

mod cpus;
use cpus::pin_to;

fn voluntary_switches() -> u64 {
    let status = std::fs::read_to_string("/proc/thread-self/status").expect("reading /proc/thread-self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("voluntary_ctxt_switches in /proc/thread-self/status")
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Sleeps `n` times for `each` on an unbound executor spinning for `spin`
/// before it parks; returns the executor thread's voluntary switches and
/// the CPU time it used meanwhile.
fn over_sleeps(spin: Duration, n: u32, each: Duration) -> (u64, Duration) {
    let ex = LocalExecutorBuilder::new(Placement::Unbound)
        .spin_before_park(spin)
        .spawn(move || async move {
            // One sleep first: the executor's own start-up may block.
            timer::sleep(Duration::from_millis(1)).await;
            let (before, cpu) = (voluntary_switches(), thread_cpu());
            for _ in 0..n {
                timer::sleep(each).await;
            }
            (voluntary_switches() - before, thread_cpu() - cpu)
        })
        .unwrap();
    ex.join().unwrap()
}

fn switches_over_sleeps(spin: Duration, n: u32, each: Duration) -> u64 {
    over_sleeps(spin, n, each).0
}

/// The tests of this file one at a time: each measures one executor
/// thread, and one of them loads a CPU on purpose.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Work that comes within the spin window (here a timer) is found by
/// spinning: the executor does not sleep for it.
///
/// The executor rightly stops spinning for a while when its CPU turns out
/// to be contended (next tests), which a shared machine may make it for a
/// moment; so the scenario is tried up to five times and must spin once.
#[test]
fn an_unbound_executor_spins_instead_of_sleeping() {
    let _serial = serial();
    let n = 200;
    let mut seen = Vec::new();
    for _ in 0..5 {
        let switches = switches_over_sleeps(Duration::from_secs(1), n, Duration::from_micros(200));
        // Parking costs at least one voluntary switch per sleep; allow a
        // few for anything else the thread may block on.
        if switches < u64::from(n) / 4 {
            return;
        }
        seen.push(switches);
    }
    panic!("voluntary switches over {n} sleeps, in five tries: {seen:?}: the executor parked");
}

/// An executor idle for longer than its spin window goes to sleep.
#[test]
fn the_spin_is_bounded() {
    let _serial = serial();
    let n = 20;
    let switches = switches_over_sleeps(Duration::from_micros(500), n, Duration::from_millis(20));
    assert!(switches >= u64::from(n), "{switches} voluntary switches over {n} 20 ms sleeps: it never parked");
}

/// Work that comes at intervals longer than the spin window (an idle
/// server's timers) is slept for, not spun for: spinning the whole window
/// before each of these sleeps would use at least `n` × 10 ms of CPU.
#[test]
fn work_at_long_intervals_is_not_spun_for() {
    let _serial = serial();
    let n = 20;
    let (switches, cpu) = over_sleeps(Duration::from_millis(10), n, Duration::from_millis(30));
    assert!(switches >= u64::from(n), "{switches} voluntary switches over {n} 30 ms sleeps: it never parked");
    assert!(cpu < Duration::from_millis(100), "{cpu:?} of CPU over {n} sleeps of 30 ms with a 10 ms spin window");
}

/// On a CPU another thread wants (here a busy loop pinned to the same
/// CPU), the executor parks instead of spinning: a spinning thread spends
/// its share of the CPU, and work that arrives for it while it is runnable
/// does not preempt the other thread, so it would wait for the other's
/// whole time slice.
#[test]
fn a_contended_executor_parks_instead_of_spinning() {
    let _serial = serial();
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let cpu = cpus::allowed_cpus()[0];
    let stop = Arc::new(AtomicBool::new(false));
    let hog = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            pin_to(cpu);
            let start = std::time::Instant::now();
            // Bounded: at most 30 s even if the test's thread never returns.
            while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(30) {
                std::hint::spin_loop();
            }
        })
    };
    let n: u32 = 20;
    let ex = LocalExecutorBuilder::new(Placement::Fixed(cpu))
        .spin_before_park(Duration::from_secs(1))
        .spawn(move || async move {
            timer::sleep(Duration::from_millis(1)).await;
            let before = voluntary_switches();
            for _ in 0..n {
                timer::sleep(Duration::from_millis(2)).await;
            }
            voluntary_switches() - before
        })
        .unwrap();
    let switches = ex.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    hog.join().unwrap();
    // Spinning through every sleep would be no voluntary switch at all.
    assert!(switches >= u64::from(n) / 2, "{switches} voluntary switches over {n} sleeps on a contended CPU: it kept spinning");
}
