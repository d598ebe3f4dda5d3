//! Group encryption with Megolm (vodozemac `megolm`): one ciphertext per group message, sent
//! once as a conversation send (the server fans it out, `docs/design/0013`), readable by every
//! member device that holds the sender's session key. Design: `docs/design/0014`.
//!
//! # Use
//!
//! * Sender: [`Groups::prepare`] with the conversation and the member devices it should reach
//!   (every live device of every member, other than this one). When it returns a [`RoomKey`],
//!   seal [`RoomKey::payload`] with Olm ([`crate::e2e::E2e::seal`]) to each device in
//!   [`RoomKey::devices`] and send those device envelopes *before* the group message. Then
//!   [`Groups::encrypt`] the text: the body of the conversation send.
//! * Receiver: an Olm plaintext starting with [`TAG_ROOM_KEY`] goes to
//!   [`Groups::receive_room_key`] (with the device that sent it); a body starting with
//!   [`TAG_GROUP`] goes to [`Groups::decrypt`]. A group message whose key has not arrived is
//!   kept ([`Decrypted::Pending`], at most [`PENDING_MAX`]) and handed back by the
//!   [`Groups::receive_room_key`] call that brings its key.
//!
//! # Formats
//!
//! ```text
//! room key (inside an Olm plaintext): 0x02 | conversation u64 BE | Megolm session key
//! group body (the envelope body):     0x03 | conversation u64 BE | id len u8 | session id
//!                                     (base64 text) | Megolm message
//! ```
//!
//! # Rules
//!
//! * The outbound session of a conversation is replaced (rotated) when the member device set
//!   differs from the one it was shared with, or after [`MESSAGES_PER_SESSION_MAX`] messages:
//!   a removed member cannot read what follows, an added one cannot read what came before.
//! * An inbound session is keyed by (sender device, session id) and bound to the conversation
//!   its room key named: a message is opened only for the same sender device (the server
//!   authenticates it) and the same conversation, so a member cannot pass a message off as
//!   another's nor move one into another group.
//! * A message index already opened is refused (a replay by the server).
//!
//! Every map is bounded ([`OUTBOUND_MAX`], [`INBOUND_MAX`], [`PENDING_MAX`],
//! [`INDICES_SEEN_MAX`]); past a bound the least recently used entry goes. No clock, no I/O.

use dp_core::DeviceId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use vodozemac::megolm::{
    GroupSession, GroupSessionPickle, InboundGroupSession, InboundGroupSessionPickle,
    MegolmMessage, SessionConfig, SessionKey,
};

/// The tag of a room key inside an Olm plaintext.
pub const TAG_ROOM_KEY: u8 = 0x02;
/// The tag of a group (Megolm) envelope body.
pub const TAG_GROUP: u8 = 0x03;
/// Messages one outbound session encrypts before it is replaced.
pub const MESSAGES_PER_SESSION_MAX: u32 = 100;
/// Conversations with an outbound session kept at most.
pub const OUTBOUND_MAX: usize = 1024;
/// Inbound sessions kept at most (all senders, all conversations).
pub const INBOUND_MAX: usize = 8192;
/// Group messages waiting for their key at most; past it the oldest is dropped.
pub const PENDING_MAX: usize = 256;
/// The longest note kept with a pending message.
pub const PENDING_NOTE_LEN_MAX: usize = 4096;
/// Message indices remembered per inbound session to refuse replays (an honest sender uses
/// at most [`MESSAGES_PER_SESSION_MAX`]).
pub const INDICES_SEEN_MAX: usize = 2 * MESSAGES_PER_SESSION_MAX as usize;
/// Member devices one room key is shared with at most.
pub const MEMBER_DEVICES_MAX: usize = 4096;
/// The longest group body read.
pub const GROUP_BODY_LEN_MAX: usize = dp_core::limits::ENVELOPE_BODY_LEN_MAX;
/// The longest session id read (vodozemac's are 43 base64 characters).
const SESSION_ID_LEN_MAX: usize = 64;

/// Why a group operation failed. A failure on received data drops that message only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupError {
    /// The body or room key is not in the format above.
    Malformed,
    /// The body is longer than [`GROUP_BODY_LEN_MAX`], the plaintext too long, or too many
    /// member devices.
    TooLong,
    /// The signature or MAC did not verify, or the index is before the key we hold.
    Decrypt,
    /// The message names another conversation than the one it was delivered in, or the
    /// session's room key was for another conversation.
    WrongConversation,
    /// This message index was opened already.
    Replayed,
    /// No outbound session for the conversation: call [`Groups::prepare`] first.
    NotPrepared,
}

impl fmt::Display for GroupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Malformed => "malformed group message or room key",
            Self::TooLong => "group message too long",
            Self::Decrypt => "group message does not decrypt (tampered, or key too late)",
            Self::WrongConversation => "group message for another conversation",
            Self::Replayed => "group message replayed",
            Self::NotPrepared => "no group session prepared",
        })
    }
}

impl std::error::Error for GroupError {}

/// A new session key to share with member devices over Olm.
#[derive(Clone, PartialEq, Eq)]
pub struct RoomKey {
    /// The Olm plaintext to seal to each device: [`TAG_ROOM_KEY`], conversation, session key.
    pub payload: Vec<u8>,
    /// The devices to send it to.
    pub devices: Vec<DeviceId>,
}

impl fmt::Debug for RoomKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("RoomKey")
            .field("devices", &self.devices.len())
            .finish_non_exhaustive()
    }
}

/// What [`Groups::decrypt`] made of a body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decrypted {
    /// The plaintext.
    Plaintext(Vec<u8>),
    /// Its key has not arrived: kept, and returned by the [`Groups::receive_room_key`] that
    /// brings it.
    Pending,
}

/// A pending message opened by a room key that arrived: the caller's note and the plaintext.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Released {
    /// The note given to [`Groups::decrypt`].
    pub note: String,
    /// The plaintext, or why it still does not open.
    pub result: Result<Vec<u8>, GroupError>,
}

struct Outbound {
    session: GroupSession,
    shared_with: BTreeSet<DeviceId>,
    used: u64,
}

struct Inbound {
    conversation: u64,
    session: InboundGroupSession,
    seen: BTreeSet<u32>,
    used: u64,
}

#[derive(Clone, Serialize, Deserialize)]
struct Pending {
    from: String,
    conversation: u64,
    body: Vec<u8>,
    note: String,
}

/// One device's group state: outbound sessions per conversation, inbound sessions per
/// (sender device, session id), and messages waiting for their key.
#[derive(Default)]
pub struct Groups {
    outbound: BTreeMap<u64, Outbound>,
    inbound: BTreeMap<(DeviceId, String), Inbound>,
    pending: VecDeque<Pending>,
    tick: u64,
}

impl fmt::Debug for Groups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Groups")
            .field("outbound", &self.outbound.len())
            .field("inbound", &self.inbound.len())
            .field("pending", &self.pending.len())
            .finish()
    }
}

/// A parsed group body.
struct GroupBody {
    conversation: u64,
    session_id: String,
    message: MegolmMessage,
}

fn parse_group(body: &[u8]) -> Result<GroupBody, GroupError> {
    if body.len() > GROUP_BODY_LEN_MAX {
        return Err(GroupError::TooLong);
    }
    let [TAG_GROUP, rest @ ..] = body else {
        return Err(GroupError::Malformed);
    };
    let (conversation, rest) = rest.split_first_chunk::<8>().ok_or(GroupError::Malformed)?;
    let (&id_len, rest) = rest.split_first().ok_or(GroupError::Malformed)?;
    let id_len = usize::from(id_len);
    if id_len > SESSION_ID_LEN_MAX || rest.len() < id_len {
        return Err(GroupError::Malformed);
    }
    let (id, message) = rest.split_at(id_len);
    let session_id = std::str::from_utf8(id)
        .map_err(|_| GroupError::Malformed)?
        .to_string();
    let message = MegolmMessage::from_bytes(message).map_err(|_| GroupError::Malformed)?;
    Ok(GroupBody {
        conversation: u64::from_be_bytes(*conversation),
        session_id,
        message,
    })
}

/// The conversation a group body names, without decrypting it.
pub fn conversation_of(body: &[u8]) -> Option<u64> {
    let rest = body.strip_prefix(&[TAG_GROUP])?;
    rest.first_chunk::<8>().map(|c| u64::from_be_bytes(*c))
}

impl Groups {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    fn touch(&mut self) -> u64 {
        self.tick = self.tick.wrapping_add(1);
        self.tick
    }

    /// Makes sure `conversation` has an outbound session shared with exactly `devices`.
    /// Returns the room key to share when a new session was started: there was none, the
    /// device set differs from the one the current session was shared with, or it has
    /// encrypted [`MESSAGES_PER_SESSION_MAX`] messages.
    pub fn prepare(
        &mut self,
        conversation: u64,
        devices: &[DeviceId],
    ) -> Result<Option<RoomKey>, GroupError> {
        if devices.len() > MEMBER_DEVICES_MAX {
            return Err(GroupError::TooLong);
        }
        let wanted: BTreeSet<DeviceId> = devices.iter().copied().collect();
        let tick = self.touch();
        if let Some(current) = self.outbound.get_mut(&conversation)
            && current.shared_with == wanted
            && current.session.message_index() < MESSAGES_PER_SESSION_MAX
        {
            current.used = tick;
            return Ok(None);
        }
        if !self.outbound.contains_key(&conversation) && self.outbound.len() >= OUTBOUND_MAX {
            evict_oldest(&mut self.outbound, |o| o.used);
        }
        let session = GroupSession::new(SessionConfig::version_1());
        let mut payload = Vec::with_capacity(1 + 8 + 256);
        payload.push(TAG_ROOM_KEY);
        payload.extend_from_slice(&conversation.to_be_bytes());
        payload.extend_from_slice(&session.session_key().to_bytes());
        self.outbound.insert(
            conversation,
            Outbound {
                session,
                shared_with: wanted.clone(),
                used: tick,
            },
        );
        Ok(Some(RoomKey {
            payload,
            devices: wanted.into_iter().collect(),
        }))
    }

    /// Drops `conversation`'s outbound session (its key may not have reached the members):
    /// the next [`Groups::prepare`] starts and shares a new one.
    pub fn discard_outbound(&mut self, conversation: u64) {
        self.outbound.remove(&conversation);
    }

    /// The current outbound session's id for `conversation`, if any.
    pub fn outbound_session_id(&self, conversation: u64) -> Option<String> {
        self.outbound
            .get(&conversation)
            .map(|o| o.session.session_id())
    }

    /// Encrypts `plaintext` for `conversation` with its outbound session: the body of the
    /// conversation send.
    pub fn encrypt(&mut self, conversation: u64, plaintext: &[u8]) -> Result<Vec<u8>, GroupError> {
        if plaintext.len() > crate::e2e::PLAINTEXT_LEN_MAX {
            return Err(GroupError::TooLong);
        }
        let outbound = self
            .outbound
            .get_mut(&conversation)
            .ok_or(GroupError::NotPrepared)?;
        let session_id = outbound.session.session_id();
        let message = outbound.session.encrypt(plaintext).to_bytes();
        let id_len = u8::try_from(session_id.len()).map_err(|_| GroupError::Malformed)?;
        let mut body = Vec::with_capacity(1 + 8 + 1 + session_id.len() + message.len());
        body.push(TAG_GROUP);
        body.extend_from_slice(&conversation.to_be_bytes());
        body.push(id_len);
        body.extend_from_slice(session_id.as_bytes());
        body.extend_from_slice(&message);
        if body.len() > GROUP_BODY_LEN_MAX {
            return Err(GroupError::TooLong);
        }
        Ok(body)
    }

    /// Takes a room key that arrived from device `from` inside an Olm plaintext (starting
    /// with [`TAG_ROOM_KEY`]). Returns the pending messages it opens, in arrival order.
    pub fn receive_room_key(
        &mut self,
        from: DeviceId,
        payload: &[u8],
    ) -> Result<Vec<Released>, GroupError> {
        let [TAG_ROOM_KEY, rest @ ..] = payload else {
            return Err(GroupError::Malformed);
        };
        let (conversation, key) = rest.split_first_chunk::<8>().ok_or(GroupError::Malformed)?;
        let conversation = u64::from_be_bytes(*conversation);
        let key = SessionKey::from_bytes(key).map_err(|_| GroupError::Malformed)?;
        let session = InboundGroupSession::new(&key, SessionConfig::version_1());
        let id = (from, session.session_id());
        let tick = self.touch();
        if !self.inbound.contains_key(&id) {
            if self.inbound.len() >= INBOUND_MAX {
                evict_oldest(&mut self.inbound, |i| i.used);
            }
            self.inbound.insert(
                id.clone(),
                Inbound {
                    conversation,
                    session,
                    seen: BTreeSet::new(),
                    used: tick,
                },
            );
        }
        // Open what waited for this session.
        let from_hex = hex::encode(from.0);
        let mut released = Vec::new();
        let mut kept = VecDeque::with_capacity(self.pending.len());
        for pending in std::mem::take(&mut self.pending) {
            let for_this = pending.from == from_hex
                && parse_group(&pending.body).is_ok_and(|b| b.session_id == id.1);
            if for_this {
                let result = self.open(from, pending.conversation, &pending.body);
                released.push(Released {
                    note: pending.note,
                    result,
                });
            } else {
                kept.push_back(pending);
            }
        }
        self.pending = kept;
        Ok(released)
    }

    fn open(
        &mut self,
        from: DeviceId,
        conversation: u64,
        body: &[u8],
    ) -> Result<Vec<u8>, GroupError> {
        let parsed = parse_group(body)?;
        if parsed.conversation != conversation {
            return Err(GroupError::WrongConversation);
        }
        let tick = self.touch();
        let inbound = self
            .inbound
            .get_mut(&(from, parsed.session_id))
            .ok_or(GroupError::Decrypt)?;
        if inbound.conversation != conversation {
            return Err(GroupError::WrongConversation);
        }
        let index = parsed.message.message_index();
        if inbound.seen.contains(&index) {
            return Err(GroupError::Replayed);
        }
        if inbound.seen.len() >= INDICES_SEEN_MAX {
            // More than an honest sender sends with one session.
            return Err(GroupError::Replayed);
        }
        let decrypted = inbound
            .session
            .decrypt(&parsed.message)
            .map_err(|_| GroupError::Decrypt)?;
        inbound.seen.insert(index);
        inbound.used = tick;
        Ok(decrypted.plaintext)
    }

    /// Opens a group body from device `from` delivered in `conversation` (both as the server
    /// delivered them). Without the session's key the message is kept with `note` (cut to
    /// [`PENDING_NOTE_LEN_MAX`]) and [`Decrypted::Pending`] is returned.
    pub fn decrypt(
        &mut self,
        from: DeviceId,
        conversation: u64,
        body: &[u8],
        note: &str,
    ) -> Result<Decrypted, GroupError> {
        let parsed = parse_group(body)?;
        if parsed.conversation != conversation {
            return Err(GroupError::WrongConversation);
        }
        if !self.inbound.contains_key(&(from, parsed.session_id)) {
            if note.len() > PENDING_NOTE_LEN_MAX {
                return Err(GroupError::TooLong);
            }
            if self.pending.len() >= PENDING_MAX {
                self.pending.pop_front();
            }
            self.pending.push_back(Pending {
                from: hex::encode(from.0),
                conversation,
                body: body.to_vec(),
                note: note.to_string(),
            });
            return Ok(Decrypted::Pending);
        }
        self.open(from, conversation, body)
            .map(Decrypted::Plaintext)
    }

    /// Messages still waiting for their key.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The state as serializable data (it holds keys: the caller encrypts it, as
    /// [`crate::e2e::E2e::pickle`] does).
    pub fn to_pickle(&self) -> GroupsPickle {
        GroupsPickle {
            outbound: self
                .outbound
                .iter()
                .map(|(c, o)| PickledOutbound {
                    conversation: *c,
                    session: o.session.pickle(),
                    shared_with: o.shared_with.iter().map(|d| hex::encode(d.0)).collect(),
                    used: o.used,
                })
                .collect(),
            inbound: self
                .inbound
                .iter()
                .map(|((from, _), i)| PickledInbound {
                    from: hex::encode(from.0),
                    conversation: i.conversation,
                    session: i.session.pickle(),
                    seen: i.seen.iter().copied().collect(),
                    used: i.used,
                })
                .collect(),
            pending: self.pending.iter().cloned().collect(),
            tick: self.tick,
        }
    }

    /// Restores [`Groups::to_pickle`]'s output; `None` if it is malformed or past a bound.
    pub fn from_pickle(pickle: GroupsPickle) -> Option<Self> {
        if pickle.outbound.len() > OUTBOUND_MAX
            || pickle.inbound.len() > INBOUND_MAX
            || pickle.pending.len() > PENDING_MAX
        {
            return None;
        }
        let device = |text: &str| -> Option<DeviceId> {
            Some(DeviceId(hex::decode(text).ok()?.try_into().ok()?))
        };
        let mut outbound = BTreeMap::new();
        for o in pickle.outbound {
            if o.shared_with.len() > MEMBER_DEVICES_MAX {
                return None;
            }
            let shared_with = o
                .shared_with
                .iter()
                .map(|d| device(d))
                .collect::<Option<_>>()?;
            outbound.insert(
                o.conversation,
                Outbound {
                    session: GroupSession::from_pickle(o.session),
                    shared_with,
                    used: o.used,
                },
            );
        }
        let mut inbound = BTreeMap::new();
        for i in pickle.inbound {
            if i.seen.len() > INDICES_SEEN_MAX {
                return None;
            }
            let session = InboundGroupSession::from_pickle(i.session);
            inbound.insert(
                (device(&i.from)?, session.session_id()),
                Inbound {
                    conversation: i.conversation,
                    session,
                    seen: i.seen.into_iter().collect(),
                    used: i.used,
                },
            );
        }
        Some(Self {
            outbound,
            inbound,
            pending: pickle.pending.into_iter().collect(),
            tick: pickle.tick,
        })
    }
}

fn evict_oldest<K: Ord + Clone, V>(map: &mut BTreeMap<K, V>, used: impl Fn(&V) -> u64) {
    if let Some(oldest) = map
        .iter()
        .min_by_key(|(_, v)| used(v))
        .map(|(k, _)| k.clone())
    {
        map.remove(&oldest);
    }
}

#[derive(Serialize, Deserialize)]
struct PickledOutbound {
    conversation: u64,
    session: GroupSessionPickle,
    shared_with: Vec<String>,
    used: u64,
}

#[derive(Serialize, Deserialize)]
struct PickledInbound {
    from: String,
    conversation: u64,
    session: InboundGroupSessionPickle,
    seen: Vec<u32>,
    used: u64,
}

/// [`Groups`] as serializable data (key material: keep it encrypted).
#[derive(Default, Serialize, Deserialize)]
pub struct GroupsPickle {
    outbound: Vec<PickledOutbound>,
    inbound: Vec<PickledInbound>,
    pending: Vec<Pending>,
    tick: u64,
}

impl fmt::Debug for GroupsPickle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never key material.
        f.debug_struct("GroupsPickle")
            .field("outbound", &self.outbound.len())
            .field("inbound", &self.inbound.len())
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
