//! Senders waiting for their entry to be applied, woken one by one.
//!
//! A `watch` on the applied index would wake every waiting sender on every apply step (64
//! producers: 64 wake-ups per step, nearly all of them to go back to sleep); here the apply
//! loop wakes exactly the waiters its step covers.

use std::collections::BTreeMap;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::replication::EntryIndex;

pub(super) struct ApplyWaiters {
    /// Entry index → senders waiting for it. Entries of timed-out waiters stay until the
    /// applied index passes them (indexes only grow), so the map is bounded by the sends in
    /// flight plus those that timed out since.
    /// `None` once the apply loop stopped.
    waiting: Mutex<Option<BTreeMap<EntryIndex, Vec<oneshot::Sender<()>>>>>,
}

impl Default for ApplyWaiters {
    fn default() -> Self {
        ApplyWaiters { waiting: Mutex::new(Some(BTreeMap::new())) }
    }
}

impl ApplyWaiters {
    /// A receiver that completes once `index` is applied (and fails once the apply loop
    /// stopped); `None` when `applied()` (read under the lock the apply loop takes after
    /// publishing) already covers it.
    pub(super) fn register(
        &self,
        index: EntryIndex,
        applied: impl FnOnce() -> EntryIndex,
    ) -> Option<oneshot::Receiver<()>> {
        let mut waiting = self.waiting.lock();
        if applied() >= index {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        if let Some(waiting) = waiting.as_mut() {
            waiting.entry(index).or_default().push(tx);
        }
        Some(rx)
    }

    /// Wakes everyone waiting for an index up to `applied`. Call after publishing
    /// `applied`, so a waiter registering meanwhile sees it.
    pub(super) fn applied(&self, applied: EntryIndex) {
        let ready = {
            let mut waiting = self.waiting.lock();
            let Some(waiting) = waiting.as_mut() else { return };
            let later = waiting.split_off(&(applied + 1));
            std::mem::replace(waiting, later)
        };
        for tx in ready.into_values().flatten() {
            let _ = tx.send(()); // the waiter may have timed out
        }
    }

    /// Drops every waiter (their receivers fail): the apply loop stopped.
    pub(super) fn close(&self) {
        *self.waiting.lock() = None;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.waiting.lock().as_ref().map_or(0, |w| w.values().map(Vec::len).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_exactly_the_covered_waiters() {
        let w = ApplyWaiters::default();
        assert!(w.register(3, || 3).is_none(), "already applied");
        let mut r5 = w.register(5, || 3).unwrap();
        let mut r7 = w.register(7, || 3).unwrap();
        let mut r7b = w.register(7, || 3).unwrap();
        w.applied(6);
        assert_eq!(r5.try_recv(), Ok(()));
        assert!(r7.try_recv().is_err() && r7b.try_recv().is_err());
        assert_eq!(w.len(), 2);
        w.applied(9);
        assert_eq!((r7.try_recv(), r7b.try_recv()), (Ok(()), Ok(())));
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn timed_out_waiters_are_dropped_when_passed_and_close_fails_the_rest() {
        let w = ApplyWaiters::default();
        drop(w.register(4, || 0).unwrap());
        let mut r8 = w.register(8, || 0).unwrap();
        w.applied(5);
        assert_eq!(w.len(), 1);
        w.close();
        assert!(matches!(r8.try_recv(), Err(oneshot::error::TryRecvError::Closed)));
        let mut late = w.register(9, || 5).unwrap();
        assert!(matches!(late.try_recv(), Err(oneshot::error::TryRecvError::Closed)));
    }
}
