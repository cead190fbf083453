//! `gantry-workload`: the sample and test workload packed into Gantry's sample image. One
//! binary, several behaviours chosen by `argv[1]` (see [`args::USAGE`]): an HTTP server with a
//! breakable health check, environment and identity dumps, exit codes, memory and CPU hogs,
//! process spawning for pids limits, and a clock read for startup-latency benchmarks.
//!
//! Kept to std + libc so it links statically (`-C target-feature=+crt-static`) and runs in an
//! image with nothing else in it. As pid 1 of a container, signals with default disposition are
//! ignored by the kernel, so `serve` installs SIGTERM/SIGINT handlers to exit 0 promptly;
//! `sleep` deliberately does not (stop-timeout escalation can be tested with it).
//!
//! The image's entrypoint is this binary, so a first argument that is a path (`/bin/sh`,
//! `./x`) is executed in place of the workload: `gantry run IMAGE /bin/true` then runs
//! `/bin/true`, as users of Docker images expect.

mod args;
mod get;
mod serve;

use std::io::{self, Write};
use std::process::{Child, ExitCode};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use args::{Command, Wait};

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if let Some(path) = argv.first().filter(|a| args::is_exec_path(a)) {
        return exec(path, &argv[1..]);
    }
    let cmd = match args::parse(&argv) {
        Ok(cmd) => cmd,
        Err(e) => {
            eprintln!("gantry-workload: {e}\n{}", args::USAGE);
            return ExitCode::from(2);
        }
    };
    run(cmd)
}

/// Runs one command to completion and returns the process exit code.
fn run(cmd: Command) -> ExitCode {
    match cmd {
        Command::Help => {
            println!("{}", args::USAGE);
            ExitCode::SUCCESS
        }
        Command::Serve { port } => {
            exit_on_term_signals();
            match serve::run(port) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("gantry-workload: serve on port {port}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Info => {
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "hostname={}", hostname());
            let _ = writeln!(out, "pid={}", std::process::id());
            // SAFETY: getuid/getgid cannot fail and touch no memory.
            let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
            let _ = writeln!(out, "uid={uid} gid={gid}");
            for (k, v) in std::env::vars_os() {
                let _ = writeln!(out, "{}={}", k.to_string_lossy(), v.to_string_lossy());
            }
            ExitCode::SUCCESS
        }
        Command::Exit(code) => {
            let _ = io::stdout().flush();
            std::process::exit(code)
        }
        Command::Echo(words) => {
            println!("{}", words.join(" "));
            ExitCode::SUCCESS
        }
        Command::Stderr(words) => {
            eprintln!("{}", words.join(" "));
            ExitCode::SUCCESS
        }
        Command::Now => {
            // First thing after argument parsing: the benchmark compares this with the time
            // taken just before `gantry run` was invoked.
            let ns = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            println!("{ns}");
            ExitCode::SUCCESS
        }
        Command::Get {
            url,
            count,
            timeout,
        } => match get::run(&url, count, timeout) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("gantry-workload: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Alloc { mib, hold } => alloc(mib, hold),
        Command::Burn(wait) => {
            burn(wait);
            ExitCode::SUCCESS
        }
        Command::Fork { count, hold } => fork(count, hold),
        Command::Sleep(wait) => {
            sleep(wait);
            ExitCode::SUCCESS
        }
    }
}

/// Replaces this process with `path args...`: the image's entrypoint is this binary, so
/// `gantry run IMAGE /bin/sh -c ...` (Docker semantics: the command replaces only `Cmd`)
/// arrives here as `gantry-workload /bin/sh -c ...` and should run the shell. Exit codes follow
/// Docker's: 127 when the file is missing, 126 when it cannot be executed.
fn exec(path: &str, rest: &[String]) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(path).args(rest).exec();
    eprintln!("gantry-workload: cannot execute {path}: {err}");
    if err.kind() == io::ErrorKind::NotFound {
        ExitCode::from(127)
    } else {
        ExitCode::from(126)
    }
}

/// The UTS hostname, or `?` when it cannot be read.
pub(crate) fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it when
    // the name fits, and we also bound the search by the buffer length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "?".to_string();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

extern "C" fn on_term_signal(_sig: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) }
}

/// Makes SIGTERM and SIGINT end the process with status 0, even as pid 1.
fn exit_on_term_signals() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler only
        // calls the async-signal-safe _exit.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_term_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                eprintln!("gantry-workload: cannot install handler for signal {sig}");
            }
        }
    }
}

fn sleep(wait: Wait) {
    match wait {
        Wait::For(d) => thread::sleep(d),
        Wait::Forever => loop {
            thread::sleep(Duration::from_secs(3600));
        },
    }
}

/// Allocates `mib` MiB one MiB at a time, writing every page so it is really charged to the
/// memory cgroup, printing progress after each step, then holds it.
fn alloc(mib: u64, hold: Wait) -> ExitCode {
    const MIB: usize = 1 << 20;
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    let mut out = io::stdout().lock();
    for i in 1..=mib {
        let mut block = vec![0u8; MIB];
        for page in block.chunks_mut(4096) {
            page[0] = 1;
        }
        blocks.push(block);
        let _ = writeln!(out, "allocated {i} MiB");
        let _ = out.flush();
    }
    let _ = writeln!(out, "holding {mib} MiB");
    let _ = out.flush();
    drop(out);
    sleep(hold);
    // Keep the blocks alive (and used) until the hold is over.
    let sum: u64 = blocks.iter().map(|b| u64::from(b[0])).sum();
    println!("released {sum} MiB");
    ExitCode::SUCCESS
}

fn burn(wait: Wait) {
    let deadline = match wait {
        Wait::For(d) => Some(Instant::now() + d),
        Wait::Forever => None,
    };
    let mut x: u64 = 0;
    loop {
        for _ in 0..100_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return;
        }
    }
}

/// Spawns `count` children that sleep forever, reports how many started and the first error,
/// holds, then kills and reaps them. Exit 0 when every spawn succeeded, else 1.
fn fork(count: u64, hold: Wait) -> ExitCode {
    let exe = if std::path::Path::new("/proc/self/exe").exists() {
        std::path::PathBuf::from("/proc/self/exe")
    } else {
        std::env::current_exe().unwrap_or_else(|_| std::path::PathBuf::from("/app/gantry-workload"))
    };
    let mut children: Vec<Child> = Vec::new();
    let mut first_error: Option<io::Error> = None;
    for _ in 0..count {
        match std::process::Command::new(&exe)
            .args(["sleep", "infinity"])
            .spawn()
        {
            Ok(child) => children.push(child),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let ok = children.len() as u64;
    match &first_error {
        None => println!("forked {ok}/{count} children"),
        Some(e) => println!("forked {ok}/{count} children; first error: {e}"),
    }
    let _ = io::stdout().flush();
    sleep(hold);
    for child in &mut children {
        let _ = child.kill();
    }
    for child in &mut children {
        let _ = child.wait();
    }
    if first_error.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
