//! Request checks etcd makes before proposing (`etcdserver/api/v3rpc/key.go`):
//! the server runs these, then proposes; apply assumes they passed.

use std::collections::HashSet;

use super::error::{MvccError, MvccResult};
use super::types::*;

pub fn check_range_request(r: &RangeRequest) -> MvccResult<()> {
    if r.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    Ok(())
}

pub fn check_put_request(r: &PutRequest) -> MvccResult<()> {
    if r.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(MvccError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(MvccError::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete_request(r: &DeleteRangeRequest) -> MvccResult<()> {
    if r.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    Ok(())
}

/// etcd's `checkTxnRequest` followed by `checkIntervals` on both branches.
pub fn check_txn_request(r: &TxnRequest, max_txn_ops: usize) -> MvccResult<()> {
    check_txn_ops(r, max_txn_ops as i64)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

/// etcd's `checkTxnRequest`: each list (compares, success, failure) may hold
/// `max` operations; a nested txn gets what the largest list left over.
fn check_txn_ops(r: &TxnRequest, max: i64) -> MvccResult<()> {
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len()) as i64;
    if opc > max {
        return Err(MvccError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(MvccError::EmptyKey);
    }
    for op in r.success.iter().chain(&r.failure) {
        match &op.request {
            Some(Request::RequestRange(r)) => check_range_request(r)?,
            Some(Request::RequestPut(p)) => check_put_request(p)?,
            Some(Request::RequestDeleteRange(d)) => check_delete_request(d)?,
            Some(Request::RequestTxn(t)) => check_txn_ops(t, max - opc)?,
            // The empty oneof.
            None => return Err(MvccError::KeyNotFound),
        }
    }
    Ok(())
}

/// A deleted interval: `[begin, end)`, or the point `begin` when `end` is
/// empty. As in etcd's interval tree, a range end of "\0" makes an inverted
/// interval that contains no key.
struct Del<'a> {
    begin: &'a [u8],
    end: &'a [u8],
}

impl Del<'_> {
    fn contains(&self, k: &[u8]) -> bool {
        if self.end.is_empty() {
            k == self.begin
        } else {
            self.begin <= k && k < self.end
        }
    }
}

/// etcd's `checkIntervals`: no key may be put twice, or put and deleted, in
/// one txn (then/else branches of one nested txn may put the same key).
fn check_intervals(reqs: &[RequestOp]) -> MvccResult<(HashSet<&[u8]>, Vec<Del<'_>>)> {
    let mut dels: Vec<Del<'_>> = reqs
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(d)) => Some(Del {
                begin: &d.key,
                end: &d.range_end,
            }),
            _ => None,
        })
        .collect();
    let mut puts: HashSet<&[u8]> = HashSet::new();
    for op in reqs {
        let Some(Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.iter().any(|d| d.contains(k)) {
                return Err(MvccError::DuplicateKey);
            }
        }
        puts.extend(puts_then.iter().copied());
        for k in &puts_else {
            if puts.contains(k) && !puts_then.contains(k) {
                return Err(MvccError::DuplicateKey);
            }
            if dels.iter().any(|d| d.contains(k)) {
                return Err(MvccError::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in reqs {
        let Some(Request::RequestPut(p)) = &op.request else {
            continue;
        };
        let k: &[u8] = &p.key;
        if puts.contains(k) || dels.iter().any(|d| d.contains(k)) {
            return Err(MvccError::DuplicateKey);
        }
        puts.insert(k);
    }
    Ok((puts, dels))
}
