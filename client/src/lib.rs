//! The CommuCat client library: the client side of CCP-2 on the same sans-IO core as the
//! server (`dp-noise`'s [`dp_noise::Initiator`] and [`dp_noise::StreamSession`], `dp-proto`'s
//! frames and [`dp_proto::FrameAssembler`]).
//!
//! - [`Connection`]: the protocol as a state machine with no I/O and no clock — the Noise
//!   handshake (XK or IK, classic or hybrid, ChaChaPoly or AESGCM), `Hello`/`Welcome`, `Send`
//!   with message ids, `Deliver` answered by batched `DeliveryAck`s, client-side deduplication
//!   by message id ([`Dedup`], bounded), `SendAck` statuses, `Ping`/`Pong`, keepalive and
//!   `GoAway`; typing indicators, receipts and presence. Deliveries are acknowledged on
//!   receipt, or with [`AckMode::Application`] only once the application has stored them
//!   ([`Connection::ack`]).
//! - [`Client`]: a blocking driver over `std::net::TcpStream` for simple programs and tests.
//!   Programs with many connections drive [`Connection`] on their own event loop
//!   ([`Client::into_parts`] hands one over after the handshake).
//! - [`ReconnectingClient`]: a blocking client that reconnects after a drop or `GoAway` with
//!   exponential backoff and full jitter ([`Backoff`]), keeping the dedup window and resending
//!   what the server has not acknowledged.
//! - [`api`]: a small blocking client of the REST API (devices, pairing codes, friends,
//!   conversations).
//! - [`QuicClient`]: the same over QUIC (`dp-quic`, one stream per connection), a blocking
//!   driver over a `std::net::UdpSocket`, with the methods of [`Client`].
//! - [`ops`]: the session operations (register, claim a pairing code, issue a REST token) as
//!   typed calls on a [`Client`].
//! - [`keyfile`]: the device's private key in a local file with mode 0600.
//! - [`e2e`]: end-to-end encryption of envelope bodies between devices (Olm, `vodozemac`).
//!
//! Driving rule (str0m's): after any `handle_*` call or command, write out
//! [`Connection::poll_transmit`] and drain [`Connection::poll_event`] until both are empty,
//! then wait for input no longer than [`Connection::poll_timeout`].
//!
//! The byte-level specification is `docs/PROTOCOL.md`; the REST API is `docs/API.md`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod blocking;
mod connection;
mod dedup;
pub mod e2e;
pub mod keyfile;
pub mod ops;
pub mod quic;
pub mod reconnect;

pub use blocking::{Client, Clock, Error, OsRng};
pub use connection::{
    APP_UNACKED_MAX, AckMode, ClientError, CloseReason, Connection, ConnectionConfig,
    ConnectionStats, DEDUP_WINDOW_DEFAULT, Delivery, Event, HANDSHAKE_PACKET_LEN_MAX,
    INBOUND_BYTES_MAX, OUTBOUND_BYTES_MAX, RECORD_LEN_MAX_DEFAULT, State, UNACKED_BYTES_MAX,
};
pub use dedup::Dedup;
pub use dp_core::{ConversationId, DeviceId, MessageId};
pub use dp_noise::{Cipher, Pattern, StaticKeypair, Suite};
pub use dp_proto::{ErrorCode, PresenceState, ReceiptKind, Recipient, SendStatus, TypingState};
pub use ops::{IssuedToken, OpError, Ops, UserId};
pub use quic::QuicClient;
pub use reconnect::{
    Backoff, RECONNECT_DELAY_MAX, RECONNECT_DELAY_MIN, ReconnectEvent, ReconnectingClient,
};
