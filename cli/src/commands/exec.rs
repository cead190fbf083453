//! `gantry exec REPLICA -- CMD…`: runs a command in a replica's running container through
//! the agent of its node; the command's output goes to ours and its exit code becomes ours.

use super::logs::{agent_error, connect_replica_agent};
use super::output::{finish, user_error};
use super::target::TargetArgs;
use clap::Args;
use gantry_api::proto::ExecRequest;
use gantry_node_agent::client::AgentCallError;
use std::io::Write;

/// Arguments of `gantry exec`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    gantry exec web-7f9c2 -- ls /app\n  \
    gantry exec web-7f9c2 -- sh -c 'echo $HOSTNAME'")]
pub struct ExecArgs {
    /// Give up (and kill the command) after this many seconds.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub timeout: u32,
    /// The replica's name.
    pub replica: String,
    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Runs `gantry exec`; returns the command's exit code.
pub fn run(target: &TargetArgs, args: ExecArgs) -> anyhow::Result<i32> {
    finish(super::target::runtime()?.block_on(async move {
        let mut agent = connect_replica_agent(target, &args.replica).await?;
        let request = ExecRequest {
            replica: args.replica.clone(),
            command: args.command.clone(),
            timeout_seconds: args.timeout,
        };
        let mut stream = match agent.client.exec(request).await {
            Ok(s) => s,
            // The agent only sees the container; the control plane knows why it waits.
            Err(AgentCallError::NotRunning(m)) => match agent.status.reason {
                Some(reason) => {
                    return Err(user_error(format!(
                        "replica {} is not running ({reason})",
                        args.replica
                    )))
                }
                None => return Err(user_error(m)),
            },
            Err(e) => return Err(agent_error(e)),
        };
        while let Some(msg) = stream.next().await.map_err(agent_error)? {
            if !msg.stdout.is_empty() {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&msg.stdout).and_then(|()| out.flush());
            }
            if !msg.stderr.is_empty() {
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(&msg.stderr).and_then(|()| err.flush());
            }
            if msg.exited {
                return Ok(msg.exit_code);
            }
        }
        Err(user_error(format!(
            "the agent ended exec in replica {} without an exit code",
            args.replica
        )))
    }))
}
