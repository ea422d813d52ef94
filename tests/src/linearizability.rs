//! A linearizability checker for histories of a key-value store where every
//! operation touches one key: `Put`, `Get` and `Delete` of a single key.
//!
//! Each key is an independent register, so a history is linearizable iff its
//! sub-history on every key is (linearizability is compositional); each key
//! is checked on its own with the Wing–Gong search, memoised as Lowe
//! describes: a cache of (set of operations already linearized, register
//! value) pairs already explored, so that the same configuration is never
//! searched twice.
//!
//! An operation whose outcome is [`Outcome::Unknown`] (the call failed or
//! timed out: it may or may not have taken effect) is treated as returning
//! at +infinity. Such a write may take effect at any time after its call, or
//! never (which is the same as taking effect after every other operation). A
//! read with an unknown outcome constrains nothing and is dropped.
//!
//! Timestamps are nanoseconds on one monotonic clock (e.g. since the start of
//! the test). Operation `a` precedes `b` when `a.ret < b.call`; equal
//! timestamps count as concurrent.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

/// One operation a client called.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put { key: String, value: String },
    Get { key: String },
    Delete { key: String },
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Get { key } | Op::Delete { key } => key,
        }
    }
}

/// What the client saw when the operation returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The put succeeded.
    Put,
    /// The get succeeded and found this value (`None`: the key was absent).
    Get(Option<String>),
    /// The delete succeeded; `deleted` says whether the key existed.
    Delete { deleted: bool },
    /// The call failed or timed out: it may or may not have taken effect.
    Unknown,
}

/// One operation of a history: what a client asked, what it saw, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub client: usize,
    pub op: Op,
    pub outcome: Outcome,
    /// When the client sent the request (ns).
    pub call: u64,
    /// When the client got the answer (ns); ignored for `Outcome::Unknown`.
    pub ret: u64,
}

/// How much work [`check`] may do before answering `Inconclusive`.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Search steps over all keys.
    pub max_steps: u64,
    /// Wall-clock time over all keys.
    pub max_time: Duration,
}

impl Default for Budget {
    fn default() -> Budget {
        Budget { max_steps: 50_000_000, max_time: Duration::from_secs(60) }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// Every key's history is linearizable.
    Ok,
    /// This key's history is not linearizable.
    Violation { key: String, explanation: String },
    /// The budget ran out before the search could decide (no violation found
    /// on the keys that were decided).
    Inconclusive { key: String, steps: u64 },
}

impl CheckResult {
    pub fn is_ok(&self) -> bool {
        matches!(self, CheckResult::Ok)
    }
    pub fn is_violation(&self) -> bool {
        matches!(self, CheckResult::Violation { .. })
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckResult::Ok => write!(f, "linearizable"),
            CheckResult::Violation { key, explanation } => {
                write!(f, "NOT linearizable on key {key:?}:\n{explanation}")
            }
            CheckResult::Inconclusive { key, steps } => {
                write!(f, "inconclusive: budget exhausted on key {key:?} after {steps} steps")
            }
        }
    }
}

/// Checks that `history` is linearizable as a map of independent registers.
///
/// Violations are reported for the first violating key in key order; a key
/// whose search ran out of budget is reported only if no key violates.
pub fn check(history: &[Event], budget: Budget) -> CheckResult {
    let mut by_key: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in history {
        by_key.entry(e.op.key()).or_default().push(e);
    }
    let deadline = Instant::now() + budget.max_time;
    let mut steps_left = budget.max_steps;
    let mut inconclusive = None;
    for (key, events) in by_key {
        match check_key(&events, &mut steps_left, deadline) {
            KeyResult::Ok => {}
            KeyResult::Violation(explanation) => {
                return CheckResult::Violation { key: key.to_string(), explanation };
            }
            KeyResult::Inconclusive(steps) => {
                if inconclusive.is_none() {
                    inconclusive = Some(CheckResult::Inconclusive { key: key.to_string(), steps });
                }
            }
        }
    }
    inconclusive.unwrap_or(CheckResult::Ok)
}

// ---------------------------------------------------------------------------
// One key.

enum KeyResult {
    Ok,
    Violation(String),
    Inconclusive(u64),
}

/// What an operation does to the register, with values interned
/// (0 = absent, v + 1 = the v-th distinct value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Put of a value (succeeded or unknown: either way the new value is set).
    Put(u32),
    /// Get that observed this state.
    Get(u32),
    /// Delete that reported whether the key existed.
    Delete(bool),
    /// Delete with an unknown outcome.
    DeleteUnknown,
}

impl Step {
    /// The state after this operation from `s`, or `None` if it cannot
    /// have run in state `s`.
    fn apply(self, s: u32) -> Option<u32> {
        match self {
            Step::Put(v) => Some(v),
            Step::Get(v) => (v == s).then_some(s),
            Step::Delete(deleted) => (deleted == (s != 0)).then_some(0),
            Step::DeleteUnknown => Some(0),
        }
    }
}

struct KeyOp<'a> {
    event: &'a Event,
    step: Step,
    call: u64,
    /// `u64::MAX` for unknown outcomes.
    ret: u64,
}

const NONE: usize = usize::MAX;

/// A node of the doubly linked list of call and return events.
#[derive(Clone, Copy)]
struct Node {
    prev: usize,
    next: usize,
    op: usize,
    is_call: bool,
    /// For a call, its return node.
    ret_node: usize,
}

struct Bits(Vec<u64>);

impl Bits {
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

fn check_key(events: &[&Event], steps_left: &mut u64, deadline: Instant) -> KeyResult {
    let ops = prepare(events);
    if ops.is_empty() {
        return KeyResult::Ok;
    }
    let n = ops.len();

    // Events in time order; at equal times calls come first (concurrent).
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        order.push((op.call, true, i));
        order.push((op.ret, false, i));
    }
    order.sort_by_key(|&(t, is_call, i)| (t, !is_call, i));

    // Node 0 is the head sentinel.
    let mut nodes = vec![Node { prev: NONE, next: NONE, op: NONE, is_call: false, ret_node: NONE }];
    let mut ret_of = vec![NONE; n];
    for &(_, is_call, op) in &order {
        let idx = nodes.len();
        nodes.push(Node { prev: idx - 1, next: NONE, op, is_call, ret_node: NONE });
        nodes[idx - 1].next = idx;
        if !is_call {
            ret_of[op] = idx;
        }
    }
    for node in nodes.iter_mut().skip(1) {
        if node.is_call {
            node.ret_node = ret_of[node.op];
        }
    }

    let lift = |nodes: &mut Vec<Node>, call: usize| {
        let ret = nodes[call].ret_node;
        let (p, nx) = (nodes[call].prev, nodes[call].next);
        nodes[p].next = nx;
        if nx != NONE {
            nodes[nx].prev = p;
        }
        let (p, nx) = (nodes[ret].prev, nodes[ret].next);
        nodes[p].next = nx;
        if nx != NONE {
            nodes[nx].prev = p;
        }
    };
    let unlift = |nodes: &mut Vec<Node>, call: usize| {
        let ret = nodes[call].ret_node;
        let (p, nx) = (nodes[ret].prev, nodes[ret].next);
        nodes[p].next = ret;
        if nx != NONE {
            nodes[nx].prev = ret;
        }
        let (p, nx) = (nodes[call].prev, nodes[call].next);
        nodes[p].next = call;
        if nx != NONE {
            nodes[nx].prev = call;
        }
    };

    let mut linearized = Bits(vec![0; n.div_ceil(64)]);
    // Configurations (linearized set, value) already explored.
    let mut cache: HashSet<(Box<[u64]>, u32)> = HashSet::new();
    // (call node, value before it, whether it was forced)
    let mut stack: Vec<(usize, u32, bool)> = Vec::new();
    let mut state = 0u32;
    let mut steps = 0u64;
    // The deepest partial linearization seen, for the explanation.
    let mut best: (Vec<usize>, u32, Vec<usize>) = (Vec::new(), 0, Vec::new());

    // Candidates (calls before the first pending return) are tried in two
    // passes: first the operations that returned, in call order, then those
    // with unknown outcomes, which may take effect at any later point and
    // are best tried late. Any order is complete; this one avoids exploring
    // early placements of unknown writes that nothing needs.
    //
    // Before both, a read-only candidate that fits the current value (a get
    // of it, or a delete that found nothing when the key is absent) is
    // linearized at once, with no alternative tried: if any linearization
    // continues from here, one continues with that read first (moving a
    // read-only operation earlier keeps every value the same, and no
    // pending operation must precede it, being a candidate). So when the
    // search fails after a forced read, it fails before it too.
    let deferred = |op: usize| ops[op].ret == u64::MAX;
    let read_only_fits = |op: usize, s: u32| match ops[op].step {
        Step::Get(v) => v == s,
        Step::Delete(false) => s == 0,
        _ => false,
    };
    let mut entry = nodes[0].next;
    let mut second_pass = false;
    let mut fresh = true;

    loop {
        if nodes[0].next == NONE {
            return KeyResult::Ok;
        }
        steps += 1;
        if *steps_left == 0 || (steps.is_multiple_of(4096) && Instant::now() > deadline) {
            return KeyResult::Inconclusive(steps);
        }
        *steps_left -= 1;

        let mut backtrack = false;
        if fresh {
            fresh = false;
            entry = nodes[0].next;
            second_pass = false;
            let mut i = nodes[0].next;
            while i != NONE && nodes[i].is_call && !read_only_fits(nodes[i].op, state) {
                i = nodes[i].next;
            }
            if i != NONE && nodes[i].is_call {
                linearized.set(nodes[i].op);
                if cache.insert((linearized.0.as_slice().into(), state)) {
                    stack.push((i, state, true));
                    lift(&mut nodes, i);
                    fresh = true;
                    continue;
                }
                linearized.clear(nodes[i].op);
                backtrack = true;
            }
        }

        if !backtrack {
            let node = nodes[entry];
            if node.is_call {
                if deferred(node.op) == second_pass && !(second_pass && same_step_before(&nodes, &ops, entry)) {
                    if let Some(next_state) = ops[node.op].step.apply(state) {
                        linearized.set(node.op);
                        if cache.insert((linearized.0.as_slice().into(), next_state)) {
                            stack.push((entry, state, false));
                            state = next_state;
                            lift(&mut nodes, entry);
                            fresh = true;
                            continue;
                        }
                        linearized.clear(node.op);
                    }
                }
                entry = node.next;
                continue;
            } else if !second_pass {
                second_pass = true;
                entry = nodes[0].next;
                continue;
            }
        }

        // Every candidate failed from here: backtrack, past forced reads.
        if stack.len() >= best.0.len() {
            let candidates = pending_calls(&nodes);
            best = (stack.iter().map(|&(c, _, _)| nodes[c].op).collect(), state, candidates);
        }
        loop {
            let Some((call, prev_state, forced)) = stack.pop() else {
                return KeyResult::Violation(explain(&ops, &best));
            };
            linearized.clear(nodes[call].op);
            state = prev_state;
            unlift(&mut nodes, call);
            if !forced {
                entry = nodes[call].next;
                second_pass = deferred(nodes[call].op);
                break;
            }
        }
    }
}

/// Whether a candidate before `entry` has an unknown outcome and the same
/// effect as `entry`'s. Two such operations are interchangeable (both were
/// called, neither returned), so only the first needs trying.
fn same_step_before(nodes: &[Node], ops: &[KeyOp<'_>], entry: usize) -> bool {
    let step = ops[nodes[entry].op].step;
    let mut i = nodes[0].next;
    while i != entry {
        let op = &ops[nodes[i].op];
        if nodes[i].is_call && op.ret == u64::MAX && op.step == step {
            return true;
        }
        i = nodes[i].next;
    }
    false
}

/// The operations called before the first pending return (the candidates
/// for the next linearization point).
fn pending_calls(nodes: &[Node]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut i = nodes[0].next;
    while i != NONE {
        let node = nodes[i];
        out.push(node.op);
        if !node.is_call {
            break;
        }
        i = node.next;
    }
    out
}

/// Turns the events of one key into operations: interns values, drops what
/// constrains nothing, and tightens unknown puts where that is sound.
fn prepare<'a>(events: &[&'a Event]) -> Vec<KeyOp<'a>> {
    // Values are interned, and every value no get returned is the same
    // value to the search (id 1): only gets tell values apart, so merging
    // them keeps the outcome and lets the cache merge configurations.
    const UNREAD: u32 = 1;
    let mut values: HashMap<&str, u32> = HashMap::new();
    for e in events {
        if let Outcome::Get(Some(v)) = &e.outcome {
            let next = values.len() as u32 + 2;
            values.entry(v.as_str()).or_insert(next);
        }
    }
    let intern = |v: &str| -> u32 { values.get(v).copied().unwrap_or(UNREAD) };
    let mut puts_of_value: HashMap<&str, usize> = HashMap::new();
    let mut ops = Vec::new();
    for e in events {
        let unknown = e.outcome == Outcome::Unknown;
        let step = match (&e.op, &e.outcome) {
            (Op::Get { .. }, Outcome::Unknown) => continue,
            (Op::Get { .. }, Outcome::Get(v)) => Step::Get(v.as_deref().map_or(0, intern)),
            (Op::Put { value, .. }, Outcome::Put | Outcome::Unknown) => {
                *puts_of_value.entry(value.as_str()).or_default() += 1;
                Step::Put(intern(value))
            }
            (Op::Delete { .. }, Outcome::Delete { deleted }) => Step::Delete(*deleted),
            (Op::Delete { .. }, Outcome::Unknown) => Step::DeleteUnknown,
            (op, outcome) => panic!("outcome {outcome:?} does not fit operation {op:?} (client {})", e.client),
        };
        let ret = if unknown { u64::MAX } else { e.ret };
        assert!(e.call <= ret, "event returns before it is called: {e:?}");
        ops.push(KeyOp { event: e, step, call: e.call, ret });
    }

    // Unknown writes constrain the search least when they are dropped or
    // given a return time. Both are sound (they lose no linearization):
    // - An unknown put of a value written by no other put on this key, that
    //   some get observed, took effect before that get's linearization
    //   point, hence before the get returned: its return time can be the
    //   earliest return of such a get.
    // - An unknown put of such a value that no get observed can be assumed
    //   never to have taken effect unless a delete that reported deleting
    //   something returned after its call. (In a linearization, the next
    //   operation after the put is a write, as nothing read the value; only
    //   a `Delete{deleted: true}` depends on the put having happened.)
    // - Likewise an unknown delete can be dropped when no operation that
    //   returned after its call observed the key absent (a get of nothing or
    //   a `Delete{deleted: false}`).
    let mut first_read: HashMap<u32, u64> = HashMap::new();
    let mut last_delete_true = 0u64;
    let mut last_absent_seen = 0u64;
    for op in &ops {
        match op.step {
            Step::Get(v) if v != 0 => {
                let t = first_read.entry(v).or_insert(u64::MAX);
                *t = (*t).min(op.ret);
            }
            Step::Get(_) | Step::Delete(false) => last_absent_seen = last_absent_seen.max(op.ret),
            Step::Delete(true) => last_delete_true = last_delete_true.max(op.ret),
            _ => {}
        }
    }
    ops.retain_mut(|op| {
        if op.ret != u64::MAX {
            return true;
        }
        let value = match &op.event.op {
            Op::Put { value, .. } => value.as_str(),
            _ => "",
        };
        match op.step {
            Step::Put(v) if puts_of_value[value] == 1 => match first_read.get(&v) {
                Some(&t) => {
                    op.ret = t.max(op.call);
                    true
                }
                None => last_delete_true >= op.call,
            },
            Step::DeleteUnknown => last_absent_seen >= op.call,
            _ => true,
        }
    });
    ops
}

fn describe(op: &KeyOp<'_>) -> String {
    let e = op.event;
    let what = match (&e.op, &e.outcome) {
        (Op::Put { value, .. }, Outcome::Put) => format!("put {value:?} -> ok"),
        (Op::Put { value, .. }, _) => format!("put {value:?} -> unknown"),
        (Op::Get { .. }, Outcome::Get(v)) => format!("get -> {v:?}"),
        (Op::Get { .. }, _) => "get -> unknown".to_string(),
        (Op::Delete { .. }, Outcome::Delete { deleted }) => format!("delete -> deleted={deleted}"),
        (Op::Delete { .. }, _) => "delete -> unknown".to_string(),
    };
    let ret = if e.outcome == Outcome::Unknown { "inf".to_string() } else { e.ret.to_string() };
    format!("client {} [{} .. {}] {what}", e.client, e.call, ret)
}

/// The value after the operations of `prefix`, in order.
fn value_after(ops: &[KeyOp<'_>], prefix: &[usize]) -> String {
    for &i in prefix.iter().rev() {
        match &ops[i].event.op {
            Op::Put { value, .. } => return format!("{value:?}"),
            Op::Delete { .. } => return "absent".to_string(),
            Op::Get { .. } => {}
        }
    }
    "absent".to_string()
}

fn explain(ops: &[KeyOp<'_>], best: &(Vec<usize>, u32, Vec<usize>)) -> String {
    let (prefix, _, candidates) = best;
    let mut s = format!(
        "{} operations on this key; the longest linearizable prefix has {} of them",
        ops.len(),
        prefix.len()
    );
    const SHOW: usize = 12;
    if !prefix.is_empty() {
        s.push_str(&format!(" (last {}):\n", prefix.len().min(SHOW)));
        for &i in prefix.iter().skip(prefix.len().saturating_sub(SHOW)) {
            s.push_str(&format!("    {}\n", describe(&ops[i])));
        }
    } else {
        s.push('\n');
    }
    s.push_str(&format!("  leaving the value {}; then none of these could come next:\n", value_after(ops, prefix)));
    for &i in candidates {
        s.push_str(&format!("    {}\n", describe(&ops[i])));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(client: usize, key: &str, value: &str, call: u64, ret: u64) -> Event {
        Event { client, op: Op::Put { key: key.into(), value: value.into() }, outcome: Outcome::Put, call, ret }
    }
    fn put_unknown(client: usize, key: &str, value: &str, call: u64) -> Event {
        Event { client, op: Op::Put { key: key.into(), value: value.into() }, outcome: Outcome::Unknown, call, ret: 0 }
    }
    fn get(client: usize, key: &str, seen: Option<&str>, call: u64, ret: u64) -> Event {
        Event { client, op: Op::Get { key: key.into() }, outcome: Outcome::Get(seen.map(String::from)), call, ret }
    }
    fn del(client: usize, key: &str, deleted: bool, call: u64, ret: u64) -> Event {
        Event { client, op: Op::Delete { key: key.into() }, outcome: Outcome::Delete { deleted }, call, ret }
    }
    fn del_unknown(client: usize, key: &str, call: u64) -> Event {
        Event { client, op: Op::Delete { key: key.into() }, outcome: Outcome::Unknown, call, ret: 0 }
    }

    fn run(h: &[Event]) -> CheckResult {
        check(h, Budget::default())
    }
    #[track_caller]
    fn assert_ok(h: &[Event]) {
        let r = run(h);
        assert_eq!(r, CheckResult::Ok, "{r}");
    }
    #[track_caller]
    fn assert_violation(h: &[Event], on_key: &str) -> String {
        match run(h) {
            CheckResult::Violation { key, explanation } => {
                assert_eq!(key, on_key);
                explanation
            }
            r => panic!("expected a violation on {on_key:?}, got {r}"),
        }
    }

    #[test]
    fn empty_history() {
        assert_ok(&[]);
    }

    #[test]
    fn sequential_ok() {
        assert_ok(&[
            get(0, "k", None, 0, 1),
            put(0, "k", "a", 2, 3),
            get(1, "k", Some("a"), 4, 5),
            put(1, "k", "b", 6, 7),
            get(0, "k", Some("b"), 8, 9),
            del(0, "k", true, 10, 11),
            get(1, "k", None, 12, 13),
            del(1, "k", false, 14, 15),
        ]);
    }

    #[test]
    fn sequential_stale_read() {
        let why = assert_violation(
            &[put(0, "k", "a", 0, 1), put(0, "k", "b", 2, 3), get(1, "k", Some("a"), 4, 5)],
            "k",
        );
        assert!(why.contains("get -> Some(\"a\")"), "{why}");
    }

    #[test]
    fn read_of_absent_after_write() {
        assert_violation(&[put(0, "k", "a", 0, 1), get(1, "k", None, 2, 3)], "k");
    }

    #[test]
    fn read_of_value_never_written() {
        assert_violation(&[put(0, "k", "a", 0, 10), get(1, "k", Some("zzz"), 1, 9)], "k");
    }

    #[test]
    fn concurrent_ops_linearizable_in_one_order_only() {
        // Put a and put b overlap; the final read fixes the order: b, then a.
        assert_ok(&[
            put(0, "k", "a", 0, 10),
            put(1, "k", "b", 1, 9),
            get(2, "k", Some("a"), 2, 8), // b, then a, then this read
            get(2, "k", Some("a"), 11, 12),
        ]);
        // Same overlap, but reads one after the other saw a, then b, and
        // the final read a again: a cannot come back after b.
        assert_violation(
            &[
                put(0, "k", "a", 0, 10),
                put(1, "k", "b", 1, 9),
                get(2, "k", Some("a"), 2, 3),
                get(3, "k", Some("b"), 4, 5),
                get(2, "k", Some("a"), 11, 12),
            ],
            "k",
        );
        // Reads overlapping each other may see the two values in either order.
        assert_ok(&[
            put(0, "k", "a", 0, 10),
            put(1, "k", "b", 1, 9),
            get(2, "k", Some("a"), 2, 8),
            get(3, "k", Some("b"), 3, 7),
            get(2, "k", Some("a"), 11, 12),
        ]);
        // Overlapping reads may see the old and new value in either order
        // only if they overlap each other; sequential reads cannot go back.
        assert_ok(&[
            put(0, "k", "a", 0, 1),
            put(1, "k", "b", 2, 20),
            get(2, "k", Some("b"), 3, 6),
            get(3, "k", Some("a"), 4, 5), // overlaps the first read: linearized before it
        ]);
        assert_violation(
            &[
                put(0, "k", "a", 0, 1),
                put(1, "k", "b", 2, 20),
                get(2, "k", Some("b"), 3, 6),
                get(3, "k", Some("a"), 7, 8), // after a read of b: stale
            ],
            "k",
        );
    }

    #[test]
    fn lost_write() {
        // A put that succeeded and was then lost: later reads see the older value.
        assert_violation(
            &[
                put(0, "k", "a", 0, 1),
                put(1, "k", "b", 2, 3),
                get(0, "k", Some("b"), 4, 5),
                get(0, "k", Some("a"), 6, 7),
            ],
            "k",
        );
        assert_violation(&[put(0, "k", "a", 0, 1), put(1, "k", "b", 2, 3), get(2, "k", None, 4, 5)], "k");
    }

    #[test]
    fn unknown_write_observed_later() {
        // A timed-out put that did take effect, seen long after.
        assert_ok(&[
            put(0, "k", "a", 0, 1),
            put_unknown(1, "k", "b", 2),
            get(0, "k", Some("a"), 3, 4),
            get(0, "k", Some("b"), 100, 101),
            get(0, "k", Some("b"), 102, 103),
        ]);
    }

    #[test]
    fn unknown_write_never_observed() {
        assert_ok(&[
            put(0, "k", "a", 0, 1),
            put_unknown(1, "k", "b", 2),
            get(0, "k", Some("a"), 3, 4),
            get(0, "k", Some("a"), 100, 101),
        ]);
    }

    #[test]
    fn unknown_write_cannot_take_effect_twice_or_before_its_call() {
        // Observed, then gone back to the older value with no other write.
        assert_violation(
            &[
                put(0, "k", "a", 0, 1),
                put_unknown(1, "k", "b", 2),
                get(0, "k", Some("b"), 3, 4),
                get(0, "k", Some("a"), 5, 6),
            ],
            "k",
        );
        // Observed before it was called.
        assert_violation(&[get(0, "k", Some("b"), 0, 1), put_unknown(1, "k", "b", 2)], "k");
    }

    #[test]
    fn unknown_write_with_repeated_value() {
        // The value "a" is also written by a known put, so the unknown put is
        // not tightened; the history stays linearizable either way.
        assert_ok(&[
            put_unknown(1, "k", "a", 0),
            put(0, "k", "b", 1, 2),
            put(0, "k", "a", 3, 4),
            get(2, "k", Some("a"), 5, 6),
            put(0, "k", "c", 7, 8),
            get(2, "k", Some("a"), 9, 10), // the unknown put landed late
        ]);
        assert_violation(
            &[
                put(1, "k", "a", 0, 1),
                put(0, "k", "b", 2, 3),
                put(0, "k", "a", 4, 5),
                put(0, "k", "c", 7, 8),
                get(2, "k", Some("a"), 9, 10),
            ],
            "k",
        );
    }

    #[test]
    fn unknown_get_is_ignored() {
        let mut e = get(0, "k", Some("never"), 0, 1);
        e.outcome = Outcome::Unknown;
        assert_ok(&[put(1, "k", "a", 0, 1), e]);
    }

    #[test]
    fn deletes() {
        assert_ok(&[
            put(0, "k", "a", 0, 1),
            del(1, "k", true, 2, 10),
            get(0, "k", Some("a"), 3, 4), // before the delete took effect
            get(0, "k", None, 11, 12),
        ]);
        // A delete that says it deleted nothing while the key existed.
        assert_violation(&[put(0, "k", "a", 0, 1), del(1, "k", false, 2, 3)], "k");
        // A delete that says it deleted something while the key was absent.
        assert_violation(&[del(1, "k", true, 0, 1)], "k");
        // The value comes back after a delete.
        assert_violation(
            &[put(0, "k", "a", 0, 1), del(1, "k", true, 2, 3), get(0, "k", Some("a"), 4, 5)],
            "k",
        );
        // Two deletes of one value both claiming they deleted it.
        assert_violation(&[put(0, "k", "a", 0, 1), del(1, "k", true, 2, 5), del(2, "k", true, 3, 6)], "k");
    }

    #[test]
    fn unknown_delete() {
        assert_ok(&[put(0, "k", "a", 0, 1), del_unknown(1, "k", 2), get(0, "k", Some("a"), 3, 4), get(0, "k", None, 5, 6)]);
        assert_ok(&[put(0, "k", "a", 0, 1), del_unknown(1, "k", 2), get(0, "k", Some("a"), 3, 4)]);
        assert_violation(
            &[put(0, "k", "a", 0, 1), del_unknown(1, "k", 2), get(0, "k", None, 3, 4), get(0, "k", Some("a"), 5, 6)],
            "k",
        );
    }

    #[test]
    fn unknown_put_kept_when_a_delete_reports_a_value() {
        // Nobody read "b", but the delete saw a value: only the unknown put
        // can explain it (the key was absent before).
        assert_ok(&[put_unknown(0, "k", "b", 0), del(1, "k", true, 5, 6)]);
    }

    #[test]
    fn keys_are_independent() {
        assert_ok(&[put(0, "x", "1", 0, 10), put(1, "y", "1", 0, 10), get(2, "x", Some("1"), 11, 12), get(2, "y", None, 1, 2)]);
        assert_violation(&[put(0, "x", "1", 0, 1), put(1, "y", "1", 0, 1), get(2, "y", None, 2, 3)], "y");
    }

    #[test]
    fn equal_timestamps_are_concurrent() {
        assert_ok(&[put(0, "k", "a", 0, 5), get(1, "k", None, 5, 6)]);
    }

    #[test]
    fn explanation_names_the_operations() {
        let why = assert_violation(
            &[put(0, "k", "a", 0, 1), put(0, "k", "b", 2, 3), get(7, "k", Some("a"), 4, 5)],
            "k",
        );
        assert!(why.contains("client 7 [4 .. 5] get -> Some(\"a\")"), "{why}");
        assert!(why.contains("leaving the value \"b\""), "{why}");
    }

    #[test]
    fn budget_exhaustion_is_inconclusive() {
        let h: Vec<Event> = (0..20).map(|i| put(i, "k", &format!("v{i}"), 0, 100)).chain([get(99, "k", Some("nope"), 101, 102)]).collect();
        let r = check(&h, Budget { max_steps: 10, max_time: Duration::from_secs(10) });
        assert!(matches!(r, CheckResult::Inconclusive { .. }), "{r}");
    }

    /// A tiny deterministic generator (no external crates).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Simulates `clients` clients against a real atomic register: each op
    /// takes effect at one instant inside [call, ret]; some writes time out.
    fn simulate(seed: u64, clients: usize, ops: usize, keys: usize) -> Vec<Event> {
        simulate_u(seed, clients, ops, keys, 20)
    }
    fn simulate_u(seed: u64, clients: usize, ops: usize, keys: usize, unknown_one_in: u64) -> Vec<Event> {
        let mut rng = Rng(seed | 1);
        let mut store: HashMap<String, String> = HashMap::new();
        // Per client: the time it becomes free.
        let mut free_at = vec![0u64; clients];
        // Pending effects: (effect time, event index).
        let mut planned: Vec<(u64, Event)> = Vec::new();
        for n in 0..ops {
            let c = rng.below(clients as u64) as usize;
            let call = free_at[c] + rng.below(50);
            let effect = call + 1 + rng.below(100);
            let ret = effect + 1 + rng.below(100);
            free_at[c] = ret;
            let key = format!("k{}", rng.below(keys as u64));
            let op = match rng.below(10) {
                0..=3 => Op::Put { key, value: format!("v{n}") },
                4 => Op::Delete { key },
                _ => Op::Get { key },
            };
            planned.push((effect, Event { client: c, op, outcome: Outcome::Unknown, call, ret }));
        }
        planned.sort_by_key(|p| p.0);
        let mut out = Vec::new();
        for (_, mut e) in planned {
            e.outcome = match &e.op {
                Op::Put { key, value } => {
                    store.insert(key.clone(), value.clone());
                    Outcome::Put
                }
                Op::Get { key } => Outcome::Get(store.get(key).cloned()),
                Op::Delete { key } => Outcome::Delete { deleted: store.remove(key).is_some() },
            };
            // Some writes "time out" (they did take effect).
            if !matches!(e.op, Op::Get { .. }) && rng.below(unknown_one_in) == 0 {
                e.outcome = Outcome::Unknown;
            }
            out.push(e);
        }
        out
    }

    #[test]
    fn simulated_linearizable_histories_pass() {
        for seed in 1..30 {
            let h = simulate(seed, 5, 300, 3);
            let r = run(&h);
            assert_eq!(r, CheckResult::Ok, "seed {seed}: {r}");
        }
    }

    /// Brute force over orders: is the one-key history linearizable?
    fn brute_force(h: &[Event]) -> bool {
        fn go(h: &[&Event], done: &mut Vec<bool>, state: Option<String>) -> bool {
            let ret = |e: &Event| if e.outcome == Outcome::Unknown { u64::MAX } else { e.ret };
            if (0..h.len()).all(|i| done[i] || h[i].outcome == Outcome::Unknown) {
                return true; // unknown ones left out: never took effect
            }
            for i in 0..h.len() {
                if done[i] || (0..h.len()).any(|j| !done[j] && j != i && ret(h[j]) < h[i].call) {
                    continue;
                }
                let next = match (&h[i].op, &h[i].outcome) {
                    (Op::Put { value, .. }, _) => Some(Some(value.clone())),
                    (Op::Get { .. }, Outcome::Get(v)) => (*v == state).then(|| state.clone()),
                    (Op::Delete { .. }, Outcome::Delete { deleted }) => (*deleted == state.is_some()).then_some(None),
                    (Op::Delete { .. }, _) => Some(None),
                    _ => unreachable!(),
                };
                if let Some(next) = next {
                    done[i] = true;
                    let ok = go(h, done, next);
                    done[i] = false;
                    if ok {
                        return true;
                    }
                }
            }
            false
        }
        let h: Vec<&Event> = h.iter().filter(|e| !(matches!(e.op, Op::Get { .. }) && e.outcome == Outcome::Unknown)).collect();
        go(&h, &mut vec![false; h.len()], None)
    }

    #[test]
    fn agrees_with_brute_force_on_random_small_histories() {
        let mut rng = Rng(0x9e3779b97f4a7c15);
        let (mut yes, mut no) = (0, 0);
        for _ in 0..3000 {
            let n = 1 + rng.below(7) as usize;
            let mut h = Vec::new();
            for i in 0..n {
                let call = rng.below(20);
                let ret = call + rng.below(10);
                let value = ["a", "b", "c"][rng.below(3) as usize];
                let unknown = rng.below(4) == 0;
                let (op, outcome) = match rng.below(3) {
                    0 => (Op::Put { key: "k".into(), value: value.into() }, Outcome::Put),
                    1 => {
                        let seen = [None, Some("a"), Some("b"), Some("c")][rng.below(4) as usize];
                        (Op::Get { key: "k".into() }, Outcome::Get(seen.map(String::from)))
                    }
                    _ => (Op::Delete { key: "k".into() }, Outcome::Delete { deleted: rng.below(2) == 0 }),
                };
                let outcome = if unknown { Outcome::Unknown } else { outcome };
                h.push(Event { client: i, op, outcome, call, ret });
            }
            let expect = brute_force(&h);
            let got = run(&h);
            assert_eq!(got.is_ok(), expect, "history {h:#?}: checker says {got}");
            assert!(got.is_ok() || got.is_violation());
            if expect {
                yes += 1;
            } else {
                no += 1;
            }
        }
        assert!(yes > 300 && no > 300, "{yes} linearizable, {no} not");
    }

    /// Timings on bigger histories: `cargo test --release -p ironcd-tests
    /// --lib explore_scaling -- --ignored --nocapture`. (2-core VM: 20
    /// clients x 3000 ops on one key ~2 s; 10 clients with 1 write in 20
    /// unknown ~0.2 s; with 1 in 5 unknown, inconclusive after 50M steps.)
    #[test]
    fn large_concurrent_history_is_decided_within_a_step_budget() {
        // 10 clients on one key, 3000 operations, 1 write in 20 unknown: the
        // search must decide within a bounded number of steps (not time:
        // the machine is shared), as the fault test's histories need.
        let h = simulate_u(5, 10, 3000, 1, 20);
        let r = check(&h, Budget { max_steps: 5_000_000, max_time: Duration::from_secs(3600) });
        assert_eq!(r, CheckResult::Ok, "{r}");
    }

    #[test]
    fn simulated_histories_with_a_corrupted_read_fail() {
        // Turn one read into a stale one (a value overwritten long before its
        // call, by writes that all returned before its call) and check that
        // the checker notices.
        let mut found = 0;
        for seed in 1..40 {
            let mut h = simulate(seed, 4, 200, 1);
            h.sort_by_key(|e| e.call);
            // The first known put, and a read called after a later known put
            // of another value returned.
            let Some(first) = h.iter().position(|e| matches!(e.op, Op::Put { .. }) && e.outcome == Outcome::Put) else { continue };
            let Op::Put { value: old, .. } = h[first].op.clone() else { unreachable!() };
            let Some(second) = h.iter().skip(first + 1).position(|e| {
                matches!(&e.op, Op::Put { value, .. } if *value != old) && e.outcome == Outcome::Put && e.call > h[first].ret
            }) else {
                continue;
            };
            let second = first + 1 + second;
            let done = h[second].ret;
            let Some(read) = h.iter().position(|e| matches!(e.op, Op::Get { .. }) && e.call > done) else { continue };
            h[read].outcome = Outcome::Get(Some(old));
            assert!(run(&h).is_violation(), "seed {seed}");
            found += 1;
        }
        assert!(found > 10, "only {found} corrupted histories built");
    }
}
