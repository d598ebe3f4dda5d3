//! Errors, by class: the caller's mistake or a local limit (these), the peer's misbehaviour
//! (a connection closed with a reason: [`crate::CloseReason`]), or a bug (an assertion).

/// Setting up a carrier or a connection failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A [`crate::QuicConfig`] field is out of range.
    Config {
        /// The field.
        what: &'static str,
    },
    /// The certificate could not be made.
    Certificate,
    /// rustls refused the TLS configuration (a bug: the settings here are fixed).
    Tls,
    /// The endpoint has no connection ids left for another connection.
    CidsExhausted,
    /// The address cannot be connected to (port 0 or unspecified).
    InvalidAddress,
    /// The carrier already holds [`crate::QuicConfig::conns_max`] connections.
    ConnectionsExhausted,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Config { what } => write!(f, "QUIC setting out of range: {what}"),
            Self::Certificate => f.write_str("could not make the TLS certificate"),
            Self::Tls => f.write_str("TLS configuration refused"),
            Self::CidsExhausted => f.write_str("no QUIC connection ids left"),
            Self::InvalidAddress => f.write_str("cannot connect to that address"),
            Self::ConnectionsExhausted => f.write_str("too many QUIC connections"),
        }
    }
}

impl std::error::Error for Error {}

/// Reading or writing a connection's stream failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamError {
    /// No such connection (never was, or already closed and reported).
    UnknownConnection,
    /// The connection's CCP-2 stream is not open yet (wait for `StreamOpened`).
    NotOpen,
    /// The connection is closing or closed.
    Closed,
    /// The peer finished its side of the stream: the end of the byte stream.
    Finished,
    /// The peer abandoned its side of the stream with this code.
    Reset(u64),
    /// The peer no longer reads the stream, with this code.
    Stopped(u64),
}

impl core::fmt::Display for StreamError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::UnknownConnection => f.write_str("unknown QUIC connection"),
            Self::NotOpen => f.write_str("stream not open yet"),
            Self::Closed => f.write_str("connection closed"),
            Self::Finished => f.write_str("peer finished the stream"),
            Self::Reset(code) => write!(f, "peer reset the stream ({code:#x})"),
            Self::Stopped(code) => write!(f, "peer stopped reading ({code:#x})"),
        }
    }
}

impl std::error::Error for StreamError {}
