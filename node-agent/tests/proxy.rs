//! The service proxy against the real kernel: nftables rules applied inside network
//! namespaces the tests create (a "node" with a bridge, "replicas" on veths, an outside
//! "client"), real TCP connections through them, and the DNS server over a real UDP socket.
//!
//! Servers and clients inside namespaces are this test binary itself, re-run under
//! `ip netns exec` with `GANTRY_PTEST_ROLE` set (see [`namespace_helper`]), so the tests need
//! nothing but `ip` and `nft`. Every namespace, and with it every interface and rule, is
//! deleted and every process killed (by its pid) when a test's [`Lab`] is dropped.

use gantry_api::model::Protocol;
use gantry_api::objects::{Kind, Object};
use gantry_api::proto::EventType;
use gantry_node_agent::proxy::cluster::Cluster;
use gantry_node_agent::proxy::dns::{self, DnsTable};
use gantry_node_agent::proxy::endpoints::{PortEndpoints, ServiceEndpoints};
use gantry_node_agent::proxy::nft::Nft;
use gantry_node_agent::proxy::ruleset::render;
use gantry_node_agent::proxy::sync::{sync_loop, SyncStats};
use gantry_node_agent::proxy::{cleanup, ProxyConfig};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

const ROLE_ENV: &str = "GANTRY_PTEST_ROLE";
const HELPER: &str = "namespace_helper";
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 215, 0, 10);
const NODE_UPLINK_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 250, 1);
const SERVER_PORT: u16 = 8080;

/// Not a test of its own: the server or client role of a re-run of this binary inside a
/// namespace. Without `GANTRY_PTEST_ROLE` it does nothing.
///
/// Roles: `serve NAME PORT` answers every connection with `NAME\n`; `connect ADDR COUNT`
/// makes COUNT connections and prints one `RESULT ok NAME` / `RESULT refused` /
/// `RESULT timeout` / `RESULT error …` line each.
#[test]
fn namespace_helper() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let args: Vec<&str> = role.split_whitespace().collect();
    match args.as_slice() {
        ["serve", name, port] => {
            let listener = TcpListener::bind(("0.0.0.0", port.parse::<u16>().unwrap())).unwrap();
            for mut c in listener.incoming().flatten() {
                let _ = c.write_all(format!("{name}\n").as_bytes());
            }
        }
        ["connect", addr, count] => {
            let addr: SocketAddr = addr.parse().unwrap();
            for _ in 0..count.parse::<u32>().unwrap() {
                let started = Instant::now();
                let line = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                    Ok(mut s) => {
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut text = String::new();
                        match s.read_to_string(&mut text) {
                            Ok(_) => format!("ok {}", text.trim()),
                            Err(e) => format!("error read {e}"),
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        "refused".to_string()
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => "timeout".to_string(),
                    Err(e) => format!("error {e}"),
                };
                println!("RESULT {line} {}", started.elapsed().as_millis());
            }
        }
        other => panic!("unknown helper role {other:?}"),
    }
}

fn require_root() {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    assert!(
        root,
        "the proxy tests create network namespaces and must run as root"
    );
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One connection's outcome and how long it took.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    result: String,
    millis: u64,
}

/// A node namespace with a bridge `gbr0` (10.214.3.1/24), replica namespaces on it running
/// servers, and a client namespace on the node's uplink `up0` (172.31.250.1/24).
struct Lab {
    id: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    replicas: Vec<(String, Ipv4Addr)>,
}

impl Lab {
    fn new(replicas: usize) -> Lab {
        require_root();
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "gantry-ptest-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let mut lab = Lab {
            id,
            namespaces: Vec::new(),
            children: Vec::new(),
            replicas: Vec::new(),
        };
        let node = lab.add_ns("node");
        let n = node.as_str();
        sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
        sh(&[
            "ip",
            "netns",
            "exec",
            n,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        sh(&["ip", "-n", n, "link", "add", "gbr0", "type", "bridge"]);
        sh(&["ip", "-n", n, "addr", "add", "10.214.3.1/24", "dev", "gbr0"]);
        sh(&["ip", "-n", n, "link", "set", "gbr0", "up"]);
        // Nodes route the service range somewhere (here: the bridge) so that local sockets
        // can connect before the output hook rewrites the destination.
        sh(&[
            "ip",
            "-n",
            n,
            "route",
            "add",
            "10.215.0.0/16",
            "dev",
            "gbr0",
        ]);
        for i in 0..replicas {
            let name = format!("r{}", i + 1);
            let ip = Ipv4Addr::new(10, 214, 3, 2 + i as u8);
            let ns = lab.add_ns(&name);
            let host_if = format!("v{name}");
            sh(&[
                "ip", "-n", n, "link", "add", &host_if, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            sh(&[
                "ip", "-n", n, "link", "set", &host_if, "master", "gbr0", "up",
            ]);
            // With br_netfilter (bridge-nf-call-iptables=1, the default here), a replica's
            // connection DNATed back to itself is re-bridged onto the port it came from, which
            // the bridge allows only in hairpin mode (CNI's `hairpinMode`).
            sh(&[
                "ip",
                "-n",
                n,
                "link",
                "set",
                &host_if,
                "type",
                "bridge_slave",
                "hairpin",
                "on",
            ]);
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            sh(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "eth0",
            ]);
            sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            sh(&[
                "ip",
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                "10.214.3.1",
            ]);
            let server = lab.spawn_helper(&ns, &format!("serve {name} {SERVER_PORT}"));
            lab.children.push(server);
            lab.replicas.push((ns, ip));
        }
        let client = lab.add_ns("client");
        sh(&[
            "ip", "-n", n, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns",
            &client,
        ]);
        sh(&[
            "ip",
            "-n",
            n,
            "addr",
            "add",
            &format!("{NODE_UPLINK_IP}/24"),
            "dev",
            "up0",
        ]);
        sh(&["ip", "-n", n, "link", "set", "up0", "up"]);
        sh(&[
            "ip",
            "-n",
            &client,
            "addr",
            "add",
            "172.31.250.2/24",
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", &client, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", &client, "link", "set", "lo", "up"]);
        // The servers are up once each answers on its own address.
        for (i, (_, ip)) in lab.replicas.clone().iter().enumerate() {
            let addr = SocketAddrV4::new(*ip, SERVER_PORT);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let out = lab.connect("node", addr, 1);
                if out[0].result == format!("ok r{}", i + 1) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "server r{} never answered: {out:?}",
                    i + 1
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        lab
    }

    fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.id)
    }

    fn add_ns(&mut self, role: &str) -> String {
        let ns = self.ns(role);
        sh(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        ns
    }

    fn spawn_helper(&self, ns: &str, role: &str) -> Child {
        let exe = std::env::current_exe().expect("test binary path");
        Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(exe)
            .args(["--exact", HELPER, "--nocapture", "--test-threads=1", "-q"])
            .env(ROLE_ENV, role)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn helper")
    }

    /// Makes `count` connections to `addr` from the namespace of `role`.
    fn connect(&self, role: &str, addr: SocketAddrV4, count: u32) -> Vec<Outcome> {
        let child = self.spawn_helper(&self.ns(role), &format!("connect {addr} {count}"));
        let out = child.wait_with_output().expect("client output");
        let outcomes: Vec<Outcome> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("RESULT "))
            .map(|l| {
                let (result, millis) = l.rsplit_once(' ').unwrap();
                Outcome {
                    result: result.to_string(),
                    millis: millis.parse().unwrap(),
                }
            })
            .collect();
        assert_eq!(outcomes.len(), count as usize, "client output: {out:?}");
        outcomes
    }

    fn nft(&self) -> Nft {
        Nft::with_command(["ip", "netns", "exec", &self.ns("node"), "nft"])
    }

    fn config(&self) -> ProxyConfig {
        let mut c = ProxyConfig::new(
            "gbr0",
            "10.214.3.0/24".parse().unwrap(),
            Ipv4Addr::new(10, 214, 3, 1),
        );
        c.nft = self.nft();
        c
    }

    /// Renders and applies the rules for `services`; returns how long nft took.
    async fn apply(&self, services: &[ServiceEndpoints]) -> Duration {
        let text = render(&self.config().ruleset_params(), services);
        let started = Instant::now();
        self.nft()
            .apply(&text)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        started.elapsed()
    }

    fn endpoint(&self, replica: usize) -> SocketAddrV4 {
        SocketAddrV4::new(self.replicas[replica].1, SERVER_PORT)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn web(endpoints: Vec<SocketAddrV4>, node_port: Option<u16>) -> Vec<ServiceEndpoints> {
    vec![ServiceEndpoints {
        service: "web".into(),
        cluster_ip: CLUSTER_IP,
        ports: vec![PortEndpoints {
            name: None,
            protocol: Protocol::TCP,
            port: 80,
            node_port,
            endpoints,
        }],
    }]
}

fn counts(outcomes: &[Outcome]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for o in outcomes {
        *m.entry(o.result.clone()).or_insert(0) += 1;
    }
    m
}

fn service_addr() -> SocketAddrV4 {
    SocketAddrV4::new(CLUSTER_IP, 80)
}

#[tokio::test]
async fn connections_spread_over_all_endpoints_and_follow_their_removal() {
    let lab = Lab::new(3);

    // Phase 1: three endpoints; 90 connections from the node should reach each of them.
    let took = lab
        .apply(&web(
            vec![lab.endpoint(0), lab.endpoint(1), lab.endpoint(2)],
            None,
        ))
        .await;
    eprintln!("nft apply took {took:?}");
    let c = counts(&lab.connect("node", service_addr(), 90));
    for r in ["ok r1", "ok r2", "ok r3"] {
        assert!(
            c.get(r).copied().unwrap_or(0) >= 10,
            "uneven or missing {r}: {c:?}"
        );
    }
    assert_eq!(c.values().sum::<usize>(), 90, "{c:?}");

    // Phase 2: r3 leaves the set; the next connections never reach it.
    lab.apply(&web(vec![lab.endpoint(0), lab.endpoint(1)], None))
        .await;
    let c = counts(&lab.connect("node", service_addr(), 60));
    assert_eq!(c.get("ok r3"), None, "{c:?}");
    assert_eq!(
        c.get("ok r1").copied().unwrap_or(0) + c.get("ok r2").copied().unwrap_or(0),
        60,
        "{c:?}"
    );

    // Phase 3: from a replica (through the bridge and the prerouting hook) as well.
    let c = counts(&lab.connect("r3", service_addr(), 30));
    assert_eq!(
        c.get("ok r1").copied().unwrap_or(0) + c.get("ok r2").copied().unwrap_or(0),
        30,
        "{c:?}"
    );
}

#[tokio::test]
async fn a_service_without_endpoints_refuses_connections_at_once() {
    let lab = Lab::new(1);
    lab.apply(&web(vec![], Some(30080))).await;
    // From the node (output hook), from a replica (prerouting) and on the nodePort.
    for (role, addr) in [
        ("node", service_addr()),
        ("r1", service_addr()),
        ("client", SocketAddrV4::new(NODE_UPLINK_IP, 30080)),
    ] {
        for o in lab.connect(role, addr, 3) {
            assert_eq!(o.result, "refused", "{role} → {addr}");
            assert!(
                o.millis < 500,
                "{role} → {addr}: refused only after {} ms",
                o.millis
            );
        }
    }
    // A port the virtual address does not serve is refused too, never routed on.
    lab.apply(&web(vec![lab.endpoint(0)], None)).await;
    let o = lab.connect("r1", SocketAddrV4::new(CLUSTER_IP, 81), 1);
    assert_eq!(o[0].result, "refused");
}

#[tokio::test]
async fn node_ports_reach_an_endpoint_from_outside_and_from_the_node() {
    let lab = Lab::new(2);
    lab.apply(&web(vec![lab.endpoint(0), lab.endpoint(1)], Some(30080)))
        .await;
    let node_port = SocketAddrV4::new(NODE_UPLINK_IP, 30080);
    // The outside client has no route to the replicas: only the source NAT brings replies back.
    let c = counts(&lab.connect("client", node_port, 20));
    assert_eq!(
        c.get("ok r1").copied().unwrap_or(0) + c.get("ok r2").copied().unwrap_or(0),
        20,
        "{c:?}"
    );
    let c = counts(&lab.connect("node", node_port, 5));
    assert_eq!(c.values().sum::<usize>(), 5);
    assert!(c.keys().all(|k| k.starts_with("ok r")), "{c:?}");
    // A port that is not published stays closed.
    let o = lab.connect("client", SocketAddrV4::new(NODE_UPLINK_IP, 30081), 1);
    assert_eq!(o[0].result, "refused");
}

#[tokio::test]
async fn replicas_reach_their_own_service_through_hairpin() {
    let lab = Lab::new(2);
    lab.apply(&web(vec![lab.endpoint(0), lab.endpoint(1)], None))
        .await;
    // r1 reaches both itself and its sibling through the virtual address.
    let c = counts(&lab.connect("r1", service_addr(), 40));
    assert!(c.contains_key("ok r1"), "no hairpin to itself: {c:?}");
    assert!(c.contains_key("ok r2"), "no hairpin to its sibling: {c:?}");
    assert_eq!(c.values().sum::<usize>(), 40, "{c:?}");

    // Without br_netfilter the node routes the hairpin, and only the masquerade rule brings
    // the endpoint's reply back through conntrack instead of straight over the bridge.
    sh(&[
        "ip",
        "netns",
        "exec",
        &lab.ns("node"),
        "sysctl",
        "-qw",
        "net.bridge.bridge-nf-call-iptables=0",
    ]);
    let c = counts(&lab.connect("r1", service_addr(), 40));
    assert!(
        c.contains_key("ok r1"),
        "no routed hairpin to itself: {c:?}"
    );
    assert!(
        c.contains_key("ok r2"),
        "no routed hairpin to its sibling: {c:?}"
    );
    assert_eq!(c.values().sum::<usize>(), 40, "{c:?}");
}

#[tokio::test]
async fn cleanup_leaves_no_table() {
    let lab = Lab::new(0);
    let config = lab.config();
    cleanup(&config).await.expect("cleanup of an absent table");
    lab.apply(&web(vec![], None)).await;
    assert!(lab.nft().list_table("gantry").await.unwrap().is_some());
    cleanup(&config).await.expect("cleanup");
    assert_eq!(lab.nft().list_table("gantry").await.unwrap(), None);
}

fn service_object(name: &str, ip: Ipv4Addr) -> Object {
    let mut o = Object::new(Kind::Service, name);
    o.metadata.creation_timestamp = Some("2025-01-01T00:00:00Z".into());
    o.spec = serde_json::json!({"template": {"image": "i"}, "ports": [{"port": 80, "targetPort": SERVER_PORT}]});
    o.status = serde_json::json!({"clusterIP": ip.to_string()});
    o
}

fn replica_object(name: &str, ip: Ipv4Addr, ready: bool) -> Object {
    let mut o = Object::new(Kind::Replica, name);
    o.spec = serde_json::json!({"service": "web", "template": {"image": "i"}});
    o.status = serde_json::json!({"phase": "Running", "ready": ready, "replicaIp": ip.to_string()});
    o
}

#[tokio::test]
async fn readiness_changes_reach_the_kernel_well_under_a_second() {
    let lab = Lab::new(2);
    let cluster = Arc::new(Mutex::new(Cluster::default()));
    let wake = Arc::new(Notify::new());
    let stats = Arc::new(SyncStats::default());
    let (dns_tx, dns_rx) = watch::channel(Arc::new(DnsTable::new("gantry.local", [])));
    let shutdown = CancellationToken::new();
    let config = lab.config();
    let task = tokio::spawn(sync_loop(
        config.sync_settings(),
        cluster.clone(),
        wake.clone(),
        dns_tx,
        stats.clone(),
        shutdown.clone(),
    ));

    // Phase 1: the first complete view, with r1 ready, is applied and published to DNS.
    {
        let mut c = cluster.lock().unwrap();
        c.replace(Kind::Service, &[service_object("web", CLUSTER_IP)]);
        c.replace(
            Kind::Replica,
            &[
                replica_object("web-1", lab.replicas[0].1, true),
                replica_object("web-2", lab.replicas[1].1, false),
            ],
        );
    }
    wake.notify_one();
    wait_for_applies(&stats, 1).await;
    assert_eq!(
        dns_rx.borrow().resolve_name("web.gantry.local"),
        dns::Resolution::Address(CLUSTER_IP)
    );
    let c = counts(&lab.connect("node", service_addr(), 10));
    assert_eq!(c.get("ok r1"), Some(&10), "{c:?}");

    // Phase 2: a burst of watch events (r2 ready, r1 not) becomes one transaction, measured
    // from the first event to the ruleset being in the kernel.
    let started = Instant::now();
    {
        let mut c = cluster.lock().unwrap();
        c.apply(
            EventType::Modified,
            &replica_object("web-2", lab.replicas[1].1, true),
        );
        c.apply(
            EventType::Modified,
            &replica_object("web-1", lab.replicas[0].1, false),
        );
    }
    wake.notify_one();
    wake.notify_one();
    wait_for_applies(&stats, 2).await;
    let observed = started.elapsed();
    let latency = stats.last_latency().unwrap();
    eprintln!(
        "readiness change to kernel: {latency:?} (nft {:?}; observed by the test {observed:?})",
        stats.last_apply().unwrap()
    );
    assert!(latency < Duration::from_millis(500), "{latency:?}");
    let c = counts(&lab.connect("node", service_addr(), 10));
    assert_eq!(c.get("ok r2"), Some(&10), "{c:?}");

    // Phase 3: the service goes away; its rules and its name with it.
    cluster
        .lock()
        .unwrap()
        .apply(EventType::Deleted, &service_object("web", CLUSTER_IP));
    wake.notify_one();
    wait_for_applies(&stats, 3).await;
    let table = lab.nft().list_table("gantry").await.unwrap().unwrap();
    assert!(!table.contains("svc-web"), "{table}");
    assert_eq!(
        dns_rx.borrow().resolve_name("web"),
        dns::Resolution::NxDomain
    );

    // Stopping the loop leaves the table in place (traffic survives an agent restart).
    shutdown.cancel();
    task.await.unwrap();
    assert!(lab.nft().list_table("gantry").await.unwrap().is_some());
}

async fn wait_for_applies(stats: &SyncStats, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats.applies() < n {
        assert!(
            Instant::now() < deadline,
            "sync did not apply (failures: {})",
            stats.failures()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn dns_answers_service_names_over_udp() {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let (tx, rx) = watch::channel(Arc::new(DnsTable::new(
        "gantry.local",
        [("web".to_string(), CLUSTER_IP)],
    )));
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(dns::serve(socket, rx, shutdown.clone()));

    let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ask = |name: &'static str, id: u16| {
        let client = &client;
        async move {
            let mut q = vec![(id >> 8) as u8, id as u8, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
            for l in name.split('.') {
                q.push(l.len() as u8);
                q.extend_from_slice(l.as_bytes());
            }
            q.extend_from_slice(&[0, 0, 1, 0, 1]);
            client.send_to(&q, addr).await.unwrap();
            let mut buf = [0u8; 512];
            let (n, _) = tokio::time::timeout(Duration::from_secs(2), client.recv_from(&mut buf))
                .await
                .expect("dns answer within 2s")
                .unwrap();
            buf[..n].to_vec()
        }
    };

    // A known name: one A record with the virtual address.
    let r = ask("web.gantry.local", 1).await;
    assert_eq!((r[0], r[1], r[3] & 0xF, r[7]), (0, 1, 0, 1));
    assert_eq!(&r[r.len() - 4..], &CLUSTER_IP.octets());
    // Unknown under the domain, and outside it.
    assert_eq!(ask("db.gantry.local", 2).await[3] & 0xF, 3);
    assert_eq!(ask("example.com", 3).await[3] & 0xF, 5);
    // Garbage is dropped and the server keeps answering.
    client.send_to(&[0xff; 5], addr).await.unwrap();

    // A new table is served at once.
    tx.send_replace(Arc::new(DnsTable::new(
        "gantry.local",
        [("db".to_string(), Ipv4Addr::new(10, 215, 0, 11))],
    )));
    let r = ask("db", 4).await;
    assert_eq!((r[1], r[3] & 0xF), (4, 0));
    assert_eq!(&r[r.len() - 4..], &[10, 215, 0, 11]);

    shutdown.cancel();
    server.await.unwrap();
}
