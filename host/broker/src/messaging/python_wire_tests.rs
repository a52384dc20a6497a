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
    let python = std::env::var("WASMQ_PYTHON").map(PathBuf::from).unwrap_or_else(|_| repo.join(".tools/venv/bin/python"));
    assert!(python.exists(), "no Python at {} (see module docs)", python.display());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let backend = FakeBackend::new(&addr.to_string());
    backend.create_topic("wasmq-py", 8, TopicMessageType::Normal);
    let svc = Messaging::new(backend.clone(), MessagingConfig::default()).into_server();
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });

    let mut cmd = tokio::process::Command::new(&python);
    cmd.current_dir(&repo)
        .args(["-m", "pytest", "-q", "-rs", "tests/python/test_official_client.py", "tests/python/test_proto_compat.py"])
        .env("WASMQ_ENDPOINT", addr.to_string())
        .env("WASMQ_TOPIC", "wasmq-py")
        .kill_on_drop(true);
    if let Ok(extra) = std::env::var("WASMQ_PYTEST_ARGS") {
        cmd.args(extra.split_whitespace());
    }
    let status = tokio::time::timeout(PYTEST_TIMEOUT, cmd.status()).await.expect("pytest timed out").expect("run pytest");
    server.abort();
    assert!(status.success(), "pytest failed: {status}");
    // The round trip really went through this server.
    assert!(backend.messages("wasmq-py").len() >= 1000);
}
