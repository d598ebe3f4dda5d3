//! What goes inside an envelope body: the one seam where end-to-end encryption plugs in.
//!
//! Every body the CLI sends is made by [`Sealer::seal`] and every body it receives is read by
//! [`Sealer::open`]. Today's format is [`Plaintext`]: a 1-byte tag then the content; tag
//! `0x00` is UTF-8 text in the clear. End-to-end encryption (`commucat_client::e2e`) will be a
//! second `Sealer` with its own tag; nothing else in the CLI needs to change.

use anyhow::{Result, bail};
use commucat_client::{DeviceId, Recipient};

/// The tag of a body in the clear: UTF-8 text follows.
pub(crate) const TAG_PLAINTEXT: u8 = 0x00;

/// Makes and reads envelope bodies.
pub(crate) trait Sealer {
    /// The body for `to` (a device, or a conversation's members) carrying `text`.
    fn seal(&mut self, to: Recipient, text: &str) -> Result<Vec<u8>>;
    /// The text of a body from device `from`.
    fn open(&mut self, from: DeviceId, body: &[u8]) -> Result<String>;
}

/// Bodies in the clear (tag [`TAG_PLAINTEXT`]).
#[derive(Debug, Default)]
pub(crate) struct Plaintext;

impl Sealer for Plaintext {
    fn seal(&mut self, _to: Recipient, text: &str) -> Result<Vec<u8>> {
        let mut body = Vec::with_capacity(1 + text.len());
        body.push(TAG_PLAINTEXT);
        body.extend_from_slice(text.as_bytes());
        Ok(body)
    }

    fn open(&mut self, _from: DeviceId, body: &[u8]) -> Result<String> {
        match body.split_first() {
            Some((&TAG_PLAINTEXT, text)) => match std::str::from_utf8(text) {
                Ok(text) => Ok(text.to_string()),
                Err(_) => bail!("a plaintext message that is not UTF-8"),
            },
            Some((tag, _)) => bail!(
                "a message in format {tag:#04x}, which this version cannot read: update commucat"
            ),
            None => bail!("an empty message body"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_round_trips_and_unknown_tags_are_refused() {
        let device = DeviceId([7; 16]);
        let body = Plaintext.seal(Recipient::Device(device), "héllo").unwrap();
        assert_eq!(body[0], TAG_PLAINTEXT);
        assert_eq!(Plaintext.open(device, &body).unwrap(), "héllo");
        assert!(Plaintext.open(device, &[0x01, b'x']).is_err());
        assert!(Plaintext.open(device, &[]).is_err());
        assert!(Plaintext.open(device, &[0x00, 0xff]).is_err());
    }
}
