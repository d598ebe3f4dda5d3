//! Mapping the caller's [`dp_core::Instant`] to the `std::time::Instant` quinn-proto needs, and
//! the wall clock that QUIC tokens and rustls ask for, without reading a clock.

use core::time::Duration;
use dp_core::Instant;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Where [`dp_core::Instant`] zero lies on the two clocks quinn-proto and rustls use.
///
/// quinn-proto takes `std::time::Instant`, which cannot be made from a number, only from a
/// clock reading plus an offset. So the caller reads its clock **once**, when it creates its
/// epoch, and hands that reading here: the IO layer passes the `std::time::Instant` its
/// `Clock` counts nanoseconds from (so `dp_core::Instant(n)` is `epoch + n ns`), and a test or
/// simulator passes any instant it read once at start. Every `now` given to this crate is then
/// converted by addition; the crate never reads a clock.
///
/// `unix_at_epoch` is the wall-clock time (since the Unix epoch) at that same moment. It feeds
/// the two places that want wall-clock time: the expiry of QUIC address-validation tokens
/// (quinn's `TimeSource`) and rustls's `TimeProvider`. Both read `unix_at_epoch + now` as of
/// the latest input, so a simulator that fixes `unix_at_epoch` is reproducible.
#[derive(Clone, Copy, Debug)]
pub struct TimeBase {
    epoch: std::time::Instant,
    unix_at_epoch: Duration,
}

impl TimeBase {
    /// `dp_core::Instant::ZERO` is `epoch`, and the wall clock read `unix_at_epoch` then.
    pub fn new(epoch: std::time::Instant, unix_at_epoch: Duration) -> Self {
        Self {
            epoch,
            unix_at_epoch,
        }
    }

    /// `now` as a `std::time::Instant` (saturating far in the future, never panicking).
    pub fn to_std(&self, now: Instant) -> std::time::Instant {
        let mut nanos = now.as_nanos();
        loop {
            if let Some(at) = self.epoch.checked_add(Duration::from_nanos(nanos)) {
                return at;
            }
            // Unreachable on real platforms (u64 nanoseconds are 584 years); halve until the
            // platform's instant can hold it rather than panic.
            nanos /= 2;
        }
    }

    /// A `std::time::Instant` as nanoseconds from the epoch (zero if before it).
    pub fn from_std(&self, at: std::time::Instant) -> Instant {
        let nanos = at.saturating_duration_since(self.epoch).as_nanos();
        Instant(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Wall-clock time since the Unix epoch at `now`.
    pub fn unix(&self, now: Instant) -> Duration {
        self.unix_at_epoch
            .saturating_add(Duration::from_nanos(now.as_nanos()))
    }
}

/// The wall clock as of the latest input, shared with quinn's token checks and rustls.
#[derive(Debug, Default)]
pub(crate) struct WallClock {
    unix_nanos: AtomicU64,
}

impl WallClock {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub(crate) fn set(&self, unix: Duration) {
        let nanos = u64::try_from(unix.as_nanos()).unwrap_or(u64::MAX);
        self.unix_nanos.store(nanos, Ordering::Relaxed);
    }

    fn get(&self) -> Duration {
        Duration::from_nanos(self.unix_nanos.load(Ordering::Relaxed))
    }
}

impl quinn_proto::TimeSource for WallClock {
    fn now(&self) -> std::time::SystemTime {
        std::time::UNIX_EPOCH
            .checked_add(self.get())
            .unwrap_or(std::time::UNIX_EPOCH)
    }
}

impl rustls::time_provider::TimeProvider for WallClock {
    fn current_time(&self) -> Option<rustls::pki_types::UnixTime> {
        Some(rustls::pki_types::UnixTime::since_unix_epoch(self.get()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion_round_trips_and_saturates_below_the_epoch() {
        #[allow(clippy::disallowed_methods)] // a test reads the clock once, as the IO layer does
        let epoch = std::time::Instant::now();
        let base = TimeBase::new(epoch, Duration::from_secs(1_700_000_000));
        let now = Instant(1_234_567_890);
        assert_eq!(
            base.to_std(now) - epoch,
            Duration::from_nanos(1_234_567_890)
        );
        assert_eq!(base.from_std(base.to_std(now)), now);
        assert_eq!(base.from_std(epoch), Instant::ZERO);
        assert_eq!(
            base.unix(Instant(2_000_000_000)),
            Duration::from_secs(1_700_000_002)
        );
    }
}
