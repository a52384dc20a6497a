//! `mqshutdown broker|namesrv`: stops a local wasmq process, either by pid file (SIGTERM)
//! or through the process's Shutdown RPC (accepted from loopback only), then waits until
//! it is gone. Never matches processes by name: it stops exactly the one it was pointed at.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use wasmq_broker::namesrv::client as ns_client;
use wasmq_proto::wasmq::admin::ShutdownRequest as AdminShutdown;
use wasmq_proto::wasmq::admin::admin_client::AdminClient;
use wasmq_proto::wasmq::namesrv::ShutdownRequest as NamesrvShutdown;
use wasmq_proto::wasmq::namesrv::name_server_client::NameServerClient;

#[derive(Parser, Debug)]
#[command(name = "mqshutdown", version, about = "stop a local wasmq broker or name server")]
struct Args {
    #[command(subcommand)]
    target: Target,
    /// How long to wait for the process to exit.
    #[arg(long = "wait-ms", global = true, default_value_t = 15_000)]
    wait_ms: u64,
}

#[derive(Subcommand, Debug)]
enum Target {
    /// Stop a broker: by --pid-file, else via the admin Shutdown RPC on -b.
    Broker {
        #[arg(short = 'b', long = "brokerAddr", default_value = "127.0.0.1:8081")]
        addr: String,
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
    },
    /// Stop a name server: by --pid-file, else via its Shutdown RPC on -n.
    Namesrv {
        #[arg(short = 'n', long = "namesrvAddr", default_value = "127.0.0.1:9876")]
        addr: String,
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
    },
}

const RPC_TIMEOUT: Duration = Duration::from_secs(3);
const POLL_INTERVAL: Duration = Duration::from_millis(100);

fn read_pid(path: &Path) -> Result<libc::pid_t> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading pid file {}", path.display()))?;
    let pid: libc::pid_t =
        text.trim().parse().with_context(|| format!("pid file {} does not hold a pid: {text:?}", path.display()))?;
    if pid <= 1 {
        bail!("pid file {} holds {pid}, not a process to stop", path.display());
    }
    Ok(pid)
}

fn alive(pid: libc::pid_t) -> bool {
    // Signal 0 checks existence and permission without delivering anything.
    // SAFETY: kill(2) with signal 0 has no side effects.
    let exists = unsafe { libc::kill(pid, 0) == 0 };
    // An exited process whose parent has not reaped it yet (a zombie) still exists for
    // kill(2); it has stopped all the same.
    exists && !is_zombie(pid)
}

fn is_zombie(pid: libc::pid_t) -> bool {
    // /proc/PID/stat: "pid (comm) STATE ..."; comm may contain spaces, so split after ')'.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, rest) = stat.rsplit_once(')')?;
            rest.split_whitespace().next().map(|state| state == "Z")
        })
        .unwrap_or(false)
}

/// A pid file can outlive its process and the pid be reused: only signal a process whose
/// command name is the one we expect.
fn check_command(pid: libc::pid_t, expected: &str) -> Result<()> {
    let comm_path = format!("/proc/{pid}/comm");
    match std::fs::read_to_string(&comm_path) {
        Ok(comm) if comm.trim() == expected => Ok(()),
        Ok(comm) => bail!("process {pid} is {:?}, not {expected}; stale pid file? (not signalled)", comm.trim()),
        // No procfs (not Linux): nothing more to check.
        Err(_) if !Path::new("/proc/self").exists() => Ok(()),
        Err(e) => bail!("process {pid} not found ({comm_path}: {e})"),
    }
}

async fn stop_by_pid(path: &Path, expected: &str, wait: Duration) -> Result<()> {
    let pid = read_pid(path)?;
    if !alive(pid) {
        bail!("process {pid} from {} is not running", path.display());
    }
    check_command(pid, expected)?;
    // SAFETY: plain kill(2) on a pid we checked above.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        let err = std::io::Error::last_os_error();
        bail!("SIGTERM to {expected} pid {pid}: {err}");
    }
    eprintln!("mqshutdown: sent SIGTERM to {expected} (pid {pid})");
    let deadline = Instant::now() + wait;
    while alive(pid) && check_command(pid, expected).is_ok() {
        if Instant::now() >= deadline {
            bail!("{expected} pid {pid} still running {} ms after SIGTERM", wait.as_millis());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    println!("{expected} (pid {pid}) stopped");
    Ok(())
}

/// After a Shutdown RPC, the process is gone once its port refuses connections.
async fn wait_port_closed(addr: &str, what: &str, wait: Duration) -> Result<()> {
    let deadline = Instant::now() + wait;
    loop {
        let connect = tokio::time::timeout(RPC_TIMEOUT, tokio::net::TcpStream::connect(addr)).await;
        if !matches!(connect, Ok(Ok(_))) {
            println!("{what} at {addr} stopped");
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{what} at {addr} still accepts connections {} ms after shutdown", wait.as_millis());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn run(args: Args) -> Result<()> {
    let wait = Duration::from_millis(args.wait_ms);
    match args.target {
        Target::Broker { pid_file: Some(path), .. } => stop_by_pid(&path, "mqbroker", wait).await,
        Target::Namesrv { pid_file: Some(path), .. } => stop_by_pid(&path, "mqnamesrv", wait).await,
        Target::Broker { addr, pid_file: None } => {
            let channel = ns_client::endpoint(&addr, RPC_TIMEOUT)?
                .connect()
                .await
                .with_context(|| format!("cannot reach broker {addr}"))?;
            AdminClient::new(channel)
                .shutdown(AdminShutdown {})
                .await
                .with_context(|| format!("broker {addr} refused shutdown"))?;
            wait_port_closed(&addr, "broker", wait).await
        }
        Target::Namesrv { addr, pid_file: None } => {
            let mut client: NameServerClient<_> = ns_client::connect(&addr, RPC_TIMEOUT)
                .await
                .with_context(|| format!("cannot reach name server {addr}"))?;
            client
                .shutdown(NamesrvShutdown {})
                .await
                .with_context(|| format!("name server {addr} refused shutdown"))?;
            wait_port_closed(&addr, "name server", wait).await
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mqshutdown: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
