//! The virtual clock: time moves only when a test says so, so time-based behaviour (ticks,
//! windows, timeouts) is tested in microseconds of real time and never flakes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Wall-clock start of every host: 2026-01-01T00:00:00Z. Fixed, so runs are reproducible.
pub const DEFAULT_EPOCH_SECS: u64 = 1_767_225_600;

/// Monotonic clock start (arbitrary but non-zero, like a real boot-relative clock).
const MONOTONIC_START_NS: u64 = 1_000_000_000_000;

/// A host's clock: a wall-clock origin plus the time advanced so far.
#[derive(Debug, Clone)]
pub(crate) struct Clock {
    origin_ns: u64,
    elapsed_ns: u64,
}

impl Default for Clock {
    fn default() -> Clock {
        Clock {
            origin_ns: DEFAULT_EPOCH_SECS * 1_000_000_000,
            elapsed_ns: 0,
        }
    }
}

impl Clock {
    /// Nanoseconds since the Unix epoch (`proxy_get_current_time_nanoseconds`, WASI realtime).
    pub(crate) fn realtime_ns(&self) -> u64 {
        self.origin_ns.saturating_add(self.elapsed_ns)
    }

    /// Nanoseconds on the monotonic clock (WASI monotonic).
    pub(crate) fn monotonic_ns(&self) -> u64 {
        MONOTONIC_START_NS.saturating_add(self.elapsed_ns)
    }

    /// Time advanced since the host started.
    pub(crate) fn elapsed_ns(&self) -> u64 {
        self.elapsed_ns
    }

    /// Moves to `elapsed_ns` since start; never backwards.
    pub(crate) fn set_elapsed(&mut self, elapsed_ns: u64) {
        self.elapsed_ns = self.elapsed_ns.max(elapsed_ns);
    }

    /// Sets the wall-clock reading without moving monotonic time or timers.
    pub(crate) fn set_wall_clock(&mut self, now: SystemTime) {
        let ns = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_nanos() as u64;
        self.origin_ns = ns.saturating_sub(self.elapsed_ns);
    }

    /// The wall-clock reading as a `SystemTime`.
    pub(crate) fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.realtime_ns())
    }
}
