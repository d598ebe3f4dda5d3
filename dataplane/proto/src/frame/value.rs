//! The structured values inside frame bodies: one-byte wire enums, [`Recipient`], and the two
//! lists, [`Versions`] (inline, at most eight) and [`MessageIds`] (a borrowed view).

use core::fmt;

use dp_core::limits::VERSIONS_MAX;
use dp_core::{ConversationId, DeviceId, MessageId};

use crate::codec::{Codec, Reader, Writer, varint_len};
use crate::error::{DecodeError, EncodeError, Field, len_u64};

/// Defines a `#[repr(u8)]` wire enum with its `Codec`: an undefined byte decodes to
/// `InvalidValue { field }`.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($field:ident) {
            $($(#[$vmeta:meta])* $variant:ident = $value:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)+
        }

        impl $name {
            /// Every value, in wire order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The value a byte names, if any.
            pub const fn from_u8(byte: u8) -> Option<Self> {
                match byte {
                    $($value => Some(Self::$variant),)+
                    _ => None,
                }
            }

            /// The wire byte.
            pub const fn as_u8(self) -> u8 {
                self as u8
            }
        }

        impl Codec<'_> for $name {
            fn encoded_len(&self) -> usize {
                1
            }

            fn encode(&self, writer: &mut Writer<'_>) -> Result<(), EncodeError> {
                writer.u8(self.as_u8())
            }

            fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
                Self::from_u8(reader.u8()?)
                    .ok_or(DecodeError::InvalidValue { field: Field::$field })
            }
        }
    };
}

wire_enum! {
    /// The outcome a `SendAck` reports.
    pub enum SendStatus (SendStatus) {
        /// The recipient device acknowledged it.
        Delivered = 0x01,
        /// Durably stored for a recipient that is offline (or went away before acknowledging).
        Stored = 0x02,
        /// Not taken: the server is out of room on the envelope's path and kept no copy. Not an
        /// acknowledgement; the client sends the same envelope (same id) again after a pause.
        Retry = 0x03,
    }
}

wire_enum! {
    /// What a `Receipt` or `ReceiptFrom` acknowledges.
    pub enum ReceiptKind (ReceiptKind) {
        /// The messages reached the device.
        Delivered = 0x01,
        /// The user has read the messages.
        Read = 0x02,
    }
}

wire_enum! {
    /// A device's presence.
    pub enum PresenceState (PresenceState) {
        /// Not connected, or hiding.
        Offline = 0x00,
        /// Connected and available.
        Online = 0x01,
        /// Connected, idle.
        Away = 0x02,
        /// Connected, do not disturb.
        Busy = 0x03,
    }
}

wire_enum! {
    /// Whether a device's user is typing in a conversation.
    pub enum TypingState (TypingState) {
        /// Stopped typing.
        Stopped = 0x00,
        /// Typing.
        Typing = 0x01,
    }
}

wire_enum! {
    /// The kind of a call-signalling message. The body's meaning depends on it (SDP for
    /// `Offer`/`Answer`, an ICE candidate for `Candidate`); the server relays it opaquely.
    pub enum CallSignalKind (CallSignalKind) {
        /// Start a call (with `call` 0 in `CallSignal`).
        Invite = 0x01,
        /// Accept an invitation.
        Accept = 0x02,
        /// Decline an invitation.
        Reject = 0x03,
        /// A session description offer.
        Offer = 0x04,
        /// A session description answer.
        Answer = 0x05,
        /// A transport candidate.
        Candidate = 0x06,
        /// End the call.
        Hangup = 0x07,
        /// The media transport changed (new path or address).
        TransportUpdate = 0x08,
    }
}

/// The addressee of a `Send`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Recipient {
    /// One device (tag 0x01, then 16 bytes).
    Device(DeviceId),
    /// Every member of a conversation (tag 0x02, then a `u64`).
    Conversation(ConversationId),
}

impl Recipient {
    const TAG_DEVICE: u8 = 0x01;
    const TAG_CONVERSATION: u8 = 0x02;
}

impl Codec<'_> for Recipient {
    fn encoded_len(&self) -> usize {
        1 + match self {
            Self::Device(device) => device.encoded_len(),
            Self::Conversation(conversation) => conversation.encoded_len(),
        }
    }

    fn encode(&self, writer: &mut Writer<'_>) -> Result<(), EncodeError> {
        match self {
            Self::Device(device) => {
                writer.u8(Self::TAG_DEVICE)?;
                device.encode(writer)
            }
            Self::Conversation(conversation) => {
                writer.u8(Self::TAG_CONVERSATION)?;
                conversation.encode(writer)
            }
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match reader.u8()? {
            Self::TAG_DEVICE => DeviceId::decode(reader).map(Self::Device),
            Self::TAG_CONVERSATION => ConversationId::decode(reader).map(Self::Conversation),
            _ => Err(DecodeError::InvalidValue {
                field: Field::RecipientTag,
            }),
        }
    }
}

/// The protocol versions a `Hello` offers: one to [`VERSIONS_MAX`], stored inline.
#[derive(Clone, Copy)]
pub struct Versions {
    len: u8,
    items: [u16; VERSIONS_MAX],
}

impl Versions {
    /// The list `versions`, or `None` if it is empty or longer than [`VERSIONS_MAX`].
    pub fn new(versions: &[u16]) -> Option<Self> {
        if versions.is_empty() || versions.len() > VERSIONS_MAX {
            return None;
        }
        let mut items = [0; VERSIONS_MAX];
        items.get_mut(..versions.len())?.copy_from_slice(versions);
        Some(Self {
            len: u8::try_from(versions.len()).ok()?,
            items,
        })
    }

    /// The versions, in the order the peer listed them.
    pub fn as_slice(&self) -> &[u16] {
        &self.items[..usize::from(self.len)]
    }

    /// The greatest version in both this list and `supported`: the session's version.
    pub fn highest_common(&self, supported: &[u16]) -> Option<u16> {
        self.as_slice()
            .iter()
            .copied()
            .filter(|version| supported.contains(version))
            .max()
    }
}

impl PartialEq for Versions {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Versions {}

impl fmt::Debug for Versions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl Codec<'_> for Versions {
    fn encoded_len(&self) -> usize {
        1 + 2 * self.as_slice().len()
    }

    fn encode(&self, writer: &mut Writer<'_>) -> Result<(), EncodeError> {
        writer.u8(self.len)?;
        self.as_slice()
            .iter()
            .try_for_each(|&version| writer.u16(version))
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let count = reader.u8()?;
        if count == 0 {
            return Err(DecodeError::InvalidValue {
                field: Field::Versions,
            });
        }
        if usize::from(count) > VERSIONS_MAX {
            return Err(DecodeError::TooLong {
                field: Field::Versions,
                len: u64::from(count),
                max: len_u64(VERSIONS_MAX),
            });
        }
        let mut items = [0; VERSIONS_MAX];
        for item in items.iter_mut().take(usize::from(count)) {
            *item = reader.u16()?;
        }
        Ok(Self { len: count, items })
    }
}

/// A list of message ids, borrowed: either the raw 16-byte ids of a decoded frame, or a slice of
/// [`MessageId`]s to encode. Iterating yields ids by value and allocates nothing.
#[derive(Clone, Copy)]
pub struct MessageIds<'a>(Ids<'a>);

#[derive(Clone, Copy)]
enum Ids<'a> {
    /// `len × 16` bytes as they came off the wire.
    Wire(&'a [u8]),
    Slice(&'a [MessageId]),
}

impl<'a> MessageIds<'a> {
    /// A list to encode. It must hold between one and the frame's limit of ids, or encoding
    /// fails.
    pub const fn new(ids: &'a [MessageId]) -> Self {
        Self(Ids::Slice(ids))
    }

    /// The number of ids.
    pub const fn len(&self) -> usize {
        match self.0 {
            Ids::Wire(bytes) => bytes.len() / 16,
            Ids::Slice(ids) => ids.len(),
        }
    }

    /// Whether the list is empty (never, for a decoded frame).
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The id at `index`.
    pub fn get(&self, index: usize) -> Option<MessageId> {
        match self.0 {
            Ids::Wire(bytes) => {
                let start = index.checked_mul(16)?;
                let raw = bytes.get(start..start.checked_add(16)?)?;
                <[u8; 16]>::try_from(raw).ok().map(MessageId)
            }
            Ids::Slice(ids) => ids.get(index).copied(),
        }
    }

    /// The ids in order.
    pub const fn iter(&self) -> MessageIdsIter<'a> {
        MessageIdsIter {
            ids: *self,
            index: 0,
        }
    }

    /// Read `count: varint` then `count` ids; `count` must be in `1..=max`.
    pub(crate) fn decode_list(
        reader: &mut Reader<'a>,
        field: Field,
        max: usize,
    ) -> Result<Self, DecodeError> {
        let count = reader.varint()?;
        if count == 0 {
            return Err(DecodeError::InvalidValue { field });
        }
        let max_u64 = len_u64(max);
        if count > max_u64 {
            return Err(DecodeError::TooLong {
                field,
                len: count,
                max: max_u64,
            });
        }
        // `count <= max` (a few hundred), so neither the conversion nor the product overflows.
        let len = usize::try_from(count)
            .ok()
            .and_then(|count| count.checked_mul(16))
            .ok_or(DecodeError::TooLong {
                field,
                len: count,
                max: max_u64,
            })?;
        reader.take(len).map(|bytes| Self(Ids::Wire(bytes)))
    }

    /// The encoded length of the count and the ids.
    pub(crate) fn list_len(&self) -> usize {
        varint_len(len_u64(self.len())) + 16 * self.len()
    }

    /// Write `count: varint` then the ids, checking `count` against `1..=max`.
    pub(crate) fn encode_list(
        &self,
        writer: &mut Writer<'_>,
        field: Field,
        max: usize,
    ) -> Result<(), EncodeError> {
        let count = self.len();
        if count == 0 {
            return Err(EncodeError::InvalidValue { field });
        }
        if count > max {
            return Err(EncodeError::TooLong {
                field,
                len: len_u64(count),
                max: len_u64(max),
            });
        }
        writer.varint(len_u64(count))?;
        match self.0 {
            Ids::Wire(bytes) => writer.put(bytes),
            Ids::Slice(ids) => ids.iter().try_for_each(|id| writer.put(&id.0)),
        }
    }
}

impl PartialEq for MessageIds<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for MessageIds<'_> {}

impl fmt::Debug for MessageIds<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for MessageIds<'a> {
    type Item = MessageId;
    type IntoIter = MessageIdsIter<'a>;

    fn into_iter(self) -> MessageIdsIter<'a> {
        self.iter()
    }
}

impl<'a> IntoIterator for &MessageIds<'a> {
    type Item = MessageId;
    type IntoIter = MessageIdsIter<'a>;

    fn into_iter(self) -> MessageIdsIter<'a> {
        self.iter()
    }
}

/// The iterator of [`MessageIds::iter`].
#[derive(Clone, Debug)]
pub struct MessageIdsIter<'a> {
    ids: MessageIds<'a>,
    index: usize,
}

impl Iterator for MessageIdsIter<'_> {
    type Item = MessageId;

    fn next(&mut self) -> Option<MessageId> {
        let id = self.ids.get(self.index)?;
        self.index += 1;
        Some(id)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.ids.len().saturating_sub(self.index);
        (left, Some(left))
    }
}

impl ExactSizeIterator for MessageIdsIter<'_> {}
