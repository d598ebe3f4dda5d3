//! CommuCat's Noise session layer: XK and IK handshakes over X25519, BLAKE2s and
//! ChaCha20-Poly1305 or AES-256-GCM, with an optional ML-KEM-768 hybrid; WireGuard-style
//! cookies under load; responder static-key rotation; and the transport that follows — ordered
//! stream records and datagrams with a replay window and rekeying.
//!
//! This crate performs no I/O, reads no clock and draws no OS randomness: time comes in as
//! [`dp_core::Instant`], randomness through [`dp_core::Rng`], and output goes into caller
//! buffers. Driving rule (str0m's): after any `handle_*` call, send everything it wrote, then
//! call `handle_timeout` no later than `poll_timeout`.
//!
//! The authenticated remote static key, carried by [`PeerAuthenticated`], is the only source of
//! a device's identity. Every failure is a typed error; nothing panics on any input.
//!
//! The byte-level specification is `docs/PROTOCOL.md`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cipher;
pub mod cookie;
mod error;
pub mod handshake;
pub mod kem;
pub mod keys;
pub mod packet;
pub mod replay;
mod resolver;
pub mod session;
pub mod suite;

pub use error::{HandshakeError, OpenError, SealError};
pub use handshake::{
    Established, Initiator, InitiatorConfig, InitiatorEvent, Responder, ResponderConfig,
    ResponderEvent, Role,
};
pub use keys::{PeerAuthenticated, StaticKeypair, device_id};
pub use session::{DatagramSession, StreamSession};
pub use suite::{Cipher, Pattern, Suite};
