//! Goal: end-to-end encryption works through a real server that only ever sees ciphertext.
//! Method: the real `commucat serve` (SQLite, REST API on a free port); two befriended users
//! register over their Noise sessions and take REST tokens; Bob publishes keys
//! (`PUT /v1/devices/me/keys`), Alice claims them (`POST /v1/keys/claim`), seals a message
//! with [`commucat_client::e2e::E2e`] and sends it over the data plane; Bob opens it. The body
//! as delivered, and as stored in the SQLite database for Bob while he is offline, must not
//! contain the plaintext.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::disallowed_methods)] // a test of a real process: its own clock and threads

mod common;

use common::Serve;
use commucat_client::api::Api;
use commucat_client::e2e::E2e;
use commucat_client::{Client, ConnectionConfig, Event, OsRng, Recipient, SendStatus, ops};
use dp_noise::StaticKeypair;
use std::path::Path;
use std::time::{Duration, Instant};

const SECRET: &[u8] = b"the eagle lands at midnight; bring the cat food";

fn api(server: &Serve, token: &str) -> Api {
    let mut api = Api::new(&format!("http://{}/v1", server.api)).unwrap();
    api.set_token(Some(token.to_string()));
    api
}

fn connect(server: &Serve, key: &StaticKeypair) -> Client {
    let config = ConnectionConfig::new(key.clone(), server.public);
    Client::connect(server.listen, config, OsRng).unwrap()
}

/// Registers `handle` over the device's session and returns a REST token.
fn register(client: &mut Client, handle: &str) -> String {
    ops::register(client, handle, "phone").unwrap();
    ops::issue_token(client).unwrap().token
}

/// Waits for the acknowledgement of `message` and returns its status.
fn send_ack(client: &mut Client, message: dp_core::MessageId) -> SendStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(Event::SendAck {
            message: acked,
            status,
            ..
        })) = client.next_event(Duration::from_millis(100))
            && acked == message
            && status != SendStatus::Retry
        {
            return status;
        }
    }
    panic!("no acknowledgement for {message:?}");
}

/// Waits for the next delivery.
fn delivery(client: &mut Client) -> commucat_client::Delivery {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(Event::Delivered(delivery))) = client.next_event(Duration::from_millis(100))
        {
            return delivery;
        }
    }
    panic!("nothing was delivered");
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every stored envelope body, read straight from the SQLite file.
fn stored_bodies(data: &Path) -> Vec<Vec<u8>> {
    let conn = rusqlite::Connection::open(data.join("commucat.sqlite3")).unwrap();
    let mut stmt = conn.prepare("SELECT body FROM envelopes").unwrap();
    stmt.query_map([], |row| row.get::<_, Vec<u8>>(0))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

#[test]
fn encrypted_envelope_through_a_real_server_online_and_stored() {
    let dir = std::env::temp_dir().join(format!("commucat-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");
    let server = common::serve(&data, &[]);
    let alice_key = StaticKeypair::generate(&mut OsRng);
    let bob_key = StaticKeypair::generate(&mut OsRng);
    let mut alice = connect(&server, &alice_key);
    let mut bob = connect(&server, &bob_key);
    let alice_token = register(&mut alice, "alice");
    let bob_token = register(&mut bob, "bob");
    let (alice_device, bob_device) = (alice.device(), bob.device());

    api(&server, &alice_token).request_friend("bob").unwrap();
    api(&server, &bob_token).accept_friend("alice").unwrap();

    // Bob publishes his keys; Alice claims them.
    let mut bob_e2e = E2e::new();
    let published = api(&server, &bob_token)
        .publish_keys(&bob_e2e.keys_to_publish(10))
        .unwrap();
    assert_eq!(published.one_time_keys, 10);
    let mut alice_e2e = E2e::new();
    let claimed = api(&server, &alice_token)
        .claim_keys(&[bob_device])
        .unwrap();
    assert_eq!(claimed.devices.len(), 1);
    assert_eq!(claimed.devices[0].device(), Some(bob_device));
    assert!(!claimed.devices[0].fallback);

    // Online: sealed by Alice, relayed, opened by Bob.
    let sealed = alice_e2e
        .seal(bob_device, Some(&claimed.devices[0]), SECRET)
        .unwrap();
    assert!(!contains(&sealed, SECRET));
    let message = alice.send(Recipient::Device(bob_device), &sealed).unwrap();
    let got = delivery(&mut bob);
    assert_eq!(got.message, message);
    assert_eq!(got.sender, alice_device);
    assert_eq!(got.body, sealed, "the server relays the body untouched");
    assert!(!contains(&got.body, SECRET));
    assert_eq!(bob_e2e.open(got.sender, &got.body).unwrap(), SECRET);
    // Bob's client acknowledges while it runs; wait until the server reports it to Alice, so
    // that the first envelope is not stored for redelivery.
    let first = message;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut delivered = false;
    while !delivered && Instant::now() < deadline {
        let _ = bob.next_event(Duration::from_millis(10));
        if let Ok(Some(Event::SendAck {
            message, status, ..
        })) = alice.next_event(Duration::from_millis(10))
        {
            delivered = message == first && status == SendStatus::Delivered;
        }
    }
    assert!(delivered, "Bob's acknowledgement did not reach Alice");

    // Offline: Bob goes away, Alice's next message is stored, and the database holds only
    // ciphertext.
    bob.abort();
    let second_plaintext = [SECRET, b" (second)"].concat();
    let second = alice_e2e.seal(bob_device, None, &second_plaintext).unwrap();
    let message = alice.send(Recipient::Device(bob_device), &second).unwrap();
    assert_eq!(send_ack(&mut alice, message), SendStatus::Stored);
    let stored = stored_bodies(&data);
    assert!(
        stored.contains(&second),
        "the envelope is stored as sent ({} rows)",
        stored.len()
    );
    for body in &stored {
        assert!(!contains(body, SECRET), "plaintext in the database");
    }

    // Bob comes back: the stored envelope is delivered and opens.
    let mut bob = connect(&server, &bob_key);
    let got = delivery(&mut bob);
    assert_eq!(
        got.message, message,
        "only the stored envelope is delivered"
    );
    assert_eq!(
        bob_e2e.open(got.sender, &got.body).unwrap(),
        second_plaintext
    );
    // And he can answer over the same session, without claiming anything.
    let reply = bob_e2e.seal(alice_device, None, b"roger").unwrap();
    bob.send(Recipient::Device(alice_device), &reply).unwrap();
    let got = delivery(&mut alice);
    assert_eq!(alice_e2e.open(got.sender, &got.body).unwrap(), b"roger");

    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}
