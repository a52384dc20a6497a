//! `mqadmin`: cluster, topic, message, consumer and plugin administration.
//! See `wasmq_broker::admin::cli` for the commands.

use std::process::ExitCode;

use clap::Parser;
use wasmq_broker::admin::cli::{Cli, run};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // Logs go to stderr and stay quiet unless RUST_LOG asks: stdout is for tables / JSON.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    if let Some(code) = wasmq_broker::upgrade::cli::dispatch(std::env::args_os(), &mut std::io::stdout().lock()) {
        return code;
    }
    let cli = Cli::parse();
    let mut stdout = std::io::stdout().lock();
    match run(cli, &mut stdout).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mqadmin: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
