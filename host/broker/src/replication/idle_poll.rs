//! Idle polling: the Raft driver's thread keeps polling its sockets for a short while after
//! its last piece of work instead of going to sleep at once (Seastar's reactor does the same,
//! `--idle-poll-time-us`).
//!
//! Why: on the virtual machines we measure on, waking a thread whose vCPU has halted costs
//! tens of microseconds (an IPI and a VM entry; a TCP ping-pong between two processes over
//! loopback takes ~33 µs a round trip, ~10 µs with the guest's halt-polling on). One
//! synchronous send wakes a thread four times in a row (client → leader, leader → followers,
//! follower → leader, leader → client). With the driver polling, a 3-member group on 2 cores
//! served one producer about twice as many sends per second (alternating rounds; numbers in
//! ARCHITECTURE.md). What it costs: CPU that would otherwise be idle, for `spin` after the
//! last event, on the driver's runtime only; each turn also yields the CPU to any other thread
//! that is ready to run (`sched_yield`), so a busy machine loses little to it.
//!
//! How: [`IdlePoll::run`] is a task on the driver's runtime (its own one-worker runtime, or
//! the broker's one worker with `DriverPlacement::CallerRuntime`). While it is
//! spinning it yields to the scheduler at every turn; tokio then polls its I/O driver without
//! blocking (a task that yielded is pending work, so the runtime does not park). When nothing
//! has happened for `spin`, the task waits on a [`Notify`], the runtime parks in `epoll_wait`
//! as before, and the next [`IdlePoll::active`] wakes it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The longest a driver may poll without work: beyond a few milliseconds it is a busy loop,
/// not a latency trade.
pub const IDLE_POLL_US_MAX: u64 = 10_000;

pub struct IdlePoll {
    /// Work done on the driver's thread (a count, so the poller needs no clock read per event).
    activity: AtomicU64,
    /// The poller waits on `wake`: the next activity must notify it.
    parked: AtomicBool,
    wake: Notify,
    spin: Duration,
}

impl IdlePoll {
    /// `spin` is bounded by the config (`IDLE_POLL_US_MAX`); tests use longer ones.
    pub fn new(spin: Duration) -> Arc<Self> {
        Arc::new(IdlePoll { activity: AtomicU64::new(0), parked: AtomicBool::new(false), wake: Notify::new(), spin })
    }

    /// Work was done: poll for `spin` from now. Called by the driver for every batch of
    /// inputs (not for its ticks: an idle member stays asleep between heartbeats). The driver
    /// and the poller share one worker, so they do not race; on a caller's runtime with more
    /// workers a race only misses one poll (latency), never an input.
    pub fn active(&self) {
        self.activity.fetch_add(1, Ordering::Relaxed);
        if self.parked.swap(false, Ordering::Relaxed) {
            // A permit is kept if the poller has not reached `notified()` yet.
            self.wake.notify_one();
        }
    }

    #[cfg(test)]
    fn is_parked(&self) -> bool {
        self.parked.load(Ordering::Relaxed)
    }

    /// The poller: a task on the runtime it keeps awake. Never returns (it ends with the
    /// runtime).
    pub async fn run(self: Arc<Self>) {
        let mut seen = self.activity.load(Ordering::Relaxed);
        let mut last_active = Instant::now();
        loop {
            let now_activity = self.activity.load(Ordering::Relaxed);
            if now_activity != seen {
                seen = now_activity;
                last_active = Instant::now();
            } else if last_active.elapsed() >= self.spin {
                self.parked.store(true, Ordering::Relaxed);
                self.wake.notified().await;
                seen = self.activity.load(Ordering::Relaxed);
                last_active = Instant::now();
                continue;
            }
            // Another thread ready on this CPU (a follower, the apply loop) runs first.
            std::thread::yield_now();
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// The mechanism, observed through the runtime's own park hook: while the poller spins
    /// the thread never parks; `spin` after the last activity it does; an activity from
    /// another thread wakes it and it spins again. On both runtimes a driver may run on: its
    /// own (one worker) and a current-thread one.
    #[test]
    fn the_runtime_stays_awake_for_the_spin_after_activity_then_parks_until_the_next() {
        for one_worker in [true, false] {
            let mut builder = if one_worker {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(1);
                b
            } else {
                tokio::runtime::Builder::new_current_thread()
            };
            stays_awake_then_parks(&mut builder);
        }
    }

    fn stays_awake_then_parks(builder: &mut tokio::runtime::Builder) {
        let parks = Arc::new(AtomicU64::new(0));
        let counted = parks.clone();
        let runtime = builder
            .enable_all()
            .on_thread_park(move || {
                counted.fetch_add(1, Ordering::Relaxed);
            })
            .build()
            .unwrap();
        let spin = Duration::from_millis(400);
        let poll = IdlePoll::new(spin);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let runner = {
            let poll = poll.clone();
            std::thread::spawn(move || {
                runtime.block_on(async move {
                    tokio::spawn(poll.run());
                    let _ = stop_rx.await;
                })
            })
        };
        let parks_now = || parks.load(Ordering::Relaxed);
        let wait_parked = |what: &str| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !poll.is_parked() {
                assert!(Instant::now() < deadline, "the poller never parked {what}");
                std::thread::sleep(Duration::from_millis(5));
            }
        };

        for round in 0..2 {
            // `active` from another thread, as a connection task's send is on the runtime's.
            let started = Instant::now();
            poll.active();
            std::thread::sleep(Duration::from_millis(50));
            let parks_before = parks_now();
            std::thread::sleep(Duration::from_millis(200));
            if started.elapsed() < spin {
                assert_eq!(parks_now(), parks_before, "round {round}: the runtime parked while the poller spun");
                assert!(!poll.is_parked(), "round {round}: parked within the spin");
            }
            wait_parked(&format!("after round {round}"));
            let parked_at = parks_now();
            std::thread::sleep(Duration::from_millis(50));
            assert!(parks_now() > parks_before, "round {round}: the runtime never parked after the spin");
            assert!(parks_now() >= parked_at);
        }
        let _ = stop_tx.send(());
        runner.join().unwrap();
    }
}
