//! Stream mode: frames carried in encrypted records.
//!
//! In stream mode the frames of one direction form a byte stream, cut into records of at most
//! [`RECORD_PLAINTEXT_LEN_MAX`] plaintext bytes. A frame may span any number of records and a
//! record may hold several frames; record boundaries carry no meaning.
//!
//! - Receiving: [`FrameAssembler`] takes each record's plaintext and yields whole frames.
//! - Sending: encode frames back to back into one buffer, then cut it with [`record_chunks`].

use core::slice::Chunks;

use dp_core::limits::{FRAME_LEN_MAX, RECORD_PLAINTEXT_LEN_MAX};

use crate::error::DecodeError;
use crate::frame::{FRAME_HEADER_LEN_MAX, Frame, FrameType, peek_header_with_max};

/// Cut a buffer of back-to-back encoded frames into record plaintexts of at most
/// `record_len_max` bytes (clamped to `1..=RECORD_PLAINTEXT_LEN_MAX`). Every chunk but the last
/// is full.
pub fn record_chunks(stream: &[u8], record_len_max: usize) -> Chunks<'_, u8> {
    stream.chunks(record_len_max.clamp(1, RECORD_PLAINTEXT_LEN_MAX))
}

/// Reassembles frames from the plaintexts of consecutive stream records.
///
/// Memory is bounded: the assembler buffers at most one partial frame, never more than its
/// `frame_len_max` bytes. The buffer grows only as far as the largest frame that spanned records
/// and is reused after that, so an idle or small-message connection holds no buffer at all. A frame that lies wholly inside one record is decoded from the record in place, with
/// no copy.
///
/// Input: [`FrameAssembler::push`] with each record in order. Output: drain the returned
/// [`Frames`] with [`Frames::next_frame`] until `None` before pushing the next record; bytes of a
/// record left undrained are lost.
///
/// Errors: a frame whose header announces more than `frame_len_max` bytes fails as soon as the
/// header is complete, before any of its body is buffered. Every error poisons the assembler (the
/// connection is to be closed): later pushes yield the same error once and nothing else. The
/// exception is an unknown frame type: the assembler yields
/// [`DecodeError::UnknownFrameType`], skips the frame's body (across records, without buffering
/// it) and carries on.
#[derive(Debug)]
pub struct FrameAssembler {
    /// The partial frame: its first bytes, up to the whole frame. Empty between frames.
    buffer: Vec<u8>,
    frame_len_max: usize,
    /// The buffer holds a whole frame already handed out; clear it before going on.
    buffer_yielded: bool,
    /// Bytes of an unknown frame still to skip.
    skip_len: usize,
    poisoned: Option<DecodeError>,
}

impl FrameAssembler {
    /// An assembler accepting frames of at most `frame_len_max` bytes (header included), clamped
    /// to `FRAME_HEADER_LEN_MAX..=FRAME_LEN_MAX`. Allocates nothing yet.
    pub fn new(frame_len_max: usize) -> Self {
        Self {
            buffer: Vec::new(),
            frame_len_max: frame_len_max.clamp(FRAME_HEADER_LEN_MAX, FRAME_LEN_MAX),
            buffer_yielded: false,
            skip_len: 0,
            poisoned: None,
        }
    }

    /// The frame limit in force.
    pub const fn frame_len_max(&self) -> usize {
        self.frame_len_max
    }

    /// The number of bytes of a partial frame held in the buffer.
    pub fn buffered_len(&self) -> usize {
        if self.buffer_yielded {
            0
        } else {
            self.buffer.len()
        }
    }

    /// Whether the stream stands between frames: nothing buffered, nothing left to skip. A
    /// stream that ends when this is false ended inside a frame.
    pub fn is_at_frame_boundary(&self) -> bool {
        self.buffered_len() == 0 && self.skip_len == 0
    }

    /// The error that poisoned the assembler, if any.
    pub const fn error(&self) -> Option<DecodeError> {
        self.poisoned
    }

    /// Take the plaintext of the next record; the frames it completes come from the returned
    /// [`Frames`].
    pub fn push<'a>(&'a mut self, record: &'a [u8]) -> Frames<'a> {
        Frames {
            assembler: self,
            rest: record,
            error_reported: false,
        }
    }

    /// Append bytes of a partial frame (the header check has already bounded its length).
    /// Capacity doubles as needed but never passes `frame_len_max`.
    fn buffer_extend(&mut self, bytes: &[u8]) {
        let need = self.buffer.len() + bytes.len();
        if need > self.buffer.capacity() {
            let target = need.max((self.buffer.capacity() * 2).min(self.frame_len_max));
            self.buffer.reserve_exact(target - self.buffer.len());
        }
        debug_assert!(self.buffer.len() + bytes.len() <= self.frame_len_max);
        self.buffer.extend_from_slice(bytes);
    }
}

/// The frames completed by one record; see [`FrameAssembler::push`].
#[derive(Debug)]
#[must_use = "drain the frames with next_frame until it returns None"]
pub struct Frames<'a> {
    assembler: &'a mut FrameAssembler,
    /// The part of the record not consumed yet.
    rest: &'a [u8],
    error_reported: bool,
}

/// What one step of [`Frames::next_frame`] found.
enum Step<'a> {
    /// A frame decoded in place from the record.
    Frame(Frame<'a>),
    /// The buffer now holds a whole frame of this type, with a header of this length.
    Buffered(FrameType, usize),
    Error(DecodeError),
    /// The record is used up.
    Done,
}

impl<'a> Frames<'a> {
    /// The next whole frame, an error, or `None` once the record is used up (its trailing bytes
    /// are kept for the next record).
    ///
    /// `Some(Err(UnknownFrameType(_)))` may be followed by more frames; any other error ends the
    /// stream.
    pub fn next_frame(&mut self) -> Option<Result<Frame<'_>, DecodeError>> {
        if self.assembler.buffer_yielded {
            self.assembler.buffer.clear();
            self.assembler.buffer_yielded = false;
        }
        if let Some(error) = self.assembler.poisoned {
            self.rest = &[];
            if self.error_reported {
                return None;
            }
            self.error_reported = true;
            return Some(Err(error));
        }
        let (frame_type, header_len) = match self.step() {
            Step::Frame(frame) => return Some(Ok(frame)),
            Step::Error(error) => return Some(Err(error)),
            Step::Done => return None,
            Step::Buffered(frame_type, header_len) => (frame_type, header_len),
        };
        self.assembler.buffer_yielded = true;
        let body = self.assembler.buffer.get(header_len..).unwrap_or_default();
        match Frame::decode_body(frame_type, body) {
            Ok(frame) => Some(Ok(frame)),
            Err(error) => {
                self.assembler.poisoned = Some(error);
                self.error_reported = true;
                self.rest = &[];
                Some(Err(error))
            }
        }
    }

    fn step(&mut self) -> Step<'a> {
        if self.assembler.skip_len > 0 {
            let skip_len = self.assembler.skip_len.min(self.rest.len());
            self.rest = self.rest.get(skip_len..).unwrap_or_default();
            self.assembler.skip_len -= skip_len;
        }
        if self.assembler.skip_len > 0 || self.rest.is_empty() {
            return Step::Done;
        }
        if self.assembler.buffer.is_empty() {
            self.step_in_place()
        } else {
            self.step_buffered()
        }
    }

    /// Nothing buffered: decode from the record if the whole frame is there, else buffer it.
    fn step_in_place(&mut self) -> Step<'a> {
        let rest = self.rest;
        let header = match peek_header_with_max(rest, self.assembler.frame_len_max) {
            Ok(header) => header,
            Err(DecodeError::Truncated) => {
                // A partial header, shorter than `FRAME_HEADER_LEN_MAX`.
                self.assembler.buffer_extend(rest);
                self.rest = &[];
                return Step::Done;
            }
            Err(error) => return self.fail(error),
        };
        let frame_len = header.frame_len();
        let Some(frame_type) = header.frame_type() else {
            let skip_len = frame_len.min(rest.len());
            self.rest = rest.get(skip_len..).unwrap_or_default();
            self.assembler.skip_len = frame_len - skip_len;
            return Step::Error(DecodeError::UnknownFrameType(header.type_byte));
        };
        let Some((frame, tail)) = rest.split_at_checked(frame_len) else {
            self.assembler.buffer_extend(rest);
            self.rest = &[];
            return Step::Done;
        };
        self.rest = tail;
        let body = frame.get(header.header_len..).unwrap_or_default();
        match Frame::decode_body(frame_type, body) {
            Ok(frame) => Step::Frame(frame),
            Err(error) => self.fail(error),
        }
    }

    /// A partial frame is buffered: complete its header a byte at a time (so as never to read
    /// past a short frame), then copy the rest of its body.
    fn step_buffered(&mut self) -> Step<'a> {
        let header = loop {
            match peek_header_with_max(&self.assembler.buffer, self.assembler.frame_len_max) {
                Ok(header) => break header,
                Err(DecodeError::Truncated) => {
                    let Some((&byte, tail)) = self.rest.split_first() else {
                        return Step::Done;
                    };
                    self.assembler.buffer_extend(&[byte]);
                    self.rest = tail;
                }
                Err(error) => return self.fail(error),
            }
        };
        let frame_len = header.frame_len();
        let buffered_len = self.assembler.buffer.len();
        let Some(frame_type) = header.frame_type() else {
            // Only a header is ever buffered for an unknown type: skip its body from here.
            self.assembler.skip_len = frame_len.saturating_sub(buffered_len);
            self.assembler.buffer.clear();
            return Step::Error(DecodeError::UnknownFrameType(header.type_byte));
        };
        let copy_len = frame_len.saturating_sub(buffered_len).min(self.rest.len());
        let (copied, tail) = self.rest.split_at(copy_len);
        self.assembler.buffer_extend(copied);
        self.rest = tail;
        if self.assembler.buffer.len() < frame_len {
            return Step::Done;
        }
        Step::Buffered(frame_type, header.header_len)
    }

    fn fail(&mut self, error: DecodeError) -> Step<'a> {
        self.assembler.poisoned = Some(error);
        self.error_reported = true;
        self.rest = &[];
        Step::Error(error)
    }
}

#[cfg(test)]
mod tests;
