//! A bounded map of token buckets, and the key a source address is limited by.
//!
//! Rate limits are keyed by an authenticated identity or by the source *address*, never by
//! `ip:port` (DESIGN.md §6.7, the original's S11): a new connection from the same host gets
//! the same bucket. An IPv6 client controls at least a /64, so IPv6 sources are keyed by their
//! /64 prefix; an IPv4-mapped IPv6 address is keyed as the IPv4 address it maps.
//!
//! The map is bounded ([`RateLimiter::new`]'s `keys_max`). When it is full, buckets that have
//! refilled completely carry no information and are dropped; if none has, a new key is refused
//! (fail closed) rather than evicting a bucket an attacker is draining, which would let a
//! flood of fresh keys reset it. Time comes in as milliseconds: the limiter reads no clock.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};

/// The key a source address is limited by: the IPv4 address, or the IPv6 /64 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceKey {
    /// An IPv4 source (or an IPv4-mapped IPv6 one).
    V4([u8; 4]),
    /// The /64 prefix of an IPv6 source.
    V6Prefix([u8; 8]),
}

impl SourceKey {
    /// The key of `ip`; the port of a socket address plays no part.
    pub fn from_ip(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4.octets()),
                None => Self::V6Prefix(prefix64(&v6)),
            },
        }
    }
}

fn prefix64(v6: &Ipv6Addr) -> [u8; 8] {
    let octets = v6.octets();
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&octets[..8]);
    prefix
}

/// A token bucket's shape: `burst` tokens at most, refilled at `per_second`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Tokens a full bucket holds (the largest burst).
    pub burst: u32,
    /// Tokens added per second.
    pub per_second: u32,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Tokens, in thousandths.
    milli_tokens: u64,
    updated_ms: u64,
}

/// Token buckets per key, at most `keys_max` of them.
#[derive(Debug)]
pub struct RateLimiter<K> {
    rate: Rate,
    keys_max: usize,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// An empty limiter.
    pub fn new(rate: Rate, keys_max: usize) -> Self {
        Self {
            rate,
            keys_max: keys_max.max(1),
            buckets: HashMap::new(),
        }
    }

    fn full(&self) -> u64 {
        u64::from(self.rate.burst) * 1000
    }

    fn refill(rate: Rate, full: u64, bucket: &mut Bucket, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(bucket.updated_ms);
        let added = elapsed.saturating_mul(u64::from(rate.per_second));
        bucket.milli_tokens = bucket.milli_tokens.saturating_add(added).min(full);
        bucket.updated_ms = bucket.updated_ms.max(now_ms);
    }

    /// Takes one token for `key`; false when its bucket is empty or the map is full of
    /// buckets still in use.
    pub fn allow(&mut self, key: &K, now_ms: u64) -> bool {
        let (rate, full) = (self.rate, self.full());
        if !self.buckets.contains_key(key) {
            if self.buckets.len() >= self.keys_max {
                self.buckets.retain(|_, b| {
                    Self::refill(rate, full, b, now_ms);
                    b.milli_tokens < full
                });
            }
            if self.buckets.len() >= self.keys_max {
                return false;
            }
            self.buckets.insert(
                key.clone(),
                Bucket {
                    milli_tokens: full,
                    updated_ms: now_ms,
                },
            );
        }
        let Some(bucket) = self.buckets.get_mut(key) else {
            return false;
        };
        Self::refill(rate, full, bucket, now_ms);
        if bucket.milli_tokens >= 1000 {
            bucket.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }

    /// Whether `key` has a token now, without taking it (an untracked key has a full bucket).
    pub fn peek(&mut self, key: &K, now_ms: u64) -> bool {
        let (rate, full) = (self.rate, self.full());
        match self.buckets.get_mut(key) {
            Some(bucket) => {
                Self::refill(rate, full, bucket, now_ms);
                bucket.milli_tokens >= 1000
            }
            None => full >= 1000,
        }
    }

    /// Keys currently tracked (at most `keys_max`).
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_ports_share_a_key_and_ipv6_is_keyed_by_its_64() {
        let a: std::net::SocketAddr = "192.0.2.7:1000".parse().unwrap();
        let b: std::net::SocketAddr = "192.0.2.7:2000".parse().unwrap();
        assert_eq!(SourceKey::from_ip(a.ip()), SourceKey::from_ip(b.ip()));
        let c: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let d: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let e: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(SourceKey::from_ip(c), SourceKey::from_ip(d));
        assert_ne!(SourceKey::from_ip(c), SourceKey::from_ip(e));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(SourceKey::from_ip(mapped), SourceKey::from_ip(a.ip()));
    }

    #[test]
    fn bucket_empties_and_refills() {
        let mut limiter = RateLimiter::new(
            Rate {
                burst: 2,
                per_second: 1,
            },
            8,
        );
        assert!(limiter.allow(&1u8, 0));
        assert!(limiter.allow(&1u8, 0));
        assert!(!limiter.allow(&1u8, 0));
        assert!(limiter.allow(&2u8, 0), "another key has its own bucket");
        assert!(!limiter.allow(&1u8, 999));
        assert!(limiter.allow(&1u8, 1000));
    }

    #[test]
    fn a_full_map_refuses_new_keys_but_drops_idle_ones() {
        let rate = Rate {
            burst: 1,
            per_second: 1,
        };
        let mut limiter = RateLimiter::new(rate, 2);
        assert!(limiter.allow(&1u32, 0));
        assert!(limiter.allow(&2u32, 0));
        assert!(
            !limiter.allow(&3u32, 0),
            "full of buckets in use: fail closed"
        );
        assert_eq!(limiter.len(), 2);
        // After a second both buckets are full again (idle): they make room.
        assert!(limiter.allow(&3u32, 1000));
        assert!(limiter.len() <= 2);
    }
}
