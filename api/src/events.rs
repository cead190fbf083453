//! Pure helpers for Event objects, shared by the controllers (which write through Raft) and
//! the node agent (which writes through the gRPC API): naming, building, folding repeats,
//! and the RFC 3339 timestamps events carry.
//!
//! Invariants: an event's name is a valid object name (`<involved-name>-<8 hex>`, the
//! involved name cut so the whole fits 63 characters); a repeat of the same
//! (object, reason, message) within [`FOLD_WINDOW_SECS`] updates `count` and `lastTimestamp`
//! of the existing event instead of creating another.

use crate::model::{EventSpec, EventType, ObjectRef};
use crate::objects::{Kind, Object, MAX_NAME_LEN};
use std::hash::{BuildHasher, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

/// Repeats within this many seconds of the last occurrence are folded into one event.
pub const FOLD_WINDOW_SECS: u64 = 600;

/// The label naming the involved object's kind on an event (for filtering).
pub const LABEL_INVOLVED_KIND: &str = "gantry.io/involved-kind";

/// The name of a new event about `involved` (`<involved>-<8 hex>`), random suffix.
pub fn event_name(involved: &str) -> String {
    event_name_with(involved, random_u32())
}

/// [`event_name`] with a given suffix.
pub fn event_name_with(involved: &str, suffix: u32) -> String {
    let keep = MAX_NAME_LEN - 9;
    let mut base: String = involved.chars().take(keep).collect();
    while base.ends_with('-') {
        base.pop();
    }
    if base.is_empty() {
        base.push('e');
    }
    format!("{base}-{suffix:08x}")
}

/// A random `u32` from the standard library's per-process random hash keys, a clock and a
/// counter (good enough for name suffixes; not for secrets).
pub fn random_u32() -> u32 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    let v = h.finish();
    (v ^ (v >> 32)) as u32
}

/// A new event spec with `count` 1 and both timestamps `now` (RFC 3339).
pub fn new_spec(
    involved: ObjectRef,
    event_type: EventType,
    reason: &str,
    message: &str,
    source: &str,
    now: &str,
) -> EventSpec {
    EventSpec {
        involved_object: involved,
        event_type,
        reason: reason.to_string(),
        message: message.to_string(),
        source: source.to_string(),
        count: 1,
        first_timestamp: now.to_string(),
        last_timestamp: now.to_string(),
    }
}

/// The Event object of `spec`, named `name`.
pub fn to_object(name: &str, spec: &EventSpec) -> Object {
    let mut obj = Object::new(Kind::Event, name);
    obj.metadata.labels.insert(
        LABEL_INVOLVED_KIND.to_string(),
        spec.involved_object.kind.clone(),
    );
    obj.set_spec(spec);
    obj
}

/// Whether `existing` and `new` describe the same happening (object, reason, message), so a
/// repeat should be folded into `existing`.
pub fn same_event(existing: &EventSpec, new: &EventSpec) -> bool {
    existing.involved_object == new.involved_object
        && existing.reason == new.reason
        && existing.message == new.message
}

/// Whether `existing` is recent enough at `now_secs` (Unix seconds) to fold a repeat into.
pub fn within_fold_window(existing: &EventSpec, now_secs: u64) -> bool {
    parse_rfc3339(&existing.last_timestamp)
        .is_some_and(|last| now_secs.saturating_sub(last) <= FOLD_WINDOW_SECS)
}

/// Folds one more occurrence at `now` into `existing`.
pub fn fold(existing: &mut EventSpec, now: &str) {
    existing.count = existing.count.saturating_add(1);
    existing.last_timestamp = now.to_string();
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Now as RFC 3339 UTC with milliseconds (`2026-11-28T10:00:00.123Z`).
pub fn now_rfc3339_millis() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let base = format_rfc3339(d.as_secs());
    // `base` ends with `Z`; insert the milliseconds before it.
    format!("{}.{:03}Z", &base[..base.len() - 1], d.subsec_millis())
}

/// Unix seconds as RFC 3339 UTC (`2026-11-28T10:00:00Z`).
pub fn format_rfc3339(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm), valid for dates after 1970.
    let z = days as i64 + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Parses RFC 3339 UTC (`YYYY-MM-DDTHH:MM:SS[.fff]Z`) to Unix seconds; `None` otherwise.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || !s.ends_with('Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days-from-civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::validate_name;

    #[test]
    fn names_are_valid_labels_even_for_long_involved_names() {
        let n = event_name_with("web-abcde", 0xdead_beef);
        assert_eq!(n, "web-abcde-deadbeef");
        let long = "a".repeat(63);
        let n = event_name(&long);
        assert_eq!(n.len(), 63);
        validate_name(&n).unwrap();
    }

    #[test]
    fn timestamps_round_trip() {
        for secs in [0, 86_399, 951_782_400, 1_795_000_123] {
            assert_eq!(parse_rfc3339(&format_rfc3339(secs)), Some(secs));
        }
        assert_eq!(
            parse_rfc3339("2026-11-28T10:00:00.123Z"),
            parse_rfc3339("2026-11-28T10:00:00Z")
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert!(parse_rfc3339(&now_rfc3339_millis()).is_some());
    }

    #[test]
    fn repeats_fold_within_the_window() {
        let r = ObjectRef {
            kind: "Node".into(),
            name: "n1".into(),
        };
        let t0 = format_rfc3339(1_000_000);
        let mut e = new_spec(r.clone(), EventType::Warning, "NodeNotReady", "m", "x", &t0);
        let again = new_spec(r, EventType::Warning, "NodeNotReady", "m", "x", &t0);
        assert!(same_event(&e, &again));
        assert!(within_fold_window(&e, 1_000_000 + 600));
        assert!(!within_fold_window(&e, 1_000_000 + 601));
        fold(&mut e, &format_rfc3339(1_000_100));
        assert_eq!(e.count, 2);
        let obj = to_object("n1-00000001", &e);
        assert_eq!(obj.spec_as::<EventSpec>().unwrap(), e);
    }
}
