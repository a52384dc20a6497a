//! Helpers shared by the broker's integration tests. Each test file is its own crate and
//! includes this module with `mod common;`, using a subset of it.
#![allow(dead_code)]

/// A loopback port, free now, for the test to bind later: the cluster tests' picker, which
/// takes ports below the kernel's ephemeral range so no outgoing connection can take one
/// first, and never hands out the same port twice in one test binary.
pub fn free_port() -> u16 {
    wasmq_cluster_tests::cluster::free_port().expect("a free loopback port")
}

/// `n` distinct ports from [`free_port`].
pub fn free_ports(n: usize) -> Vec<u16> {
    (0..n).map(|_| free_port()).collect()
}
