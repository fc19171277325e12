//! Processing time: what time it is, for the processors that need the wall clock (a window's
//! processing-time windows, its `max_future` guard).
//!
//! A [`Clock`] reads the wall clock once, when the flow starts, and from then on follows
//! tokio's monotonic clock. So processing time never jumps when the system clock is set
//! (NTP), and a flow on a paused tokio runtime (`start_paused`, `tokio::time::advance`) sees
//! exactly the time its driver gives it: that is how `flow test` makes windows and idle
//! timeouts deterministic ([`crate::flowtest`] starts the clock at a fixed date and moves it
//! by steps). The runtime hands every processor the flow's clock in
//! [`crate::processor::BuildContext::clock`]; a processor never reads `SystemTime` itself.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// A flow's processing time (see the module docs). Cheap to clone; clones tell the same time.
#[derive(Clone, Debug)]
pub struct Clock {
    /// Epoch milliseconds at `start`.
    epoch_ms: i64,
    /// The tokio instant that `epoch_ms` corresponds to.
    start: Instant,
}

impl Clock {
    /// The system's wall clock, as it is now.
    pub fn system() -> Self {
        let epoch_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Self::starting_at(epoch_ms)
    }

    /// A clock that reads `epoch_ms` now and follows tokio's clock from here (on a paused
    /// runtime, it moves only when tokio's time is advanced).
    pub fn starting_at(epoch_ms: i64) -> Self {
        Self {
            epoch_ms,
            start: Instant::now(),
        }
    }

    /// The time now, in epoch milliseconds.
    pub fn now_ms(&self) -> i64 {
        let elapsed = i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.epoch_ms.saturating_add(elapsed)
    }

    /// The tokio instant at which this clock reads `t` (now, if `t` is past); `None` when that
    /// is too far ahead to represent (never).
    pub fn instant_of(&self, t: i64) -> Option<Instant> {
        let ahead = t.saturating_sub(self.now_ms()).max(0);
        Instant::now().checked_add(Duration::from_millis(u64::try_from(ahead).unwrap_or(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_tokio_time_from_its_start() {
        let clock = Clock::starting_at(1_000);
        let copy = clock.clone();
        assert_eq!(clock.now_ms(), 1_000);
        tokio::time::advance(Duration::from_millis(2_500)).await;
        assert_eq!(clock.now_ms(), 3_500);
        assert_eq!(copy.now_ms(), 3_500, "clones tell the same time");
        let at = clock.instant_of(4_000).expect("representable");
        assert_eq!(at - Instant::now(), Duration::from_millis(500));
        assert_eq!(clock.instant_of(0), Some(Instant::now()), "the past is now");
    }

    #[test]
    fn the_system_clock_starts_at_the_wall_clock() {
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let now = Clock::system().now_ms();
        assert!(now >= before && now - before < 60_000, "{now} vs {before}");
    }
}
