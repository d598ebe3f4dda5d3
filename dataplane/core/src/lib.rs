//! The vocabulary every CommuCat data-plane crate shares: time, identifiers, injected randomness
//! and the named limits.
//!
//! This crate performs no I/O, reads no clock and draws no OS randomness. Time enters as
//! [`Instant`], created only by the IO layer or the simulator; randomness enters through [`Rng`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod limits;

use core::fmt;
use core::time::Duration;

/// A point in monotonic time: nanoseconds since a per-process epoch.
///
/// Only the IO layer and the simulator create one from a real or simulated clock; protocol
/// machines receive it as an argument and never read a clock themselves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(pub u64);

impl Instant {
    /// The epoch.
    pub const ZERO: Self = Self(0);

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// `self + duration`, saturating at the far future.
    #[must_use]
    pub fn saturating_add(self, duration: Duration) -> Self {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        Self(self.0.saturating_add(nanos))
    }

    /// The time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Self) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// Randomness injected into protocol machines (after s2n-quic's `random::Generator`).
///
/// `public_fill` is for values an observer sees (nonces, ids, cookie salts); `private_fill` is
/// for secrets (ephemeral keys). Production seeds both from the OS; the simulator and the test
/// vectors seed them from a fixed value so that every run is reproducible.
pub trait Rng {
    /// Fill `dest` with random bytes that may become public.
    fn public_fill(&mut self, dest: &mut [u8]);
    /// Fill `dest` with random bytes that stay secret.
    fn private_fill(&mut self, dest: &mut [u8]);
}

/// A device's identity on the wire: the first 16 bytes of BLAKE2s-256 over its Noise static
/// public key (`docs/PROTOCOL.md` §Identity). A device *is* its static key; this is its short name.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DeviceId(pub [u8; 16]);

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId(")?;
        for byte in &self.0[..4] {
            write!(f, "{byte:02x}")?;
        }
        write!(f, "…)")
    }
}

/// A server-assigned conversation id (direct or group).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ConversationId(pub u64);

/// A client-chosen message id, random, used for end-to-end dedup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MessageId(pub [u8; 16]);

/// A call id, server-assigned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct CallId(pub u64);

/// The index a datagram carries so that a shard can find its session without decrypting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SessionIndex(pub u32);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instant_arithmetic_saturates() {
        let t = Instant(u64::MAX - 1);
        assert_eq!(t.saturating_add(Duration::from_secs(1)), Instant(u64::MAX));
        assert_eq!(
            Instant(5).saturating_duration_since(Instant(9)),
            Duration::ZERO
        );
        assert_eq!(
            Instant(9).saturating_duration_since(Instant(5)),
            Duration::from_nanos(4)
        );
    }

    #[test]
    fn device_id_debug_is_short() {
        let id = DeviceId([0xab; 16]);
        assert_eq!(format!("{id:?}"), "DeviceId(abababab…)");
    }
}

/// A deterministic generator for the simulator, tests, fuzzers and benchmarks: xoshiro256**
/// seeded through SplitMix64. Not for keys in production; the server seeds real keys from the
/// OS.
#[derive(Clone, Debug)]
pub struct SeededRng {
    state: [u64; 4],
}

impl SeededRng {
    /// A generator whose whole output is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Self {
            state: [next(), next(), next(), next()],
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let [a, b, c, d] = &mut self.state;
        let result = b.wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = *b << 17;
        *c ^= *a;
        *d ^= *b;
        *b ^= *c;
        *a ^= *d;
        *c ^= t;
        *d = d.rotate_left(45);
        result
    }

    fn fill(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

impl Rng for SeededRng {
    fn public_fill(&mut self, dest: &mut [u8]) {
        self.fill(dest);
    }

    fn private_fill(&mut self, dest: &mut [u8]) {
        self.fill(dest);
    }
}

#[cfg(test)]
mod rng_tests {
    use super::*;

    #[test]
    fn seeded_rng_is_reproducible_and_seed_sensitive() {
        let mut a = SeededRng::new(7);
        let mut b = SeededRng::new(7);
        let mut c = SeededRng::new(8);
        let (mut x, mut y, mut z) = ([0u8; 37], [0u8; 37], [0u8; 37]);
        a.public_fill(&mut x);
        b.public_fill(&mut y);
        c.public_fill(&mut z);
        assert_eq!(x, y);
        assert_ne!(x, z);
        assert_ne!(x, [0u8; 37]);
    }
}
