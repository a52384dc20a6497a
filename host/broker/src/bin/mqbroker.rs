//! `mqbroker`: a wasmq broker process (RocketMQ-compatible gRPC on `listenPort`).
//!
//! `mqbroker -c conf/broker.toml` runs until SIGTERM/SIGINT, then stops gracefully.
//! `mqbroker -c conf/broker.conf --check` validates the config (without creating any
//! directory) and exits: 0 = valid. When the store last ran with another config, the rolling
//! change is checked as a start would check it (upgrade-validator plugins included).

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;

// mimalloc, not glibc's malloc: every request allocates and frees its HTTP/2 frames,
// protobuf messages and 1 KiB bodies across threads, and glibc spent ~10 % of the leader's
// CPU in malloc/free/consolidate (`perf`, 64 producers). Measured, 4 rounds interleaved:
// leader 36-40 -> 30-33 us CPU per message, 20.5-23.1k -> 23.9-26.4k msg/s (session 8;
// session 7 saw no difference through the noisier side-by-side script).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use wasmq_broker::config::{self, StoreCheck};
use wasmq_broker::{server, upgrade};

#[derive(Parser, Debug)]
#[command(name = "mqbroker", version, about = "wasmq broker")]
struct Args {
    /// Config file: TOML (`*.toml`) or RocketMQ properties (`*.conf`, `*.properties`).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: PathBuf,
    /// Validate the config and exit (creates nothing).
    #[arg(long)]
    check: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Tracing may not be up yet (bad config): the error goes to stderr as text.
            eprintln!("mqbroker: {e:#}");
            if e.downcast_ref::<server::ReplicationFailed>().is_some() {
                std::process::ExitCode::from(server::ReplicationFailed::EXIT_CODE)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    // A file-size limit (RLIMIT_FSIZE) reached must surface as an error (EFBIG) on the write
    // or preallocation that hit it, which the store handles like a full disk, not kill the
    // process mid-write with SIGXFSZ.
    // SAFETY: setting a signal's disposition to SIG_IGN before any thread is started.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let loaded = config::load(&args.config).with_context(|| format!("load config {}", args.config.display()))?;
    // Nothing is created here; `server::start` validates again with `StoreCheck::Create`.
    loaded.config.validate(&args.config, StoreCheck::WithoutCreating).context("invalid config")?;
    init_tracing(&loaded.config.log_level)?;
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    if args.check {
        // A rolling config change is checked too: what the validators would say at start.
        let change = upgrade::config_change::check(&loaded.config)
            .context("compare the config with the one its store last ran with")?;
        if let Some(change) = &change {
            println!("{}: differs from the config its store last ran with:", args.config.display());
            print!("{}", change.render());
            if !change.accepted() {
                anyhow::bail!("config change would be refused at start");
            }
        }
        println!("{}: OK", args.config.display());
        return Ok(());
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all().thread_name("mqbroker");
    if loaded.config.server_worker_threads > 0 {
        runtime.worker_threads(loaded.config.server_worker_threads as usize);
    }
    let runtime = runtime.build().context("start tokio runtime")?;
    runtime.block_on(async move {
        let broker =
            server::start(loaded.config, args.config, server::default_extensions()).await.context("start broker")?;
        server::run_until_signal(broker).await
    })
}

fn init_tracing(log_level: &str) -> anyhow::Result<()> {
    // RUST_LOG wins over logLevel, as operators expect.
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => {
            EnvFilter::try_new(&directives).with_context(|| format!("RUST_LOG={directives}"))?
        }
        _ => EnvFilter::try_new(log_level).with_context(|| format!("logLevel={log_level}"))?,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        // Colors only on a terminal: log files and journald get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .try_init()
        .map_err(|e| anyhow::anyhow!("init logging: {e}"))
}
