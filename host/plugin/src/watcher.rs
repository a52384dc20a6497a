//! The hot-reload thread: file events from `notify` (debounced) plus a
//! periodic rescan, because inotify can miss events (overflow, some network
//! and container filesystems) and a missed event must not mean a stale plugin.

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Instant;

use notify::{EventKind, RecursiveMode, Watcher as _};

use crate::plugin_registry::RegistryInner;

enum Wake {
    FilesChanged,
    Stop,
}

pub(crate) struct Watcher {
    tx: mpsc::Sender<Wake>,
    thread: Option<JoinHandle<()>>,
    // Dropping it stops the event source; kept until the thread has stopped.
    _events: Option<notify::RecommendedWatcher>,
}

impl Watcher {
    pub(crate) fn start(inner: Arc<RegistryInner>) -> Watcher {
        let (tx, rx) = mpsc::channel::<Wake>();
        let events_tx = tx.clone();
        let events = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) if matches!(event.kind, EventKind::Access(_)) => {}
            // Errors (e.g. queue overflow) also trigger a rescan.
            _ => {
                let _ = events_tx.send(Wake::FilesChanged);
            }
        })
        .and_then(|mut w| {
            w.watch(inner.plugin_dir(), RecursiveMode::NonRecursive)?;
            Ok(w)
        });
        let events = match events {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(
                    dir = %inner.plugin_dir().display(),
                    "no file events for the plugin directory, relying on the periodic rescan: {e}"
                );
                None
            }
        };
        let thread = std::thread::Builder::new()
            .name("wasmq-plugin-watch".to_owned())
            .spawn(move || run(&inner, &rx))
            .expect("spawning the plugin watcher thread");
        Watcher { tx, thread: Some(thread), _events: events }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.tx.send(Wake::Stop);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("plugin watcher thread panicked");
        }
    }
}

fn run(inner: &RegistryInner, rx: &mpsc::Receiver<Wake>) {
    // Bounds the debounce so a file rewritten continuously still reloads.
    let debounce_total_max = inner.debounce() * 5;
    loop {
        match rx.recv_timeout(inner.rescan_interval()) {
            Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Ok(Wake::FilesChanged) => {
                let started = Instant::now();
                loop {
                    match rx.recv_timeout(inner.debounce()) {
                        Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                        Ok(Wake::FilesChanged) if started.elapsed() < debounce_total_max => continue,
                        Ok(Wake::FilesChanged) | Err(RecvTimeoutError::Timeout) => break,
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        // A bug in one reload must not end hot reload for the broker's life.
        let report = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.reload_now())) {
            Ok(report) => report,
            Err(_) => {
                tracing::error!(
                    "plugin reload panicked; the current plugin set keeps serving, retrying on the next rescan"
                );
                continue;
            }
        };
        if report.changed() {
            tracing::info!(
                generation = report.generation,
                added = ?report.added,
                replaced = ?report.replaced,
                removed = ?report.removed,
                "plugin set swapped"
            );
        }
    }
}
