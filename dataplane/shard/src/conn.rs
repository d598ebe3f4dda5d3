//! Connections: their buffers, their state, and the slab that holds them.

use crate::route::InFlight;
use core::net::SocketAddr;
use core::time::Duration;
use dp_core::limits::{HANDSHAKE_TIMEOUT, RECORD_PLAINTEXT_LEN_MAX};
use dp_core::{DeviceId, Instant};
use dp_noise::{Established as Handshake, StreamSession};
use dp_proto::{Frame, FrameAssembler};
use std::collections::VecDeque;

/// The most bytes of one handshake packet on a stream (the largest is about 1.3 KB).
pub(crate) const HANDSHAKE_PACKET_LEN_MAX: usize = 2048;
/// Written output is dropped from the front of a connection's buffer once it is at least this
/// long and at least half the buffer.
const OUTBOUND_COMPACT_MIN: usize = 64 * 1024;
/// The most spent envelope boxes a shard keeps for reuse.
pub(crate) const SPARE_ENVELOPES_MAX: usize = 4096;
/// Bodies with more capacity than this are freed rather than kept (an envelope of up to the
/// maximum size is rare; keeping 4096 of them would hold 1 GiB).
pub(crate) const SPARE_BODY_CAPACITY_MAX: usize = 16 * 1024;
/// The most received bytes a connection may hold unprocessed: one whole record.
pub(crate) const INBOUND_BYTES_MAX: usize = 2 + u16::MAX as usize + HANDSHAKE_PACKET_LEN_MAX;

/// A connection's handle: slab index and generation, so a stale handle never reaches a newer
/// connection in the same slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId {
    index: u32,
    generation: u32,
}

impl ConnId {
    /// A handle that names no connection (no slab reaches index `u32::MAX`).
    pub const DANGLING: Self = Self {
        index: u32::MAX,
        generation: u32::MAX,
    };
}

pub(crate) enum ConnState {
    Handshaking,
    Established(Box<Established>),
}

pub(crate) struct Established {
    pub(crate) stream: StreamSession,
    pub(crate) assembler: FrameAssembler,
    pub(crate) device: DeviceId,
    /// The proof of identity from the handshake, for control operations that bind a key.
    pub(crate) peer: dp_noise::PeerAuthenticated,
    /// Requests sent to control and not yet answered.
    pub(crate) requests_open: u32,
    pub(crate) hello_done: bool,
}

impl Established {
    pub(crate) fn new(now: Instant, handshake: &Handshake) -> Self {
        Self {
            stream: StreamSession::new(handshake, now),
            assembler: FrameAssembler::new(dp_core::limits::FRAME_LEN_MAX),
            device: handshake.peer.device(),
            peer: handshake.peer.clone(),
            requests_open: 0,
            hello_done: false,
        }
    }
}

pub(crate) struct Conn {
    pub(crate) peer: SocketAddr,
    pub(crate) state: ConnState,
    /// Closing: input is ignored, queued output is still sealed and written.
    pub(crate) closing: bool,
    /// Listed in the shard's dirty list.
    pub(crate) dirty: bool,
    /// Waiting to move to its home shard: input is buffered, not processed.
    pub(crate) handing_off: bool,
    created: Instant,
    pub(crate) last_rx: Instant,
    /// Received bytes not yet processed, from `inbound_at` on.
    pub(crate) inbound: Vec<u8>,
    pub(crate) inbound_at: usize,
    /// A reused buffer for one record's plaintext.
    pub(crate) record_scratch: Vec<u8>,
    /// Encoded frames waiting to be sealed.
    plain_out: Vec<u8>,
    /// Bytes ready to write, from `outbound_at` on.
    outbound: Vec<u8>,
    outbound_at: usize,
    /// Envelopes queued to this connection and not yet acknowledged, oldest first.
    pub(crate) inflight: VecDeque<InFlight>,
}

/// A connection moving to its home shard: everything but the socket, which the IO layer moves.
pub struct HandOff {
    peer: SocketAddr,
    session: Box<Established>,
    inbound: Vec<u8>,
    plain_out: Vec<u8>,
    outbound: Vec<u8>,
}

impl core::fmt::Debug for HandOff {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HandOff")
            .field("device", &self.session.device)
            .finish_non_exhaustive()
    }
}

impl Conn {
    pub(crate) fn new(now: Instant, peer: SocketAddr) -> Self {
        Self {
            peer,
            state: ConnState::Handshaking,
            closing: false,
            dirty: false,
            handing_off: false,
            created: now,
            last_rx: now,
            inbound: Vec::new(),
            inbound_at: 0,
            record_scratch: Vec::new(),
            plain_out: Vec::new(),
            outbound: Vec::new(),
            outbound_at: 0,
            inflight: VecDeque::new(),
        }
    }

    pub(crate) fn into_handoff(self) -> Option<Box<HandOff>> {
        let ConnState::Established(session) = self.state else {
            return None;
        };
        Some(Box::new(HandOff {
            peer: self.peer,
            session,
            inbound: self.inbound[self.inbound_at..].to_vec(),
            plain_out: self.plain_out,
            outbound: self.outbound[self.outbound_at..].to_vec(),
        }))
    }

    pub(crate) fn from_handoff(now: Instant, handoff: HandOff) -> Self {
        Self {
            peer: handoff.peer,
            state: ConnState::Established(handoff.session),
            closing: false,
            dirty: false,
            handing_off: false,
            created: now,
            last_rx: now,
            inbound: handoff.inbound,
            inbound_at: 0,
            record_scratch: Vec::new(),
            plain_out: handoff.plain_out,
            outbound: handoff.outbound,
            outbound_at: 0,
            inflight: VecDeque::new(),
        }
    }

    pub(crate) fn queue_handshake(&mut self, packet: &[u8]) {
        // Handshake packets are at most a few KB, far below u16::MAX.
        let len = u16::try_from(packet.len()).unwrap_or(u16::MAX);
        self.outbound.extend_from_slice(&len.to_be_bytes());
        self.outbound.extend_from_slice(packet);
    }

    pub(crate) fn queue_frame(&mut self, frame: &Frame<'_>) -> bool {
        frame.encode_append(&mut self.plain_out).is_ok()
    }

    /// Bytes waiting to go out, sealed or not.
    pub(crate) fn pending_bytes(&self) -> usize {
        self.plain_out.len() + self.outbound.len() - self.outbound_at
    }

    /// Seals waiting frames into records and returns every byte ready to write.
    pub(crate) fn seal_pending(&mut self, now: Instant) -> &[u8] {
        if let ConnState::Established(session) = &mut self.state {
            for chunk in self.plain_out.chunks(RECORD_PLAINTEXT_LEN_MAX) {
                let at = self.outbound.len();
                self.outbound
                    .resize(at + StreamSession::sealed_len_max(chunk.len()), 0);
                match session
                    .stream
                    .seal_record(now, chunk, &mut self.outbound[at..])
                {
                    Ok(len) => self.outbound.truncate(at + len),
                    Err(_) => {
                        // The send counter is exhausted: nothing more can be sent safely.
                        self.outbound.truncate(at);
                        break;
                    }
                }
            }
            self.plain_out.clear();
        }
        &self.outbound[self.outbound_at..]
    }

    pub(crate) fn consume_outbound(&mut self, n: usize) {
        self.outbound_at = (self.outbound_at + n).min(self.outbound.len());
        if self.outbound_at == self.outbound.len() {
            self.outbound.clear();
            self.outbound_at = 0;
        } else if self.outbound_at >= OUTBOUND_COMPACT_MIN
            && self.outbound_at * 2 >= self.outbound.len()
        {
            // Under steady back-pressure the buffer never empties: drop the written prefix
            // once it is at least half, so the buffer stays within twice what is pending.
            self.outbound.drain(..self.outbound_at);
            self.outbound_at = 0;
        }
    }

    /// Drops processed inbound bytes so the buffer holds only the unprocessed tail.
    pub(crate) fn compact_inbound(&mut self) {
        if self.inbound_at > 0 {
            self.inbound.drain(..self.inbound_at);
            self.inbound_at = 0;
        }
    }

    pub(crate) fn deadline(&self, idle: Duration) -> Instant {
        match self.state {
            _ if self.closing => Instant(u64::MAX),
            ConnState::Handshaking => self.created.saturating_add(HANDSHAKE_TIMEOUT),
            ConnState::Established(_) => self.last_rx.saturating_add(idle),
        }
    }

    pub(crate) fn expired(&self, now: Instant, idle: Duration) -> Option<crate::CloseReason> {
        if now < self.deadline(idle) {
            return None;
        }
        match self.state {
            ConnState::Handshaking => Some(crate::CloseReason::HandshakeTimeout),
            ConnState::Established(_) => Some(crate::CloseReason::Idle),
        }
    }
}

/// Takes one `u16`-length-prefixed handshake packet off the front of `inbound`, if complete.
/// An over-long length is treated as a packet the responder will refuse.
pub(crate) fn take_handshake_packet(inbound: &mut Vec<u8>) -> Option<Vec<u8>> {
    let header = inbound.get(..2)?;
    let len = usize::from(u16::from_be_bytes([header[0], header[1]]));
    if len > HANDSHAKE_PACKET_LEN_MAX {
        inbound.clear();
        return Some(Vec::new());
    }
    if inbound.len() < 2 + len {
        return None;
    }
    let packet = inbound[2..2 + len].to_vec();
    inbound.drain(..2 + len);
    Some(packet)
}

struct Entry {
    generation: u32,
    conn: Option<Conn>,
}

/// The connections of a shard, bounded.
pub(crate) struct Slab {
    entries: Vec<Entry>,
    free: Vec<u32>,
    len: usize,
    max: usize,
}

impl Slab {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            entries: Vec::new(),
            free: Vec::new(),
            len: 0,
            max: max.min(u32::MAX as usize),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn insert(&mut self, conn: Conn) -> Option<ConnId> {
        if self.len >= self.max {
            return None;
        }
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.entries.push(Entry {
                    generation: 0,
                    conn: None,
                });
                u32::try_from(self.entries.len() - 1).ok()?
            }
        };
        let entry = self.entries.get_mut(index as usize)?;
        entry.conn = Some(conn);
        self.len += 1;
        Some(ConnId {
            index,
            generation: entry.generation,
        })
    }

    pub(crate) fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.entries
            .get_mut(id.index as usize)
            .filter(|entry| entry.generation == id.generation)
            .and_then(|entry| entry.conn.as_mut())
    }

    pub(crate) fn remove(&mut self, id: ConnId) -> Option<Conn> {
        let entry = self
            .entries
            .get_mut(id.index as usize)
            .filter(|entry| entry.generation == id.generation)?;
        let conn = entry.conn.take()?;
        entry.generation = entry.generation.wrapping_add(1);
        self.free.push(id.index);
        self.len -= 1;
        Some(conn)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (ConnId, &Conn)> {
        self.entries
            .iter()
            .zip(0u32..)
            .filter_map(|(entry, index)| {
                entry.conn.as_ref().map(|conn| {
                    (
                        ConnId {
                            index,
                            generation: entry.generation,
                        },
                        conn,
                    )
                })
            })
    }
}
