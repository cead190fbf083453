//! Container logs in the CRI format Kubernetes nodes use, one record per line:
//! `2026-11-28T16:01:02.123456789Z stdout F the line`. `F` ends a line; `P` marks a partial
//! line whose continuation follows in the next record. The shim is the only writer.

use std::io::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

/// Which output stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The container's stdout.
    Stdout,
    /// The container's stderr.
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One parsed log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// The RFC 3339 timestamp with nanoseconds, UTC.
    pub timestamp: &'a str,
    /// Which stream.
    pub stream: Stream,
    /// Whether this record completes a line.
    pub full: bool,
    /// The content, without the newline.
    pub content: &'a [u8],
}

/// Appends `data` (a chunk just read from a stream) to `out` as records; a chunk that does not
/// end in a newline is written as a partial record.
pub fn write_chunk(out: &mut impl Write, stream: Stream, data: &[u8]) -> io::Result<()> {
    let ts = rfc3339_now();
    let mut rest = data;
    let mut buf = Vec::with_capacity(data.len() + 48);
    while !rest.is_empty() {
        let (line, full, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], true, &rest[i + 1..]),
            None => (rest, false, &rest[rest.len()..]),
        };
        buf.extend_from_slice(ts.as_bytes());
        buf.push(b' ');
        buf.extend_from_slice(stream.as_str().as_bytes());
        buf.extend_from_slice(if full { b" F " } else { b" P " });
        buf.extend_from_slice(line);
        buf.push(b'\n');
        rest = next;
    }
    out.write_all(&buf)
}

/// Parses one record line (without its trailing newline); `None` for a malformed line.
pub fn parse_line(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |&b| b == b' ');
    let timestamp = std::str::from_utf8(parts.next()?).ok()?;
    let stream = match parts.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    let full = match parts.next()? {
        b"F" => true,
        b"P" => false,
        _ => return None,
    };
    let content = parts.next().unwrap_or(b"");
    Some(Record {
        timestamp,
        stream,
        full,
        content,
    })
}

/// Now as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
pub fn rfc3339_now() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs(), now.subsec_nanos())
}

/// Formats unix seconds and nanoseconds as RFC 3339 in UTC.
pub fn rfc3339(secs: u64, nanos: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_with_lines_and_partial_tail_round_trips() {
        let mut out = Vec::new();
        write_chunk(&mut out, Stream::Stderr, b"one\ntwo\nthr").unwrap();
        let lines: Vec<_> = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(lines.len(), 3);
        let recs: Vec<_> = lines.iter().map(|l| parse_line(l).unwrap()).collect();
        assert_eq!(recs[0].content, b"one");
        assert!(recs[0].full);
        assert_eq!(recs[2].content, b"thr");
        assert!(!recs[2].full);
        assert_eq!(recs[1].stream, Stream::Stderr);
    }

    #[test]
    fn content_may_contain_spaces() {
        let rec = parse_line(b"2026-01-01T00:00:00.000000000Z stdout F a b  c").unwrap();
        assert_eq!(rec.content, b"a b  c");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(1_795_824_000, 5), "2026-11-28T00:00:00.000000005Z");
        assert_eq!(rfc3339(951_782_400, 0), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn malformed_lines_are_rejected() {
        assert!(parse_line(b"garbage").is_none());
        assert!(parse_line(b"ts stdin F x").is_none());
        assert!(parse_line(b"ts stdout X x").is_none());
    }
}
