//! A linearizability checker for histories of operations on independent registers.
//!
//! Each key is a register holding a `u64` (0 before any write). An operation is a read, a
//! blind write or a compare-and-swap, with the times it was invoked and completed and one of
//! three outcomes: it completed (`Ok`), it definitely did not take effect (`Fail`), or its
//! outcome is unknown (`Unknown`: a timeout or a lost connection — it may take effect at any
//! moment after its invocation, so its completion counts as +∞, and it may never take effect).
//!
//! The search is Wing & Gong's backtracking over a linked list of call and return entries, with
//! Lowe's memoization of (set of linearized operations, register value) configurations already
//! explored. Registers are independent (P-compositionality), so each key is checked on its own,
//! and the search of a key is bounded: past [`Limits::max_configurations`] the key is reported
//! [`Verdict::Inconclusive`] rather than searched forever.
//!
//! Invariants: operations that definitely failed and reads of unknown outcome change nothing,
//! so they are dropped before the search; an unknown write or CAS whose new value nobody ever
//! observes can always be left out of a linearization, so it is dropped too (that keeps the
//! number of forever-pending operations, the source of the search's blow-up, small).

use std::collections::{BTreeMap, HashMap, HashSet};

/// A time in nanoseconds since the start of the run; [`INFINITY`] for an unknown completion.
pub type Time = u64;

/// The completion time of an operation whose outcome is unknown.
pub const INFINITY: Time = u64::MAX;

/// What an operation asked of a register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// Read the value.
    Read,
    /// Set the value.
    Write(u64),
    /// Set the value to `new` if it is `expected`.
    Cas {
        /// The value the register must hold.
        expected: u64,
        /// The value it is set to.
        new: u64,
    },
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It completed: a read returns its value; a write or CAS took effect.
    Ok(Option<u64>),
    /// It definitely did not take effect (a failed CAS, a refused request).
    Fail,
    /// It may or may not have taken effect, at any time after its invocation.
    Unknown,
}

/// One operation of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Which client issued it (for reports only).
    pub client: usize,
    /// The register.
    pub key: String,
    /// What it did.
    pub call: Call,
    /// When it was invoked.
    pub invoke: Time,
    /// When it completed (ignored for [`Outcome::Unknown`]).
    pub complete: Time,
    /// How it ended.
    pub outcome: Outcome,
}

impl Operation {
    /// A completed read that returned `value`.
    pub fn read(client: usize, key: &str, invoke: Time, complete: Time, value: u64) -> Self {
        Self::new(
            client,
            key,
            Call::Read,
            invoke,
            complete,
            Outcome::Ok(Some(value)),
        )
    }

    /// An operation with every field given.
    pub fn new(
        client: usize,
        key: &str,
        call: Call,
        invoke: Time,
        complete: Time,
        outcome: Outcome,
    ) -> Self {
        Operation {
            client,
            key: key.to_string(),
            call,
            invoke,
            complete,
            outcome,
        }
    }

    fn end(&self) -> Time {
        match self.outcome {
            Outcome::Unknown => INFINITY,
            _ => self.complete,
        }
    }
}

/// Bounds of the search.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Configurations memoized per key before the key is declared inconclusive.
    pub max_configurations: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_configurations: 500_000,
        }
    }
}

/// The verdict on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A linearization exists.
    Linearizable,
    /// No linearization exists; `stuck_at` is the operation (an index into the history given
    /// to [`check`]) whose completion no explored order could reach in the deepest attempt.
    Violation {
        /// Index of the operation the deepest attempt could not linearize.
        stuck_at: usize,
    },
    /// The search hit [`Limits::max_configurations`].
    Inconclusive,
}

/// The verdicts on every key of a history.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Verdict per key.
    pub keys: BTreeMap<String, Verdict>,
}

impl Report {
    /// Keys with a violation.
    pub fn violations(&self) -> usize {
        self.keys
            .values()
            .filter(|v| matches!(v, Verdict::Violation { .. }))
            .count()
    }

    /// Keys the search gave up on.
    pub fn inconclusive(&self) -> usize {
        self.keys
            .values()
            .filter(|v| **v == Verdict::Inconclusive)
            .count()
    }

    /// True when every key is linearizable.
    pub fn is_linearizable(&self) -> bool {
        self.keys.values().all(|v| *v == Verdict::Linearizable)
    }
}

/// Checks every key of `history` separately.
pub fn check(history: &[Operation], limits: Limits) -> Report {
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, op) in history.iter().enumerate() {
        by_key.entry(op.key.as_str()).or_default().push(i);
    }
    let keys = by_key
        .into_iter()
        .map(|(key, ops)| (key.to_string(), check_key(history, &ops, limits)))
        .collect();
    Report { keys }
}

/// Steps the register model; `None` when the operation cannot happen in state `value`.
fn step(value: u64, call: Call, outcome: Outcome) -> Option<u64> {
    match (call, outcome) {
        (Call::Read, Outcome::Ok(Some(v))) => (v == value).then_some(value),
        (Call::Read, _) => Some(value),
        (Call::Write(v), _) => Some(v),
        (Call::Cas { expected, new }, _) => (expected == value).then_some(new),
    }
}

/// The operations of one key that constrain the search, as indices into `history`.
fn relevant(history: &[Operation], ops: &[usize]) -> Vec<usize> {
    let mut observed: HashSet<u64> = HashSet::new();
    for &i in ops {
        match (history[i].call, history[i].outcome) {
            (Call::Read, Outcome::Ok(Some(v))) => {
                observed.insert(v);
            }
            (Call::Cas { expected, .. }, _) => {
                observed.insert(expected);
            }
            _ => {}
        }
    }
    ops.iter()
        .copied()
        .filter(|&i| {
            let op = &history[i];
            match (op.call, op.outcome) {
                (_, Outcome::Fail) => false,
                (Call::Read, Outcome::Unknown) => false,
                (Call::Write(v), Outcome::Unknown)
                | (Call::Cas { new: v, .. }, Outcome::Unknown) => observed.contains(&v),
                _ => true,
            }
        })
        .collect()
}

const HEAD: usize = usize::MAX;

/// One entry of the doubly-linked list: the call or the return of operation `op` (a local index).
#[derive(Debug, Clone, Copy)]
struct Entry {
    op: usize,
    is_call: bool,
    prev: usize,
    next: usize,
}

fn check_key(history: &[Operation], ops: &[usize], limits: Limits) -> Verdict {
    let ops = relevant(history, ops);
    let n = ops.len();
    if n == 0 {
        return Verdict::Linearizable;
    }
    // Calls at time t come before returns at time t: operations that merely touch are
    // concurrent, which is the conservative reading of clocks sampled around each call.
    let mut events: Vec<(Time, bool, usize)> = Vec::with_capacity(2 * n);
    for (local, &i) in ops.iter().enumerate() {
        events.push((history[i].invoke, false, local));
        events.push((history[i].end(), true, local));
    }
    events.sort_by_key(|&(t, is_return, local)| (t, is_return, local));
    let mut entries: Vec<Entry> = events
        .iter()
        .map(|&(_, is_return, op)| Entry {
            op,
            is_call: !is_return,
            prev: HEAD,
            next: HEAD,
        })
        .collect();
    let len = entries.len();
    for (i, e) in entries.iter_mut().enumerate() {
        e.prev = if i == 0 { HEAD } else { i - 1 };
        e.next = if i + 1 == len { HEAD } else { i + 1 };
    }
    let mut ret_of = vec![0; n];
    let mut call_of = vec![0; n];
    for (i, e) in entries.iter().enumerate() {
        if e.is_call {
            call_of[e.op] = i;
        } else {
            ret_of[e.op] = i;
        }
    }
    let unknown: Vec<bool> = ops
        .iter()
        .map(|&i| history[i].outcome == Outcome::Unknown)
        .collect();

    let mut first = 0usize;
    let mut linearized = vec![0u64; n.div_ceil(64)];
    let mut cache: HashMap<Vec<u64>, Vec<u64>> = HashMap::new();
    let mut configurations = 0usize;
    let mut calls: Vec<(usize, u64)> = Vec::new();
    let mut value = 0u64;
    let mut entry = first;
    let mut deepest = (0usize, ops[0]);

    // Unlinks call entry `c` and its return from the list.
    let lift = |entries: &mut Vec<Entry>, first: &mut usize, c: usize, r: usize| {
        for x in [c, r] {
            let Entry { prev, next, .. } = entries[x];
            if prev == HEAD {
                *first = next;
            } else {
                entries[prev].next = next;
            }
            if next != HEAD {
                entries[next].prev = prev;
            }
        }
    };
    let unlift = |entries: &mut Vec<Entry>, first: &mut usize, c: usize, r: usize| {
        for x in [r, c] {
            let Entry { prev, next, .. } = entries[x];
            if prev == HEAD {
                *first = x;
            } else {
                entries[prev].next = x;
            }
            if next != HEAD {
                entries[next].prev = x;
            }
        }
    };

    loop {
        if first == HEAD {
            return Verdict::Linearizable;
        }
        if entry == HEAD {
            // Only reachable through a return: the loop below never walks past one.
            return Verdict::Violation {
                stuck_at: deepest.1,
            };
        }
        let e = entries[entry];
        if e.is_call {
            let op = &history[ops[e.op]];
            if let Some(next_value) = step(value, op.call, op.outcome) {
                let (word, bit) = (e.op / 64, 1u64 << (e.op % 64));
                linearized[word] |= bit;
                let fresh = {
                    let seen = cache.entry(linearized.clone()).or_default();
                    if seen.contains(&next_value) {
                        false
                    } else {
                        seen.push(next_value);
                        true
                    }
                };
                if fresh {
                    configurations += 1;
                    if configurations > limits.max_configurations {
                        return Verdict::Inconclusive;
                    }
                    calls.push((entry, value));
                    value = next_value;
                    lift(&mut entries, &mut first, entry, ret_of[e.op]);
                    entry = first;
                    continue;
                }
                linearized[word] &= !bit;
            }
            entry = e.next;
        } else if unknown[e.op] {
            // Every remaining operation is of unknown outcome (their returns sort last at +∞):
            // the rest never took effect.
            return Verdict::Linearizable;
        } else {
            if calls.len() >= deepest.0 {
                deepest = (calls.len(), ops[e.op]);
            }
            let Some((call_entry, previous)) = calls.pop() else {
                return Verdict::Violation {
                    stuck_at: deepest.1,
                };
            };
            let op = entries[call_entry].op;
            linearized[op / 64] &= !(1u64 << (op % 64));
            value = previous;
            unlift(&mut entries, &mut first, call_entry, ret_of[op]);
            entry = entries[call_entry].next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn w(client: usize, invoke: Time, complete: Time, v: u64) -> Operation {
        Operation::new(
            client,
            "k",
            Call::Write(v),
            invoke,
            complete,
            Outcome::Ok(None),
        )
    }
    fn r(client: usize, invoke: Time, complete: Time, v: u64) -> Operation {
        Operation::read(client, "k", invoke, complete, v)
    }
    fn cas(client: usize, invoke: Time, complete: Time, e: u64, n: u64, o: Outcome) -> Operation {
        let call = Call::Cas {
            expected: e,
            new: n,
        };
        Operation::new(client, "k", call, invoke, complete, o)
    }
    fn unknown_write(client: usize, invoke: Time, v: u64) -> Operation {
        Operation::new(client, "k", Call::Write(v), invoke, 0, Outcome::Unknown)
    }
    fn verdict(h: &[Operation]) -> Verdict {
        check(h, Limits::default()).keys.get("k").cloned().unwrap()
    }

    #[test]
    fn a_read_concurrent_with_a_write_may_see_either_value() {
        let h = [w(0, 0, 10, 1), r(1, 5, 6, 0), r(2, 7, 8, 1)];
        assert_eq!(verdict(&h), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_a_violation() {
        let h = [w(0, 0, 10, 1), r(1, 20, 30, 0)];
        assert_eq!(verdict(&h), Verdict::Violation { stuck_at: 1 });
    }

    #[test]
    fn a_read_going_back_in_time_is_a_violation() {
        // Both writes overlap every read: seeing 1, then 2, then 1 again would need the write
        // of 1 to take effect twice.
        let h = [
            w(0, 0, 100, 1),
            w(1, 0, 100, 2),
            r(2, 10, 20, 1),
            r(2, 30, 40, 2),
            r(2, 50, 60, 1),
        ];
        assert!(matches!(verdict(&h), Verdict::Violation { .. }));
    }

    #[test]
    fn two_cas_from_the_same_expected_value_cannot_both_succeed() {
        let h = [
            w(0, 0, 1, 1),
            cas(1, 10, 20, 1, 2, Outcome::Ok(None)),
            cas(2, 10, 20, 1, 3, Outcome::Ok(None)),
        ];
        assert!(matches!(verdict(&h), Verdict::Violation { .. }));
    }

    #[test]
    fn one_cas_winning_and_one_failing_is_fine() {
        let h = [
            w(0, 0, 1, 1),
            cas(1, 10, 20, 1, 2, Outcome::Ok(None)),
            cas(2, 10, 20, 1, 3, Outcome::Fail),
            r(0, 30, 31, 2),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
    }

    #[test]
    fn an_unknown_write_that_becomes_visible_later_is_fine() {
        let h = [
            unknown_write(0, 10, 7),
            r(1, 20, 30, 0),
            r(1, 100, 110, 7),
            r(2, 200, 210, 7),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
    }

    #[test]
    fn an_unknown_write_that_never_shows_is_fine() {
        let h = [unknown_write(0, 10, 7), r(1, 20, 30, 0), r(1, 100, 110, 0)];
        assert_eq!(verdict(&h), Verdict::Linearizable);
    }

    #[test]
    fn an_unknown_write_seen_before_its_invocation_is_a_violation() {
        let h = [r(1, 0, 5, 7), unknown_write(0, 10, 7)];
        assert!(matches!(verdict(&h), Verdict::Violation { .. }));
    }

    #[test]
    fn an_unknown_write_cannot_take_effect_twice() {
        let h = [
            unknown_write(0, 0, 7),
            r(1, 10, 11, 7),
            w(1, 20, 21, 8),
            r(1, 30, 31, 7),
        ];
        assert!(matches!(verdict(&h), Verdict::Violation { .. }));
    }

    #[test]
    fn failed_operations_are_ignored_and_keys_are_independent() {
        let mut h = vec![w(0, 0, 1, 1), r(0, 2, 3, 1)];
        h.push(Operation::new(0, "k", Call::Write(9), 4, 5, Outcome::Fail));
        h.push(r(0, 6, 7, 1));
        let mut other = r(0, 0, 1, 0);
        other.key = "j".into();
        h.push(other);
        let report = check(&h, Limits::default());
        assert!(report.is_linearizable());
        assert_eq!(report.keys.len(), 2);
    }

    #[test]
    fn the_search_reports_inconclusive_past_its_bound() {
        let mut h: Vec<Operation> = (0..12).map(|i| w(i, 0, 1000, i as u64 + 1)).collect();
        h.push(r(0, 2000, 2001, 99));
        let tight = Limits {
            max_configurations: 50,
        };
        assert_eq!(
            check(&h, tight).keys.get("k").cloned().unwrap(),
            Verdict::Inconclusive
        );
    }

    /// A sequential execution of random operations on a few keys, each taking effect at a
    /// distinct instant inside a random window around it (windows of one client never overlap).
    fn sequential(ops: &[(u8, u8, u8)]) -> Vec<Operation> {
        let mut values: BTreeMap<String, u64> = BTreeMap::new();
        let mut out = Vec::new();
        let mut next_value = 1;
        for (i, &(kind, key, slack)) in ops.iter().enumerate() {
            let key = format!("k{}", key % 3);
            let at = 100 * i as Time + 50;
            let (invoke, complete) = (at - Time::from(slack % 50), at + Time::from(slack / 5));
            let current = *values.get(&key).unwrap_or(&0);
            let (call, outcome) = match kind % 4 {
                0 | 1 => (Call::Read, Outcome::Ok(Some(current))),
                2 => {
                    next_value += 1;
                    values.insert(key.clone(), next_value);
                    (Call::Write(next_value), Outcome::Ok(None))
                }
                _ => {
                    next_value += 1;
                    values.insert(key.clone(), next_value);
                    let call = Call::Cas {
                        expected: current,
                        new: next_value,
                    };
                    (call, Outcome::Ok(None))
                }
            };
            out.push(Operation::new(i % 4, &key, call, invoke, complete, outcome));
        }
        out
    }

    proptest! {
        #[test]
        fn sequential_histories_are_linearizable(ops in prop::collection::vec(any::<(u8, u8, u8)>(), 1..80)) {
            let h = sequential(&ops);
            prop_assert!(check(&h, Limits::default()).is_linearizable());
        }

        #[test]
        fn a_read_of_a_value_never_written_is_caught(
            ops in prop::collection::vec(any::<(u8, u8, u8)>(), 1..80),
            pick in any::<prop::sample::Index>(),
        ) {
            let mut h = sequential(&ops);
            let reads: Vec<usize> = (0..h.len()).filter(|&i| h[i].call == Call::Read).collect();
            prop_assume!(!reads.is_empty());
            let i = reads[pick.index(reads.len())];
            h[i].outcome = Outcome::Ok(Some(1_000_000));
            prop_assert!(!check(&h, Limits::default()).is_linearizable());
        }

        #[test]
        fn a_read_returning_the_previous_value_after_a_later_write_is_caught(
            ops in prop::collection::vec(any::<(u8, u8, u8)>(), 1..80),
        ) {
            // Corrupt: after the history, every key is read back with its value before its
            // last write, well after every operation completed.
            let mut h = sequential(&ops);
            let end = 100 * h.len() as Time + 1000;
            let mut last_two: BTreeMap<String, (u64, u64)> = BTreeMap::new();
            for op in &h {
                let v = match op.call {
                    Call::Write(v) | Call::Cas { new: v, .. } => v,
                    Call::Read => continue,
                };
                let e = last_two.entry(op.key.clone()).or_insert((0, 0));
                *e = (e.1, v);
            }
            prop_assume!(!last_two.is_empty());
            for (key, (before, _)) in &last_two {
                let mut read = Operation::read(9, key, end, end + 1, *before);
                read.key = key.clone();
                h.push(read);
            }
            prop_assert!(!check(&h, Limits::default()).is_linearizable());
        }

        #[test]
        fn unknown_writes_that_took_effect_keep_a_sequential_history_linearizable(
            ops in prop::collection::vec(any::<(u8, u8, u8)>(), 1..60),
            lose in prop::collection::vec(any::<bool>(), 60),
        ) {
            let mut h = sequential(&ops);
            for (op, lose) in h.iter_mut().zip(lose) {
                if lose && matches!(op.call, Call::Write(_)) {
                    op.outcome = Outcome::Unknown;
                }
            }
            prop_assert!(check(&h, Limits::default()).is_linearizable());
        }
    }
}
