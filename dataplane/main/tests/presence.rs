//! Goal: presence goes to friends only (DESIGN.md §3): with alice and bob friends through the
//! REST API and mallory a stranger, bob's `Away` reaches alice and not mallory, and alice hears
//! `Offline` once bob's session ends. Method: the real `commucat serve` (SQLite, REST API on
//! a free port, two shards), clients of the client library that register over their sessions,
//! and the library's REST client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::disallowed_methods)] // a test of a real process: its own clock and threads

mod common;

use common::Serve;
use commucat_client::api::Api;
use commucat_client::{Client, ConnectionConfig, Event, ops};
use dp_core::{DeviceId, SeededRng};
use dp_noise::StaticKeypair;
use dp_proto::PresenceState;
use std::time::Duration;

/// How long mallory is watched for a presence she must not get (a poll window, not an
/// expectation about speed: the check that matters is that alice got hers first).
const QUIET: Duration = Duration::from_millis(300);

fn user(server: &Serve, seed: u64, handle: &str) -> (Client<SeededRng>, Api) {
    let key = StaticKeypair::generate(&mut SeededRng::new(seed));
    let config = ConnectionConfig::new(key, server.public);
    let mut client = Client::connect(server.listen, config, SeededRng::new(seed + 1)).unwrap();
    ops::register(&mut client, handle, "phone").unwrap();
    let token = ops::issue_token(&mut client).unwrap().token;
    let mut api = Api::new(&format!("http://{}/v1", server.api)).unwrap();
    api.set_token(Some(token));
    (client, api)
}

/// The next presence event, skipping keepalives and responses.
fn presence(client: &mut Client<SeededRng>) -> (DeviceId, PresenceState) {
    loop {
        match client.next_event(Duration::from_secs(10)).unwrap() {
            Some(Event::Presence { device, state, .. }) => return (device, state),
            Some(Event::Pong { .. } | Event::Response { .. }) => {}
            Some(other) => panic!("{other:?}"),
            None => panic!("no presence before the deadline"),
        }
    }
}

#[test]
fn presence_reaches_friends_only_and_offline_follows_disconnect() {
    let dir = std::env::temp_dir().join(format!("commucat-presence-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = common::serve(&dir.join("data"), &[]);
    let (mut alice, alice_api) = user(&server, 110, "alice");
    let (mut bob, bob_api) = user(&server, 120, "bob");
    let (mut mallory, _) = user(&server, 130, "mallory");
    alice_api.request_friend("bob").unwrap();
    bob_api.accept_friend("alice").unwrap();
    let bob_device = bob.device();

    bob.set_presence(PresenceState::Away).unwrap();
    assert_eq!(presence(&mut alice), (bob_device, PresenceState::Away));
    // Mallory, no friend, hears nothing (alice already heard, so the fan-out is done).
    match mallory.next_event(QUIET).unwrap() {
        None | Some(Event::Pong { .. } | Event::Response { .. }) => {}
        Some(other) => panic!("mallory heard {other:?}"),
    }

    drop(bob);
    assert_eq!(presence(&mut alice), (bob_device, PresenceState::Offline));
    let _ = std::fs::remove_dir_all(&dir);
}
