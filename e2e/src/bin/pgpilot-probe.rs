//! `pgpilot-probe`: observes one member's PostgreSQL every ~100 ms and prints one JSON line per sample
//! (see `pgpilot_e2e::checker::probe`). The checker starts it inside a pod's network namespace with
//! `nsenter --net=<netns> pgpilot-probe --stream <member@uid>`, the superuser's password in `PGPASSWORD`.
//! It exits at EOF on stdin (its supervisor is gone) or after `--max-run-secs`.

use std::{io::Write, time::Duration};

use anyhow::{Context, Result};
use clap::Parser;
use pgpilot_e2e::checker::{
    pg::Target,
    probe::{self, ProbeOptions},
};
use tokio::io::AsyncReadExt;

#[derive(Parser, Debug)]
#[command(about = "Observe whether one PostgreSQL server accepts writes; JSON lines on stdout")]
struct Args {
    /// Name of this probe's stream of samples: `<member>@<pod uid prefix>`.
    #[arg(long)]
    stream: String,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 5432)]
    port: u16,
    #[arg(long, default_value = "postgres")]
    user: String,
    #[arg(long, env = "PGPASSWORD", hide_env_values = true)]
    password: String,
    #[arg(long, default_value = "postgres")]
    dbname: String,
    #[arg(long, default_value_t = 100)]
    interval_ms: u64,
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    #[arg(long, default_value_t = 3 * 3600)]
    max_run_secs: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let options = ProbeOptions {
        stream: args.stream,
        target: Target {
            host: args.host,
            port: args.port,
            user: args.user,
            password: args.password,
            dbname: args.dbname,
        },
        interval: Duration::from_millis(args.interval_ms),
        timeout: Duration::from_millis(args.timeout_ms),
        max_run: Duration::from_secs(args.max_run_secs),
    };
    // EOF on stdin: whoever started us is gone.
    let stdin_closed = async {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    let mut out = std::io::stdout().lock();
    let mut failed: Option<std::io::Error> = None;
    probe::run(&options, stdin_closed, |sample| {
        if failed.is_some() {
            return;
        }
        let line = serde_json::to_string(sample).unwrap_or_default();
        if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
            failed = Some(e);
        }
    })
    .await;
    match failed {
        Some(e) => Err(e).context("writing samples to stdout"),
        None => Ok(()),
    }
}
