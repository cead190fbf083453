//! `gantry completion bash|zsh|fish|elvish|powershell`: shell completion scripts generated
//! from the CLI's own definition, so they never fall behind it.

use clap::Args;
use clap_complete::Shell;

/// Arguments of `gantry completion`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    gantry completion bash > /etc/bash_completion.d/gantry\n  \
    gantry completion zsh > \"${fpath[1]}/_gantry\"\n  \
    gantry completion fish > ~/.config/fish/completions/gantry.fish")]
pub struct CompletionArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Writes the completion script of `command` for the chosen shell to stdout.
pub fn run(args: CompletionArgs, mut command: clap::Command) -> anyhow::Result<i32> {
    let name = command.get_name().to_string();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, name, &mut script);
    super::output::emit(&String::from_utf8_lossy(&script));
    Ok(0)
}
