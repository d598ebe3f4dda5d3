//! Stateless cookies under load, after WireGuard §5.4.4–5.4.7.
//!
//! Every initiation carries `mac1`, keyed by the responder's static public key, so only
//! someone who knows that key can make the responder do any work. Under load the responder
//! also demands `mac2`, keyed by a cookie that it gives out, encrypted, in a cookie reply:
//! the cookie is a MAC of the initiator's address under a secret that rotates every
//! [`COOKIE_SECRET_ROTATE_TIME`], so checking it
//! needs no per-peer state.

use blake2::digest::Mac;
use blake2::digest::consts::U16;
use blake2::{Blake2s256, Blake2sMac, Digest};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use core::net::{IpAddr, SocketAddr};
use dp_core::limits::COOKIE_SECRET_ROTATE_TIME;
use dp_core::{Instant, Rng};

/// Length of `mac1`, `mac2` and a cookie.
pub const MAC_LEN: usize = 16;
/// Length of the XChaCha20-Poly1305 nonce in a cookie reply.
pub const COOKIE_NONCE_LEN: usize = 24;
/// Length of the encrypted cookie (cookie plus tag).
pub const COOKIE_SEALED_LEN: usize = MAC_LEN + 16;

const LABEL_MAC1: &[u8; 8] = b"mac1----";
const LABEL_COOKIE: &[u8; 8] = b"cookie--";

/// Keyed BLAKE2s with a 16-byte output (`MAC(key, input)` in WireGuard's notation).
pub fn mac(key: &[u8], input: &[u8]) -> [u8; MAC_LEN] {
    let mut out = [0u8; MAC_LEN];
    // Keys here are 16 or 32 bytes, within BLAKE2s's 32-byte key limit, so `new_from_slice`
    // cannot fail; a zero MAC on failure would only make the check fail closed.
    if let Ok(mut state) = <Blake2sMac<U16> as Mac>::new_from_slice(key) {
        state.update(input);
        out.copy_from_slice(&state.finalize().into_bytes());
    }
    out
}

/// `HASH(label || static_public)`.
fn labelled_key(label: &[u8; 8], static_public: &[u8; 32]) -> [u8; 32] {
    let mut hash = Blake2s256::new();
    hash.update(label);
    hash.update(static_public);
    hash.finalize().into()
}

/// The `mac1` key for a responder static key: `HASH("mac1----" || S_pub)`.
pub fn mac1_key(static_public: &[u8; 32]) -> [u8; 32] {
    labelled_key(LABEL_MAC1, static_public)
}

/// The cookie-reply encryption key: `HASH("cookie--" || S_pub)`.
pub fn cookie_key(static_public: &[u8; 32]) -> [u8; 32] {
    labelled_key(LABEL_COOKIE, static_public)
}

/// The bytes a cookie is bound to: the IP address octets (4 or 16) then the port, big-endian.
pub fn address_bytes(addr: SocketAddr, out: &mut [u8; 18]) -> &[u8] {
    let len = match addr.ip() {
        IpAddr::V4(ip) => {
            out[..4].copy_from_slice(&ip.octets());
            4
        }
        IpAddr::V6(ip) => {
            out[..16].copy_from_slice(&ip.octets());
            16
        }
    };
    out[len..len + 2].copy_from_slice(&addr.port().to_be_bytes());
    &out[..len + 2]
}

/// Seals `cookie` for the initiator: XChaCha20-Poly1305 under `key`, with `mac1` of the
/// initiation as associated data.
pub fn seal_cookie(
    key: &[u8; 32],
    nonce: &[u8; COOKIE_NONCE_LEN],
    cookie: &[u8; MAC_LEN],
    mac1: &[u8; MAC_LEN],
) -> Option<[u8; COOKIE_SEALED_LEN]> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let sealed = cipher
        .encrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: cookie,
                aad: mac1,
            },
        )
        .ok()?;
    sealed.try_into().ok()
}

/// Opens a sealed cookie; `None` if it was not made for this `mac1` under this key.
pub fn open_cookie(
    key: &[u8; 32],
    nonce: &[u8; COOKIE_NONCE_LEN],
    sealed: &[u8; COOKIE_SEALED_LEN],
    mac1: &[u8; MAC_LEN],
) -> Option<[u8; MAC_LEN]> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let opened = cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: sealed,
                aad: mac1,
            },
        )
        .ok()?;
    opened.try_into().ok()
}

/// The responder's rotating cookie secret. Holds the current and the previous secret, so a
/// cookie stays valid for one to two rotation periods.
pub(crate) struct CookieSecret {
    current: [u8; 32],
    previous: [u8; 32],
    born: Instant,
}

impl CookieSecret {
    pub(crate) fn new(now: Instant, rng: &mut impl Rng) -> Self {
        let mut current = [0u8; 32];
        rng.private_fill(&mut current);
        let mut previous = [0u8; 32];
        rng.private_fill(&mut previous);
        Self {
            current,
            previous,
            born: now,
        }
    }

    /// Rotates the secret when it is older than the rotation period.
    pub(crate) fn handle_timeout(&mut self, now: Instant, rng: &mut impl Rng) {
        if now.saturating_duration_since(self.born) >= COOKIE_SECRET_ROTATE_TIME {
            self.previous = self.current;
            rng.private_fill(&mut self.current);
            self.born = now;
        }
    }

    pub(crate) fn next_rotation(&self) -> Instant {
        self.born.saturating_add(COOKIE_SECRET_ROTATE_TIME)
    }

    /// The cookie for `addr` under the current secret.
    pub(crate) fn cookie(&self, addr: SocketAddr) -> [u8; MAC_LEN] {
        let mut buf = [0u8; 18];
        mac(&self.current, address_bytes(addr, &mut buf))
    }

    /// Whether `mac2` over `msg` was made with a cookie for `addr` under either secret.
    pub(crate) fn check_mac2(&self, addr: SocketAddr, msg: &[u8], mac2: &[u8; MAC_LEN]) -> bool {
        let mut buf = [0u8; 18];
        let addr = address_bytes(addr, &mut buf);
        [&self.current, &self.previous].into_iter().any(|secret| {
            let cookie = mac(secret, addr);
            constant_time_eq(&mac(&cookie, msg), mac2)
        })
    }
}

/// Compares two MACs without an early exit.
pub(crate) fn constant_time_eq(a: &[u8; MAC_LEN], b: &[u8; MAC_LEN]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_cookie_opens_only_with_its_mac1() {
        let key = cookie_key(&[7; 32]);
        let nonce = [3; COOKIE_NONCE_LEN];
        let sealed = seal_cookie(&key, &nonce, &[9; MAC_LEN], &[1; MAC_LEN]).unwrap();
        assert_eq!(
            open_cookie(&key, &nonce, &sealed, &[1; MAC_LEN]),
            Some([9; MAC_LEN])
        );
        assert_eq!(open_cookie(&key, &nonce, &sealed, &[2; MAC_LEN]), None);
        assert_eq!(
            open_cookie(&cookie_key(&[8; 32]), &nonce, &sealed, &[1; MAC_LEN]),
            None
        );
    }

    #[test]
    fn address_bytes_layout() {
        let mut buf = [0u8; 18];
        let v4: SocketAddr = "10.0.0.1:443".parse().unwrap();
        assert_eq!(address_bytes(v4, &mut buf), &[10, 0, 0, 1, 0x01, 0xbb]);
        let v6: SocketAddr = "[::1]:1".parse().unwrap();
        assert_eq!(address_bytes(v6, &mut buf).len(), 18);
    }

    #[test]
    fn constant_time_eq_detects_any_difference() {
        let a = [5u8; MAC_LEN];
        for i in 0..MAC_LEN {
            let mut b = a;
            b[i] ^= 0x80;
            assert!(!constant_time_eq(&a, &b));
        }
        assert!(constant_time_eq(&a, &a));
    }
}
