//! The real binaries: `mqnamesrv` started as a process, a broker node heartbeating into it,
//! `mqadmin clusterList` (table and JSON, exit codes), `mqshutdown namesrv` by pid file and
//! by RPC. Everything on 127.0.0.1.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use wasmq_broker::namesrv::client;
use wasmq_proto::wasmq::namesrv::{BrokerHeartbeat, Role, TopicInfo};

mod common;
use common::free_port;

const MQNAMESRV: &str = env!("CARGO_BIN_EXE_mqnamesrv");
const MQADMIN: &str = env!("CARGO_BIN_EXE_mqadmin");
const MQSHUTDOWN: &str = env!("CARGO_BIN_EXE_mqshutdown");

/// Kills the child on drop so a failed assertion leaves no process behind.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_namesrv(port: u16, pid_file: &Path) -> Proc {
    let child = Command::new(MQNAMESRV)
        .args(["-p", &port.to_string(), "--bind", "127.0.0.1", "--broker-expiry-ms", "1500"])
        .arg("--pid-file")
        .arg(pid_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mqnamesrv");
    let proc = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mqnamesrv did not start listening on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    proc
}

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin).args(args).output().expect("run binary")
}

fn wait_exit(proc: &mut Proc, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = proc.0.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "process did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqadmin_cluster_list_against_real_mqnamesrv() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("namesrv.pid");
    let port = free_port();
    let mut ns = start_namesrv(port, &pid_file);
    let addr = format!("127.0.0.1:{port}");
    let pid: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    assert_eq!(pid, ns.0.id());

    let heartbeat = client::spawn_heartbeat(vec![addr.clone()], Duration::from_millis(200), || BrokerHeartbeat {
        cluster_name: "RaftCluster".into(),
        broker_name: "RaftNode00".into(),
        node_id: "n0".into(),
        client_addr: "127.0.0.1:8081".into(),
        raft_addr: "127.0.0.1:40911".into(),
        role: Role::Leader as i32,
        term: 5,
        committed_index: 4242,
        version: "9.9.9".into(),
        topics: vec![TopicInfo { name: "TopicTest".into(), read_queue_nums: 8, write_queue_nums: 8, perm: 6 }],
        heartbeat_interval_ms: 200,
    });

    // Table: header plus our node, once the first heartbeat landed.
    let deadline = Instant::now() + Duration::from_secs(5);
    let table = loop {
        let out = run(MQADMIN, &["clusterList", "-n", &addr]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        if text.lines().count() == 2 {
            break text;
        }
        assert!(Instant::now() < deadline, "node never listed: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut lines = table.lines();
    let header: Vec<_> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header[..2], ["#Cluster", "Name"]);
    let row: Vec<_> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[..8], ["RaftCluster", "RaftNode00", "n0", "127.0.0.1:8081", "9.9.9", "LEADER", "5", "4242"]);

    // JSON, with NAMESRV_ADDR instead of -n.
    let out = Command::new(MQADMIN).args(["clusterList", "--json"]).env("NAMESRV_ADDR", &addr).output().unwrap();
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["committedIndex"], 4242);
    assert_eq!(json[0]["raftAddr"], "127.0.0.1:40911");
    assert_eq!(json[0]["namesrv"], addr.as_str());

    let topics = run(MQADMIN, &["topicList", "-n", &addr, "--json"]);
    let topics: serde_json::Value = serde_json::from_slice(&topics.stdout).unwrap();
    assert_eq!(topics[0]["topic"], "TopicTest");

    // Unreachable name server: non-zero exit, a message that says so, nothing on stdout.
    let dead = format!("127.0.0.1:{}", free_port());
    let out = run(MQADMIN, &["clusterList", "-n", &dead, "--timeout-ms", "500"]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach any name server") && stderr.contains(&dead), "{stderr}");
    // Usage errors exit non-zero too.
    assert!(!run(MQADMIN, &["clusterList", "--no-such-flag"]).status.success());

    heartbeat.stop().await;

    // mqshutdown by pid file: SIGTERM, wait, pid file removed by mqnamesrv.
    let out = run(MQSHUTDOWN, &["namesrv", "--pid-file", pid_file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(wait_exit(&mut ns, Duration::from_secs(5)).success());
    assert!(!pid_file.exists());
    // The pid file is gone: a second attempt fails cleanly instead of signalling anything.
    let again = run(MQSHUTDOWN, &["namesrv", "--pid-file", pid_file.to_str().unwrap()]);
    assert!(!again.status.success());
}

#[test]
fn mqshutdown_via_rpc_and_stale_pid_file() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("namesrv.pid");
    let port = free_port();
    let mut ns = start_namesrv(port, &pid_file);

    // A pid file naming a process that is not mqnamesrv (this test process) is refused.
    let stale = dir.path().join("stale.pid");
    std::fs::write(&stale, format!("{}\n", std::process::id())).unwrap();
    let out = run(MQSHUTDOWN, &["namesrv", "--pid-file", stale.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not mqnamesrv"));

    let out = run(MQSHUTDOWN, &["namesrv", "-n", &format!("127.0.0.1:{port}")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(wait_exit(&mut ns, Duration::from_secs(5)).success());
}
