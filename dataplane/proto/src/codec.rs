//! Byte-level primitives: the bounded [`Reader`] and [`Writer`], the QUIC varint (RFC 9000 §16)
//! and the [`Codec`] trait every wire value implements.
//!
//! All fixed-width integers are big-endian. Lengths are checked against their named maximum
//! before anything is sliced, and every read or write is bounds-checked: a short input gives
//! [`DecodeError::Truncated`], a short output [`EncodeError::BufferTooSmall`].

use dp_core::{CallId, ConversationId, DeviceId, MessageId};

use crate::capability::Capabilities;
use crate::error::{DecodeError, EncodeError, Field, len_u64};
use crate::error_code::ErrorCode;

/// The largest value a varint can hold, 2^62 − 1.
pub const VARINT_MAX: u64 = (1 << 62) - 1;

/// The number of bytes the minimal varint encoding of `value` takes: 1, 2, 4 or 8 (8 also for
/// values above [`VARINT_MAX`], which cannot be encoded).
pub const fn varint_len(value: u64) -> usize {
    if value < 1 << 6 {
        1
    } else if value < 1 << 14 {
        2
    } else if value < 1 << 30 {
        4
    } else {
        8
    }
}

/// The encoded length of a `bytes(MAX)` or `str(MAX)` field holding `len` bytes.
pub const fn bytes_len(len: usize) -> usize {
    varint_len(len as u64) + len
}

/// A value with a wire encoding.
///
/// `decode` borrows from the input where the value holds bytes (after rustls' `Codec`), so
/// decoding allocates nothing.
pub trait Codec<'a>: Sized {
    /// The exact number of bytes [`Codec::encode`] writes.
    fn encoded_len(&self) -> usize;

    /// Write the value.
    ///
    /// # Errors
    ///
    /// [`EncodeError::BufferTooSmall`] if `writer` has no room, or a limit the value breaks.
    fn encode(&self, writer: &mut Writer<'_>) -> Result<(), EncodeError>;

    /// Read a value from the front of `reader`.
    ///
    /// # Errors
    ///
    /// Any [`DecodeError`]; the reader's position is then unspecified.
    fn decode(reader: &mut Reader<'a>) -> Result<Self, DecodeError>;

    /// Read a value that must fill `input` exactly.
    ///
    /// # Errors
    ///
    /// As [`Codec::decode`], and [`DecodeError::TrailingBytes`] if input is left over.
    fn decode_exact(input: &'a [u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(input);
        let value = Self::decode(&mut reader)?;
        reader.finish()?;
        Ok(value)
    }
}

/// A cursor over borrowed input. Every read is bounds-checked.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    input: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader at the start of `input`.
    pub const fn new(input: &'a [u8]) -> Self {
        Self { input }
    }

    /// The number of unread bytes.
    pub const fn remaining(&self) -> usize {
        self.input.len()
    }

    /// Whether every byte has been read.
    pub const fn is_empty(&self) -> bool {
        self.input.is_empty()
    }

    /// The unread bytes, without consuming them.
    pub const fn rest(&self) -> &'a [u8] {
        self.input
    }

    /// Succeeds only if every byte has been read.
    ///
    /// # Errors
    ///
    /// [`DecodeError::TrailingBytes`] if any remain.
    pub const fn finish(&self) -> Result<(), DecodeError> {
        if self.input.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes)
        }
    }

    /// The next `len` bytes.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`] if fewer remain.
    pub fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        let (head, tail) = self
            .input
            .split_at_checked(len)
            .ok_or(DecodeError::Truncated)?;
        self.input = tail;
        Ok(head)
    }

    /// The next `N` bytes as an array.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`] if fewer remain.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        <[u8; N]>::try_from(self.take(N)?).map_err(|_| DecodeError::Truncated)
    }

    /// A `u8`.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`].
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&first, tail) = self.input.split_first().ok_or(DecodeError::Truncated)?;
        self.input = tail;
        Ok(first)
    }

    /// A big-endian `u16`.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`].
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_be_bytes)
    }

    /// A big-endian `u32`.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`].
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_be_bytes)
    }

    /// A big-endian `u64`.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`].
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_be_bytes)
    }

    /// A QUIC varint, which must be minimally encoded.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`], or [`DecodeError::NonMinimalVarint`] if a shorter encoding of
    /// the same value exists.
    pub fn varint(&mut self) -> Result<u64, DecodeError> {
        let first = self.u8()?;
        let tag = first >> 6;
        let extra = (1_usize << tag) - 1;
        let mut value = u64::from(first & 0x3f);
        for &byte in self.take(extra)? {
            value = (value << 8) | u64::from(byte);
        }
        let value_min: u64 = match tag {
            0 => 0,
            1 => 1 << 6,
            2 => 1 << 14,
            _ => 1 << 30,
        };
        if value < value_min {
            return Err(DecodeError::NonMinimalVarint);
        }
        Ok(value)
    }

    /// A `bytes(max)` field: a varint length of at most `max`, then that many bytes.
    ///
    /// # Errors
    ///
    /// [`DecodeError::TooLong`] (checked before anything is sliced), [`DecodeError::Truncated`],
    /// or a varint error.
    pub fn bytes(&mut self, field: Field, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.varint()?;
        let max_u64 = len_u64(max);
        if len > max_u64 {
            return Err(DecodeError::TooLong {
                field,
                len,
                max: max_u64,
            });
        }
        // `len <= max`, so it fits a `usize`.
        let len = usize::try_from(len).map_err(|_| DecodeError::TooLong {
            field,
            len,
            max: max_u64,
        })?;
        self.take(len)
    }

    /// A `str(max)` field: a `bytes(max)` field that must be valid UTF-8.
    ///
    /// # Errors
    ///
    /// As [`Reader::bytes`], and [`DecodeError::InvalidUtf8`].
    pub fn str(&mut self, field: Field, max: usize) -> Result<&'a str, DecodeError> {
        let bytes = self.bytes(field, max)?;
        core::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8 { field })
    }
}

/// A cursor over a caller-provided output buffer. Every write is bounds-checked.
#[derive(Debug)]
pub struct Writer<'b> {
    out: &'b mut [u8],
    position: usize,
}

impl<'b> Writer<'b> {
    /// A writer at the start of `out`.
    pub const fn new(out: &'b mut [u8]) -> Self {
        Self { out, position: 0 }
    }

    /// The number of bytes written so far.
    pub const fn position(&self) -> usize {
        self.position
    }

    /// The number of bytes that can still be written.
    pub const fn remaining(&self) -> usize {
        self.out.len() - self.position
    }

    /// The bytes written so far.
    pub fn written(&self) -> &[u8] {
        &self.out[..self.position]
    }

    /// Write raw bytes.
    ///
    /// # Errors
    ///
    /// [`EncodeError::BufferTooSmall`]; nothing is written then.
    pub fn put(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        let end = self
            .position
            .checked_add(bytes.len())
            .ok_or(EncodeError::BufferTooSmall)?;
        let target = self
            .out
            .get_mut(self.position..end)
            .ok_or(EncodeError::BufferTooSmall)?;
        target.copy_from_slice(bytes);
        self.position = end;
        Ok(())
    }

    /// Write a `u8`.
    ///
    /// # Errors
    ///
    /// [`EncodeError::BufferTooSmall`].
    pub fn u8(&mut self, value: u8) -> Result<(), EncodeError> {
        self.put(&[value])
    }

    /// Write a big-endian `u16`.
    ///
    /// # Errors
    ///
    /// [`EncodeError::BufferTooSmall`].
    pub fn u16(&mut self, value: u16) -> Result<(), EncodeError> {
        self.put(&value.to_be_bytes())
    }

    /// Write a big-endian `u32`.
    ///
    /// # Errors
    ///
    /// [`EncodeError::BufferTooSmall`].
    pub fn u32(&mut self, value: u32) -> Result<(), EncodeError> {
        self.put(&value.to_be_bytes())
    }

    /// Write a big-endian `u64`.
    ///
    /// # Errors
    ///
    /// [`EncodeError::BufferTooSmall`].
    pub fn u64(&mut self, value: u64) -> Result<(), EncodeError> {
        self.put(&value.to_be_bytes())
    }

    /// Write a varint in its minimal encoding.
    ///
    /// # Errors
    ///
    /// [`EncodeError::VarintOutOfRange`] above [`VARINT_MAX`], or
    /// [`EncodeError::BufferTooSmall`].
    pub fn varint(&mut self, value: u64) -> Result<(), EncodeError> {
        if value > VARINT_MAX {
            return Err(EncodeError::VarintOutOfRange);
        }
        match varint_len(value) {
            1 => self.u8(value as u8),
            2 => self.u16(value as u16 | 0x4000),
            4 => self.u32(value as u32 | 0x8000_0000),
            _ => self.u64(value | 0xc000_0000_0000_0000),
        }
    }

    /// Write a `bytes(max)` field.
    ///
    /// # Errors
    ///
    /// [`EncodeError::TooLong`] if `bytes` is longer than `max`, or
    /// [`EncodeError::BufferTooSmall`].
    pub fn bytes(&mut self, field: Field, max: usize, bytes: &[u8]) -> Result<(), EncodeError> {
        if bytes.len() > max {
            return Err(EncodeError::TooLong {
                field,
                len: len_u64(bytes.len()),
                max: len_u64(max),
            });
        }
        self.varint(len_u64(bytes.len()))?;
        self.put(bytes)
    }

    /// Write a `str(max)` field.
    ///
    /// # Errors
    ///
    /// As [`Writer::bytes`].
    pub fn str(&mut self, field: Field, max: usize, text: &str) -> Result<(), EncodeError> {
        self.bytes(field, max, text.as_bytes())
    }
}

/// The longest prefix of `text` that is at most `len_max` bytes and ends on a character
/// boundary: for fitting a diagnostic into a `reason` field.
pub fn truncate_utf8(text: &str, len_max: usize) -> &str {
    if text.len() <= len_max {
        return text;
    }
    let mut end = len_max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

macro_rules! integer_codec {
    ($($ty:ident),+) => {$(
        impl Codec<'_> for $ty {
            fn encoded_len(&self) -> usize {
                size_of::<$ty>()
            }

            fn encode(&self, writer: &mut Writer<'_>) -> Result<(), EncodeError> {
                writer.$ty(*self)
            }

            fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
                reader.$ty()
            }
        }
    )+};
}

integer_codec!(u8, u16, u32, u64);

macro_rules! newtype_codec {
    ($($ty:ident($inner:ty)),+ $(,)?) => {$(
        impl Codec<'_> for $ty {
            fn encoded_len(&self) -> usize {
                size_of::<$inner>()
            }

            fn encode(&self, writer: &mut Writer<'_>) -> Result<(), EncodeError> {
                self.0.encode(writer)
            }

            fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
                <$inner>::decode(reader).map(Self)
            }
        }
    )+};
}

newtype_codec!(
    Capabilities(u64),
    CallId(u64),
    ConversationId(u64),
    ErrorCode(u16),
);

impl Codec<'_> for [u8; 16] {
    fn encoded_len(&self) -> usize {
        16
    }

    fn encode(&self, writer: &mut Writer<'_>) -> Result<(), EncodeError> {
        writer.put(self)
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        reader.array()
    }
}

newtype_codec!(DeviceId([u8; 16]), MessageId([u8; 16]));

#[cfg(test)]
mod tests;
