//! Command-line parsing of the workload: `argv[1..]` into one [`Command`], by hand (the binary
//! stays std + libc so it links statically and small). Errors are lower-case messages meant
//! to be printed after the usage text.

use std::time::Duration;

/// How long a command waits: a finite duration or until killed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Wait {
    /// Wait this long.
    For(Duration),
    /// Wait until a signal ends the process.
    Forever,
}

/// One parsed invocation of the workload.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Serve HTTP on `0.0.0.0:port`.
    Serve {
        /// The TCP port (0 picks a free one).
        port: u16,
    },
    /// Print hostname, pid, uid/gid and the environment.
    Info,
    /// Exit with this code.
    Exit(i32),
    /// Print the arguments, space separated, to stdout.
    Echo(Vec<String>),
    /// Print the arguments, space separated, to stderr.
    Stderr(Vec<String>),
    /// Allocate and touch this many MiB, then hold them.
    Alloc {
        /// MiB to allocate, touched 1 MiB at a time.
        mib: u64,
        /// How long to hold the memory afterwards.
        hold: Wait,
    },
    /// Spin on the CPU.
    Burn(Wait),
    /// Spawn this many children that sleep, then report.
    Fork {
        /// Children to spawn.
        count: u64,
        /// How long to keep the children alive after spawning them all.
        hold: Wait,
    },
    /// Sleep.
    Sleep(Wait),
    /// Print the current unix time in nanoseconds (CLOCK_REALTIME) and exit.
    Now,
    /// HTTP GET a URL, `count` times over new connections.
    Get {
        /// `http://host[:port][/path]`.
        url: String,
        /// Requests to make.
        count: u64,
        /// Connect/read timeout of each request.
        timeout: Duration,
    },
    /// Print usage to stdout and exit 0.
    Help,
}

/// The usage text printed for `help` and after a parse error.
pub const USAGE: &str = "\
usage: gantry-workload COMMAND [ARGS...]
commands:
  serve [--port PORT]           HTTP server (default port 8080): GET / /healthz /env /fail /recover
                                /healthz answers 500 when HEALTHZ_FAIL=1, after /fail, or while
                                /tmp/unhealthy exists
  info                          print hostname, pid, uid/gid and every environment variable
  exit CODE                     exit with CODE
  echo ARGS...                  print ARGS to stdout
  stderr MSG...                 print MSG to stderr
  alloc MIB [--hold SECONDS]    allocate and touch MIB MiB, then hold (default: forever)
  burn SECONDS|forever          busy loop
  fork N [--hold SECONDS]       spawn N sleeping children, report, hold (default 0), exit 0 if
                                all were spawned else 1
  sleep SECONDS|infinity        sleep
  now                           print the unix time in nanoseconds
  get URL [--count N] [--timeout SECONDS]
                                HTTP GET over a new connection each time; with N > 1 print
                                `HOSTNAME COUNT` per answering server (default N 1, timeout 2)
  help                          print this text
  /PATH [ARGS...]               execute PATH instead (126/127 when it cannot be run)";

/// Whether `argv[1]` names a program to execute instead of a workload command: an absolute
/// path or one starting with `./` or `../`.
pub fn is_exec_path(arg: &str) -> bool {
    arg.starts_with('/') || arg.starts_with("./") || arg.starts_with("../")
}

/// Parses `argv[1..]` into a [`Command`].
pub fn parse(args: &[String]) -> Result<Command, String> {
    let Some((name, rest)) = args.split_first() else {
        return Err("missing command".to_string());
    };
    match name.as_str() {
        "serve" => parse_serve(rest),
        "get" => parse_get(rest),
        "info" => no_args("info", rest).map(|()| Command::Info),
        "now" => no_args("now", rest).map(|()| Command::Now),
        "help" | "--help" | "-h" => Ok(Command::Help),
        "exit" => match rest {
            [code] => code
                .parse::<i32>()
                .map(Command::Exit)
                .map_err(|_| format!("exit: invalid code {code:?}: expected an integer")),
            _ => Err("exit: expected exactly one argument CODE".to_string()),
        },
        "echo" => Ok(Command::Echo(rest.to_vec())),
        "stderr" => Ok(Command::Stderr(rest.to_vec())),
        "alloc" => {
            let (positional, hold) = split_hold(rest, "alloc", Wait::Forever)?;
            match positional.as_slice() {
                [mib] => Ok(Command::Alloc {
                    mib: parse_count("alloc", "MIB", mib)?,
                    hold,
                }),
                _ => Err("alloc: expected exactly one argument MIB".to_string()),
            }
        }
        "fork" => {
            let (positional, hold) = split_hold(rest, "fork", Wait::For(Duration::ZERO))?;
            match positional.as_slice() {
                [n] => Ok(Command::Fork {
                    count: parse_count("fork", "N", n)?,
                    hold,
                }),
                _ => Err("fork: expected exactly one argument N".to_string()),
            }
        }
        "burn" => match rest {
            [s] => parse_wait("burn", s).map(Command::Burn),
            _ => Err("burn: expected exactly one argument SECONDS|forever".to_string()),
        },
        "sleep" => match rest {
            [s] => parse_wait("sleep", s).map(Command::Sleep),
            _ => Err("sleep: expected exactly one argument SECONDS|infinity".to_string()),
        },
        other => Err(format!("unknown command {other:?}")),
    }
}

fn no_args(name: &str, rest: &[String]) -> Result<(), String> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(format!("{name}: takes no arguments, got {rest:?}"))
    }
}

fn parse_serve(rest: &[String]) -> Result<Command, String> {
    let mut port = 8080;
    let mut it = rest.iter();
    while let Some(arg) = it.next() {
        let value = if arg == "--port" {
            it.next().ok_or("serve: --port needs a value")?.as_str()
        } else if let Some(v) = arg.strip_prefix("--port=") {
            v
        } else {
            return Err(format!("serve: unexpected argument {arg:?}"));
        };
        port = value
            .parse::<u16>()
            .map_err(|_| format!("serve: invalid port {value:?}: expected 0..=65535"))?;
    }
    Ok(Command::Serve { port })
}

fn parse_get(rest: &[String]) -> Result<Command, String> {
    let (mut url, mut count, mut timeout) = (None, 1, Duration::from_secs(2));
    let mut it = rest.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--count" => {
                let v = it.next().ok_or("get: --count needs a value")?;
                count = parse_count("get", "count", v)?;
            }
            "--timeout" => {
                let v = it.next().ok_or("get: --timeout needs a value")?;
                match parse_wait("get", v)? {
                    Wait::For(d) if !d.is_zero() => timeout = d,
                    _ => return Err(format!("get: invalid timeout {v:?}: expected SECONDS > 0")),
                }
            }
            other if url.is_none() && !other.starts_with("--") => url = Some(other.to_string()),
            other => return Err(format!("get: unexpected argument {other:?}")),
        }
    }
    let url = url.ok_or("get: expected a URL")?;
    if count == 0 {
        return Err("get: --count must be at least 1".to_string());
    }
    Ok(Command::Get {
        url,
        count,
        timeout,
    })
}

/// Separates `--hold S` / `--hold=S` from the positional arguments.
fn split_hold(rest: &[String], name: &str, default: Wait) -> Result<(Vec<String>, Wait), String> {
    let mut hold = default;
    let mut positional = Vec::new();
    let mut it = rest.iter();
    while let Some(arg) = it.next() {
        if arg == "--hold" {
            let v = it
                .next()
                .ok_or_else(|| format!("{name}: --hold needs a value"))?;
            hold = parse_wait(name, v)?;
        } else if let Some(v) = arg.strip_prefix("--hold=") {
            hold = parse_wait(name, v)?;
        } else {
            positional.push(arg.clone());
        }
    }
    Ok((positional, hold))
}

fn parse_count(name: &str, what: &str, s: &str) -> Result<u64, String> {
    s.parse::<u64>()
        .map_err(|_| format!("{name}: invalid {what} {s:?}: expected a non-negative integer"))
}

/// Parses seconds (fractions allowed) or `infinity`/`forever`/`inf`.
fn parse_wait(name: &str, s: &str) -> Result<Wait, String> {
    if matches!(s, "infinity" | "forever" | "inf") {
        return Ok(Wait::Forever);
    }
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{name}: invalid duration {s:?}: expected SECONDS or infinity"))?;
    Duration::try_from_secs_f64(secs)
        .map(Wait::For)
        .map_err(|_| format!("{name}: invalid duration {s:?}: expected SECONDS or infinity"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, String> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn serve_defaults_to_port_8080_and_accepts_both_port_forms() {
        assert_eq!(p(&["serve"]), Ok(Command::Serve { port: 8080 }));
        assert_eq!(
            p(&["serve", "--port", "9000"]),
            Ok(Command::Serve { port: 9000 })
        );
        assert_eq!(p(&["serve", "--port=0"]), Ok(Command::Serve { port: 0 }));
        assert!(p(&["serve", "--port"]).is_err());
        assert!(p(&["serve", "--port", "70000"])
            .unwrap_err()
            .contains("70000"));
        assert!(p(&["serve", "extra"]).is_err());
    }

    #[test]
    fn exit_parses_code_including_negative() {
        assert_eq!(p(&["exit", "3"]), Ok(Command::Exit(3)));
        assert_eq!(p(&["exit", "-1"]), Ok(Command::Exit(-1)));
        assert!(p(&["exit"]).is_err());
        assert!(p(&["exit", "x"]).unwrap_err().contains("\"x\""));
    }

    #[test]
    fn echo_and_stderr_keep_all_arguments() {
        assert_eq!(p(&["echo"]), Ok(Command::Echo(vec![])));
        assert_eq!(
            p(&["echo", "a", "b c"]),
            Ok(Command::Echo(vec!["a".into(), "b c".into()]))
        );
        assert_eq!(
            p(&["stderr", "oops"]),
            Ok(Command::Stderr(vec!["oops".into()]))
        );
    }

    #[test]
    fn alloc_holds_forever_by_default_and_takes_hold_anywhere() {
        assert_eq!(
            p(&["alloc", "64"]),
            Ok(Command::Alloc {
                mib: 64,
                hold: Wait::Forever
            })
        );
        let hold = Wait::For(Duration::from_millis(1500));
        assert_eq!(
            p(&["alloc", "8", "--hold", "1.5"]),
            Ok(Command::Alloc { mib: 8, hold })
        );
        assert_eq!(
            p(&["alloc", "--hold=1.5", "8"]),
            Ok(Command::Alloc { mib: 8, hold })
        );
        assert!(p(&["alloc"]).is_err());
        assert!(p(&["alloc", "-5"]).is_err());
        assert!(p(&["alloc", "8", "--hold"]).is_err());
        assert!(p(&["alloc", "8", "--hold", "soon"]).is_err());
    }

    #[test]
    fn fork_defaults_to_no_hold() {
        let hold = Wait::For(Duration::ZERO);
        assert_eq!(p(&["fork", "10"]), Ok(Command::Fork { count: 10, hold }));
        assert_eq!(
            p(&["fork", "10", "--hold", "infinity"]),
            Ok(Command::Fork {
                count: 10,
                hold: Wait::Forever
            })
        );
        assert!(p(&["fork", "1", "2"]).is_err());
    }

    #[test]
    fn durations_accept_seconds_fractions_and_infinity() {
        assert_eq!(
            p(&["sleep", "2"]),
            Ok(Command::Sleep(Wait::For(Duration::from_secs(2))))
        );
        assert_eq!(
            p(&["sleep", "0.25"]),
            Ok(Command::Sleep(Wait::For(Duration::from_millis(250))))
        );
        assert_eq!(p(&["sleep", "infinity"]), Ok(Command::Sleep(Wait::Forever)));
        assert_eq!(p(&["burn", "forever"]), Ok(Command::Burn(Wait::Forever)));
        assert!(p(&["sleep", "-1"]).is_err());
        assert!(p(&["sleep", "NaN"]).is_err());
        assert!(p(&["sleep"]).is_err());
    }

    #[test]
    fn simple_commands_reject_extra_arguments() {
        assert_eq!(p(&["info"]), Ok(Command::Info));
        assert_eq!(p(&["now"]), Ok(Command::Now));
        assert!(p(&["info", "x"]).is_err());
        assert!(p(&["now", "x"]).is_err());
    }

    #[test]
    fn paths_are_executed_not_parsed() {
        assert!(is_exec_path("/bin/true"));
        assert!(is_exec_path("./run.sh"));
        assert!(is_exec_path("../x"));
        assert!(!is_exec_path("serve"));
        assert!(!is_exec_path("true"));
    }

    #[test]
    fn unknown_and_missing_commands_are_errors() {
        assert!(p(&[]).unwrap_err().contains("missing command"));
        assert!(p(&["frobnicate"]).unwrap_err().contains("frobnicate"));
        assert_eq!(p(&["help"]), Ok(Command::Help));
    }
}
