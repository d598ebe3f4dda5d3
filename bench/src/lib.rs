//! Shared set-up for CommuCat's benchmarks: handshakes and sessions built on the real machines
//! with seeded randomness, so every run measures the same work.

use core::net::SocketAddr;
use dp_core::{Instant, SeededRng};
use dp_noise::{
    Established, Initiator, InitiatorConfig, InitiatorEvent, Responder, ResponderConfig,
    ResponderEvent, StaticKeypair, Suite,
};

/// Room for any handshake packet.
pub const PACKET_BUF: usize = 2048;

/// A client and a server key, and the address the client sends from.
#[derive(Debug)]
pub struct Keys {
    /// The client's static key.
    pub client: StaticKeypair,
    /// The server's static key.
    pub server: StaticKeypair,
    /// The client's address.
    pub from: SocketAddr,
}

impl Keys {
    /// Fixed keys from `seed`.
    pub fn new(seed: u64) -> Self {
        let mut rng = SeededRng::new(seed);
        Self {
            client: StaticKeypair::generate(&mut rng),
            server: StaticKeypair::generate(&mut rng),
            from: SocketAddr::from(([192, 0, 2, 1], 4000)),
        }
    }

    /// A responder with the server key and default policy.
    pub fn responder(&self, rng: &mut SeededRng) -> Responder {
        Responder::new(
            Instant(1),
            ResponderConfig::default(),
            self.server.clone(),
            rng,
        )
    }

    /// An initiator for `suite`.
    pub fn initiator(&self, suite: Suite) -> Initiator {
        Initiator::new(
            Instant(1),
            InitiatorConfig {
                suite,
                local: self.client.clone(),
                remote_static: *self.server.public(),
                timestamp_ms: 1,
            },
        )
    }
}

/// Runs a whole handshake; returns (client side, server side). `None` if any step failed.
pub fn handshake(suite: Suite, seed: u64) -> Option<(Box<Established>, Box<Established>)> {
    let keys = Keys::new(seed);
    let mut rng = SeededRng::new(seed ^ 1);
    let mut responder = keys.responder(&mut rng);
    let mut initiator = keys.initiator(suite);
    let (mut a, mut b) = ([0u8; PACKET_BUF], [0u8; PACKET_BUF]);
    let now = Instant(1);
    let n = initiator.write_initiation(now, &mut rng, &mut a).ok()?;
    match responder
        .handle_packet(now, keys.from, &a[..n], &mut b, &mut rng)
        .ok()?
    {
        ResponderEvent::Established {
            reply_len: Some(m),
            session: server,
        } => match initiator.handle_packet(now, &b[..m], &mut a).ok()? {
            InitiatorEvent::Established {
                session: client, ..
            } => Some((client, server)),
            InitiatorEvent::Retry => None,
        },
        ResponderEvent::Continue { len: m } => {
            let InitiatorEvent::Established {
                finish_len: Some(f),
                session: client,
            } = initiator.handle_packet(now, &b[..m], &mut a).ok()?
            else {
                return None;
            };
            match responder
                .handle_packet(now, keys.from, &a[..f], &mut b, &mut rng)
                .ok()?
            {
                ResponderEvent::Established {
                    session: server, ..
                } => Some((client, server)),
                _ => None,
            }
        }
        ResponderEvent::CookieSent { .. } | ResponderEvent::Established { .. } => None,
    }
}

pub mod load;
