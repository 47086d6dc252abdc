//! The one-slot hand-off between the window scheduler and inference.
//!
//! A queue between a producer on a fixed cadence and a consumer that may
//! be slower grows without bound, and its tail is stale by the time it is
//! served. One slot where the newest window replaces an untaken one keeps
//! latency at most one hop plus one forward pass, and the replaced windows
//! are counted as dropped. Replay "as fast as possible" wants every window
//! instead, so it waits for the slot to empty.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

struct Slot<T> {
    item: Option<T>,
    closed: bool,
}

pub(crate) struct Handoff<T> {
    slot: Mutex<Slot<T>>,
    changed: Condvar,
}

impl<T> Handoff<T> {
    pub(crate) fn new() -> Self {
        Handoff {
            slot: Mutex::new(Slot {
                item: None,
                closed: false,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Slot<T>> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts `item`, replacing an untaken one; returns whether one was replaced.
    pub(crate) fn put_latest(&self, item: T) -> bool {
        let mut s = self.lock();
        let replaced = s.item.replace(item).is_some();
        self.changed.notify_all();
        replaced
    }

    /// Puts `item` once the slot is empty. Returns `false` (dropping the
    /// item) if `give_up` turns true first.
    pub(crate) fn put_wait(&self, item: T, give_up: impl Fn() -> bool) -> bool {
        let mut s = self.lock();
        while s.item.is_some() {
            if give_up() || s.closed {
                return false;
            }
            s = self
                .changed
                .wait_timeout(s, Duration::from_millis(20))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        s.item = Some(item);
        self.changed.notify_all();
        true
    }

    /// Takes the item, waiting for one; `None` once closed and empty.
    pub(crate) fn take(&self) -> Option<T> {
        let mut s = self.lock();
        loop {
            if let Some(item) = s.item.take() {
                self.changed.notify_all();
                return Some(item);
            }
            if s.closed {
                return None;
            }
            s = self
                .changed
                .wait_timeout(s, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// No more items will come; `take` returns what is left, then `None`.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn latest_wins_and_counts_replacements() {
        let h = Handoff::new();
        assert!(!h.put_latest(1));
        assert!(h.put_latest(2));
        assert!(h.put_latest(3));
        assert_eq!(h.take(), Some(3));
        h.close();
        assert_eq!(h.take(), None);
    }

    #[test]
    fn put_wait_loses_nothing() {
        let h = Arc::new(Handoff::new());
        let consumer = {
            let h = Arc::clone(&h);
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while let Some(v) = h.take() {
                    std::thread::sleep(Duration::from_micros(200));
                    got.push(v);
                }
                got
            })
        };
        for i in 0..200 {
            assert!(h.put_wait(i, || false));
        }
        h.close();
        assert_eq!(consumer.join().unwrap(), (0..200).collect::<Vec<_>>());
    }
}
