//! Goal: a device registers and gets its REST token over its own Noise session (the key it
//! registers is the one its handshake proved), and revoking it through the REST API ends its
//! live session on the data plane (DESIGN.md §6.4, attack: "a revoked device keeps its live
//! session"). Method: the real `commucat serve` (SQLite, REST API on a free port), a client of
//! the client library's session operations (`commucat_client::ops`) and its REST client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::disallowed_methods)] // a test of a real process: its own clock and threads

mod common;

use common::serve;
use commucat_client::api::{Api, ApiError};
use commucat_client::{Client, ConnectionConfig, Event, ops};
use dp_core::SeededRng;
use dp_noise::StaticKeypair;
use dp_proto::ErrorCode;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn register_and_token_over_the_session_and_revocation_ends_the_session() {
    let dir = std::env::temp_dir().join(format!("commucat-session-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = serve(&dir.join("data"), &[]);
    let key = StaticKeypair::generate(&mut SeededRng::new(77));
    let config = ConnectionConfig::new(key, server.public);
    let mut client = Client::connect(server.listen, config, SeededRng::new(78)).unwrap();

    // Before registering, the device has no account: no token.
    let error = ops::issue_token(&mut client).unwrap_err();
    assert_eq!(error.status(), Some(ErrorCode::UNAUTHENTICATED), "{error}");

    let user = ops::register(&mut client, "alice", "phone").unwrap();
    // The same handle again (from the same device) is refused with a stable code.
    let error = ops::register(&mut client, "alice", "phone").unwrap_err();
    assert_eq!(error.status(), Some(ErrorCode::CONFLICT), "{error}");
    assert!(error.code().is_some(), "{error:?}");

    let issued = ops::issue_token(&mut client).unwrap();
    assert!(issued.expires_at_ms > 0, "{issued:?}");
    let mut api = Api::new(&format!("http://{}/v1", server.api)).unwrap();
    api.set_token(Some(issued.token));

    let me = api.me().unwrap();
    let device = hex::encode(client.device().0);
    assert_eq!(me.device_id, device, "/v1/me names the session's device");
    assert_eq!((me.user_id, me.handle.as_str()), (user.0, "alice"));

    // The device revokes itself through the REST API: its live Noise session must end.
    let revoked_at = Instant::now();
    api.revoke_device(&device).unwrap();
    let mut ended = None;
    while revoked_at.elapsed() < Duration::from_secs(10) && ended.is_none() {
        match client.next_event(Duration::from_millis(50)) {
            Ok(Some(Event::Error { code, .. })) => ended = Some(code),
            Ok(Some(Event::Closed { .. })) | Err(_) => break,
            _ => {}
        }
    }
    assert_eq!(
        ended,
        Some(ErrorCode::DEVICE_REVOKED),
        "the session was not ended"
    );
    println!(
        "session ended {:?} after the revocation",
        revoked_at.elapsed()
    );

    // And its token is dead.
    let error = api.me().unwrap_err();
    assert!(
        matches!(error, ApiError::Status { status: 401, .. }),
        "{error}"
    );
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn commucat(args: &[&str], data: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_commucat"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Goal: after `commucat rotate-keys`, clients that still know only the old server key get in
/// during the grace period, clients with the new key get in, and with no grace left the old key
/// is refused; the files are private. Method: the real binary, handshakes over loopback.
#[test]
fn rotated_key_is_accepted_during_its_grace_period_only() {
    let dir = std::env::temp_dir().join(format!("commucat-rotate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");
    let old = serve(&data, &[]).public;
    let out = commucat(&["rotate-keys", "--admin"], &data);
    assert!(out.contains("new admin credential"), "{out}");
    for file in ["server.key", "server.key.previous", "admin.credential"] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }
    let server = serve(&data, &[]);
    assert_ne!(server.public, old, "a new key");
    let key = StaticKeypair::generate(&mut SeededRng::new(5));
    for public in [old, server.public] {
        let config = ConnectionConfig::new(key.clone(), public);
        let client = Client::connect(server.listen, config, SeededRng::new(6));
        assert!(client.is_ok(), "handshake to {}", hex::encode(public));
    }
    drop(server);

    let config_file = dir.join("no-grace.toml");
    std::fs::write(&config_file, "key_grace_secs = 0\n").unwrap();
    let server = serve(&data, &["--config", config_file.to_str().unwrap()]);
    let config = ConnectionConfig::new(key.clone(), old);
    assert!(
        Client::connect(server.listen, config, SeededRng::new(7)).is_err(),
        "the old key is refused once its grace is over"
    );
    let config = ConnectionConfig::new(key, server.public);
    assert!(Client::connect(server.listen, config, SeededRng::new(8)).is_ok());
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}
