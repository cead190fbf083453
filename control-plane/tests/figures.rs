//! Figures, not a timed test: write throughput and latency of a three-process cluster at 1,
//! 16 and 64 concurrent clients, resident memory with 10,000 objects, and failover time.
//!
//! Run: `cargo test -p gantry-control-plane --release --test figures -- --ignored --nocapture`

mod common;

use common::procs::*;
use common::*;
use gantry_api::proto;
use std::time::{Duration, Instant};

/// Entry point of a member process; a no-op in a normal test run.
#[test]
fn member_process() {
    common::procs::member_main();
}

fn create_req(name: &str) -> proto::CreateRequest {
    proto::CreateRequest {
        object: Some(proto::Object {
            kind: "Node".into(),
            name: name.into(),
            resource_version: 0,
            json: node_json(name, serde_json::json!({"cpu": "2", "memory": "4Gi"})),
        }),
    }
}

/// The `p` quantile (0..1) of sorted latencies.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted
        .get(((sorted.len() as f64) * p) as usize)
        .copied()
        .unwrap_or_default()
}

/// CPU time (user + system) used so far by process `pid`, in microseconds.
fn cpu_us(pid: u32) -> u64 {
    static TICK_US: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let tick_us = *TICK_US.get_or_init(|| {
        let out = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output();
        let hz: u64 = out
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100);
        1_000_000 / hz.max(1)
    });
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15, the 12th and 13th after the state.
    (ticks(11) + ticks(12)) * tick_us
}

/// CPU per write of a round: every member's, and the leader's alone, in microseconds.
fn cpu_line(
    who: &str,
    clients: usize,
    before: &[u64],
    after: &[u64],
    leader: usize,
    writes: usize,
) -> String {
    let all: u64 = after.iter().zip(before).map(|(a, b)| a - b).sum();
    let lead = after[leader] - before[leader];
    let per = |us: u64| us as f64 / writes.max(1) as f64;
    format!(
        "{who}clients={clients:<3} cpu/write: members={:.0}µs leader={:.0}µs",
        per(all),
        per(lead)
    )
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn load(addrs: &[String], clients: usize, secs: u64, prefix: &str) -> (usize, Vec<Duration>) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut client = try_client(&addrs[c % addrs.len()]).await.unwrap();
        let prefix = format!("{prefix}-{c}");
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0;
            while Instant::now() < deadline {
                let t = Instant::now();
                if client
                    .create(create_req(&format!("{prefix}-{i}")))
                    .await
                    .is_ok()
                {
                    lat.push(t.elapsed());
                }
                i += 1;
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    (all.len(), all)
}

/// The concurrencies measured: 1, 16 and 64 clients, or those of `GANTRY_FIGURES_CLIENTS`
/// (`1,16`).
fn rounds() -> Vec<usize> {
    std::env::var("GANTRY_FIGURES_CLIENTS")
        .map(|v| v.split(',').map(|c| c.parse().unwrap()).collect())
        .unwrap_or_else(|_| vec![1, 16, 64])
}

/// Linearizable gets of one existing object from `addr` by one client for `secs`.
async fn reads(addr: &str, name: &str, secs: u64) -> Vec<Duration> {
    let mut client = try_client(addr).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut lat = Vec::new();
    while Instant::now() < deadline {
        let t = Instant::now();
        let got = client
            .get(proto::GetRequest {
                kind: "Node".into(),
                name: name.into(),
                consistency: proto::Consistency::Linearizable as i32,
            })
            .await;
        if got.is_ok() {
            lat.push(t.elapsed());
        }
    }
    lat.sort();
    lat
}

/// Creates exactly `objects` objects through `clients` concurrent clients.
async fn fill(addr: &str, objects: usize, clients: usize) {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut client = try_client(addr).await.unwrap();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= objects {
                    return;
                }
                let req = create_req(&format!("fill-{i}"));
                // A failed create is retried until it is in (a retry of one that did commit
                // finds it there).
                loop {
                    match client.create(req.clone()).await {
                        Ok(_) => break,
                        Err(s) if s.code() == tonic::Code::AlreadyExists => break,
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "figures: run explicitly with --ignored --nocapture"]
async fn figures() {
    let root = tempfile::tempdir().unwrap();
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let mut procs = spawn_three(root.path(), &addrs).await;
    let leader = leader_addr(&addrs[0]).await;
    let leader_only = vec![leader.clone()];

    // Resident memory of every member holding 10,000 objects (written by 64 clients).
    fill(&leader, 10_000, 64).await;
    wait_for("followers to apply", || async {
        let m = members_of(&leader).await?;
        let max = m.members.iter().map(|m| m.last_applied).max()?;
        m.members
            .iter()
            .all(|m| m.last_applied == max)
            .then_some(())
    })
    .await;
    for p in &procs {
        println!(
            "objects=10000 member={} rss={} KiB",
            p.name,
            rss_kib(p.child.id())
        );
    }

    // Clients talk to the leader, as etcd clients do.
    let pids: Vec<u32> = procs.iter().map(|p| p.child.id()).collect();
    let leader_at = procs.iter().position(|p| p.addr == leader).unwrap();
    for clients in rounds() {
        let secs = 5;
        let before: Vec<u64> = pids.iter().map(|p| cpu_us(*p)).collect();
        let (n, lat) = load(&leader_only, clients, secs, &format!("c{clients}")).await;
        let after: Vec<u64> = pids.iter().map(|p| cpu_us(*p)).collect();
        let pct = |p: f64| percentile(&lat, p);
        println!(
            "clients={clients:<3} writes/s={:>8.0} p50={:?} p99={:?}",
            n as f64 / secs as f64,
            pct(0.50),
            pct(0.99)
        );
        println!("{}", cpu_line("", clients, &before, &after, leader_at, n));
    }

    // Linearizable reads (a read index through the leader), on the leader and a follower.
    let follower = addrs.iter().find(|a| **a != leader).unwrap().clone();
    for (who, addr) in [("leader", &leader), ("follower", &follower)] {
        let lat = reads(addr, "fill-0", 3).await;
        println!(
            "linearizable get on the {who}: reads/s={:.0} p50={:?} p99={:?}",
            lat.len() as f64 / 3.0,
            percentile(&lat, 0.50),
            percentile(&lat, 0.99)
        );
    }

    // Failover: kill -9 the leader; time until a write is accepted by the new leader.
    let others: Vec<String> = addrs.iter().filter(|a| **a != leader).cloned().collect();
    procs.iter_mut().find(|p| p.addr == leader).unwrap().kill9();
    let killed = Instant::now();
    first_write(&others, killed, "after").await;
    println!(
        "failover: first write accepted {:?} after SIGKILL of the leader",
        killed.elapsed()
    );
}

/// Median, min and max of `times`.
fn spread(times: &mut [Duration]) -> String {
    times.sort();
    format!(
        "median={:?} min={:?} max={:?} n={}",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
        times.len()
    )
}

/// The first write accepted by any of `addrs` (retrying), as time since `since`.
async fn first_write(addrs: &[String], since: Instant, prefix: &str) -> Duration {
    let mut clients = Vec::new();
    for a in addrs {
        clients.push(try_client(a).await.unwrap());
    }
    let mut i = 0;
    loop {
        let n = clients.len();
        let c = &mut clients[i % n];
        if c.create(create_req(&format!("{prefix}-{i}"))).await.is_ok() {
            return since.elapsed();
        }
        i += 1;
        assert!(since.elapsed() < DEADLINE, "no new leader");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Failover, repeated: the leader is stopped (SIGKILL, or SIGTERM with its handover) while a
/// client writes; the time until a write is accepted again. The member is restarted and
/// caught up before the next round. `GANTRY_TEST_ELECTION_MS` sets the election timeout.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "figures: run explicitly with --ignored --nocapture"]
async fn failover() {
    let rounds: usize = std::env::var("GANTRY_FAILOVER_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let root = tempfile::tempdir().unwrap();
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let mut procs = spawn_three(root.path(), &addrs).await;
    let (mut killed, mut termed) = (Vec::new(), Vec::new());
    for round in 0..rounds * 2 {
        let leader = leader_addr(&addrs[round % 3]).await;
        let others: Vec<String> = addrs.iter().filter(|a| **a != leader).cloned().collect();
        let i = procs.iter().position(|p| p.addr == leader).unwrap();
        // The leader has led a while, as in a running cluster (its lease has run out).
        tokio::time::sleep(Duration::from_secs(1)).await;
        let stopped = Instant::now();
        if round % 2 == 0 {
            procs[i].kill9();
            killed.push(first_write(&others, stopped, &format!("k{round}")).await);
        } else {
            // The clock runs from the signal; the member's own exit (its handover, then the
            // server's grace for open calls) goes on in parallel.
            procs[i].send_term();
            termed.push(first_write(&others, stopped, &format!("t{round}")).await);
            procs[i].wait();
        }
        let name = procs[i].name.clone();
        procs[i] = Proc::spawn(&name, root.path(), &leader, "restart");
        wait_for("the member to catch up", || async {
            let m = members_of(&others[0]).await?;
            let max = m.members.iter().map(|m| m.last_applied).max()?;
            (m.members.len() == 3 && m.members.iter().all(|m| m.last_applied == max)).then_some(())
        })
        .await;
    }
    println!(
        "failover SIGKILL: first write accepted {}",
        spread(&mut killed)
    );
    println!(
        "failover SIGTERM: first write accepted {}",
        spread(&mut termed)
    );
}

/// An etcd member process, killed when dropped.
struct Etcd(std::process::Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The few fields of etcd's `etcdserverpb` KV messages the figures use (field numbers of
/// etcd's `rpc.proto`; fields not declared here are skipped when decoding).
mod etcdpb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutResponse {}

    /// A linearizable range (`serializable`, field 7, left false) of one key.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RangeRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RangeResponse {
        #[prost(message, repeated, tag = "2")]
        pub kvs: Vec<KeyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(bytes = "vec", tag = "5")]
        pub value: Vec<u8>,
    }
}

/// A client of etcd: its native gRPC API over one HTTP/2 connection, as etcd's own clients
/// (and Gantry's, with tonic) talk, or, with `GANTRY_ETCD_CLIENT=gateway`, its JSON gateway
/// over one keep-alive HTTP/1.1 connection (an extra in-process hop inside etcd).
enum EtcdClient {
    Grpc(tonic::client::Grpc<tonic::transport::Channel>),
    Gateway(EtcdConn),
}

impl EtcdClient {
    async fn connect(addr: &str) -> Option<Self> {
        if std::env::var("GANTRY_ETCD_CLIENT").as_deref() == Ok("gateway") {
            return EtcdConn::connect(addr).await.map(EtcdClient::Gateway);
        }
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .ok()?
            .tcp_nodelay(true)
            .connect()
            .await
            .ok()?;
        Some(EtcdClient::Grpc(tonic::client::Grpc::new(channel)))
    }

    async fn put(&mut self, key: &str, value: &[u8]) -> Option<()> {
        let grpc = match self {
            EtcdClient::Gateway(conn) => return conn.put(key, value).await,
            EtcdClient::Grpc(grpc) => grpc,
        };
        let req = etcdpb::PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.to_vec(),
        };
        unary::<_, etcdpb::PutResponse>(grpc, "/etcdserverpb.KV/Put", req)
            .await
            .map(|_| ())
    }

    /// A linearizable get (etcd's default range); `None` if it failed (over gRPC, also if
    /// the key is missing).
    async fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        let grpc = match self {
            EtcdClient::Gateway(conn) => return conn.get(key).await,
            EtcdClient::Grpc(grpc) => grpc,
        };
        let req = etcdpb::RangeRequest {
            key: key.as_bytes().to_vec(),
        };
        let resp: etcdpb::RangeResponse = unary(grpc, "/etcdserverpb.KV/Range", req).await?;
        resp.kvs.into_iter().next().map(|kv| kv.value)
    }
}

/// One unary call of etcd's gRPC API; `None` if it failed.
async fn unary<Req, Resp>(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    path: &'static str,
    req: Req,
) -> Option<Resp>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    grpc.ready().await.ok()?;
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(req), path, codec)
        .await
        .ok()
        .map(tonic::Response::into_inner)
}

/// One keep-alive HTTP/1.1 connection to etcd's JSON gateway (`/v3/kv/put`).
struct EtcdConn(tokio::io::BufStream<tokio::net::TcpStream>, String);

impl EtcdConn {
    async fn connect(addr: &str) -> Option<Self> {
        let s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.set_nodelay(true).ok()?;
        Some(EtcdConn(tokio::io::BufStream::new(s), addr.to_string()))
    }

    async fn put(&mut self, key: &str, value: &[u8]) -> Option<()> {
        let body = format!(
            r#"{{"key":"{}","value":"{}"}}"#,
            b64(key.as_bytes()),
            b64(value)
        );
        self.post("/v3/kv/put", &body).await.map(|_| ())
    }

    /// A linearizable get (etcd's default range).
    async fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        let body = format!(r#"{{"key":"{}"}}"#, b64(key.as_bytes()));
        self.post("/v3/kv/range", &body).await
    }

    async fn post(&mut self, path: &str, body: &str) -> Option<Vec<u8>> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
            self.1,
            body.len(),
            body
        );
        self.0.write_all(req.as_bytes()).await.ok()?;
        self.0.flush().await.ok()?;
        let mut status = String::new();
        self.0.read_line(&mut status).await.ok()?;
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            self.0.read_line(&mut line).await.ok()?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().ok()?;
            }
        }
        let mut buf = vec![0; len];
        self.0.read_exact(&mut buf).await.ok()?;
        status.contains(" 200 ").then_some(buf)
    }
}

fn b64(b: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "figures: run explicitly with --ignored --nocapture (needs Debian's etcd-server)"]
async fn figures_etcd() {
    let root = tempfile::tempdir().unwrap();
    let client: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let peer: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let cluster = (0..3)
        .map(|i| format!("e{i}=http://{}", peer[i]))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs = Vec::new();
    for i in 0..3 {
        let child = std::process::Command::new("etcd")
            .args([
                "--name",
                &format!("e{i}"),
                "--data-dir",
                &root.path().join(format!("e{i}")).display().to_string(),
                "--listen-client-urls",
                &format!("http://{}", client[i]),
                "--advertise-client-urls",
                &format!("http://{}", client[i]),
                "--listen-peer-urls",
                &format!("http://{}", peer[i]),
                "--initial-advertise-peer-urls",
                &format!("http://{}", peer[i]),
                "--initial-cluster",
                &cluster,
                "--initial-cluster-state",
                "new",
                "--log-level",
                "error",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("etcd (Debian etcd-server) is installed");
        procs.push(Etcd(child));
    }
    // Wait until etcd serves, then find its leader and load it, as with Gantry.
    let value = node_json("n", serde_json::json!({"cpu": "2", "memory": "4Gi"}));
    wait_for("etcd to serve", || async {
        let mut c = EtcdClient::connect(&client[0]).await?;
        c.put("probe", &value).await
    })
    .await;
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &client.join(","),
            "endpoint",
            "status",
            "-w",
            "json",
        ])
        .output()
        .expect("etcdctl");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    let leader = status
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["Status"]["leader"] == e["Status"]["header"]["member_id"])
        .and_then(|e| e["Endpoint"].as_str())
        .map(|e| e.trim_start_matches("http://").to_string())
        .expect("an etcd leader");
    let pids: Vec<u32> = procs.iter().map(|p| p.0.id()).collect();
    let leader_at = client.iter().position(|a| *a == leader).unwrap();
    for clients in rounds() {
        let secs = 5;
        let before: Vec<u64> = pids.iter().map(|p| cpu_us(*p)).collect();
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for c in 0..clients {
            let mut conn = EtcdClient::connect(&leader).await.unwrap();
            let value = value.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = 0;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    if conn
                        .put(&format!("/nodes/c{clients}-{c}-{i}"), &value)
                        .await
                        .is_some()
                    {
                        lat.push(t.elapsed());
                    }
                    i += 1;
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort();
        let pct = |p: f64| percentile(&all, p);
        let after: Vec<u64> = pids.iter().map(|p| cpu_us(*p)).collect();
        println!(
            "etcd clients={clients:<3} writes/s={:>8.0} p50={:?} p99={:?}",
            all.len() as f64 / secs as f64,
            pct(0.50),
            pct(0.99)
        );
        let line = cpu_line("etcd ", clients, &before, &after, leader_at, all.len());
        println!("{line}");
    }
    let follower = client.iter().find(|a| **a != leader).unwrap().clone();
    for (who, addr) in [("leader", &leader), ("follower", &follower)] {
        let mut conn = EtcdClient::connect(addr).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut lat = Vec::new();
        while Instant::now() < deadline {
            let t = Instant::now();
            if conn.get("probe").await.is_some() {
                lat.push(t.elapsed());
            }
        }
        lat.sort();
        println!(
            "etcd linearizable get on the {who}: reads/s={:.0} p50={:?} p99={:?}",
            lat.len() as f64 / 3.0,
            percentile(&lat, 0.50),
            percentile(&lat, 0.99)
        );
    }
    drop(procs);
}
