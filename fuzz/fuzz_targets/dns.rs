//! Feeds arbitrary bytes to the service DNS server's query handling. It must never panic, and
//! whatever it answers must be a response to the query: same id, QR set, within a UDP message.
//! Run: `cargo +nightly fuzz run dns`.
#![no_main]

use gantry_node_agent::proxy::dns::{answer, DnsTable, MAX_QUERY_BYTES};
use libfuzzer_sys::fuzz_target;
use std::net::Ipv4Addr;
use std::sync::OnceLock;

fn table() -> &'static DnsTable {
    static TABLE: OnceLock<DnsTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        DnsTable::new(
            "gantry.local",
            [
                ("web".to_string(), Ipv4Addr::new(10, 215, 0, 10)),
                ("db".to_string(), Ipv4Addr::new(10, 215, 0, 11)),
            ],
        )
    })
}

fuzz_target!(|data: &[u8]| {
    if let Some(resp) = answer(data, table()) {
        assert!(
            resp.len() <= MAX_QUERY_BYTES,
            "answer larger than a udp message"
        );
        assert_eq!(resp[..2], data[..2], "answer to another id");
        assert_eq!(resp[2] & 0x80, 0x80, "answer without the QR bit");
    }
});
