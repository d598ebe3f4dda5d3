//! Packet layouts shared by TCP and UDP (docs/PROTOCOL.md §Packets). Multi-byte integers are
//! big-endian.
//!
//! ```text
//! Initiation  (0x01): type | suite | 0x0000 | sender u32 | noise message | mac1[16] | mac2[16]
//! Response    (0x02): type | suite | 0x0000 | sender u32 | receiver u32 | [kem ct, IK hybrid]
//!                     | noise message
//! Finish      (0x03): type | suite | 0x0000 | sender u32 | receiver u32 | noise message
//! CookieReply (0x04): type | 0x000000 | receiver u32 | nonce[24] | sealed cookie[32]
//! Data        (0x05): type | epoch u8 | 0x0000 | receiver u32 | counter u64 | ciphertext+tag
//! ```

use crate::HandshakeError;
use crate::cookie::{COOKIE_NONCE_LEN, COOKIE_SEALED_LEN, MAC_LEN};
use crate::suite::Suite;

/// The first byte of every packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PacketType {
    /// Handshake message 1, from the initiator.
    Initiation = 0x01,
    /// Handshake message 2, from the responder.
    Response = 0x02,
    /// Handshake message 3 (XK only), from the initiator.
    Finish = 0x03,
    /// A cookie, instead of a response, from a responder under load.
    CookieReply = 0x04,
    /// A transport datagram.
    Data = 0x05,
}

impl PacketType {
    /// The type of `packet`, from its first byte.
    pub fn of(packet: &[u8]) -> Option<Self> {
        match packet.first()? {
            0x01 => Some(Self::Initiation),
            0x02 => Some(Self::Response),
            0x03 => Some(Self::Finish),
            0x04 => Some(Self::CookieReply),
            0x05 => Some(Self::Data),
            _ => None,
        }
    }
}

/// Length of the initiation header.
pub const INITIATION_HEADER_LEN: usize = 8;
/// Length of the response and finish headers.
pub const REPLY_HEADER_LEN: usize = 12;
/// Length of a cookie reply.
pub const COOKIE_REPLY_LEN: usize = 8 + COOKIE_NONCE_LEN + COOKIE_SEALED_LEN;
/// Length of the data header (also the AEAD associated data of a datagram).
pub const DATA_HEADER_LEN: usize = 16;

/// The parsed fixed fields of an initiation.
pub(crate) struct Initiation<'a> {
    pub(crate) suite: Suite,
    pub(crate) sender: u32,
    pub(crate) noise: &'a [u8],
    /// Everything before `mac1`: what `mac1` covers.
    pub(crate) mac1_input: &'a [u8],
    pub(crate) mac1: [u8; MAC_LEN],
    /// Everything before `mac2`: what `mac2` covers.
    pub(crate) mac2_input: &'a [u8],
    pub(crate) mac2: [u8; MAC_LEN],
}

pub(crate) fn parse_initiation(packet: &[u8]) -> Result<Initiation<'_>, HandshakeError> {
    let len = packet.len();
    if len < INITIATION_HEADER_LEN + 2 * MAC_LEN || packet[0] != PacketType::Initiation as u8 {
        return Err(HandshakeError::Malformed);
    }
    if packet[2..4] != [0, 0] {
        return Err(HandshakeError::Malformed);
    }
    let suite = Suite::from_byte(packet[1])?;
    let mac1_at = len - 2 * MAC_LEN;
    let mac2_at = len - MAC_LEN;
    Ok(Initiation {
        suite,
        sender: read_u32(&packet[4..8]),
        noise: &packet[INITIATION_HEADER_LEN..mac1_at],
        mac1_input: &packet[..mac1_at],
        mac1: array16(&packet[mac1_at..mac2_at]),
        mac2_input: &packet[..mac2_at],
        mac2: array16(&packet[mac2_at..]),
    })
}

/// The parsed fixed fields of a response or finish.
pub(crate) struct Reply<'a> {
    pub(crate) suite: Suite,
    pub(crate) sender: u32,
    pub(crate) receiver: u32,
    /// Everything after the header.
    pub(crate) body: &'a [u8],
}

pub(crate) fn parse_reply(packet: &[u8], kind: PacketType) -> Result<Reply<'_>, HandshakeError> {
    if packet.len() < REPLY_HEADER_LEN || packet[0] != kind as u8 || packet[2..4] != [0, 0] {
        return Err(HandshakeError::Malformed);
    }
    Ok(Reply {
        suite: Suite::from_byte(packet[1])?,
        sender: read_u32(&packet[4..8]),
        receiver: read_u32(&packet[8..12]),
        body: &packet[REPLY_HEADER_LEN..],
    })
}

pub(crate) fn write_reply_header(
    out: &mut [u8],
    kind: PacketType,
    suite: Suite,
    sender: u32,
    receiver: u32,
) {
    out[0] = kind as u8;
    out[1] = suite.to_byte();
    out[2..4].copy_from_slice(&[0, 0]);
    out[4..8].copy_from_slice(&sender.to_be_bytes());
    out[8..12].copy_from_slice(&receiver.to_be_bytes());
}

pub(crate) fn write_initiation_header(out: &mut [u8], suite: Suite, sender: u32) {
    out[0] = PacketType::Initiation as u8;
    out[1] = suite.to_byte();
    out[2..4].copy_from_slice(&[0, 0]);
    out[4..8].copy_from_slice(&sender.to_be_bytes());
}

/// The parsed fields of a cookie reply.
pub(crate) struct CookieReply {
    pub(crate) receiver: u32,
    pub(crate) nonce: [u8; COOKIE_NONCE_LEN],
    pub(crate) sealed: [u8; COOKIE_SEALED_LEN],
}

pub(crate) fn parse_cookie_reply(packet: &[u8]) -> Result<CookieReply, HandshakeError> {
    if packet.len() != COOKIE_REPLY_LEN
        || packet[0] != PacketType::CookieReply as u8
        || packet[1..4] != [0, 0, 0]
    {
        return Err(HandshakeError::Malformed);
    }
    let mut nonce = [0u8; COOKIE_NONCE_LEN];
    nonce.copy_from_slice(&packet[8..8 + COOKIE_NONCE_LEN]);
    let mut sealed = [0u8; COOKIE_SEALED_LEN];
    sealed.copy_from_slice(&packet[8 + COOKIE_NONCE_LEN..]);
    Ok(CookieReply {
        receiver: read_u32(&packet[4..8]),
        nonce,
        sealed,
    })
}

pub(crate) fn write_cookie_reply(
    out: &mut [u8],
    receiver: u32,
    nonce: &[u8; COOKIE_NONCE_LEN],
    sealed: &[u8; COOKIE_SEALED_LEN],
) {
    out[0] = PacketType::CookieReply as u8;
    out[1..4].copy_from_slice(&[0, 0, 0]);
    out[4..8].copy_from_slice(&receiver.to_be_bytes());
    out[8..8 + COOKIE_NONCE_LEN].copy_from_slice(nonce);
    out[8 + COOKIE_NONCE_LEN..COOKIE_REPLY_LEN].copy_from_slice(sealed);
}

/// The receiver index of a data packet, so that the IO layer can find the session without
/// decrypting. `None` if the packet is not a well-formed data packet.
pub fn data_receiver(packet: &[u8]) -> Option<u32> {
    if packet.len() < DATA_HEADER_LEN + 16 || packet[0] != PacketType::Data as u8 {
        return None;
    }
    Some(read_u32(&packet[4..8]))
}

pub(crate) fn read_u32(bytes: &[u8]) -> u32 {
    let mut buf = [0u8; 4];
    buf.copy_from_slice(&bytes[..4]);
    u32::from_be_bytes(buf)
}

pub(crate) fn read_u64(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(buf)
}

fn array16(bytes: &[u8]) -> [u8; 16] {
    let mut buf = [0u8; 16];
    buf.copy_from_slice(&bytes[..16]);
    buf
}
