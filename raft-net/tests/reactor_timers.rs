//! The vendored glommio's reactor patch (vendor/glommio/IRONCD-PATCH.md,
//! item 1) re-arms the throughput timer only once it has fired; a first
//! version also kept an armed preemption timer from one turn to the next,
//! and lost wakeups (tests/reactor_wakeups.rs). These tests hold the
//! reactor to what the unpatched one guaranteed: a timer the executor
//! sleeps on is never delayed to a later preemption deadline, and
//! preemption still happens.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::{executor, timer, Latency, LocalExecutorBuilder, Placement, Shares};

/// A task that sleeps right after busy turns (each of which armed a 30 s
/// preemption timer) wakes when its own timer fires, not at the 30 s
/// preemption deadline.
#[test]
fn sleeping_on_a_user_timer_is_not_delayed_by_a_kept_preempt_timer() {
    let ex = LocalExecutorBuilder::new(Placement::Unbound)
        .preempt_timer(Duration::from_secs(30))
        .spawn(|| async {
            for round in 0..20u64 {
                // Busy turns: yielding makes the executor go round its loop
                // (each turn arms, or with the patch keeps, the 30 s timer).
                for _ in 0..50 {
                    futures_lite_yield().await;
                }
                let want = Duration::from_millis(1 + round % 7);
                let t = Instant::now();
                timer::sleep(want).await;
                let took = t.elapsed();
                assert!(took >= want, "woke early: {took:?} < {want:?}");
                // Bounded, not a speed claim: a timer left behind the 30 s
                // preemption timer would take 30 s.
                assert!(took < Duration::from_secs(10), "a {want:?} sleep took {took:?}");
            }
        })
        .unwrap();
    ex.join().unwrap();
}

/// With a short preemption timer, a task that only yields when preemption
/// is due still lets another task queue run.
#[test]
fn preemption_still_happens() {
    let ex = LocalExecutorBuilder::new(Placement::Unbound)
        .preempt_timer(Duration::from_millis(10))
        .spawn(|| async {
            let ran = Rc::new(Cell::new(false));
            let other = executor().create_task_queue(Shares::default(), Latency::NotImportant, "other");
            let flag = ran.clone();
            let t = glommio::spawn_local_into(async move { flag.set(true) }, other).unwrap();
            let start = Instant::now();
            let mut preempted = 0u32;
            // Spin for at most 10 s: the other queue runs only if
            // need_preempt() turns true and this task yields.
            while !ran.get() && start.elapsed() < Duration::from_secs(10) {
                if glommio::executor().need_preempt() {
                    preempted += 1;
                    glommio::yield_if_needed().await;
                }
            }
            assert!(ran.get(), "the other task queue never ran ({preempted} preemptions seen)");
            t.await;
        })
        .unwrap();
    ex.join().unwrap();
}

/// One turn of the executor: pending once, woken at once.
async fn futures_lite_yield() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}
