//! Wire compatibility with the official Python client (rocketmq-python-client, pinned in
//! tests/python/requirements.txt): serves the v2 service over the in-memory backend on
//! 127.0.0.1 and runs tests/python/test_official_client.py against it.
//!
//! Ignored by default (needs the client installed):
//!   python3 -m venv .tools/venv && .tools/venv/bin/pip install -r tests/python/requirements.txt
//!   cargo test --release -p wasmq-broker --lib python_wire -- --ignored --nocapture
//! `WASMQ_PYTHON` overrides the interpreter; `WASMQ_PYTEST_ARGS` adds pytest arguments.

use std::path::PathBuf;
use std::time::Duration;

use super::backend::TopicMessageType;
use super::fake::FakeBackend;
use super::service::{Messaging, MessagingConfig};

/// Bound on the whole Python run.
const PYTEST_TIMEOUT: Duration = Duration::from_secs(900);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the official Python client in .tools/venv (tests/python/requirements.txt)"]
async fn official_python_client_against_fake_backend() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python =
        std::env::var("WASMQ_PYTHON").map(PathBuf::from).unwrap_or_else(|_| repo.join(".tools/venv/bin/python"));
    assert!(python.exists(), "no Python at {} (see module docs)", python.display());

    let (addr, backend, server) = serve_fake(|b| b.create_topic("wasmq-py", 8, TopicMessageType::Normal)).await;
    let status = run_pytest(
        &python,
        &repo,
        &addr.to_string(),
        &["tests/python/test_official_client.py", "tests/python/test_proto_compat.py"],
    )
    .await;
    assert!(status.success(), "pytest against the leader failed: {status}");
    // The round trip really went through this server.
    assert!(backend.messages("wasmq-py").len() >= 1000);

    // Again through a follower whose every leader-only call is forwarded: the client
    // only knows the follower's address.
    // It has not applied the topic yet either: routes come from the leader too.
    let (follower_addr, follower, follower_server) = serve_fake(|_| {}).await;
    follower.set_leader(false, Some(addr.to_string()));
    let before = backend.messages("wasmq-py").len();
    let status = run_pytest(
        &python,
        &repo,
        &follower_addr.to_string(),
        &["tests/python/test_official_client.py", "-k", "round_trip or push_consumer or wrong_receipt"],
    )
    .await;
    server.abort();
    follower_server.abort();
    assert!(status.success(), "pytest through a follower failed: {status}");
    assert!(follower.messages("wasmq-py").is_empty(), "the follower stored nothing itself");
    assert!(follower.commits.lock().is_empty(), "nor committed offsets");
    assert!(backend.messages("wasmq-py").len() >= before + 1000, "sends reached the leader");
}

async fn serve_fake(
    setup: impl FnOnce(&FakeBackend),
) -> (std::net::SocketAddr, std::sync::Arc<FakeBackend>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let backend = FakeBackend::new(&addr.to_string());
    setup(&backend);
    let svc = Messaging::new(backend.clone(), MessagingConfig::default()).into_server();
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(svc.send_route)
            .add_service(svc.service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)))
            .await
            .unwrap();
    });
    (addr, backend, server)
}

async fn run_pytest(
    python: &std::path::Path,
    repo: &std::path::Path,
    endpoint: &str,
    args: &[&str],
) -> std::process::ExitStatus {
    let mut cmd = tokio::process::Command::new(python);
    cmd.current_dir(repo)
        .args(["-m", "pytest", "-q", "-rs"])
        .args(args)
        .env("WASMQ_ENDPOINT", endpoint)
        .env("WASMQ_TOPIC", "wasmq-py")
        .kill_on_drop(true);
    if let Ok(extra) = std::env::var("WASMQ_PYTEST_ARGS") {
        cmd.args(extra.split_whitespace());
    }
    tokio::time::timeout(PYTEST_TIMEOUT, cmd.status()).await.expect("pytest timed out").expect("run pytest")
}
