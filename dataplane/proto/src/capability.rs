//! [`Capabilities`]: the feature bit set negotiated in `Hello`, `Welcome` and `Capabilities`.

use core::fmt;
use core::ops::BitOr;

/// A set of optional protocol features, one bit each.
///
/// Bits this version does not define are kept on decode (so that a relay can pass them on) and
/// dropped by [`Capabilities::intersection`], which computes the effective set.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Capabilities(pub u64);

macro_rules! capability_bits {
    ($($(#[$doc:meta])* $name:ident = $bit:literal,)+) => {
        impl Capabilities {
            $($(#[$doc])* pub const $name: Self = Self(1 << $bit);)+

            /// Every bit this version defines.
            pub const KNOWN: Self = Self($((1 << $bit))|+);

            const NAMES: &'static [(Self, &'static str)] = &[$((Self::$name, stringify!($name))),+];
        }
    };
}

capability_bits! {
    /// Hybrid post-quantum (X25519 + ML-KEM-768) handshakes.
    HYBRID_PQ = 0,
    /// The unreliable datagram transport.
    DATAGRAM = 1,
    /// Forward error correction on datagrams.
    FEC = 2,
    /// Several network paths at once.
    MULTIPATH = 3,
    /// Opus audio.
    OPUS = 4,
    /// VP8 video.
    VP8 = 5,
    /// Raw (not transcoded) media relay.
    RAW_MEDIA = 6,
    /// QUIC as the outer transport.
    QUIC = 7,
    /// Traffic obfuscation.
    OBFUSCATION = 8,
}

impl Capabilities {
    /// The empty set.
    pub const EMPTY: Self = Self(0);

    /// Whether every bit of `other` is in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The effective set of two peers: the bits both have, restricted to the bits this version
    /// defines.
    #[must_use]
    pub const fn intersection(self, other: Self) -> Self {
        Self(self.0 & other.0 & Self::KNOWN.0)
    }

    /// The bits of `self` that this version does not define.
    #[must_use]
    pub const fn unknown(self) -> Self {
        Self(self.0 & !Self::KNOWN.0)
    }

    /// Whether no bit is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl BitOr for Capabilities {
    type Output = Self;

    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Capabilities(")?;
        let mut first = true;
        for (bit, name) in Self::NAMES {
            if self.contains(*bit) {
                if !first {
                    write!(f, " | ")?;
                }
                write!(f, "{name}")?;
                first = false;
            }
        }
        let unknown = self.unknown();
        if !unknown.is_empty() {
            if !first {
                write!(f, " | ")?;
            }
            write!(f, "{:#x}", unknown.0)?;
        }
        write!(f, ")")
    }
}

#[cfg(test)]
mod tests;
