//! Transport after the handshake: ordered records over a stream ([`StreamSession`]) and
//! independent datagrams with explicit counters ([`DatagramSession`]).
//!
//! Both are sans-IO and allocate nothing: they seal into and open from caller buffers.
//!
//! **Stream records** (TCP, QUIC streams): `len u16 | ciphertext`, where `len` counts the
//! ciphertext (plaintext plus 16-byte tag) and the nonce is an implicit counter starting at 0,
//! exactly like a Noise transport message. A record with an empty plaintext is a key update:
//! after it, the sender's key becomes `REKEY(k)` and the receiver follows.
//!
//! **Datagrams** (UDP): a 16-byte header `0x05 | epoch u8 | 0x0000 | receiver u32 | counter
//! u64`, then the ciphertext, with the header as associated data and `counter` as the nonce.
//! Counters rise across key epochs; the receiver keeps a 2048-counter replay window, the
//! current key, the previous key for [`PREVIOUS_KEY_KEEP_TIME`] and derives the next key on
//! demand when the peer rekeys first.

use crate::cipher::CipherKey;
use crate::handshake::{Established, Role};
use crate::packet::{DATA_HEADER_LEN, PacketType, read_u32, read_u64};
use crate::replay::ReplayWindow;
use crate::suite::{Pattern, Suite};
use crate::{OpenError, SealError};
use dp_core::limits::{
    AEAD_TAG_LEN, DATAGRAM_COUNTER_MAX, DATAGRAM_LEN_MAX, PREVIOUS_KEY_KEEP_TIME,
    RECORD_PLAINTEXT_LEN_MAX, REKEY_AFTER_BYTES, REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME,
};
use dp_core::{Instant, SessionIndex};
use zeroize::Zeroizing;

/// Bytes a stream record adds to its plaintext: the length and the tag.
pub const RECORD_OVERHEAD: usize = 2 + AEAD_TAG_LEN;
/// Bytes a datagram adds to its plaintext: the header and the tag.
pub const DATAGRAM_OVERHEAD: usize = DATA_HEADER_LEN + AEAD_TAG_LEN;
/// The largest plaintext of one datagram.
pub const DATAGRAM_PLAINTEXT_LEN_MAX: usize = DATAGRAM_LEN_MAX - DATAGRAM_OVERHEAD;

/// The two transport keys of a handshake, from this end's point of view.
pub(crate) struct SessionKeys {
    pub(crate) send: Zeroizing<[u8; 32]>,
    pub(crate) recv: Zeroizing<[u8; 32]>,
}

impl core::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

impl SessionKeys {
    pub(crate) fn new(send: [u8; 32], recv: [u8; 32]) -> Self {
        Self {
            send: Zeroizing::new(send),
            recv: Zeroizing::new(recv),
        }
    }
}

/// When the sender moves to the next key.
struct SendKey {
    key: CipherKey,
    counter: u64,
    messages: u64,
    bytes: u64,
    since: Instant,
}

impl SendKey {
    fn new(key: CipherKey, now: Instant) -> Self {
        Self {
            key,
            counter: 0,
            messages: 0,
            bytes: 0,
            since: now,
        }
    }

    fn rekey_due(&self, now: Instant) -> bool {
        self.messages >= REKEY_AFTER_MESSAGES
            || self.bytes >= REKEY_AFTER_BYTES
            || now.saturating_duration_since(self.since) >= REKEY_AFTER_TIME
    }

    fn rekey(&mut self, now: Instant) {
        self.key = self.key.rekey();
        self.messages = 0;
        self.bytes = 0;
        self.since = now;
    }

    fn account(&mut self, len: usize) {
        self.messages += 1;
        self.bytes = self.bytes.saturating_add(len as u64);
    }
}

// ---------------------------------------------------------------------------------------------
// Stream
// ---------------------------------------------------------------------------------------------

/// An ordered, reliable session over a byte stream.
///
/// Sealing: [`StreamSession::seal_record`] writes one record (and, when a rekey is due, a key
/// update record before it). Opening: feed the received bytes to
/// [`StreamSession::open_record`], which decrypts the first complete record in place.
pub struct StreamSession {
    send: SendKey,
    recv: CipherKey,
    recv_counter: u64,
}

impl core::fmt::Debug for StreamSession {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("StreamSession")
            .field("send_counter", &self.send.counter)
            .field("recv_counter", &self.recv_counter)
            .finish_non_exhaustive()
    }
}

/// One record opened by [`StreamSession::open_record`].
#[derive(Debug, PartialEq, Eq)]
pub struct OpenedRecord {
    /// Bytes of input the record took (header and ciphertext).
    pub consumed: usize,
    /// Where the plaintext lies in the input buffer (empty for a key update).
    pub plaintext: core::ops::Range<usize>,
}

impl StreamSession {
    /// The stream session of a completed handshake.
    pub fn new(established: &Established, now: Instant) -> Self {
        let cipher = established.suite.cipher;
        Self {
            send: SendKey::new(CipherKey::new(cipher, &established.keys.send), now),
            recv: CipherKey::new(cipher, &established.keys.recv),
            recv_counter: 0,
        }
    }

    /// The most bytes `seal_record` may write for `plaintext_len` bytes (including a possible
    /// key update record).
    pub const fn sealed_len_max(plaintext_len: usize) -> usize {
        plaintext_len + 2 * RECORD_OVERHEAD
    }

    /// Seals `plaintext` (1 to [`RECORD_PLAINTEXT_LEN_MAX`] bytes) as one record into `out`;
    /// returns the bytes written.
    pub fn seal_record(
        &mut self,
        now: Instant,
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, SealError> {
        if plaintext.is_empty() || plaintext.len() > RECORD_PLAINTEXT_LEN_MAX {
            return Err(SealError::TooLarge);
        }
        if out.len() < Self::sealed_len_max(plaintext.len()) {
            return Err(SealError::BufferTooSmall);
        }
        let mut at = 0;
        if self.send.rekey_due(now) {
            at = self.seal_one(&[], out)?;
            self.send.rekey(now);
        }
        at += self.seal_one(plaintext, &mut out[at..])?;
        Ok(at)
    }

    /// Sends a key update now, whatever the counters say (for tests and operator action).
    pub fn force_key_update(&mut self, now: Instant, out: &mut [u8]) -> Result<usize, SealError> {
        if out.len() < RECORD_OVERHEAD {
            return Err(SealError::BufferTooSmall);
        }
        let len = self.seal_one(&[], out)?;
        self.send.rekey(now);
        Ok(len)
    }

    fn seal_one(&mut self, plaintext: &[u8], out: &mut [u8]) -> Result<usize, SealError> {
        if self.send.counter >= DATAGRAM_COUNTER_MAX {
            return Err(SealError::CounterExhausted);
        }
        let ciphertext_len = plaintext.len() + AEAD_TAG_LEN;
        let len = u16::try_from(ciphertext_len).map_err(|_| SealError::TooLarge)?;
        out[..2].copy_from_slice(&len.to_be_bytes());
        let body = &mut out[2..2 + plaintext.len()];
        body.copy_from_slice(plaintext);
        let tag = self.send.key.seal_in_place(self.send.counter, &[], body);
        out[2 + plaintext.len()..2 + ciphertext_len].copy_from_slice(&tag);
        self.send.counter += 1;
        self.send.account(plaintext.len());
        Ok(2 + ciphertext_len)
    }

    /// Opens the first record in `input` in place. `Ok(None)`: the record is not complete yet
    /// (read more). A key update record yields an empty plaintext range.
    pub fn open_record(&mut self, input: &mut [u8]) -> Result<Option<OpenedRecord>, OpenError> {
        let Some(header) = input.get(..2) else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes([header[0], header[1]]));
        if len < AEAD_TAG_LEN {
            return Err(OpenError::Malformed);
        }
        let Some(body) = input.get_mut(2..2 + len) else {
            return Ok(None);
        };
        if self.recv_counter >= DATAGRAM_COUNTER_MAX {
            return Err(OpenError::CounterExhausted);
        }
        let plaintext_len = self
            .recv
            .open_in_place(self.recv_counter, &[], body)
            .ok_or(OpenError::Decrypt)?;
        self.recv_counter += 1;
        if plaintext_len == 0 {
            self.recv = self.recv.rekey();
        }
        Ok(Some(OpenedRecord {
            consumed: 2 + len,
            plaintext: 2..2 + plaintext_len,
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// Datagram
// ---------------------------------------------------------------------------------------------

struct PreviousKey {
    key: CipherKey,
    epoch: u8,
    until: Instant,
}

/// An unordered, lossy session over datagrams. See the module doc for the layout.
pub struct DatagramSession {
    send: SendKey,
    send_epoch: u8,
    recv: CipherKey,
    recv_epoch: u8,
    previous: Option<PreviousKey>,
    window: ReplayWindow,
    remote_index: SessionIndex,
    local_index: SessionIndex,
    /// An IK responder may not send until the initiator proved its keys by sending first.
    confirmed: bool,
}

impl core::fmt::Debug for DatagramSession {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DatagramSession")
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("send_epoch", &self.send_epoch)
            .field("recv_epoch", &self.recv_epoch)
            .finish_non_exhaustive()
    }
}

impl DatagramSession {
    /// The datagram session of a completed handshake.
    pub fn new(established: &Established, now: Instant) -> Self {
        let cipher = established.suite.cipher;
        Self {
            send: SendKey::new(CipherKey::new(cipher, &established.keys.send), now),
            send_epoch: 0,
            recv: CipherKey::new(cipher, &established.keys.recv),
            recv_epoch: 0,
            previous: None,
            window: ReplayWindow::new(),
            remote_index: established.remote_index,
            local_index: established.local_index,
            confirmed: !needs_confirmation(established.suite, established.role),
        }
    }

    /// The index peers put in datagrams for this session.
    pub fn local_index(&self) -> SessionIndex {
        self.local_index
    }

    /// Seals `plaintext` (up to [`DATAGRAM_PLAINTEXT_LEN_MAX`] bytes) into `out` as one
    /// datagram; returns its length. Rekeys first when a limit is reached.
    pub fn seal(
        &mut self,
        now: Instant,
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, SealError> {
        if !self.confirmed {
            return Err(SealError::NotConfirmed);
        }
        if plaintext.len() > DATAGRAM_PLAINTEXT_LEN_MAX {
            return Err(SealError::TooLarge);
        }
        let total = DATAGRAM_OVERHEAD + plaintext.len();
        if out.len() < total {
            return Err(SealError::BufferTooSmall);
        }
        if self.send.counter >= DATAGRAM_COUNTER_MAX {
            return Err(SealError::CounterExhausted);
        }
        if self.send.rekey_due(now) {
            self.send.rekey(now);
            self.send_epoch = self.send_epoch.wrapping_add(1);
        }
        let (header, rest) = out.split_at_mut(DATA_HEADER_LEN);
        header[0] = PacketType::Data as u8;
        header[1] = self.send_epoch;
        header[2..4].copy_from_slice(&[0, 0]);
        header[4..8].copy_from_slice(&self.remote_index.0.to_be_bytes());
        header[8..16].copy_from_slice(&self.send.counter.to_be_bytes());
        let body = &mut rest[..plaintext.len()];
        body.copy_from_slice(plaintext);
        let tag = self.send.key.seal_in_place(self.send.counter, header, body);
        rest[plaintext.len()..plaintext.len() + AEAD_TAG_LEN].copy_from_slice(&tag);
        self.send.counter += 1;
        self.send.account(plaintext.len());
        Ok(total)
    }

    /// Opens `datagram` in place; returns the plaintext's range within it. On error nothing
    /// changes (the replay window and keys move only for authentic datagrams).
    pub fn open(
        &mut self,
        now: Instant,
        datagram: &mut [u8],
    ) -> Result<core::ops::Range<usize>, OpenError> {
        if datagram.len() > DATAGRAM_LEN_MAX {
            return Err(OpenError::TooLarge);
        }
        if datagram.len() < DATAGRAM_OVERHEAD
            || datagram[0] != PacketType::Data as u8
            || datagram[2..4] != [0, 0]
            || read_u32(&datagram[4..8]) != self.local_index.0
        {
            return Err(OpenError::Malformed);
        }
        let epoch = datagram[1];
        let counter = read_u64(&datagram[8..16]);
        if counter >= DATAGRAM_COUNTER_MAX {
            return Err(OpenError::CounterExhausted);
        }
        if !self.window.check(counter) {
            return Err(OpenError::Replay);
        }
        let (header, body) = datagram.split_at_mut(DATA_HEADER_LEN);
        let plaintext_len = if epoch == self.recv_epoch {
            self.recv
                .open_in_place(counter, header, body)
                .ok_or(OpenError::Decrypt)?
        } else if epoch == self.recv_epoch.wrapping_add(1) {
            let next = self.recv.rekey();
            let len = next
                .open_in_place(counter, header, body)
                .ok_or(OpenError::Decrypt)?;
            let current = core::mem::replace(&mut self.recv, next);
            self.previous = Some(PreviousKey {
                key: current,
                epoch: self.recv_epoch,
                until: now.saturating_add(PREVIOUS_KEY_KEEP_TIME),
            });
            self.recv_epoch = epoch;
            len
        } else {
            let previous = self
                .previous
                .as_ref()
                .filter(|p| p.epoch == epoch && now < p.until)
                .ok_or(OpenError::UnknownEpoch)?;
            previous
                .key
                .open_in_place(counter, header, body)
                .ok_or(OpenError::Decrypt)?
        };
        self.window.commit(counter);
        self.confirmed = true;
        Ok(DATA_HEADER_LEN..DATA_HEADER_LEN + plaintext_len)
    }

    /// Drops the previous receive key once its time is up.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.previous.as_ref().is_some_and(|p| now >= p.until) {
            self.previous = None;
        }
    }

    /// When the sender will rekey, or the previous key expires, whichever is first.
    pub fn poll_timeout(&self) -> Instant {
        let rekey = self.send.since.saturating_add(REKEY_AFTER_TIME);
        self.previous.as_ref().map_or(rekey, |p| p.until.min(rekey))
    }
}

fn needs_confirmation(suite: Suite, role: Role) -> bool {
    suite.pattern == Pattern::Ik && role == Role::Responder
}

#[cfg(test)]
mod tests;
