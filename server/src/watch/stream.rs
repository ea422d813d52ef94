//! One Watch RPC: a task reads the client's requests (and ticks progress
//! notifications), and [`WatchOut`] hands the stream's queued responses to
//! tonic as the client reads them. Dropping `WatchOut` (the client went
//! away) cancels the task and removes the stream's watchers.

use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tonic::{Status, Streaming};

use super::hub::{RecvRoom, StreamKey, WatchHub};
use crate::pb::etcdserverpb::{WatchRequest, WatchResponse};

pub struct WatchOut {
    hub: Rc<WatchHub>,
    key: StreamKey,
    _task: glommio::Task<()>,
}

impl WatchOut {
    /// Opens a stream in `hub` fed by the client's `requests`.
    pub fn open(hub: Rc<WatchHub>, mut requests: Streaming<WatchRequest>) -> WatchOut {
        let key = hub.open_stream();
        let h = hub.clone();
        let task = glommio::spawn_local(async move {
            let recv = async {
                loop {
                    RecvRoom {
                        hub: &h,
                        stream: key,
                    }
                    .await;
                    match requests.message().await {
                        Ok(Some(req)) => h.handle(key, req),
                        // The client closed its side: etcd keeps sending until
                        // the RPC ends.
                        Ok(None) => break,
                        Err(status) => {
                            tracing::debug!(error = %status, "failed to receive watch request from gRPC stream");
                            h.fail_stream(key, status);
                            break;
                        }
                    }
                }
                std::future::pending::<()>().await
            };
            let ticks = async {
                loop {
                    glommio::timer::sleep(with_jitter(h.progress_interval())).await;
                    h.progress_tick(key);
                }
            };
            futures_lite::future::or(recv, ticks).await
        });
        WatchOut {
            hub,
            key,
            _task: task,
        }
    }
}

/// etcd adds up to a tenth of the interval so streams do not tick together.
fn with_jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let mut x = u64::from(nanos) | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    let tenth = (d.as_nanos() / 10) as u64;
    d + Duration::from_nanos(if tenth == 0 { 0 } else { x % tenth })
}

impl Stream for WatchOut {
    type Item = Result<WatchResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.hub.poll_response(self.key, cx)
    }
}

impl Drop for WatchOut {
    fn drop(&mut self) {
        self.hub.close_stream(self.key);
    }
}
