//! Connection ids that name the shard holding the connection's QUIC state.

use quinn_proto::{ConnectionId, ConnectionIdGenerator, InvalidCid};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

/// Length of every connection id this crate issues: the shard (`u16`, big-endian) and 8
/// random bytes.
pub const CID_LEN: usize = 10;

/// The shard named by the destination connection id of a QUIC datagram, if the datagram
/// carries an id of [`CID_LEN`] bytes.
///
/// QUIC state cannot move between threads the way a TCP socket can, so a later steering step
/// (an `SO_REUSEPORT` eBPF program, or the IO layer itself) reads this to send every datagram
/// of a connection to the shard that holds it, even after the client's address changes. The
/// caller must still check the result against its shard count: a client's very first Initial
/// carries an id the client chose at random. Short-header packets do not carry the id's
/// length; ours is always [`CID_LEN`].
pub fn cid_shard(datagram: &[u8]) -> Option<u16> {
    let first = *datagram.first()?;
    let cid = if first & 0x80 != 0 {
        // Long header: flags, version (4), dcid length, dcid.
        let len = usize::from(*datagram.get(5)?);
        if len != CID_LEN {
            return None;
        }
        datagram.get(6..6 + CID_LEN)?
    } else {
        datagram.get(1..1 + CID_LEN)?
    };
    Some(u16::from_be_bytes([cid[0], cid[1]]))
}

/// Issues [`CID_LEN`]-byte ids that start with the shard, from a seeded ChaCha20 stream (so a
/// simulator reproduces them; the seed comes from the caller's `Rng`).
pub(crate) struct ShardCidGenerator {
    shard: u16,
    rng: ChaCha20Rng,
}

impl ShardCidGenerator {
    pub(crate) fn new(shard: u16, seed: [u8; 32]) -> Self {
        Self {
            shard,
            rng: ChaCha20Rng::from_seed(seed),
        }
    }

    /// A random id of [`CID_LEN`] bytes for shard `shard` (also a client's initial id).
    pub(crate) fn next_cid(&mut self) -> ConnectionId {
        let mut bytes = [0u8; CID_LEN];
        bytes[..2].copy_from_slice(&self.shard.to_be_bytes());
        self.rng.fill_bytes(&mut bytes[2..]);
        ConnectionId::new(&bytes)
    }
}

impl ConnectionIdGenerator for ShardCidGenerator {
    fn generate_cid(&mut self) -> ConnectionId {
        self.next_cid()
    }

    /// An id that names another shard is not ours: the endpoint drops the packet rather than
    /// answer it with a stateless reset that would kill the connection where it does live.
    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        if cid.len() == CID_LEN && cid[..2] == self.shard.to_be_bytes() {
            Ok(())
        } else {
            Err(InvalidCid)
        }
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<core::time::Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_shard_and_the_parser_finds_it() {
        let mut generator = ShardCidGenerator::new(0x0102, [7; 32]);
        let cid = generator.generate_cid();
        assert_eq!(cid.len(), CID_LEN);
        assert!(generator.validate(&cid).is_ok());
        assert!(ShardCidGenerator::new(3, [7; 32]).validate(&cid).is_err());
        // Short header: flags then the id.
        let mut short = vec![0x40];
        short.extend_from_slice(&cid);
        short.extend_from_slice(&[0; 20]);
        assert_eq!(cid_shard(&short), Some(0x0102));
        // Long header: flags, version, dcid length, dcid.
        let mut long = vec![0xc0, 0, 0, 0, 1, CID_LEN as u8];
        long.extend_from_slice(&cid);
        assert_eq!(cid_shard(&long), Some(0x0102));
        long[5] = 8;
        assert_eq!(cid_shard(&long), None);
        assert_eq!(cid_shard(&[]), None);
        assert_eq!(cid_shard(&[0x40, 1]), None);
        // Same seed, same ids (reproducible); the random part differs between ids.
        let again = ShardCidGenerator::new(0x0102, [7; 32]).generate_cid();
        assert_eq!(cid, again);
        assert_ne!(generator.generate_cid(), cid);
    }
}
