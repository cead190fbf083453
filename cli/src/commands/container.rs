//! `gantry run|ps|stop|rm|inspect` and `gantry container run|ps|logs|stop|rm|inspect`:
//! containers on this host, as Docker users know them.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use gantry_runtime::cgroups::{CpuQuota, Resources};
use gantry_runtime::container::logs::{self, Stream};
use gantry_runtime::container::{ContainerInfo, RunOptions, Runtime, LOG_FILE};
use gantry_runtime::root::RuntimeRoot;
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

/// `gantry container …`: every local container subcommand, `logs` included.
#[derive(Subcommand, Debug)]
pub enum ContainerCommand {
    /// Run a command in a new container.
    Run(Box<RunArgs>),
    /// List containers.
    Ps(PsArgs),
    /// Print a container's output.
    Logs(LogsArgs),
    /// Stop running containers: SIGTERM, then SIGKILL after the grace period.
    Stop(StopArgs),
    /// Remove containers.
    Rm(RmArgs),
    /// Print a container's spec and state as JSON.
    Inspect(InspectArgs),
}

/// The local container subcommands flattened into the top level as Docker has them; `logs`
/// is not among them (the top-level `gantry logs` reads a replica's log; local containers'
/// is `gantry container logs`).
#[derive(Subcommand, Debug)]
pub enum TopLevelContainerCommand {
    /// Run a command in a new container.
    Run(Box<RunArgs>),
    /// List containers.
    Ps(PsArgs),
    /// Stop running containers: SIGTERM, then SIGKILL after the grace period.
    Stop(StopArgs),
    /// Remove containers.
    Rm(RmArgs),
    /// Print a container's spec and state as JSON.
    Inspect(InspectArgs),
}

impl From<TopLevelContainerCommand> for ContainerCommand {
    fn from(c: TopLevelContainerCommand) -> Self {
        match c {
            TopLevelContainerCommand::Run(a) => ContainerCommand::Run(a),
            TopLevelContainerCommand::Ps(a) => ContainerCommand::Ps(a),
            TopLevelContainerCommand::Stop(a) => ContainerCommand::Stop(a),
            TopLevelContainerCommand::Rm(a) => ContainerCommand::Rm(a),
            TopLevelContainerCommand::Inspect(a) => ContainerCommand::Inspect(a),
        }
    }
}

/// `gantry ps` options.
#[derive(Args, Debug)]
pub struct PsArgs {
    /// Show all containers, not only running ones.
    #[arg(short, long)]
    all: bool,
    /// Print only ids.
    #[arg(short, long)]
    quiet: bool,
}

/// `gantry container logs` options.
#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Keep printing new output until the container exits.
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines.
    #[arg(long, value_name = "N")]
    tail: Option<usize>,
    /// Prefix each line with its RFC 3339 timestamp.
    #[arg(short, long)]
    timestamps: bool,
    /// Container id, id prefix or name.
    container: String,
}

/// `gantry stop` options.
#[derive(Args, Debug)]
pub struct StopArgs {
    /// Seconds to wait before killing.
    #[arg(short = 't', long = "time", default_value_t = 10)]
    time: u64,
    /// Container ids, id prefixes or names.
    #[arg(required = true)]
    containers: Vec<String>,
}

/// `gantry rm` options.
#[derive(Args, Debug)]
pub struct RmArgs {
    /// Kill and remove running containers.
    #[arg(short, long)]
    force: bool,
    /// Container ids, id prefixes or names.
    #[arg(required = true)]
    containers: Vec<String>,
}

/// `gantry inspect` options.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Container id, id prefix or name.
    container: String,
}

/// `gantry run` options.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Remove the container when it exits.
    #[arg(long)]
    rm: bool,
    /// Run in the background and print the container id.
    #[arg(short, long)]
    detach: bool,
    /// Container name.
    #[arg(long)]
    name: Option<String>,
    /// Memory limit, e.g. 64Mi, 1Gi, 500M.
    #[arg(short, long, value_name = "QUANTITY")]
    memory: Option<String>,
    /// CPU limit in CPUs, e.g. 0.5 or 500m.
    #[arg(long, value_name = "CPUS", allow_hyphen_values = true)]
    cpus: Option<String>,
    /// Maximum number of processes.
    #[arg(
        long,
        alias = "pids-limit",
        value_name = "N",
        allow_hyphen_values = true
    )]
    pids: Option<i64>,
    /// Environment variables, KEY=VALUE (or KEY to take it from this environment).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Container hostname.
    #[arg(long)]
    hostname: Option<String>,
    /// Working directory inside the container.
    #[arg(short, long)]
    workdir: Option<String>,
    /// User (name, uid, name:group or uid:gid).
    #[arg(short, long)]
    user: Option<String>,
    /// Override the image's entrypoint (a single program).
    #[arg(long)]
    entrypoint: Option<String>,
    /// Add capabilities (e.g. MKNOD, NET_ADMIN, ALL).
    #[arg(long = "cap-add", value_name = "CAP")]
    cap_add: Vec<String>,
    /// Drop capabilities.
    #[arg(long = "cap-drop", value_name = "CAP")]
    cap_drop: Vec<String>,
    /// Mount the root filesystem read-only.
    #[arg(long = "read-only")]
    read_only: bool,
    /// Labels, KEY=VALUE.
    #[arg(short, long = "label", value_name = "KEY=VALUE")]
    label: Vec<String>,
    /// Image reference: name[:tag], id or id prefix.
    image: String,
    /// Command and arguments, replacing the image's CMD.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// Runs a container subcommand; returns the process exit code.
pub fn run(root: &RuntimeRoot, cmd: impl Into<ContainerCommand>) -> anyhow::Result<i32> {
    let rt = Runtime::new(root.clone());
    match cmd.into() {
        ContainerCommand::Run(args) => run_container(&rt, *args),
        ContainerCommand::Ps(PsArgs { all, quiet }) => {
            ps(&rt, all, quiet)?;
            Ok(0)
        }
        ContainerCommand::Logs(LogsArgs {
            follow,
            tail,
            timestamps,
            container,
        }) => {
            print_logs(&rt, &container, follow, tail, timestamps)?;
            Ok(0)
        }
        ContainerCommand::Stop(StopArgs { time, containers }) => {
            let mut failed = false;
            for c in containers {
                match rt.stop(&c, Duration::from_secs(time)) {
                    Ok(_) => println!("{c}"),
                    Err(e) => {
                        eprintln!("gantry: {e}");
                        failed = true;
                    }
                }
            }
            Ok(i32::from(failed))
        }
        ContainerCommand::Rm(RmArgs { force, containers }) => {
            let mut failed = false;
            for c in containers {
                match rt.remove(&c, force) {
                    Ok(()) => println!("{c}"),
                    Err(e) => {
                        eprintln!("gantry: {e}");
                        failed = true;
                    }
                }
            }
            Ok(i32::from(failed))
        }
        ContainerCommand::Inspect(InspectArgs { container }) => {
            let info = rt.inspect(&container)?;
            let json = serde_json::json!({
                "id": info.spec.id,
                "status": info.status_word(),
                "supervised": info.supervised,
                "spec": info.spec,
                "state": info.state,
                "dir": info.dir,
            });
            println!("{}", serde_json::to_string_pretty(&json)?);
            Ok(0)
        }
    }
}

fn run_container(rt: &Runtime, args: RunArgs) -> anyhow::Result<i32> {
    let opts = run_options(args.rm, &args)?;
    let spec = rt.create(&opts)?;
    if args.detach {
        rt.start(&spec, false)?;
        println!("{}", spec.id);
        return Ok(0);
    }
    let started = rt.start(&spec, true)?;
    let (code, reason) = started.wait_forwarding_signals()?;
    if reason.as_deref() == Some("OOMKilled") {
        eprintln!(
            "gantry: container {} was killed for exceeding its memory limit (OOMKilled)",
            &spec.id[..12]
        );
    }
    Ok(code)
}

fn run_options(auto_remove: bool, a: &RunArgs) -> anyhow::Result<RunOptions> {
    let mut resources = Resources::default();
    if let Some(m) = &a.memory {
        resources.memory_limit = Some(
            gantry_api::quantity::parse_memory(m)
                .with_context(|| format!("invalid --memory {m:?}"))?,
        );
        if resources.memory_limit == Some(0) {
            bail!("invalid --memory {m:?}: must be greater than 0");
        }
    }
    if let Some(c) = &a.cpus {
        let millis =
            gantry_api::quantity::parse_cpu(c).with_context(|| format!("invalid --cpus {c:?}"))?;
        if millis == 0 {
            bail!("invalid --cpus {c:?}: must be greater than 0");
        }
        resources.cpu_quota = Some(CpuQuota::from_millicpus(millis));
    }
    if let Some(p) = a.pids {
        if p < 1 {
            bail!("invalid --pids {p}: must be at least 1");
        }
        resources.pids_limit = Some(p as u64);
    }
    let env = a
        .env
        .iter()
        .map(|e| match e.split_once('=') {
            Some(_) => Ok(e.clone()),
            None => std::env::var(e)
                .map(|v| format!("{e}={v}"))
                .with_context(|| format!("invalid --env {e:?}: not KEY=VALUE and not set here")),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let labels = a
        .label
        .iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("invalid --label {l:?}: expected KEY=VALUE"))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(RunOptions {
        image: a.image.clone(),
        name: a.name.clone(),
        command: a.command.clone(),
        entrypoint: a.entrypoint.clone().map(|e| vec![e]),
        env,
        hostname: a.hostname.clone(),
        working_dir: a.workdir.clone(),
        user: a.user.clone(),
        resources,
        cap_add: a.cap_add.clone(),
        cap_drop: a.cap_drop.clone(),
        readonly_rootfs: a.read_only,
        auto_remove,
        labels,
        ..RunOptions::default()
    })
}

fn ps(rt: &Runtime, all: bool, quiet: bool) -> anyhow::Result<()> {
    let list: Vec<ContainerInfo> = rt
        .list()?
        .into_iter()
        .filter(|c| all || c.is_running())
        .collect();
    if quiet {
        for c in list {
            println!("{}", &c.spec.id[..12]);
        }
        return Ok(());
    }
    let now = gantry_runtime::container::now_ms();
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|c| {
            let mut command = c.spec.args.join(" ");
            if command.chars().count() > 30 {
                command = command.chars().take(27).collect::<String>() + "...";
            }
            vec![
                c.spec.id[..12].to_string(),
                c.spec.image.clone(),
                format!("\"{command}\""),
                format!(
                    "{} ago",
                    human_duration(now.saturating_sub(c.spec.created_ms))
                ),
                status_text(c, now),
                c.spec.name.clone(),
            ]
        })
        .collect();
    super::print_table(
        &[
            "CONTAINER ID",
            "IMAGE",
            "COMMAND",
            "CREATED",
            "STATUS",
            "NAMES",
        ],
        &rows,
    );
    Ok(())
}

fn status_text(c: &ContainerInfo, now: u64) -> String {
    let state = c.state.as_ref();
    match c.status_word() {
        "running" => format!(
            "Up {}",
            human_duration(now.saturating_sub(state.map_or(now, |s| s.started_ms)))
        ),
        "exited" => {
            let s = state.expect("exited implies a state");
            let reason = match s.reason.as_deref() {
                Some("OOMKilled") => " OOMKilled",
                _ => "",
            };
            format!(
                "Exited ({}){reason} {} ago",
                s.exit_code.unwrap_or(-1),
                human_duration(now.saturating_sub(s.finished_ms))
            )
        }
        "created" => "Created".into(),
        _ => "Dead (shim gone)".into(),
    }
}

fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        2..=59 => format!("{s} seconds"),
        60..=119 => "About a minute".into(),
        120..=3599 => format!("{} minutes", s / 60),
        3600..=7199 => "About an hour".into(),
        7200..=172_799 => format!("{} hours", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}

fn print_logs(
    rt: &Runtime,
    reference: &str,
    follow: bool,
    tail: Option<usize>,
    timestamps: bool,
) -> anyhow::Result<()> {
    let info = rt.inspect(reference)?;
    let path = info.dir.join(LOG_FILE);
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let mut data = Vec::new();
    file.read_to_end(&mut data)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut offset = data.len() as u64;
    let complete = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut carry = data.split_off(complete);
    let mut lines: Vec<&[u8]> = data
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    if let Some(n) = tail {
        let full_lines = lines
            .iter()
            .filter(|l| logs::parse_line(l).is_some_and(|r| r.full))
            .count();
        let mut skip_full = full_lines.saturating_sub(n);
        let mut start = 0;
        while skip_full > 0 && start < lines.len() {
            if logs::parse_line(lines[start]).is_some_and(|r| r.full) {
                skip_full -= 1;
            }
            start += 1;
        }
        lines.drain(..start);
    }
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let emit = |line: &[u8]| -> std::io::Result<()> {
        let Some(rec) = logs::parse_line(line) else {
            return Ok(());
        };
        let mut out: Box<dyn Write> = match rec.stream {
            Stream::Stdout => Box::new(stdout.lock()),
            Stream::Stderr => Box::new(stderr.lock()),
        };
        if timestamps {
            out.write_all(rec.timestamp.as_bytes())?;
            out.write_all(b" ")?;
        }
        out.write_all(rec.content)?;
        if rec.full {
            out.write_all(b"\n")?;
        }
        out.flush()
    };
    for line in lines {
        emit(line)?;
    }
    if !follow {
        return Ok(());
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            let running = rt
                .inspect(&info.spec.id)
                .map(|c| c.supervised)
                .unwrap_or(false);
            if !running {
                // One last read: the shim may have written its final bytes just before exiting.
                file.seek(SeekFrom::Start(offset))?;
                if file.read(&mut buf)? == 0 {
                    return Ok(());
                }
                file.seek(SeekFrom::Start(offset))?;
                continue;
            }
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        offset += n as u64;
        carry.extend_from_slice(&buf[..n]);
        while let Some(pos) = carry.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = carry.drain(..=pos).collect();
            emit(&line[..pos])?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_docker() {
        assert_eq!(human_duration(500), "Less than a second");
        assert_eq!(human_duration(5_000), "5 seconds");
        assert_eq!(human_duration(90_000), "About a minute");
        assert_eq!(human_duration(600_000), "10 minutes");
    }
}
