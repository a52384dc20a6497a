//! `mqnamesrv`: the wasmq name server. Brokers register here; clients and `mqadmin` read
//! routes and the cluster table.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use tracing::info;
use wasmq_broker::namesrv::{NamesrvConfig, service};

#[derive(Parser, Debug)]
#[command(name = "mqnamesrv", version, about = "wasmq name server")]
struct Args {
    /// TOML config (keys: listenPort, bindAddress, brokerExpiryMs, expirySweepIntervalMs,
    /// brokersMax, topicsPerBrokerMax, pidFile). Flags override it.
    #[arg(short = 'c', long = "config")]
    config: Option<PathBuf>,
    /// Port to listen on [default: 9876].
    #[arg(short = 'p', long = "port")]
    port: Option<u16>,
    /// Address to bind [default: 127.0.0.1].
    #[arg(long = "bind")]
    bind: Option<std::net::IpAddr>,
    /// Drop a broker that has not heartbeated for this long [default: 3000].
    #[arg(long = "broker-expiry-ms")]
    broker_expiry_ms: Option<u64>,
    /// Write our pid here (read by `mqshutdown namesrv --pid-file`); removed on clean exit.
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
}

fn load_config(args: &Args) -> Result<NamesrvConfig> {
    let mut config = match &args.config {
        Some(path) => NamesrvConfig::from_toml_file(path)
            .with_context(|| format!("loading name server config {}", path.display()))?,
        None => NamesrvConfig::default(),
    };
    if let Some(port) = args.port {
        config.listen_port = port;
    }
    if let Some(bind) = args.bind {
        config.bind_address = bind;
    }
    if let Some(expiry) = args.broker_expiry_ms {
        config.broker_expiry_ms = expiry;
        config.expiry_sweep_interval_ms = config.expiry_sweep_interval_ms.min(expiry);
    }
    if let Some(pid_file) = &args.pid_file {
        config.pid_file = Some(pid_file.clone());
    }
    config.validate().context("invalid name server settings")?;
    Ok(config)
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let config = load_config(&args)?;
    let server =
        service::start(&config).await.with_context(|| format!("starting name server on {}", config.listen_addr()))?;
    if let Some(path) = &config.pid_file {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing pid file {}", path.display()))?;
    }
    // The address line is for scripts that start us on port 0.
    info!(addr = %server.local_addr(), pid = std::process::id(), "mqnamesrv started");

    let mut requested = server.shutdown_requested();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
        _ = sigterm.recv() => info!("SIGTERM: shutting down"),
        _ = requested.wait_for(|s| *s) => info!("shutdown RPC: shutting down"),
    }
    server.shutdown();
    let result = server.wait().await.context("name server stopped with an error");
    if let Some(path) = &config.pid_file {
        let _ = std::fs::remove_file(path);
    }
    result?;
    info!("mqnamesrv stopped");
    Ok(())
}
