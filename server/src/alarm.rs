//! Alarms and the space quota, as etcd 3.4 has them.
//!
//! - Alarms are raft-applied and persisted in the store's meta tree, one key
//!   per (member, alarm type): `alarm/<member id BE><type BE>`, so every
//!   member and every restart sees the same set.
//! - The quota (`--quota-backend-bytes`; 0 means 2 GiB, etcd's default) is
//!   checked before proposing a write that adds data (Put, Txn with a put,
//!   LeaseGrant). Over it, the member raises NOSPACE through raft and the
//!   request fails with `etcdserver: mvcc: database space exceeded`; while
//!   NOSPACE is raised, such writes keep failing (reads, deletes and
//!   compaction still work) until `etcdctl alarm disarm`.
//! - Unlike etcd, ironcd measures the space in use (pages not free), not the
//!   file size: after a compaction frees space, disarming works without an
//!   offline defragmentation.

use std::ops::Bound;

use ironcd_engine::kv::{ReadView, Tree, WriteView};
use ironcd_engine::mvcc::MvccError;
use tonic::Status;

use crate::pb::etcdserverpb::{alarm_request::AlarmAction, AlarmMember, AlarmRequest, AlarmResponse, AlarmType};

const PREFIX: &[u8] = b"alarm/";
/// etcd's `DefaultQuotaBytes`.
pub const DEFAULT_QUOTA: u64 = 2 << 30;
pub const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";

fn key(m: &AlarmMember) -> Vec<u8> {
    let mut k = PREFIX.to_vec();
    k.extend_from_slice(&m.member_id.to_be_bytes());
    k.extend_from_slice(&m.alarm.to_be_bytes());
    k
}

/// Every raised alarm, in (member, type) order.
pub fn list(view: &impl ReadView) -> Vec<AlarmMember> {
    let mut out = Vec::new();
    let _ = view.scan(Tree::Meta, Bound::Included(PREFIX), Bound::Unbounded, false, &mut |k, _| {
        let Some(rest) = k.strip_prefix(PREFIX) else { return false };
        if rest.len() == 12 {
            let member_id = u64::from_be_bytes(rest[..8].try_into().unwrap_or_default());
            let alarm = i32::from_be_bytes(rest[8..].try_into().unwrap_or_default());
            out.push(AlarmMember { member_id, alarm });
        }
        true
    });
    out
}

/// Whether NOSPACE is raised by any member.
pub fn no_space(view: &impl ReadView) -> bool {
    list(view).iter().any(|a| a.alarm == AlarmType::Nospace as i32)
}

pub fn no_space_error() -> Status {
    Status::resource_exhausted(NO_SPACE)
}

/// Applies an alarm request (raft-applied on every member).
pub fn apply(view: &mut impl WriteView, r: &AlarmRequest) -> Result<AlarmResponse, MvccError> {
    let m = AlarmMember { member_id: r.member_id, alarm: r.alarm };
    let mut resp = AlarmResponse { header: None, alarms: Vec::new() };
    if r.alarm == AlarmType::None as i32 {
        return Ok(resp);
    }
    let k = key(&m);
    match AlarmAction::try_from(r.action) {
        Ok(AlarmAction::Activate) if view.get(Tree::Meta, &k).map_err(MvccError::Store)?.is_none() => {
            view.put(Tree::Meta, &k, &[]).map_err(MvccError::Store)?;
            tracing::warn!(member_id = %format!("{:x}", m.member_id), alarm = alarm_name(m.alarm), "alarm raised");
            resp.alarms.push(m);
        }
        Ok(AlarmAction::Deactivate) if view.delete(Tree::Meta, &k).map_err(MvccError::Store)? => {
            tracing::info!(member_id = %format!("{:x}", m.member_id), alarm = alarm_name(m.alarm), "alarm cleared");
            resp.alarms.push(m);
        }
        _ => {}
    }
    Ok(resp)
}

pub fn alarm_name(a: i32) -> &'static str {
    AlarmType::try_from(a).map(|t| t.as_str_name()).unwrap_or("UNKNOWN")
}

/// How an alarm shows in `Status.errors` (etcd prints the alarm message).
pub fn describe(a: &AlarmMember) -> String {
    format!("memberID:{} alarm:{} ", a.member_id, alarm_name(a.alarm))
}
