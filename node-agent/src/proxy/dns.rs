//! A small authoritative DNS server for service names, over UDP: `<service>` and
//! `<service>.<domain>` (default `gantry.local`) resolve to the service's virtual address.
//!
//! Answers:
//! - `A` (or `ANY`) for a known name: the virtual address; any other type (`AAAA`…): no data;
//! - an unknown single-label name, or an unknown name under the domain: `NXDOMAIN`;
//! - the domain itself: no data;
//! - any other name: `REFUSED` — there is no upstream: replicas get no outside network.
//!
//! Robustness: a packet is untrusted input. Only one question is read; compression pointers
//! must point strictly before where the name being read started, so a pointer loop cannot
//! exist; names are capped at 255 bytes. Packets shorter than a header, longer than
//! [`MAX_QUERY_BYTES`] or that are responses are dropped (never answering a response means
//! two servers cannot ping-pong); other malformed queries get `FORMERR`. No input panics
//! (a test feeds random bytes, and `fuzz/fuzz_targets/dns.rs` fuzzes [`answer`]).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The largest query accepted (the classic UDP DNS message limit).
pub const MAX_QUERY_BYTES: usize = 512;

/// The TTL of answers, in seconds: short, because a deleted and re-created service may get
/// another address.
pub const ANSWER_TTL_SECS: u32 = 5;

const HEADER_LEN: usize = 12;
const MAX_NAME_LEN: usize = 255;
const MAX_LABEL_LEN: usize = 63;
const MAX_POINTERS: usize = 16;

const TYPE_A: u16 = 1;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;

const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_RD: u16 = 0x0100;

/// A response code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Rcode {
    /// No error.
    NoError = 0,
    /// The query was malformed.
    FormErr = 1,
    /// The name does not exist.
    NxDomain = 3,
    /// The opcode is not supported.
    NotImp = 4,
    /// Not served here.
    Refused = 5,
}

/// Why a query could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// Shorter than a header.
    #[error("packet shorter than a dns header")]
    Short,
    /// Longer than [`MAX_QUERY_BYTES`].
    #[error("packet longer than {MAX_QUERY_BYTES} bytes")]
    TooLong,
    /// The QR bit is set.
    #[error("packet is a response")]
    Response,
    /// The question ends early or is malformed.
    #[error("malformed question: {0}")]
    Malformed(&'static str),
}

/// The one question of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// The labels as sent (case kept, for the echo), without the root label.
    pub labels: Vec<Vec<u8>>,
    /// QTYPE.
    pub qtype: u16,
    /// QCLASS.
    pub qclass: u16,
}

/// A parsed query header and question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The query id, echoed.
    pub id: u16,
    /// The header flags as sent.
    pub flags: u16,
    /// The question, or why it could not be read (answered `FORMERR`, or `NOTIMP` for an
    /// opcode other than a standard query).
    pub question: Result<Question, DnsError>,
}

fn u16_at(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]))
}

/// Reads the header and the first question of `packet`.
///
/// # Errors
/// [`DnsError::Short`], [`DnsError::TooLong`] and [`DnsError::Response`]: the packet should be
/// dropped. A malformed question is reported inside [`Query::question`] so it can be answered.
pub fn parse_query(packet: &[u8]) -> Result<Query, DnsError> {
    if packet.len() > MAX_QUERY_BYTES {
        return Err(DnsError::TooLong);
    }
    let (Some(id), Some(flags), Some(qdcount)) =
        (u16_at(packet, 0), u16_at(packet, 2), u16_at(packet, 4))
    else {
        return Err(DnsError::Short);
    };
    if packet.len() < HEADER_LEN {
        return Err(DnsError::Short);
    }
    if flags & FLAG_QR != 0 {
        return Err(DnsError::Response);
    }
    let question = if qdcount != 1 {
        Err(DnsError::Malformed("question count is not 1"))
    } else {
        read_question(packet)
    };
    Ok(Query {
        id,
        flags,
        question,
    })
}

fn read_question(packet: &[u8]) -> Result<Question, DnsError> {
    let (labels, end) = read_name(packet, HEADER_LEN)?;
    let qtype = u16_at(packet, end).ok_or(DnsError::Malformed("question ends early"))?;
    let qclass = u16_at(packet, end + 2).ok_or(DnsError::Malformed("question ends early"))?;
    Ok(Question {
        labels,
        qtype,
        qclass,
    })
}

/// Reads the name at `start`; returns its labels and the offset after it in the packet.
fn read_name(packet: &[u8], start: usize) -> Result<(Vec<Vec<u8>>, usize), DnsError> {
    let mut labels = Vec::new();
    let mut pos = start;
    // Every pointer must point before `floor`, the start of the run of labels being read, and
    // lowers it: offsets strictly decrease, so reading ends.
    let mut floor = start;
    let mut end = None;
    let mut wire_len = 1;
    let mut pointers = 0;
    loop {
        let len = *packet
            .get(pos)
            .ok_or(DnsError::Malformed("name ends early"))?;
        match len & 0xC0 {
            0x00 if len == 0 => {
                return Ok((labels, end.unwrap_or(pos + 1)));
            }
            0x00 => {
                let len = usize::from(len);
                debug_assert!(len <= MAX_LABEL_LEN);
                let label = packet
                    .get(pos + 1..pos + 1 + len)
                    .ok_or(DnsError::Malformed("label ends early"))?;
                wire_len += 1 + len;
                if wire_len > MAX_NAME_LEN {
                    return Err(DnsError::Malformed("name longer than 255 bytes"));
                }
                labels.push(label.to_vec());
                pos += 1 + len;
            }
            0xC0 => {
                let low = *packet
                    .get(pos + 1)
                    .ok_or(DnsError::Malformed("pointer ends early"))?;
                let target = (usize::from(len & 0x3F) << 8) | usize::from(low);
                pointers += 1;
                if target >= floor || pointers > MAX_POINTERS {
                    return Err(DnsError::Malformed(
                        "compression pointer loops or points forward",
                    ));
                }
                end.get_or_insert(pos + 2);
                floor = target;
                pos = target;
            }
            _ => return Err(DnsError::Malformed("unknown label type")),
        }
    }
}

/// What a name is to this server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// A service with this virtual address.
    Address(Ipv4Addr),
    /// The domain itself: exists, holds no address.
    Apex,
    /// A name this server is authoritative for that does not exist.
    NxDomain,
    /// Not a name served here.
    NotOurs,
}

/// The names served: service name → virtual address, and the domain they live under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsTable {
    domain: Vec<Vec<u8>>,
    names: HashMap<Vec<u8>, Ipv4Addr>,
}

impl DnsTable {
    /// A table for `domain` (`gantry.local`, any case, trailing dot allowed) with `names`
    /// (service names, matched case-insensitively).
    pub fn new(domain: &str, names: impl IntoIterator<Item = (String, Ipv4Addr)>) -> Self {
        DnsTable {
            domain: domain
                .trim_end_matches('.')
                .split('.')
                .filter(|l| !l.is_empty())
                .map(|l| l.to_ascii_lowercase().into_bytes())
                .collect(),
            names: names
                .into_iter()
                .map(|(n, ip)| (n.to_ascii_lowercase().into_bytes(), ip))
                .collect(),
        }
    }

    /// How many names are served.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no name is served.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// What the name made of `labels` (without the root label) is.
    pub fn resolve<L: AsRef<[u8]>>(&self, labels: &[L]) -> Resolution {
        let lower: Vec<Vec<u8>> = labels
            .iter()
            .map(|l| l.as_ref().to_ascii_lowercase())
            .collect();
        let d = self.domain.len();
        let rest = if !self.domain.is_empty()
            && lower.len() >= d
            && lower[lower.len() - d..] == self.domain[..]
        {
            &lower[..lower.len() - d]
        } else if lower.len() == 1 {
            &lower[..]
        } else {
            return Resolution::NotOurs;
        };
        match rest {
            [] => Resolution::Apex,
            [name] => self
                .names
                .get(name)
                .map_or(Resolution::NxDomain, |ip| Resolution::Address(*ip)),
            _ => Resolution::NxDomain,
        }
    }

    /// The resolution of a dotted name (trailing dot allowed).
    pub fn resolve_name(&self, name: &str) -> Resolution {
        let labels: Vec<&str> = name
            .trim_end_matches('.')
            .split('.')
            .filter(|l| !l.is_empty())
            .collect();
        self.resolve(&labels)
    }
}

fn header(id: u16, flags: u16, qd: u16, an: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    for n in [qd, an, 0, 0] {
        out.extend_from_slice(&n.to_be_bytes());
    }
    out
}

/// The response to `packet`, or `None` when it must be dropped.
pub fn answer(packet: &[u8], table: &DnsTable) -> Option<Vec<u8>> {
    let query = parse_query(packet).ok()?;
    let opcode = (query.flags >> 11) & 0xF;
    let base = FLAG_QR | (query.flags & FLAG_RD) | (opcode << 11);
    if opcode != 0 {
        return Some(header(query.id, base | Rcode::NotImp as u16, 0, 0));
    }
    let q = match query.question {
        Ok(q) => q,
        Err(_) => return Some(header(query.id, base | Rcode::FormErr as u16, 0, 0)),
    };
    let resolution = if q.qclass == CLASS_IN {
        table.resolve(&q.labels)
    } else {
        Resolution::NotOurs
    };
    let (rcode, aa, address) = match resolution {
        Resolution::Address(ip) if q.qtype == TYPE_A || q.qtype == TYPE_ANY => {
            (Rcode::NoError, FLAG_AA, Some(ip))
        }
        Resolution::Address(_) | Resolution::Apex => (Rcode::NoError, FLAG_AA, None),
        Resolution::NxDomain => (Rcode::NxDomain, FLAG_AA, None),
        Resolution::NotOurs => (Rcode::Refused, 0, None),
    };
    let mut out = header(
        query.id,
        base | aa | rcode as u16,
        1,
        u16::from(address.is_some()),
    );
    // The question is echoed with its case, uncompressed (its pointers, if any, pointed into
    // the query); its parse bounded it to 255 bytes.
    for label in &q.labels {
        out.push(label.len() as u8);
        out.extend_from_slice(label);
    }
    out.push(0);
    out.extend_from_slice(&q.qtype.to_be_bytes());
    out.extend_from_slice(&q.qclass.to_be_bytes());
    if let Some(ip) = address {
        out.extend_from_slice(&[0xC0, HEADER_LEN as u8]);
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ANSWER_TTL_SECS.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    Some(out)
}

/// Answers queries on `socket` from the latest `table` until `shutdown`.
pub async fn serve(
    socket: UdpSocket,
    table: watch::Receiver<Arc<DnsTable>>,
    shutdown: CancellationToken,
) {
    // Larger than any accepted query, so an oversized one is seen as such, not truncated.
    let mut buf = vec![0u8; 4 * MAX_QUERY_BYTES];
    loop {
        let received = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = socket.recv_from(&mut buf) => r,
        };
        match received {
            Ok((n, peer)) => {
                let t = Arc::clone(&table.borrow());
                match answer(&buf[..n], &t) {
                    Some(response) => {
                        if let Err(e) = socket.send_to(&response, peer).await {
                            tracing::debug!(peer = %peer, error = %e, "dns answer not sent");
                        }
                    }
                    None => tracing::trace!(peer = %peer, bytes = n, "dns packet dropped"),
                }
            }
            Err(e) => {
                // Errors such as ECONNREFUSED from an earlier answer's ICMP are per packet;
                // the pause keeps a persistent error from spinning.
                tracing::debug!(error = %e, "dns receive failed");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> DnsTable {
        DnsTable::new(
            "gantry.local.",
            [("web".to_string(), Ipv4Addr::new(10, 215, 0, 10))],
        )
    }

    /// A standard query with RD set for `name` and `qtype`.
    pub(crate) fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut p = header(id, FLAG_RD, 1, 0);
        for l in name
            .trim_end_matches('.')
            .split('.')
            .filter(|l| !l.is_empty())
        {
            p.push(l.len() as u8);
            p.extend_from_slice(l.as_bytes());
        }
        p.push(0);
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&CLASS_IN.to_be_bytes());
        p
    }

    fn rcode(resp: &[u8]) -> u8 {
        resp[3] & 0x0F
    }

    fn ancount(resp: &[u8]) -> u16 {
        u16::from_be_bytes([resp[6], resp[7]])
    }

    #[test]
    fn service_names_resolve_with_and_without_the_domain_in_any_case() {
        for name in ["web", "web.gantry.local", "WEB.Gantry.Local.", "web."] {
            let resp = answer(&query(7, name, TYPE_A), &table()).unwrap();
            assert_eq!(&resp[..2], &7u16.to_be_bytes(), "{name}: id echoed");
            assert_eq!(resp[2] & 0x80, 0x80, "{name}: a response");
            assert_eq!(resp[2] & 0x04, 0x04, "{name}: authoritative");
            assert_eq!(resp[2] & 0x01, 0x01, "{name}: RD echoed");
            assert_eq!(rcode(&resp), 0, "{name}");
            assert_eq!(ancount(&resp), 1, "{name}");
            assert_eq!(&resp[resp.len() - 4..], &[10, 215, 0, 10], "{name}");
            // The question is echoed as sent, case included (0x20 randomization).
            let q = query(7, name, TYPE_A);
            assert_eq!(&resp[12..q.len()], &q[12..], "{name}");
        }
    }

    #[test]
    fn known_names_have_no_other_records() {
        let resp = answer(&query(1, "web.gantry.local", 28), &table()).unwrap();
        assert_eq!((rcode(&resp), ancount(&resp)), (0, 0));
        let resp = answer(&query(1, "gantry.local", TYPE_A), &table()).unwrap();
        assert_eq!((rcode(&resp), ancount(&resp)), (0, 0));
    }

    #[test]
    fn unknown_names_under_the_domain_do_not_exist_and_others_are_refused() {
        for name in ["nope", "nope.gantry.local", "a.web.gantry.local"] {
            let resp = answer(&query(1, name, TYPE_A), &table()).unwrap();
            assert_eq!(rcode(&resp), Rcode::NxDomain as u8, "{name}");
        }
        for name in ["example.com", "web.other.local", "web.local"] {
            let resp = answer(&query(1, name, TYPE_A), &table()).unwrap();
            assert_eq!(rcode(&resp), Rcode::Refused as u8, "{name}");
            assert_eq!(resp[2] & 0x04, 0, "{name}: not authoritative");
        }
    }

    #[test]
    fn malformed_queries_get_formerr_and_junk_is_dropped() {
        assert_eq!(answer(&[1, 2, 3], &table()), None, "shorter than a header");
        let mut resp_bit = query(1, "web", TYPE_A);
        resp_bit[2] |= 0x80;
        assert_eq!(
            answer(&resp_bit, &table()),
            None,
            "responses are never answered"
        );
        assert_eq!(answer(&vec![0; 513], &table()), None, "oversized");

        let q = query(1, "web", TYPE_A);
        let truncated = &q[..q.len() - 3];
        assert_eq!(rcode(&answer(truncated, &table()).unwrap()), 1);
        let mut two = q.clone();
        two[5] = 2;
        assert_eq!(rcode(&answer(&two, &table()).unwrap()), 1);
        let mut notify = q.clone();
        notify[2] |= 4 << 3;
        assert_eq!(rcode(&answer(&notify, &table()).unwrap()), 4);
    }

    #[test]
    fn compression_pointers_are_followed_backwards_only() {
        // A pointer to itself, and a pointer forward, are loops or nonsense.
        let mut p = header(1, 0, 1, 0);
        p.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
        assert_eq!(rcode(&answer(&p, &table()).unwrap()), 1);
        let mut p = header(1, 0, 1, 0);
        p.extend_from_slice(&[0xC0, 14, 0, 0, 1, 0, 1]);
        assert_eq!(rcode(&answer(&p, &table()).unwrap()), 1);
        // A pointer into the header is followed (it reads a name there) without looping.
        let mut p = header(0, 0, 1, 0);
        p[0] = 0; // id 0x00xx: the byte at 0 is a root label
        p.extend_from_slice(&[0xC0, 0, 0, 1, 0, 1]);
        let resp = answer(&p, &table()).unwrap();
        assert_eq!(
            rcode(&resp),
            Rcode::Refused as u8,
            "the root name is not served"
        );
        // A label run that ends in a pointer back into itself.
        let mut p = header(1, 0, 1, 0);
        p.extend_from_slice(&[3, b'w', b'e', b'b', 0xC0, 12, 0, 1, 0, 1]);
        assert_eq!(rcode(&answer(&p, &table()).unwrap()), 1);
    }

    #[test]
    fn names_longer_than_255_bytes_are_refused_as_malformed() {
        let mut p = header(1, 0, 1, 0);
        for _ in 0..5 {
            p.push(63);
            p.extend_from_slice(&[b'a'; 63]);
        }
        p.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(rcode(&answer(&p, &table()).unwrap()), 1);
    }

    #[test]
    fn random_bytes_never_panic() {
        // A deterministic xorshift stream (no proptest dependency in this crate): random
        // packets, and random mutations of a valid query, which reach deeper.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let t = table();
        let valid = query(9, "web.gantry.local", TYPE_A);
        for i in 0..200_000 {
            let packet: Vec<u8> = if i % 2 == 0 {
                let len = (next() % 600) as usize;
                (0..len).map(|_| next() as u8).collect()
            } else {
                let mut p = valid.clone();
                for _ in 0..(next() % 4 + 1) {
                    let at = (next() as usize) % p.len();
                    p[at] = next() as u8;
                }
                p.truncate(next() as usize % (p.len() + 1));
                p
            };
            if let Some(resp) = answer(&packet, &t) {
                assert!(resp.len() <= MAX_QUERY_BYTES, "answers fit a UDP message");
                assert_eq!(resp[..2], packet[..2], "the id is echoed");
            }
        }
    }
}
