//! Helpers shared by the broker's integration tests. Each test file is its own crate and
//! includes this module with `mod common;`, using a subset of it.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::sync::Mutex;

/// Ports handed out: below the kernel's ephemeral range (`ip_local_port_range`, 32768 and up
/// by default) and below `conf/dledger`'s fixed Raft ports (30911-30913).
const TEST_PORTS: std::ops::Range<u16> = 20_000..30_000;
/// Ports tried per port asked for before giving up.
const PROBES_PER_PORT_MAX: usize = 64;
/// Ports handed out in this test binary: two tests never get the same one.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// `n` distinct loopback ports, free now, for the test to bind later. Not from bind(0): that
/// gives an *ephemeral* port, which any outgoing loopback connection (a client, a Raft peer,
/// another test) may take as its source port before the test binds it, and the bind then
/// fails with EADDRINUSE (the cluster tests failed CI that way). The kernel never hands
/// ports below the ephemeral range to connections.
pub fn free_ports(n: usize) -> Vec<u16> {
    let mut handed_out = HANDED_OUT.lock().unwrap();
    let mut ports = Vec::with_capacity(n);
    for _ in 0..n * PROBES_PER_PORT_MAX {
        if ports.len() == n {
            break;
        }
        let port = TEST_PORTS.start + rand::random::<u16>() % (TEST_PORTS.end - TEST_PORTS.start);
        if !handed_out.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            ports.push(port);
        }
    }
    assert_eq!(ports.len(), n, "could not find {n} free ports in {TEST_PORTS:?}");
    ports
}

pub fn free_port() -> u16 {
    free_ports(1)[0]
}
