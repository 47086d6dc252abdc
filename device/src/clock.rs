//! Capture timestamps on one monotonic clock.
//!
//! Wall-clock time jumps (NTP, a board without an RTC booting in 1970), so
//! every source stamps with `Instant` relative to one process-wide origin
//! and the engine converts to wall time once, at the output.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Nanoseconds since the clock's origin.
pub type Nanos = u64;

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
