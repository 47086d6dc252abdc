//! `emogate ctl`: one control request to a running `emogate run`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use emogate_engine::control::Command;
use emogate_engine::control::client::Endpoint;

/// Where systemd's unit (RuntimeDirectory=emogate) puts the socket.
const DEFAULT_SOCKET: &str = "/run/emogate/control.sock";

#[derive(Args, Debug)]
pub struct CtlArgs {
    /// The run's control socket (--control unix:PATH) [default: /run/emogate/control.sock].
    #[arg(long, conflicts_with = "url")]
    socket: Option<PathBuf>,
    /// The run's http: output, when it serves control (--control http), e.g. http://127.0.0.1:8080.
    #[arg(long)]
    url: Option<String>,
    /// Seconds to wait for the reply (a switch on a large model takes seconds).
    #[arg(long, default_value_t = 90)]
    timeout_s: u64,
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// Make a loaded adapter active (by its name from --adapter or the
    /// config file); prints the first event `seq` it served and the time taken.
    Adapter {
        /// The adapter's name.
        #[arg(required_unless_present = "base")]
        name: Option<String>,
        /// Run the base model (no adapter).
        #[arg(long, conflicts_with = "name")]
        base: bool,
    },
    /// Print the run's status (the same object as GET /status).
    Status,
    /// Re-read the run's --config file (as SIGHUP does) and print what changed.
    Reload,
}

pub fn ctl(args: CtlArgs) -> Result<ExitCode> {
    let endpoint = match &args.url {
        Some(url) => Endpoint::http(url)?,
        None => Endpoint::Unix(args.socket.unwrap_or_else(|| DEFAULT_SOCKET.into())),
    };
    let command = match args.action {
        Action::Adapter { name, .. } => Command::Adapter(name),
        Action::Status => Command::Status,
        Action::Reload => Command::Reload,
    };
    let reply = endpoint
        .send(&command, Duration::from_secs(args.timeout_s.max(1)))
        .context("emogate ctl")?;
    println!("{}", serde_json::to_string_pretty(&reply)?);
    // Status replies carry no `ok`: only an explicit `false` is a failure.
    Ok(
        if reply.get("ok") == Some(&serde_json::Value::Bool(false)) {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        },
    )
}
