//! `gantry cluster`: a real multi-node cluster on one machine, for demos and tests.
//!
//! `up` starts N servers and M agents as background processes, each (by default) in its own
//! network namespace with its own address on a bridge the cluster creates, so that they behave
//! as separate hosts and can be cut off one by one. Everything it made is recorded in
//! `DIR/cluster.json`; `down` ends exactly those processes, removes their containers, the
//! namespaces and the bridge, and with `--purge` the data.

mod net;
mod procs;
mod state;

use super::target::runtime;
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use gantry_api::client::Client;
use gantry_api::model::NodeStatus;
use gantry_api::objects::Kind;
use nix::sys::signal::Signal;
use state::{Cluster, Member, Role};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The API port of every server inside its namespace.
const SERVER_PORT: u16 = 7000;
/// The port of every agent inside its namespace.
const AGENT_PORT: u16 = 7100;
/// How long `up` waits for the cluster to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Which local cluster a command is about.
#[derive(Args, Debug, Clone, Default)]
pub struct Pick {
    /// The cluster's directory (default: the last cluster brought up).
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    /// The cluster's name (its directory is `~/.gantry/clusters/NAME`).
    #[arg(long, global = true)]
    name: Option<String>,
}

/// `gantry cluster …`.
#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Start a local cluster in the background and wait until it is ready.
    #[command(
        after_help = "Examples:\n  gantry cluster up\n  gantry cluster up --name demo \
        --servers 3 --agents 3\n  gantry cluster up --no-netns   # loopback ports, no namespaces"
    )]
    Up {
        /// Control-plane members.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=7))]
        servers: u8,
        /// Node agents.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(0..=20))]
        agents: u8,
        /// Run every member on loopback ports instead of in its own network namespace.
        #[arg(long)]
        no_netns: bool,
        /// Image archives to import on every agent (default: the sample image, if built).
        #[arg(long = "image", value_name = "FILE")]
        images: Vec<PathBuf>,
    },
    /// Show the cluster's members and whether they run.
    Status,
    /// Stop every process of the cluster, remove its containers and network.
    Down {
        /// Also remove its data, logs and images.
        #[arg(long)]
        purge: bool,
    },
    /// Import an image archive on every agent.
    Import {
        /// The archive (OCI layout, docker save or rootfs tar).
        file: PathBuf,
        /// Name the image NAME[:TAG].
        #[arg(long = "as", value_name = "NAME[:TAG]")]
        image_name: Option<String>,
    },
    /// Stop one member (SIGTERM; an agent leaves its containers running).
    Stop {
        /// The member (`s1`, `n2`…).
        member: String,
    },
    /// Start a stopped member again.
    Start {
        /// The member.
        member: String,
    },
    /// Kill one member with SIGKILL.
    Kill {
        /// The member.
        member: String,
    },
    /// Cut one member off the cluster network (needs namespaces).
    Partition {
        /// The member.
        member: String,
    },
    /// Reconnect a partitioned member.
    Heal {
        /// The member.
        member: String,
    },
}

/// Arguments of `gantry cluster`.
#[derive(Args, Debug)]
pub struct ClusterArgs {
    #[command(flatten)]
    pick: Pick,
    #[command(subcommand)]
    command: ClusterCommand,
}

/// Runs a `cluster` subcommand.
pub fn run(args: ClusterArgs) -> anyhow::Result<i32> {
    let ClusterArgs { pick, command } = args;
    match command {
        ClusterCommand::Up {
            servers,
            agents,
            no_netns,
            images,
        } => up(&pick, servers, agents, !no_netns, images),
        ClusterCommand::Status => status(&load(&pick)?),
        ClusterCommand::Down { purge } => down(load(&pick)?, purge),
        ClusterCommand::Import { file, image_name } => {
            import(&load(&pick)?, &file, image_name.as_deref())
        }
        ClusterCommand::Stop { member } => one(&pick, &member, Action::Stop),
        ClusterCommand::Start { member } => one(&pick, &member, Action::Start),
        ClusterCommand::Kill { member } => one(&pick, &member, Action::Kill),
        ClusterCommand::Partition { member } => one(&pick, &member, Action::Partition),
        ClusterCommand::Heal { member } => one(&pick, &member, Action::Heal),
    }
}

fn load(pick: &Pick) -> anyhow::Result<Cluster> {
    let dir = state::pick_dir(pick.dir.as_deref(), pick.name.as_deref())?;
    Cluster::load(&dir)
}

fn gantry_exe() -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("cannot find the gantry binary")?;
    Ok(exe.display().to_string())
}

/// The sample image next to the binary (`target/<profile>/gantry` → `target/sample-image/`).
fn default_images() -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Some(p) = std::env::var_os("GANTRY_SAMPLE_IMAGE") {
        found.push(PathBuf::from(p));
    } else if let Ok(exe) = std::env::current_exe() {
        if let Some(target) = exe.parent().and_then(Path::parent) {
            let sample = target.join("sample-image/gantry-sample.oci.tar");
            if sample.exists() {
                found.push(sample);
            }
        }
    }
    found
}

/// The command line that starts `m`; `bootstrap` holds `--init` / `--join ADDR` for a new
/// server (empty to restart from its data).
fn argv_of(c: &Cluster, m: &Member, bootstrap: &[String]) -> anyhow::Result<Vec<String>> {
    let exe = gantry_exe()?;
    let mut argv = vec![exe];
    match m.role {
        Role::Server => {
            argv.extend(
                [
                    "server",
                    "--name",
                    &m.name,
                    "--data-dir",
                    &m.data.display().to_string(),
                    "--listen",
                    &m.addr,
                ]
                .map(String::from),
            );
            argv.extend(bootstrap.iter().cloned());
        }
        Role::Agent => {
            argv.extend(
                [
                    "agent",
                    "--name",
                    &m.name,
                    "--server",
                    &c.server_addrs().join(","),
                    "--root",
                    &m.data.display().to_string(),
                    "--listen",
                    &m.addr,
                ]
                .map(String::from),
            );
            // Agents sharing the host's network namespace (`--no-netns`) must not each build
            // a bridge and routes there: their replicas get `lo` only.
            if m.netns.is_none() {
                argv.extend(["--network", "none"].map(String::from));
            }
        }
    }
    Ok(argv)
}

fn free_loopback_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(l.local_addr()?.port())
}

fn up(
    pick: &Pick,
    servers: u8,
    agents: u8,
    netns: bool,
    images: Vec<PathBuf>,
) -> anyhow::Result<i32> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("gantry cluster up must run as root (it creates namespaces, cgroups and mounts)");
    }
    let name = pick.name.clone().unwrap_or_else(|| "demo".to_string());
    gantry_api::objects::validate_name(&name).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
    let dir = match &pick.dir {
        Some(d) => d.clone(),
        None => state::default_dir(&name),
    };
    if let Ok(existing) = Cluster::load(&dir) {
        if existing.members.iter().any(procs::alive) {
            bail!(
                "cluster {} in {} is already up (see `gantry cluster status`; `gantry cluster down` first)",
                existing.name,
                dir.display()
            );
        }
        bail!(
            "{} holds a stopped cluster {}: start its members with `gantry cluster start MEMBER`, \
             or remove it with `gantry cluster down --purge --dir {}`",
            dir.display(),
            existing.name,
            dir.display()
        );
    }
    let images = if images.is_empty() {
        default_images()
    } else {
        images
    };
    for i in &images {
        if !i.exists() {
            bail!("--image {}: no such file", i.display());
        }
    }
    std::fs::create_dir_all(dir.join("logs"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let started = Instant::now();

    let mut cluster = Cluster {
        name: name.clone(),
        dir: dir.clone(),
        bridge: None,
        subnet: None,
        members: Vec::new(),
    };
    let prefix = if netns {
        let prefix = net::pick_subnet(&name)?;
        cluster.bridge = Some(net::bridge_name(&name));
        cluster.subnet = Some(format!("{prefix}.0/24"));
        Some(prefix)
    } else {
        None
    };
    let roles = (1..=servers)
        .map(|i| (Role::Server, format!("s{i}")))
        .chain((1..=agents).map(|i| (Role::Agent, format!("n{i}"))));
    for (index, (role, member)) in roles.enumerate() {
        let port = match role {
            Role::Server => SERVER_PORT,
            Role::Agent => AGENT_PORT,
        };
        let (addr, ns, veth) = match &prefix {
            Some(p) => (
                format!("{p}.{}:{port}", 10 + index),
                Some(net::netns_name(&name, &member)),
                Some(net::veth_name(&name, index)),
            ),
            None => (format!("127.0.0.1:{}", free_loopback_port()?), None, None),
        };
        let data = match role {
            Role::Server => dir.join("servers").join(&member),
            Role::Agent => dir.join("agents").join(&member),
        };
        cluster.members.push(Member {
            log: dir.join("logs").join(format!("{member}.log")),
            name: member,
            role,
            addr,
            netns: ns,
            veth,
            data,
            pid: None,
            start_ticks: None,
            partitioned: false,
        });
    }
    cluster.save()?;
    state::remember_last(&dir)?;

    let result = bring_up(&mut cluster, prefix.as_deref(), &images);
    cluster.save()?;
    if let Err(e) = result {
        eprintln!(
            "gantry: cluster up failed; cleaning up (logs kept in {})",
            dir.join("logs").display()
        );
        let _ = down_quiet(&mut cluster);
        cluster.save()?;
        return Err(e);
    }
    let took = started.elapsed();
    super::config::set_context(&name, &cluster.server_addrs(), true)
        .context("cannot write the CLI context")?;
    let servers_list = cluster.server_addrs().join(",");
    println!(
        "cluster {name} is up in {:.1}s: {servers} servers, {agents} agents{}",
        took.as_secs_f64(),
        match &cluster.subnet {
            Some(s) => format!(
                " (network namespaces on bridge {}, {s})",
                cluster.bridge.as_deref().unwrap_or("")
            ),
            None => " (loopback)".to_string(),
        }
    );
    println!("  servers: {servers_list}");
    println!("  context {name:?} is now current; try:");
    println!("    gantry get nodes");
    println!("    gantry apply -f manifests/ --wait");
    println!("    gantry get replicas -o wide");
    println!("  data and logs: {}", dir.display());
    println!("  stop it with: gantry cluster down [--purge]");
    Ok(0)
}

fn bring_up(c: &mut Cluster, prefix: Option<&str>, images: &[PathBuf]) -> anyhow::Result<()> {
    if let (Some(prefix), Some(bridge)) = (prefix, c.bridge.clone()) {
        net::create_bridge(&bridge, prefix)?;
        for m in &c.members {
            let ip = m.addr.rsplit_once(':').map_or("", |(h, _)| h);
            if let (Some(ns), Some(veth)) = (&m.netns, &m.veth) {
                net::create_member_netns(ns, veth, &bridge, ip)?;
            }
        }
    }
    for m in &c.members {
        std::fs::create_dir_all(&m.data)
            .with_context(|| format!("cannot create {}", m.data.display()))?;
    }
    // Images first, while nothing runs: agents find them as soon as they start.
    for m in c.of(Role::Agent) {
        import_into(&m.data, images, None)?;
    }
    let rt = runtime()?;
    let first = c.server_addrs()[0].clone();
    let server_count = c.of(Role::Server).count();
    for i in 0..server_count {
        let bootstrap = if i == 0 {
            vec!["--init".to_string()]
        } else {
            vec!["--join".to_string(), first.clone()]
        };
        let argv = argv_of(c, &c.members[i], &bootstrap)?;
        procs::spawn(&mut c.members[i], &argv)?;
        let addr = c.members[i].addr.clone();
        let want = i + 1;
        rt.block_on(wait_for(c, &c.members[i].name.clone(), || {
            let addr = addr.clone();
            async move { voters(&addr).await == Some(want) }
        }))?;
    }
    let agent_indices: Vec<usize> = (server_count..c.members.len()).collect();
    for &i in &agent_indices {
        let argv = argv_of(c, &c.members[i], &[])?;
        procs::spawn(&mut c.members[i], &argv)?;
    }
    let servers = c.server_addrs();
    let want = agent_indices.len();
    rt.block_on(wait_for(c, "the agents", || {
        let servers = servers.clone();
        async move { ready_nodes(&servers).await == Some(want) }
    }))?;
    Ok(())
}

/// Waits until `check` holds, failing when a member died or the deadline passed.
async fn wait_for<F, Fut>(c: &Cluster, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if check().await {
            return Ok(());
        }
        procs::reap();
        if let Some(dead) = c
            .members
            .iter()
            .find(|m| m.pid.is_some() && !procs::alive(m))
        {
            bail!(
                "{} exited while waiting for {what}; its log {}:\n{}",
                dead.name,
                dead.log.display(),
                tail(&dead.log, 10)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{what} not ready within {READY_TIMEOUT:?} (logs in {})",
                c.dir.join("logs").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Voters of the cluster as `addr` sees them, once it knows a leader.
async fn voters(addr: &str) -> Option<usize> {
    let mut client = Client::connect(&[addr.to_string()]).await.ok()?;
    let m = client.members().await.ok()?;
    m.members
        .iter()
        .any(|m| m.leader)
        .then(|| m.members.iter().filter(|m| m.voter).count())
}

/// Nodes that are Ready.
async fn ready_nodes(servers: &[String]) -> Option<usize> {
    let mut client = Client::connect(servers).await.ok()?;
    let (nodes, _) = client.list(Kind::Node).await.ok()?;
    Some(
        nodes
            .iter()
            .filter(|n| n.status_as::<NodeStatus>().is_ok_and(|s| s.ready))
            .count(),
    )
}

fn import_into(root: &Path, images: &[PathBuf], name: Option<&str>) -> anyhow::Result<()> {
    let root = gantry_runtime::root::RuntimeRoot::new(root);
    let store = gantry_runtime::images::ImageStore::open(&root.images_dir())
        .with_context(|| format!("cannot open the image store in {}", root.path().display()))?;
    for image in images {
        store
            .import(image, name)
            .with_context(|| format!("cannot import {}", image.display()))?;
    }
    Ok(())
}

fn import(c: &Cluster, file: &Path, name: Option<&str>) -> anyhow::Result<i32> {
    for m in c.of(Role::Agent) {
        import_into(&m.data, &[file.to_path_buf()], name)?;
        println!("{}: imported {}", m.name, file.display());
    }
    Ok(0)
}

fn status(c: &Cluster) -> anyhow::Result<i32> {
    println!("cluster {} in {}", c.name, c.dir.display());
    let rows: Vec<Vec<String>> = c
        .members
        .iter()
        .map(|m| {
            let state = if procs::alive(m) {
                if m.partitioned {
                    "running,partitioned"
                } else {
                    "running"
                }
            } else {
                "stopped"
            };
            vec![
                m.name.clone(),
                match m.role {
                    Role::Server => "server",
                    Role::Agent => "agent",
                }
                .to_string(),
                m.addr.clone(),
                state.to_string(),
                m.pid
                    .filter(|_| procs::alive(m))
                    .map_or("-".into(), |p| p.to_string()),
                m.netns.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    super::print_table(&["NAME", "ROLE", "ADDRESS", "STATE", "PID", "NETNS"], &rows);
    Ok(0)
}

/// Stops everything; errors are reported but do not stop the rest of the cleanup.
fn down_quiet(c: &mut Cluster) -> anyhow::Result<()> {
    // Agents first (they leave containers running), then their containers, then the servers.
    for m in c.members.iter_mut().filter(|m| m.role == Role::Agent) {
        procs::signal(m, Signal::SIGTERM, Some(Duration::from_secs(10)));
    }
    let mut failures = Vec::new();
    for m in c.of(Role::Agent) {
        if let Err(e) = remove_containers(&m.data) {
            failures.push(format!("{}: {e:#}", m.name));
        }
    }
    // Replica network namespaces are bind mounts under the agents' roots; their veths go with
    // the node namespaces below.
    for m in c.of(Role::Agent) {
        if let Err(e) = unmount_under(&m.data.join("netns")) {
            failures.push(format!("{}: {e:#}", m.name));
        }
    }
    for m in c.members.iter_mut().filter(|m| m.role == Role::Server) {
        procs::signal(m, Signal::SIGTERM, Some(Duration::from_secs(10)));
    }
    let netns: Vec<&str> = c
        .members
        .iter()
        .filter_map(|m| m.netns.as_deref())
        .collect();
    let veths: Vec<&str> = c.members.iter().filter_map(|m| m.veth.as_deref()).collect();
    net::teardown(c.bridge.as_deref(), &netns, &veths);
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("cannot remove some containers: {}", failures.join("; "))
    }
}

/// Detaches every mount point at or below `dir` (deepest first), from `/proc/self/mountinfo`.
fn unmount_under(dir: &Path) -> anyhow::Result<()> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .context("cannot read /proc/self/mountinfo")?;
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for p in points {
        nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH)
            .with_context(|| format!("cannot unmount {}", p.display()))?;
    }
    Ok(())
}

fn remove_containers(root: &Path) -> anyhow::Result<()> {
    if !root.join("containers").exists() {
        return Ok(());
    }
    let rt = gantry_runtime::container::Runtime::new(gantry_runtime::root::RuntimeRoot::new(root));
    let containers = rt.list()?;
    // Stopped all at once: each may take its whole grace period (PID 1 ignores SIGTERM unless
    // it handles it), and a node may hold many.
    std::thread::scope(|scope| {
        for info in containers.iter().filter(|i| i.supervised) {
            let rt = &rt;
            scope.spawn(move || {
                let _ = rt.stop(&info.spec.id, Duration::from_secs(2));
            });
        }
    });
    for info in containers {
        let id = info.spec.id;
        rt.remove(&id, true)
            .with_context(|| format!("container {id}"))?;
    }
    Ok(())
}

fn down(mut c: Cluster, purge: bool) -> anyhow::Result<i32> {
    let result = down_quiet(&mut c);
    for m in &mut c.members {
        m.partitioned = false;
    }
    if purge {
        result?;
        std::fs::remove_dir_all(&c.dir)
            .with_context(|| format!("cannot remove {}", c.dir.display()))?;
        state::forget_last(&c.dir);
        println!("cluster {} is down; {} removed", c.name, c.dir.display());
    } else {
        c.save()?;
        result?;
        println!(
            "cluster {} is down; data kept in {} (remove with `gantry cluster down --purge`)",
            c.name,
            c.dir.display()
        );
    }
    Ok(0)
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Stop,
    Start,
    Kill,
    Partition,
    Heal,
}

fn one(pick: &Pick, member: &str, action: Action) -> anyhow::Result<i32> {
    let mut c = load(pick)?;
    let i = c.member_index(member)?;
    match action {
        Action::Stop => {
            procs::signal(
                &mut c.members[i],
                Signal::SIGTERM,
                Some(Duration::from_secs(10)),
            );
            println!("{member} stopped");
        }
        Action::Kill => {
            procs::signal(
                &mut c.members[i],
                Signal::SIGKILL,
                Some(Duration::from_secs(5)),
            );
            println!("{member} killed");
        }
        Action::Start => {
            if procs::alive(&c.members[i]) {
                bail!(
                    "{member} is already running (pid {})",
                    c.members[i].pid.unwrap_or(0)
                );
            }
            if let Some(ns) = &c.members[i].netns {
                if !net::netns_exists(ns) {
                    bail!("the cluster's network is gone (was it brought down?); bring it up again with `gantry cluster down --purge` and `gantry cluster up`");
                }
            }
            let argv = argv_of(&c, &c.members[i], &[])?;
            procs::spawn(&mut c.members[i], &argv)?;
            println!("{member} started (pid {})", c.members[i].pid.unwrap_or(0));
        }
        Action::Partition | Action::Heal => {
            let heal = matches!(action, Action::Heal);
            let Some(veth) = c.members[i].veth.clone() else {
                bail!("{member}: partition needs network namespaces (this cluster runs on loopback: it was brought up with --no-netns)");
            };
            net::set_link(&veth, heal)?;
            c.members[i].partitioned = !heal;
            println!("{member} {}", if heal { "healed" } else { "partitioned" });
        }
    }
    c.save()?;
    Ok(0)
}
