//! Limits and settings of the carrier, and the application error codes on the wire.

use crate::error::Error;
use core::time::Duration;
use quinn_proto::{IdleTimeout, TransportConfig, VarInt};

/// A CCP-2 application error code, carried in QUIC's `CONNECTION_CLOSE` (type `0x1d`),
/// `RESET_STREAM` and `STOP_SENDING` frames (`docs/PROTOCOL.md` §11.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CloseCode(pub u32);

impl CloseCode {
    /// Orderly close: the peer closed, or the server let an idle session go.
    pub const NO_ERROR: Self = Self(0x00);
    /// A local error that says nothing about the peer.
    pub const INTERNAL: Self = Self(0x01);
    /// A Noise handshake packet or record failed (the byte stream cannot go on).
    pub const CRYPTO: Self = Self(0x02);
    /// The peer broke the CCP-2 framing rules; an `Error` frame said which one.
    pub const PROTOCOL: Self = Self(0x03);
    /// The recipient read too slowly and its backlog went to storage.
    pub const SLOW_CONSUMER: Self = Self(0x04);
    /// The server is shutting down; the client was told `GoAway`.
    pub const SHUTTING_DOWN: Self = Self(0x05);
    /// The server (or its per-source limit) has no room for another connection.
    pub const REFUSED: Self = Self(0x06);
    /// The Noise handshake or the session went quiet for too long.
    pub const TIMEOUT: Self = Self(0x07);
    /// Stream-level: only one bidirectional stream per connection carries CCP-2; any other
    /// stream is stopped and reset with this code.
    pub const EXCESS_STREAM: Self = Self(0x10);

    pub(crate) fn varint(self) -> VarInt {
        VarInt::from_u32(self.0)
    }
}

/// Carrier settings with their bounds. Every field is checked when a [`crate::QuicServer`]
/// or [`crate::QuicClient`] is made ([`Error::Config`]).
#[derive(Clone, Copy, Debug)]
pub struct QuicConfig {
    /// The most connections a server holds (established and handshaking); beyond it a new
    /// connection is refused with QUIC's `CONNECTION_REFUSED`.
    pub conns_max: usize,
    /// The most connections a server holds from one source: one IPv4 address or one IPv6 /64
    /// (the port is not part of the key). Checked before any TLS work, so one address cannot
    /// fill the table with handshakes; the shard applies its own cap on top.
    pub conns_per_source_max: u32,
    /// The most connection attempts a server buffers before it decides to accept them.
    pub incoming_max: usize,
    /// Bytes a peer may send on the stream beyond what the application has read.
    pub stream_receive_window: u32,
    /// Bytes a peer may send on the whole connection beyond what has been read.
    pub receive_window: u32,
    /// Bytes written but not yet acknowledged, per connection; `write` accepts no more.
    pub send_window: u64,
    /// A connection with no traffic for this long is gone (both sides apply the smaller of the
    /// two values; at most 2^62 ms).
    pub idle_timeout: Duration,
    /// A client sends a keep-alive this often (None: never). Servers send none.
    pub keep_alive: Option<Duration>,
    /// How long `close` waits for written stream bytes to be acknowledged before the
    /// `CONNECTION_CLOSE` goes out anyway.
    pub close_linger: Duration,
    /// The most datagrams one [`crate::Transmit`] carries (a GSO batch); 1 turns batching off.
    pub gso_segments_max: usize,
    /// Answer a client whose address is not yet validated with a Retry first (stateless address
    /// validation, one more round trip: QUIC's cookie).
    pub retry: bool,
    /// Probe for a path MTU above 1200 bytes. Needs don't-fragment sockets in the IO layer.
    pub mtu_discovery: bool,
}

impl Default for QuicConfig {
    fn default() -> Self {
        Self {
            conns_max: 1 << 16,
            conns_per_source_max: 4096,
            incoming_max: 1 << 12,
            stream_receive_window: 1 << 20,
            receive_window: 1 << 21,
            send_window: 1 << 21,
            idle_timeout: Duration::from_secs(90),
            keep_alive: Some(Duration::from_secs(25)),
            close_linger: Duration::from_secs(2),
            gso_segments_max: 10,
            retry: false,
            mtu_discovery: false,
        }
    }
}

/// GSO batches above this are refused by Linux (`UDP_MAX_SEGMENTS`).
const GSO_SEGMENTS_MAX: usize = 64;

impl QuicConfig {
    /// Checks every bound; the error names the first field out of range.
    pub(crate) fn check(&self) -> Result<(), Error> {
        let bad = |what| Err(Error::Config { what });
        if self.conns_max == 0 {
            return bad("conns_max");
        }
        if self.conns_per_source_max == 0 {
            return bad("conns_per_source_max");
        }
        if self.incoming_max == 0 {
            return bad("incoming_max");
        }
        if self.stream_receive_window == 0 || self.receive_window < self.stream_receive_window {
            return bad("stream_receive_window");
        }
        if self.send_window == 0 {
            return bad("send_window");
        }
        if self.idle_timeout.is_zero() || IdleTimeout::try_from(self.idle_timeout).is_err() {
            return bad("idle_timeout");
        }
        if self
            .keep_alive
            .is_some_and(|k| k.is_zero() || k >= self.idle_timeout)
        {
            return bad("keep_alive");
        }
        if self.gso_segments_max == 0 || self.gso_segments_max > GSO_SEGMENTS_MAX {
            return bad("gso_segments_max");
        }
        Ok(())
    }

    /// quinn's transport parameters for one side. A server allows its client exactly one
    /// bidirectional stream at a time and no unidirectional ones; a client allows the server
    /// none at all (a server never opens a stream). QUIC datagrams are off.
    pub(crate) fn transport(&self, server: bool) -> Result<TransportConfig, Error> {
        let mut transport = TransportConfig::default();
        let bidi = if server { 1u32 } else { 0 };
        transport
            .max_concurrent_bidi_streams(VarInt::from_u32(bidi))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .stream_receive_window(VarInt::from_u32(self.stream_receive_window))
            .receive_window(VarInt::from_u32(self.receive_window))
            .send_window(self.send_window)
            .max_idle_timeout(Some(IdleTimeout::try_from(self.idle_timeout).map_err(
                |_| Error::Config {
                    what: "idle_timeout",
                },
            )?))
            .keep_alive_interval(if server { None } else { self.keep_alive })
            .datagram_receive_buffer_size(None)
            .datagram_send_buffer_size(0)
            .enable_segmentation_offload(self.gso_segments_max > 1);
        if !self.mtu_discovery {
            transport.mtu_discovery_config(None);
        }
        Ok(transport)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_and_each_bound_is_checked() {
        assert!(QuicConfig::default().check().is_ok());
        type Change = fn(&mut QuicConfig);
        let cases: [(&str, Change); 7] = [
            ("conns_max", |c| c.conns_max = 0),
            ("conns_per_source_max", |c| c.conns_per_source_max = 0),
            ("stream_receive_window", |c| c.receive_window = 1),
            ("send_window", |c| c.send_window = 0),
            ("idle_timeout", |c| c.idle_timeout = Duration::ZERO),
            ("keep_alive", |c| {
                c.keep_alive = Some(Duration::from_secs(600))
            }),
            ("gso_segments_max", |c| c.gso_segments_max = 65),
        ];
        for (what, change) in cases {
            let mut config = QuicConfig::default();
            change(&mut config);
            assert_eq!(config.check(), Err(Error::Config { what }), "{what}");
        }
    }
}
