//! etcd's auto compaction (`--auto-compaction-mode`, `--auto-compaction-retention`),
//! with etcd 3.4's rules (`etcdserver/api/v3compactor`):
//!
//! - `periodic`: retention is a duration (a bare integer means hours). The
//!   revision is sampled every tenth of min(retention, 1 h); once a full
//!   retention has passed, the store is compacted to the revision sampled one
//!   retention ago, then again every min(retention, 1 h).
//! - `revision`: every 5 minutes, compact to current revision − retention.
//!
//! Compactions are proposed through raft like a client's `Compact`.

use std::rc::Weak;
use std::time::{Duration, Instant};

use crate::etcd_server::EtcdServer;
use crate::pb::etcdserverpb::CompactionRequest;
use crate::pb::ironcdpb::raft_request::Request as Req;
use crate::state_machine::Applied;

/// What `--auto-compaction-*` asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Off,
    Periodic(Duration),
    Revision(i64),
}

/// etcd's `parseCompactionRetention`.
pub fn parse(mode: &str, retention: &str) -> Result<Policy, String> {
    if let Ok(n) = retention.parse::<i64>() {
        if n < 0 {
            return Err(format!("invalid auto-compaction-retention {retention:?}"));
        }
        return Ok(match (mode, n) {
            (_, 0) => Policy::Off,
            ("revision", n) => Policy::Revision(n),
            (_, h) => Policy::Periodic(Duration::from_secs(h as u64 * 3600)),
        });
    }
    let d = crate::config::parse_go_duration(retention)
        .ok_or_else(|| format!("error parsing CompactionRetention: {retention:?}"))?;
    if d.is_zero() {
        return Ok(Policy::Off);
    }
    match mode {
        "revision" => Err(format!(
            "--auto-compaction-retention={retention:?} is not a revision count"
        )),
        _ => Ok(Policy::Periodic(d)),
    }
}

/// Starts the compactor for `policy` on the current executor.
pub fn start(srv: Weak<EtcdServer>, policy: Policy) {
    match policy {
        Policy::Off => {}
        Policy::Periodic(period) => {
            glommio::spawn_local(periodic(srv, period)).detach();
        }
        Policy::Revision(keep) => {
            glommio::spawn_local(revision(srv, keep, Duration::from_secs(300))).detach();
        }
    }
}

/// Proposes a compaction; `Ok` also when the revision was already compacted.
async fn compact(srv: &EtcdServer, rev: i64) -> Result<(), String> {
    match srv
        .propose(Req::Compaction(CompactionRequest {
            revision: rev,
            physical: false,
        }))
        .await
    {
        Ok(Applied::Compaction(Ok(_))) => Ok(()),
        Ok(Applied::Compaction(Err(ironcd_engine::mvcc::MvccError::Compacted))) => Ok(()),
        Ok(other) => Err(format!("{other:?}")),
        Err(st) => Err(st.message().to_string()),
    }
}

fn current_revision(srv: &EtcdServer) -> Option<i64> {
    srv.reader().ok().map(|r| r.revision())
}

async fn periodic(srv: Weak<EtcdServer>, period: Duration) {
    let interval = period.min(Duration::from_secs(3600));
    let retry = interval / 10;
    let keep = (period.as_nanos() / retry.as_nanos().max(1)) as usize + 1;
    let mut revs: Vec<i64> = Vec::new();
    let mut last_success = Instant::now();
    let mut base = period;
    loop {
        let Some(s) = srv.upgrade() else { return };
        if let Some(r) = current_revision(&s) {
            revs.push(r);
            if revs.len() > keep {
                revs.remove(0);
            }
        }
        drop(s);
        glommio::timer::sleep(retry).await;
        if last_success.elapsed() < base {
            continue;
        }
        base = interval;
        let Some(&rev) = revs.first() else { continue };
        let Some(s) = srv.upgrade() else { return };
        tracing::info!(revision = rev, compact_period = ?period, "starting auto periodic compaction");
        match compact(&s, rev).await {
            Ok(()) => {
                tracing::info!(revision = rev, "completed auto periodic compaction");
                last_success = Instant::now();
                if !revs.is_empty() {
                    revs.remove(0);
                }
            }
            Err(e) => tracing::warn!(revision = rev, error = %e, "failed auto periodic compaction"),
        }
    }
}

async fn revision(srv: Weak<EtcdServer>, keep: i64, every: Duration) {
    let mut prev = 0;
    loop {
        glommio::timer::sleep(every).await;
        let Some(s) = srv.upgrade() else { return };
        let Some(cur) = current_revision(&s) else {
            continue;
        };
        let rev = cur - keep;
        if rev <= 0 || rev == prev {
            continue;
        }
        tracing::info!(
            revision = rev,
            revision_compaction_retention = keep,
            "starting auto revision compaction"
        );
        match compact(&s, rev).await {
            Ok(()) => {
                prev = rev;
                tracing::info!(revision = rev, "completed auto revision compaction");
            }
            Err(e) => tracing::warn!(revision = rev, error = %e, "failed auto revision compaction"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_is_parsed_like_etcd() {
        assert_eq!(parse("periodic", "0"), Ok(Policy::Off));
        assert_eq!(
            parse("periodic", "1"),
            Ok(Policy::Periodic(Duration::from_secs(3600)))
        );
        assert_eq!(parse("revision", "1000"), Ok(Policy::Revision(1000)));
        assert_eq!(
            parse("periodic", "10m"),
            Ok(Policy::Periodic(Duration::from_secs(600)))
        );
        assert_eq!(
            parse("periodic", "1h30m"),
            Ok(Policy::Periodic(Duration::from_secs(5400)))
        );
        assert_eq!(
            parse("periodic", "1.5s"),
            Ok(Policy::Periodic(Duration::from_millis(1500)))
        );
        assert!(parse("periodic", "ten minutes").is_err());
        assert!(parse("periodic", "-1").is_err());
        assert!(parse("revision", "10m").is_err());
    }
}
