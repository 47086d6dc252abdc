//! Capture timestamps on one monotonic clock.
//!
//! Wall-clock time jumps (NTP, a board without an RTC booting in 1970), so
//! every source stamps with `Instant` relative to one process-wide origin
//! and the engine converts to wall time once, at the output.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use emogate_media::Nanos;

/// The process-wide capture clock.
#[derive(Debug, Clone, Copy)]
pub struct CaptureClock {
    origin: Instant,
    origin_unix: Duration,
}

impl CaptureClock {
    /// The shared clock (its origin is the first call).
    pub fn global() -> &'static CaptureClock {
        static CLOCK: OnceLock<CaptureClock> = OnceLock::new();
        CLOCK.get_or_init(|| CaptureClock {
            origin: Instant::now(),
            origin_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        })
    }

    /// Now, in nanoseconds since the origin.
    pub fn now(&self) -> Nanos {
        self.at(Instant::now())
    }

    /// An `Instant` (e.g. from a driver callback) on this clock.
    pub fn at(&self, instant: Instant) -> Nanos {
        instant.saturating_duration_since(self.origin).as_nanos() as Nanos
    }

    /// A capture time as Unix time in nanoseconds, for published events.
    pub fn to_unix_nanos(&self, t: Nanos) -> u128 {
        self.origin_unix.as_nanos() + t as u128
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_monotonic_and_maps_to_unix_time() {
        let clock = CaptureClock::global();
        let a = clock.now();
        std::thread::sleep(Duration::from_millis(2));
        let b = clock.now();
        assert!(b >= a + 2_000_000, "{a} then {b}");
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let mapped = clock.to_unix_nanos(clock.now());
        assert!(
            mapped.abs_diff(unix) < 50_000_000,
            "mapped {mapped} vs system {unix}"
        );
    }
}

/// The real monotonic clock as a pipeline [`Clock`](crate::source::Clock):
/// live devices and real-time replay stamp with it.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealClock;

impl crate::source::Clock for RealClock {
    fn now(&self) -> Nanos {
        CaptureClock::global().now()
    }

    fn wait_until(&self, t: Nanos, stop: &emogate_media::StopFlag, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.now();
            if now >= t {
                return true;
            }
            if stop.is_raised() || Instant::now() >= deadline {
                return false;
            }
            // Short naps so a stop request is seen within 20 ms.
            let nap = Duration::from_nanos(t - now)
                .min(Duration::from_millis(20))
                .min(deadline.saturating_duration_since(Instant::now()));
            std::thread::sleep(nap);
        }
    }

    fn is_real_time(&self) -> bool {
        true
    }
}

/// A clock that only moves when told: replay "as fast as possible".
///
/// It is a small discrete-event scheduler. Every source thread that paces
/// itself on the clock [`enter`](crate::source::Clock::enter)s it; the
/// pipeline [`advance`](VirtualClock::advance)s time to the next window's
/// end and then [`settle`](VirtualClock::settle)s: waits until every
/// participant is blocked in `wait_until` on a later time (or has left).
/// At that point every item stamped up to `now` has been delivered, so a
/// window built then is exactly the one real-time pacing would have built,
/// without waiting for the wall clock.
#[derive(Debug, Default)]
pub struct VirtualClock {
    state: std::sync::Mutex<VirtualState>,
    changed: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct VirtualState {
    now: Nanos,
    participants: usize,
    /// Wake-up times of participants blocked in `wait_until`.
    waiting: Vec<Nanos>,
}

impl VirtualClock {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VirtualState> {
        // A panicking participant poisons nothing we rely on: the state is
        // plain counters, valid at every step.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves time forward to `t` (never backward).
    pub fn advance(&self, t: Nanos) {
        let mut s = self.lock();
        s.now = s.now.max(t);
        self.changed.notify_all();
    }

    /// Waits until every participant waits on a time after `now`, or has
    /// left; gives up after `timeout` (returns false) so a wedged source
    /// cannot hang the pipeline.
    pub fn settle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        loop {
            let now = s.now;
            if s.waiting.len() >= s.participants && s.waiting.iter().all(|&w| w > now) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self
                .changed
                .wait_timeout(s, left.min(Duration::from_millis(50)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Participants currently pacing on this clock.
    pub fn participants(&self) -> usize {
        self.lock().participants
    }
}

impl crate::source::Clock for VirtualClock {
    fn now(&self) -> Nanos {
        self.lock().now
    }

    fn wait_until(&self, t: Nanos, stop: &emogate_media::StopFlag, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        if s.now >= t {
            return true;
        }
        s.waiting.push(t);
        self.changed.notify_all();
        let reached = loop {
            if s.now >= t {
                break true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if stop.is_raised() || left.is_zero() {
                break false;
            }
            s = self
                .changed
                .wait_timeout(s, left.min(Duration::from_millis(20)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        if let Some(i) = s.waiting.iter().position(|&w| w == t) {
            s.waiting.swap_remove(i);
        }
        self.changed.notify_all();
        reached
    }

    fn is_real_time(&self) -> bool {
        false
    }

    fn enter(&self) {
        self.lock().participants += 1;
        self.changed.notify_all();
    }

    fn leave(&self) {
        let mut s = self.lock();
        s.participants = s.participants.saturating_sub(1);
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod virtual_tests {
    use super::*;
    use crate::source::Clock;
    use emogate_media::StopFlag;
    use std::sync::Arc;

    #[test]
    fn settle_waits_for_participants_to_catch_up() {
        let clock = Arc::new(VirtualClock::new());
        let stop = StopFlag::new();
        let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
        clock.enter();
        let worker = {
            let (clock, stop, seen) = (Arc::clone(&clock), stop.clone(), Arc::clone(&seen));
            std::thread::spawn(move || {
                for t in (10..=100).step_by(10) {
                    if !clock.wait_until(t, &stop, Duration::from_secs(5)) {
                        break;
                    }
                    // Work between waits: settle must wait for it.
                    std::thread::sleep(Duration::from_millis(1));
                    seen.store(t, std::sync::atomic::Ordering::SeqCst);
                }
                clock.leave();
            })
        };
        for t in [25, 50, 100] {
            clock.advance(t);
            assert!(clock.settle(Duration::from_secs(5)));
            let got = seen.load(std::sync::atomic::Ordering::SeqCst);
            assert_eq!(got, t / 10 * 10, "after advancing to {t}");
        }
        worker.join().unwrap();
        assert_eq!(clock.participants(), 0);
    }

    #[test]
    fn real_clock_wait_honours_stop() {
        let stop = StopFlag::new();
        stop.raise();
        let far = RealClock.now() + 60_000_000_000;
        assert!(!RealClock.wait_until(far, &stop, Duration::from_secs(60)));
    }
}
