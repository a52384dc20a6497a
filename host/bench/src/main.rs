//! mqbench: producers/consumers against a running cluster over the RocketMQ v2 gRPC protocol
//! (or, for comparison, NATS JetStream). Prints a progress line each second on stderr and a
//! report (human or `--json`) on stdout.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use clap::Parser;
use wasmq_bench::nats::NatsConn;
use wasmq_bench::workload::{self, Route, Target, Workload};

// The same allocator as mqbroker (see there): the client shares the cores with the servers it
// measures, and both systems' clients run in this binary, so both get it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "mqbench", about = "Load generator for wasmq (RocketMQ v2 gRPC) and NATS JetStream")]
struct Args {
    /// Protocol to speak.
    #[arg(long, value_enum, default_value = "wasmq")]
    target: Target,
    /// Comma-separated endpoints: wasmq gRPC (`http://127.0.0.1:10911` or `127.0.0.1:10911`) or
    /// NATS (`127.0.0.1:4222`).
    #[arg(long, short = 'e', value_delimiter = ',', default_value = "http://127.0.0.1:10911")]
    endpoints: Vec<String>,
    /// Topic (wasmq) or subject suffix `bench.<topic>` (NATS).
    #[arg(long, short = 't', default_value = "BenchTopic")]
    topic: String,
    /// Consumer group (wasmq consumers).
    #[arg(long, default_value = "BenchGroup")]
    group: String,
    /// Message body size in bytes.
    #[arg(long = "size", default_value_t = 1024)]
    size_bytes: usize,
    /// Messages to send in total (over all producers); the run ends at count or duration.
    #[arg(long, short = 'n', default_value_t = 1_000_000)]
    count: u64,
    /// Duration cap in seconds.
    #[arg(long = "duration", short = 'd', default_value_t = 10)]
    duration_secs: u64,
    /// Concurrent producers, each with one synchronous send in flight.
    #[arg(long, short = 'p', default_value_t = 1)]
    producers: u32,
    /// Messages per send request (wasmq: one SendMessage call carrying them; NATS: that
    /// many publishes in flight, then their acks; needs --connections >= 1). Latency is
    /// per request.
    #[arg(long, default_value_t = 1)]
    batch: u32,
    /// Concurrent consumers (wasmq only): receive + ack.
    #[arg(long, short = 'c', default_value_t = 0)]
    consumers: u32,
    /// wasmq: which member each producer sends to.
    #[arg(long, value_enum, default_value = "spread")]
    route: Route,
    /// wasmq: HTTP/2 connections per endpoint that the producers share (calls multiplex
    /// as streams, as one RocketMQ client's channel does); 0: one per producer.
    #[arg(long, default_value_t = 0)]
    connections: u32,
    /// Per-request timeout in milliseconds.
    #[arg(long = "timeout-ms", default_value_t = 5_000)]
    timeout_ms: u64,
    /// NATS: (re)create this JetStream stream (file storage, subjects `bench.>`) before the run.
    #[arg(long)]
    nats_stream: Option<String>,
    /// NATS: replicas of the created stream.
    #[arg(long, default_value_t = 3)]
    nats_replicas: u32,
    /// Free-form label copied into the report.
    #[arg(long, default_value = "")]
    label: String,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// No progress lines.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Producer threads, each with a current-thread runtime, its share of the producers
    /// and its own `--connections` per endpoint (so N threads open N times as many). One is
    /// the cheapest per message when mqbench shares the machine with the servers it
    /// measures; raise it when the client has cores of its own. Consumers run on the main
    /// thread.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    threads: u32,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let timeout = Duration::from_millis(args.timeout_ms);
    if let (Target::Nats, Some(stream)) = (args.target, &args.nats_stream) {
        let mut c = NatsConn::connect(&args.endpoints[0], timeout).await.context("NATS setup connection")?;
        c.js_delete_stream(stream).await?;
        c.js_create_stream(stream, &["bench.>"], args.nats_replicas)
            .await
            .with_context(|| format!("create stream {stream}"))?;
    }
    let report = workload::run(Workload {
        target: args.target,
        endpoints: args.endpoints,
        topic: args.topic,
        group: args.group,
        size_bytes: args.size_bytes,
        count: args.count,
        duration: Duration::from_secs(args.duration_secs),
        producers: args.producers,
        batch: args.batch,
        consumers: args.consumers,
        timeout,
        route: args.route,
        connections: args.connections,
        label: args.label,
        progress: !args.quiet,
        client_threads: args.threads,
    })
    .await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.human());
    }
    ensure!(
        report.sent > 0,
        "no message was acknowledged ({} send errors, last: {})",
        report.send_errors,
        report.last_send_error.as_deref().unwrap_or("none")
    );
    Ok(())
}
