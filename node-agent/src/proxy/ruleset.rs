//! The nftables ruleset text for a set of [`ServiceEndpoints`]: one `ip` table that replaces
//! itself atomically (`add table` + `delete table` + the full table in one `nft -f`
//! transaction: never a moment without rules, never half a ruleset).
//!
//! Layout of the table:
//! - `service-ports`, a verdict map `clusterIP . proto . port → goto svc-…`, consulted from the
//!   `nat prerouting` hook (replicas, through the bridge; other nodes) and `nat output` (the
//!   node itself);
//! - `svc-<service>-<proto>-<port>`: `dnat` to `numgen random mod N` over the endpoints, or a
//!   reject (TCP reset, ICMP port unreachable) when there are none, so clients fail at once;
//! - `cluster-ips`: any other port of a virtual address is rejected, so no packet to a virtual
//!   address is ever routed on towards the uplink;
//! - `node-ports`, `proto . nodePort → goto np-…` for local destination addresses: marks the
//!   packet and continues in the service's chain;
//! - `nat postrouting`: source-NATs DNATed packets that carry the mark to the node's gateway
//!   address (nodePort clients are then answered through this node, even by an endpoint on
//!   another node, since every replica routes the cluster range), and masquerades DNATed
//!   packets from the node subnet going back out of the bridge (hairpin: the endpoint's reply
//!   must come back through conntrack, not straight over the bridge).
//!
//! Invariants: only DNATed packets are ever masqueraded, and DNAT targets are only endpoints;
//! the output is a pure function of its input (sorted, deduplicated), so equal inputs give
//! equal text and the sync loop can skip no-op updates by comparing it.

use super::endpoints::{is_dns_label, ServiceEndpoints};
use gantry_api::model::Protocol;
use gantry_api::net::Ipv4Cidr;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// What the ruleset needs to know of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesetParams {
    /// The nftables table (family `ip`).
    pub table: String,
    /// The replicas' bridge.
    pub bridge: String,
    /// The node's replica subnet (the bridge's).
    pub node_subnet: Ipv4Cidr,
    /// The packet mark bit asking postrouting to masquerade (nodePort traffic).
    pub masquerade_mark: u32,
}

/// Why parameters cannot be put into a ruleset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesetError {
    /// The table name is not an nftables identifier.
    #[error("table name {0:?} must be 1-64 letters, digits, '-' or '_', starting with a letter")]
    Table(String),
    /// The bridge name is not a Linux interface name.
    #[error("bridge name {0:?} must be 1-15 letters, digits, '-', '_' or '.'")]
    Bridge(String),
    /// The mark is zero.
    #[error("masquerade mark must be non-zero")]
    Mark,
}

impl RulesetParams {
    /// Checks that every field can be written into nft syntax as is.
    ///
    /// # Errors
    /// The first field that cannot.
    pub fn validate(&self) -> Result<(), RulesetError> {
        let t = &self.table;
        if t.is_empty()
            || t.len() > 64
            || !t.starts_with(|c: char| c.is_ascii_alphabetic())
            || !t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(RulesetError::Table(t.clone()));
        }
        let b = &self.bridge;
        if b.is_empty()
            || b.len() > 15
            || !b
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(RulesetError::Bridge(b.clone()));
        }
        if self.masquerade_mark == 0 {
            return Err(RulesetError::Mark);
        }
        Ok(())
    }
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::TCP => "tcp",
        Protocol::UDP => "udp",
    }
}

/// The `nft -f` script that deletes the table (idempotently: it adds it first).
pub fn delete_script(table: &str) -> String {
    format!("add table ip {table}\ndelete table ip {table}\n")
}

/// The `nft -f` script that replaces the table with the rules for `services`.
/// `params` must have passed [`RulesetParams::validate`].
pub fn render(params: &RulesetParams, services: &[ServiceEndpoints]) -> String {
    let mark = format!("0x{:08x}", params.masquerade_mark);
    let mut cluster_ips = BTreeSet::new();
    // key → chain; the first claimant of a key wins (services arrive sorted by name), so a
    // control-plane mistake (two services on one address) cannot fail the whole transaction.
    let mut service_ports: BTreeMap<(Ipv4Addr, &str, u16), String> = BTreeMap::new();
    let mut node_ports: BTreeMap<(&str, u16), (String, String)> = BTreeMap::new();
    let mut chains = String::new();
    for svc in services {
        if !is_dns_label(&svc.service) {
            continue;
        }
        cluster_ips.insert(svc.cluster_ip);
        for p in &svc.ports {
            let pr = proto(p.protocol);
            let key = (svc.cluster_ip, pr, p.port);
            if service_ports.contains_key(&key) {
                continue;
            }
            let chain = format!("svc-{}-{pr}-{}", svc.service, p.port);
            service_ports.insert(key, chain.clone());
            let _ = writeln!(chains, "\tchain {chain} {{");
            match p.endpoints.as_slice() {
                [] => {
                    let _ = match p.protocol {
                        Protocol::TCP => {
                            writeln!(chains, "\t\tmeta l4proto tcp reject with tcp reset")
                        }
                        Protocol::UDP => writeln!(
                            chains,
                            "\t\tmeta l4proto udp reject with icmp type port-unreachable"
                        ),
                    };
                }
                [one] => {
                    let _ = writeln!(
                        chains,
                        "\t\tmeta l4proto {pr} dnat to {}:{}",
                        one.ip(),
                        one.port()
                    );
                }
                many => {
                    let elements: Vec<String> = many
                        .iter()
                        .enumerate()
                        .map(|(i, e)| format!("{i} : {} . {}", e.ip(), e.port()))
                        .collect();
                    let _ = writeln!(
                        chains,
                        "\t\tmeta l4proto {pr} dnat to numgen random mod {} map {{ {} }}",
                        many.len(),
                        elements.join(", ")
                    );
                }
            }
            let _ = writeln!(chains, "\t}}");
            if let Some(np) = p.node_port {
                node_ports
                    .entry((pr, np))
                    .or_insert_with(|| (format!("np-{}-{pr}-{np}", svc.service), chain));
            }
        }
    }
    for (np_chain, svc_chain) in node_ports.values() {
        let _ = writeln!(chains, "\tchain {np_chain} {{");
        let _ = writeln!(chains, "\t\tmeta mark set meta mark | {mark}");
        let _ = writeln!(chains, "\t\tgoto {svc_chain}");
        let _ = writeln!(chains, "\t}}");
    }

    let t = &params.table;
    let mut s = delete_script(t);
    let _ = writeln!(s, "table ip {t} {{");
    let _ = writeln!(s, "\tset cluster-ips {{\n\t\ttype ipv4_addr");
    if !cluster_ips.is_empty() {
        let list: Vec<String> = cluster_ips.iter().map(ToString::to_string).collect();
        let _ = writeln!(s, "\t\telements = {{ {} }}", list.join(", "));
    }
    let _ = writeln!(s, "\t}}");
    let _ = writeln!(
        s,
        "\tmap service-ports {{\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict"
    );
    if !service_ports.is_empty() {
        let list: Vec<String> = service_ports
            .iter()
            .map(|((ip, pr, port), chain)| format!("{ip} . {pr} . {port} : goto {chain}"))
            .collect();
        let _ = writeln!(s, "\t\telements = {{ {} }}", list.join(",\n\t\t\t"));
    }
    let _ = writeln!(s, "\t}}");
    let _ = writeln!(
        s,
        "\tmap node-ports {{\n\t\ttype inet_proto . inet_service : verdict"
    );
    if !node_ports.is_empty() {
        let list: Vec<String> = node_ports
            .iter()
            .map(|((pr, np), (chain, _))| format!("{pr} . {np} : goto {chain}"))
            .collect();
        let _ = writeln!(s, "\t\telements = {{ {} }}", list.join(",\n\t\t\t"));
    }
    let _ = writeln!(s, "\t}}");
    s.push_str(
        "\tchain services {\n\
         \t\tip daddr . meta l4proto . th dport vmap @service-ports\n\
         \t\tip daddr @cluster-ips meta l4proto tcp reject with tcp reset\n\
         \t\tip daddr @cluster-ips reject\n\
         \t\tfib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @node-ports\n\
         \t}\n",
    );
    s.push_str(
        "\tchain prerouting {\n\
         \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         \t\tjump services\n\
         \t}\n\
         \tchain output {\n\
         \t\ttype nat hook output priority -100; policy accept;\n\
         \t\tjump services\n\
         \t}\n",
    );
    // nodePort clients get this node's gateway address as source: it lies in the cluster
    // range, which every replica routes through its node, so an endpoint on another node
    // answers through this one (its host address is not routable from inside replicas).
    let gateway = params
        .node_subnet
        .nth(1)
        .unwrap_or(params.node_subnet.network());
    let _ = writeln!(
        s,
        "\tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tct status dnat meta mark & {mark} == {mark} snat to {gateway}\n\
         \t\tct status dnat oifname \"{}\" ip saddr {} masquerade\n\
         \t}}",
        params.bridge, params.node_subnet
    );
    s.push_str(&chains);
    s.push_str("}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::endpoints::PortEndpoints;

    fn params() -> RulesetParams {
        RulesetParams {
            table: "gantry".into(),
            bridge: "gantry0".into(),
            node_subnet: "10.214.3.0/24".parse().unwrap(),
            masquerade_mark: 0x4000,
        }
    }

    fn svc(name: &str, ip: [u8; 4], ports: Vec<PortEndpoints>) -> ServiceEndpoints {
        ServiceEndpoints {
            service: name.into(),
            cluster_ip: ip.into(),
            ports,
        }
    }

    fn port(p: u16, protocol: Protocol, np: Option<u16>, eps: &[&str]) -> PortEndpoints {
        PortEndpoints {
            name: None,
            protocol,
            port: p,
            node_port: np,
            endpoints: eps.iter().map(|e| e.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn the_script_replaces_the_table_in_one_transaction() {
        let text = render(&params(), &[]);
        assert!(
            text.starts_with("add table ip gantry\ndelete table ip gantry\ntable ip gantry {\n")
        );
        // Empty sets carry no `elements` line (nft refuses `elements = { }`).
        assert!(!text.contains("elements"));
        assert!(text.contains("type nat hook prerouting"));
        assert!(text.contains("type nat hook output"));
        assert!(text.contains("oifname \"gantry0\" ip saddr 10.214.3.0/24 masquerade"));
    }

    #[test]
    fn endpoints_become_dnat_rules_and_none_become_rejects() {
        let services = vec![svc(
            "web",
            [10, 215, 0, 10],
            vec![
                port(
                    80,
                    Protocol::TCP,
                    Some(30080),
                    &["10.214.3.2:8080", "10.214.3.3:8080"],
                ),
                port(53, Protocol::UDP, None, &["10.214.3.2:5353"]),
                port(81, Protocol::TCP, None, &[]),
                port(54, Protocol::UDP, None, &[]),
            ],
        )];
        let text = render(&params(), &services);
        assert!(text.contains(
            "meta l4proto tcp dnat to numgen random mod 2 map { 0 : 10.214.3.2 . 8080, 1 : 10.214.3.3 . 8080 }"
        ), "{text}");
        assert!(text.contains("meta l4proto udp dnat to 10.214.3.2:5353"));
        assert!(text.contains("10.215.0.10 . tcp . 80 : goto svc-web-tcp-80"));
        assert!(text.contains("chain svc-web-tcp-81 {\n\t\tmeta l4proto tcp reject with tcp reset"));
        assert!(text.contains("chain svc-web-udp-54 {\n\t\tmeta l4proto udp reject with icmp"));
        assert!(text.contains("tcp . 30080 : goto np-web-tcp-30080"));
        assert!(text.contains("chain np-web-tcp-30080 {\n\t\tmeta mark set meta mark | 0x00004000\n\t\tgoto svc-web-tcp-80"));
    }

    #[test]
    fn duplicate_keys_keep_the_first_claimant() {
        let services = vec![
            svc(
                "a",
                [10, 215, 0, 1],
                vec![port(80, Protocol::TCP, Some(30001), &[])],
            ),
            svc(
                "b",
                [10, 215, 0, 1],
                vec![port(80, Protocol::TCP, Some(30001), &[])],
            ),
        ];
        let text = render(&params(), &services);
        assert_eq!(text.matches(". tcp . 80 : goto").count(), 1);
        assert!(text.contains("goto svc-a-tcp-80"));
        assert!(!text.contains("np-b-"));
        assert_eq!(text.matches("elements = { 10.215.0.1 }").count(), 1);
    }

    #[test]
    fn equal_inputs_render_equal_text() {
        let s = vec![svc(
            "web",
            [10, 215, 0, 10],
            vec![port(80, Protocol::TCP, None, &["10.214.3.2:80"])],
        )];
        assert_eq!(render(&params(), &s), render(&params(), &s.clone()));
    }

    #[test]
    fn unsafe_names_are_refused() {
        let mut p = params();
        p.table = "x; flush ruleset".into();
        assert!(matches!(p.validate(), Err(RulesetError::Table(_))));
        let mut p = params();
        p.bridge = "br\"0".into();
        assert!(matches!(p.validate(), Err(RulesetError::Bridge(_))));
        let mut p = params();
        p.masquerade_mark = 0;
        assert_eq!(p.validate(), Err(RulesetError::Mark));
        assert_eq!(params().validate(), Ok(()));
    }
}
