//! openraft's own conformance suite for `AsyncRuntime` implementations, run
//! against the glommio runtime.

use ironcd_raft_net::GlommioRuntime;

#[test]
fn openraft_runtime_suite() {
    openraft_rt::testing::Suite::<GlommioRuntime>::test_all();
}

/// A dropped join handle must not cancel the task (glommio cancels a task
/// whose `Task` is dropped; openraft expects tokio's detach-on-drop).
#[test]
fn dropped_handle_does_not_cancel() {
    use openraft_rt::{AsyncRuntime, Oneshot, OneshotSender};
    use std::time::Duration;
    let mut rt = GlommioRuntime::new(1);
    rt.block_on(async {
        let (tx, rx) = <GlommioRuntime as AsyncRuntime>::Oneshot::channel::<u32>();
        drop(GlommioRuntime::spawn(async move {
            GlommioRuntime::sleep(Duration::from_millis(5)).await;
            tx.send(7).unwrap();
        }));
        assert_eq!(rx.await.unwrap(), 7);
    });
}

/// A panic in a spawned task is reported through its join handle.
#[test]
fn panics_are_join_errors() {
    use openraft_rt::AsyncRuntime;
    let mut rt = GlommioRuntime::new(1);
    rt.block_on(async {
        let h = GlommioRuntime::spawn(async { panic!("boom") });
        let err = h.await.unwrap_err();
        assert!(GlommioRuntime::is_panic(&err));
        assert!(err.to_string().contains("boom"));
    });
}

/// Shared deadlines: a ready future wins, a pending one fails with
/// `Elapsed` but never before its own deadline, futures that share a
/// bucket each get their own outcome, and a dropped one leaves its bucket
/// without disturbing the others.
#[test]
fn shared_deadlines() {
    use ironcd_raft_net::runtime::{Deadlines, Elapsed};
    use openraft_rt::AsyncRuntime;
    use std::time::{Duration, Instant};
    let mut rt = GlommioRuntime::new(1);
    rt.block_on(async {
        let d = Deadlines::new(Duration::from_millis(40), Duration::from_millis(20));
        assert_eq!(d.bound(async { 1 }).await, Ok(1));

        let start = Instant::now();
        let never = d.bound(std::future::pending::<()>());
        let soon = d.bound(async {
            GlommioRuntime::sleep(Duration::from_millis(5)).await;
            2
        });
        let mut dropped = Box::pin(d.bound(std::future::pending::<()>()));
        assert!(futures_util::poll!(dropped.as_mut()).is_pending(), "joined its bucket");
        let (never, soon) = futures_util::future::join(never, async {
            drop(dropped);
            soon.await
        })
        .await;
        assert_eq!(soon, Ok(2));
        assert_eq!(never, Err(Elapsed));
        assert!(start.elapsed() >= Duration::from_millis(40), "a deadline fired early");

        // A later bucket works the same.
        assert_eq!(d.bound(std::future::pending::<()>()).await, Err(Elapsed));
    });
}
