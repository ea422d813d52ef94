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
