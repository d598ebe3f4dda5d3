//! The QUIC carrier of CCP-2: the same byte stream as a TCP connection (u16-prefixed Noise
//! handshake packets, then Noise stream records carrying frames) on **one bidirectional QUIC
//! stream per connection**, built on `quinn-proto` (`docs/PROTOCOL.md` §11,
//! `docs/design/0008-quic-carrier.md`).
//!
//! Noise runs *inside* QUIC: a device's identity still comes only from the Noise handshake.
//! QUIC's TLS 1.3 (rustls on ring, ALPN `ccp2`) is a transport wrapper with a self-signed
//! [`Certificate`] made at start; the client does not check it for identity, since Noise
//! authenticates the server's static key. So the shard logic needs no change: the IO layer
//! bridges a QUIC stream to a shard connection exactly as it bridges a TCP socket.
//!
//! This crate performs no I/O and reads no clock. Time comes in as [`dp_core::Instant`] and is
//! mapped to the `std::time::Instant` that quinn-proto wants through a [`TimeBase`] the caller
//! supplies once (the IO layer's clock epoch). Randomness for connection ids, the endpoint's
//! generator, stateless-reset and token keys and the certificate key comes from the caller's
//! [`dp_core::Rng`]; rustls still draws its TLS randoms and key shares from ring (see
//! [`TimeBase`] and the design note for what that means for a simulator).
//!
//! Two machines, one vocabulary: [`QuicServer`] (accepts connections and their first
//! bidirectional stream, refuses any further stream) and [`QuicClient`] (connects and opens
//! that stream). Both are driven the same way:
//!
//! - inputs: `handle_datagram`, `handle_timeout`;
//! - outputs: `poll_transmit` (datagrams, GSO batches, into a reused buffer), `poll_event`
//!   ([`QuicEvent`]), `poll_timeout`;
//! - commands: `read`, `write`, `close` (and [`QuicClient::connect`]).
//!
//! Driving rule (str0m's): after any input or command, drain `poll_event` and `poll_transmit`
//! until both are empty, then wait for a datagram or until `poll_timeout`. Reading a stream that
//! `Readable` named until it returns 0, and writing after `Writable`, follow the socket idiom.
//!
//! Network input never panics: a datagram that is not QUIC, or not for a live connection, is
//! dropped (and counted); a peer that breaks the rules is closed with a transport error.
//! Everything is bounded: connections ([`QuicConfig::conns_max`]), handshakes in progress,
//! receive windows and the send window per connection.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod carrier;
mod cert;
mod cid;
mod config;
mod error;
mod time;
mod tls;

pub use carrier::{
    CloseReason, QuicClient, QuicConnId, QuicEvent, QuicServer, QuicStats, Transmit,
};
pub use cert::Certificate;
pub use cid::{CID_LEN, cid_shard};
pub use config::{CloseCode, QuicConfig};
pub use error::{Error, StreamError};
pub use quinn_proto::EcnCodepoint;
pub use time::TimeBase;

/// The ALPN protocol id of CCP-2 over QUIC.
pub const ALPN: &[u8] = b"ccp2";

/// The server name a client puts in its TLS ClientHello (SNI). The server ignores it; the
/// client does not check the certificate against it (Noise authenticates the server).
pub const SERVER_NAME: &str = "commucat";
