//! What the tests of real servers share: the client configuration, events reduced to what the
//! tests compare, and scraping the Prometheus endpoint.
#![allow(dead_code)] // each test file uses part of it
#![allow(clippy::disallowed_methods)] // a test of a real server: its own clock

use commucat_client::{ConnectionConfig, Event};
use dp_core::{DeviceId, MessageId, SeededRng};
use dp_noise::{Cipher, Pattern, StaticKeypair, Suite};
use dp_proto::{ErrorCode, SendStatus};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How long a wait for a metric may take before the test fails on its value.
pub(crate) const METRIC_WAIT: Duration = Duration::from_secs(5);
/// The pause between two scrapes while waiting (the shards publish once per loop turn).
const SCRAPE_INTERVAL: Duration = Duration::from_millis(10);

/// An event, reduced to what the tests compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Got {
    SendAck(MessageId, SendStatus),
    Deliver(MessageId, DeviceId, Vec<u8>),
    GoAway(ErrorCode),
    Other,
}

pub(crate) fn got(event: Event) -> Got {
    match event {
        Event::SendAck {
            message, status, ..
        } => Got::SendAck(message, status),
        Event::Delivered(d) => Got::Deliver(d.message, d.sender, d.body),
        Event::GoAway { code, .. } => Got::GoAway(code),
        _ => Got::Other,
    }
}

/// A client's configuration (XK hybrid, ChaChaPoly) and its generator, seeded from its key.
pub(crate) fn client_config(
    server: &[u8; 32],
    key: &StaticKeypair,
) -> (ConnectionConfig, SeededRng) {
    let mut config = ConnectionConfig::new(key.clone(), *server);
    config.suite = Suite::new(Pattern::Xk, Cipher::ChaChaPoly, true);
    let seed = u64::from_le_bytes(key.public()[..8].try_into().unwrap());
    (config, SeededRng::new(seed))
}

/// `GET path` on the metrics endpoint: the whole response, head and body.
pub(crate) fn scrape(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// The sum over shards of the series `name` in a scrape.
pub(crate) fn total(text: &str, name: &str) -> u64 {
    let prefix = format!("{name}{{");
    text.lines()
        .filter(|line| line.starts_with(&prefix))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// Scrapes until the series `name` satisfies `want` or [`METRIC_WAIT`] has passed; returns
/// the last value seen (the caller asserts on it).
pub(crate) fn wait_for(addr: SocketAddr, name: &str, want: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + METRIC_WAIT;
    loop {
        let value = total(&scrape(addr, "/metrics"), name);
        if want(value) || Instant::now() >= deadline {
            return value;
        }
        std::thread::sleep(SCRAPE_INTERVAL);
    }
}
