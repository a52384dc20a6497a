//! A thread that faults in the commitlog pages ahead of the writer.
//!
//! Why a thread: the first touch of a page of a segment makes the kernel allocate a
//! page-cache page and zero it. Measured with `perf record` at 64 producers on this 2-core
//! machine, that zeroing (`madvise` → `filemap_fault` → `zero_user_segments`) was 26 % of a
//! follower's samples and 7 % of the leader's, all on the Raft thread, on the path every
//! acknowledgement waits for. Done here, ahead of the writer, it costs the same CPU but no
//! latency, and it can run while the Raft thread waits for its peers.
//!
//! Most of that cost is the machine, not the kernel: on a VM that backs guest memory on
//! first touch (these machines are Firecracker guests), writing to a never-touched page
//! cost 7.2 µs, and to a page the kernel had just freed 0.74 µs
//! (`examples/bench/first_touch.py`). A host that has run for a while mostly reuses pages.
//!
//! Correctness never depends on it: faulting pages in does not change data, and a page it
//! has not reached yet is faulted in by the writer's own stores, as without it.
//!
//! It runs in the normal CPU class. Tried (session 22) and dropped: `SCHED_IDLE` while it is
//! ahead of the writer, so it would only use CPU nothing else wants. At 64 producers that
//! measured 1.04–1.09× msg/s (3 `ab.sh` runs), within this machine's spread between rounds;
//! at 1 producer the drivers' idle polling starved it (0.91–0.94×) until the writer moved it
//! back to the normal class when behind. Why not kept: `MADV_POPULATE_READ` holds the
//! process's `mmap_lock` for reading while it zeroes a chunk (~6 ms here), and an idle-class
//! thread preempted inside it can stay off the CPU for as long as other threads are busy;
//! every `mmap`, `munmap` or `mprotect` of the process (a new segment, a large allocation, a
//! new blocking-pool thread, a plugin's memory growing) would wait for it meanwhile.

use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

#[derive(Default)]
struct State {
    /// The log position the writer wants faulted in ahead of it.
    wanted_to: u64,
    /// Requests so far; the thread waits for a new one (a request it could not serve in full,
    /// because the segment does not exist yet, is retried on the next one, not in a loop).
    requests: u64,
    stop: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

/// The writer's side: cheap to call (a lock and a notify), never waits for the thread.
#[derive(Default)]
pub(crate) struct PrefaultRequests {
    shared: Arc<Shared>,
}

impl PrefaultRequests {
    /// Asks the thread to fault in the log up to `to`.
    pub fn request(&self, to: u64) {
        let mut state = self.shared.state.lock();
        state.wanted_to = to;
        state.requests += 1;
        drop(state);
        self.shared.wake.notify_one();
    }
}

/// The thread; stopped and joined on drop.
pub(crate) struct Prefaulter {
    shared: Arc<Shared>,
    handle: Option<JoinHandle<()>>,
}

impl Prefaulter {
    /// Starts the thread: for each request, `populate(to)` faults in the log up to `to`
    /// (what it reaches depends on the segments that exist).
    pub fn spawn(requests: &PrefaultRequests, mut populate: impl FnMut(u64) + Send + 'static) -> Prefaulter {
        let shared = requests.shared.clone();
        let thread_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("commitlog-prefault".into())
            .spawn(move || {
                let mut seen = 0;
                loop {
                    let to = {
                        let mut state = thread_shared.state.lock();
                        while !state.stop && state.requests == seen {
                            thread_shared.wake.wait(&mut state);
                        }
                        if state.stop {
                            return;
                        }
                        seen = state.requests;
                        state.wanted_to
                    };
                    populate(to);
                }
            })
            .expect("spawn commitlog prefaulter");
        Prefaulter { shared, handle: Some(handle) }
    }
}

impl Drop for Prefaulter {
    fn drop(&mut self) {
        self.shared.state.lock().stop = true;
        self.shared.wake.notify_one();
        if let Some(handle) = self.handle.take()
            && handle.join().is_err()
        {
            tracing::error!("commitlog prefault thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn each_request_reaches_the_thread_with_the_latest_target_and_drop_stops_it() {
        let requests = PrefaultRequests::default();
        let (seen_tx, seen_rx) = mpsc::channel();
        let prefaulter = Prefaulter::spawn(&requests, move |to| seen_tx.send(to).unwrap());
        requests.request(10);
        assert_eq!(seen_rx.recv_timeout(Duration::from_secs(10)).unwrap(), 10);
        requests.request(20);
        assert_eq!(seen_rx.recv_timeout(Duration::from_secs(10)).unwrap(), 20);
        // No request, no call: the thread waits instead of spinning.
        assert!(seen_rx.recv_timeout(Duration::from_millis(50)).is_err());
        drop(prefaulter);
        // The thread has ended: its sender is gone.
        assert!(matches!(seen_rx.recv_timeout(Duration::from_secs(10)), Err(mpsc::RecvTimeoutError::Disconnected)));
    }
}
