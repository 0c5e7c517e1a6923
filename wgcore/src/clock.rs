//! The one way time gets into boringtun.
//!
//! boringtun's `Tunn` and `RateLimiter` read the clock themselves. Built
//! with its `mock-instant` feature they read mock_instant's per-thread
//! clock instead, and this module sets that clock, before every call into
//! boringtun, from the `now` the caller handed to the core. So the core
//! never reads a real clock: a driver passes `Instant::now()`, a test
//! passes simulated time, and both run the same code.
//!
//! boringtun subtracts stored instants from the current one with plain
//! `Duration` arithmetic, which panics if time goes backwards. Several
//! threads may drive one core, each with its own `now`, so the clock is
//! the largest `now` seen so far (an atomic maximum), and it is read after
//! a `Tunn`'s lock is taken: no holder of a lock can see an earlier time
//! than the holder before it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// boringtun's clock starts here rather than at zero, so that "never"
/// (zero) is always earlier than any real reading.
const OFFSET: Duration = Duration::from_secs(1);

/// A monotonic clock fed from outside.
#[derive(Debug)]
pub struct Clock {
    base: Instant,
    /// Nanoseconds since `base` (plus [`OFFSET`]): the latest `now` seen.
    latest: AtomicU64,
}

impl Clock {
    /// A clock whose zero is `base` (the time the core was created).
    pub fn new(base: Instant) -> Self {
        Self {
            base,
            latest: AtomicU64::new(OFFSET.as_nanos() as u64),
        }
    }

    /// Move the clock forward to `now` (never backwards) and return it.
    pub fn advance(&self, now: Instant) -> Duration {
        let n = (now.saturating_duration_since(self.base) + OFFSET).as_nanos() as u64;
        let prev = self.latest.fetch_max(n, Ordering::AcqRel);
        Duration::from_nanos(prev.max(n))
    }

    /// The latest time seen.
    pub fn current(&self) -> Duration {
        Duration::from_nanos(self.latest.load(Ordering::Acquire))
    }

    /// Set this thread's boringtun clock to the latest time. Call it after
    /// taking the lock of whatever boringtun state comes next.
    pub fn enter(&self) {
        mock_instant::MockClock::set_time(self.current());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_goes_backwards() {
        let t0 = Instant::now();
        let c = Clock::new(t0);
        let a = c.advance(t0 + Duration::from_secs(5));
        let b = c.advance(t0 + Duration::from_secs(2));
        assert_eq!(a, b);
        assert_eq!(a, Duration::from_secs(6));
        c.enter();
        assert_eq!(mock_instant::MockClock::time(), Duration::from_secs(6));
    }

    #[test]
    fn before_base_is_the_base() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let c = Clock::new(t0);
        assert_eq!(c.advance(Instant::now()), OFFSET);
    }
}
