//! The end-to-end key directory over REST (`PUT /v1/devices/me/keys`, `POST /v1/keys/claim`),
//! in process, against embedded SQLite and a real PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../store/tests/support/mod.rs"]
mod support;

#[path = "../../core/tests/common/noise.rs"]
#[allow(dead_code, unreachable_pub)]
mod noise;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode};
use control_api::{ApiConfig, AppState, router};
use control_core::{Caller, Control, Limits, ManualClock};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use support::Kind;
use tokio::sync::mpsc;
use tower::ServiceExt;

conformance!(
    publish_and_claim_over_rest,
    attack_claim_keys_of_a_stranger_over_rest,
    malformed_key_requests_get_typed_errors,
);

const NOW: u64 = 1_800_000_000_000;

struct Api {
    app: Router,
    control: Arc<Control>,
    _db: support::TestStore,
    _commands: mpsc::Receiver<control_core::ControlCommand>,
}

async fn api(kind: Kind) -> Api {
    let db = support::open(kind).await;
    let control = Arc::new(Control::new(
        db.store.clone(),
        Box::new(Arc::new(ManualClock::new(NOW))),
        Limits::default(),
    ));
    let (tx, commands) = mpsc::channel(16);
    let state = AppState::new(control.clone(), None, tx, ApiConfig::default());
    Api {
        app: router(state),
        control,
        _db: db,
        _commands: commands,
    }
}

/// A registered user: its caller, its device id in hex and a session token.
async fn user(api: &Api, seed: u64, handle: &str) -> (Caller, String, String) {
    let (_, peer) = noise::device(seed);
    api.control.register(&peer, handle, "phone").await.unwrap();
    let caller = api.control.session_caller(&peer).await.unwrap();
    let token = api.control.issue_token(&caller).await.unwrap().to_hex();
    (caller, hex::encode(caller.device().0), token)
}

async fn call(
    api: &Api,
    method: Method,
    path: &str,
    token: &str,
    body: Value,
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let from: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    request.extensions_mut().insert(ConnectInfo(from));
    let response = api.app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn signed(tag: &str, n: usize) -> Value {
    json!({
        "key_id": format!("{tag}{n}"),
        "key": format!("{tag}key{n:0>36}"),
        "signature": format!("{tag}sig{n:0>80}"),
    })
}

fn keys(tag: &str, one_time: usize) -> Value {
    json!({
        "identity": {"curve25519": format!("{tag}curve{:0>38}", 0), "ed25519": format!("{tag}ed{:0>41}", 0)},
        "fallback_key": signed(&format!("{tag}fb"), 0),
        "one_time_keys": (0..one_time).map(|n| signed(tag, n)).collect::<Vec<_>>(),
    })
}

async fn befriend(api: &Api, a: &Caller, b: &Caller, b_handle: &str, a_handle: &str) {
    api.control.request_friend(a, b_handle).await.unwrap();
    api.control.accept_friend(b, a_handle).await.unwrap();
}

/// Goal: what a device publishes is what a friend claims, and each one-time key comes out
/// once, then the fallback key. Method: bob publishes two keys; alice claims three times.
async fn publish_and_claim_over_rest(kind: Kind) {
    let api = api(kind).await;
    let (alice, _, alice_token) = user(&api, 1, "alice").await;
    let (bob, bob_device, bob_token) = user(&api, 2, "bob").await;
    befriend(&api, &alice, &bob, "bob", "alice").await;
    let (s, out) = call(
        &api,
        Method::PUT,
        "/v1/devices/me/keys",
        &bob_token,
        keys("b", 2),
    )
    .await;
    assert_eq!(
        (s, out["one_time_keys"].as_u64()),
        (StatusCode::OK, Some(2))
    );
    let claim = json!({"devices": [bob_device.clone()]});
    for n in 0..3 {
        let (s, out) = call(
            &api,
            Method::POST,
            "/v1/keys/claim",
            &alice_token,
            claim.clone(),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{out}");
        let got = &out["devices"][0];
        assert_eq!(got["device_id"], bob_device);
        assert_eq!(got["identity"], keys("b", 0)["identity"]);
        if n < 2 {
            assert_eq!(got["one_time_key"], signed("b", n));
            assert_eq!(got["fallback"], false);
        } else {
            assert_eq!(got["one_time_key"], signed("bfb", 0));
            assert_eq!(got["fallback"], true);
        }
    }
}

/// Goal: a stranger's claim gets an empty list, the same answer as for a device that does not
/// exist, and consumes nothing. Method: mallory claims bob's device and a made-up one.
async fn attack_claim_keys_of_a_stranger_over_rest(kind: Kind) {
    let api = api(kind).await;
    let (bob, bob_device, bob_token) = user(&api, 2, "bob").await;
    let (_, _, mallory_token) = user(&api, 3, "mallory").await;
    call(
        &api,
        Method::PUT,
        "/v1/devices/me/keys",
        &bob_token,
        keys("b", 2),
    )
    .await;
    let (s, stranger) = call(
        &api,
        Method::POST,
        "/v1/keys/claim",
        &mallory_token,
        json!({"devices": [bob_device]}),
    )
    .await;
    let (s2, unknown) = call(
        &api,
        Method::POST,
        "/v1/keys/claim",
        &mallory_token,
        json!({"devices": ["77".repeat(16)]}),
    )
    .await;
    assert_eq!((s, s2), (StatusCode::OK, StatusCode::OK));
    assert_eq!(stranger, json!({"devices": []}));
    assert_eq!(stranger, unknown);
    assert_eq!(
        api.control
            .store()
            .one_time_key_count(bob.device())
            .await
            .unwrap(),
        2
    );
}

/// Goal: malformed or oversized key requests are typed 4xx errors, never 5xx. Method: each
/// bound broken once.
async fn malformed_key_requests_get_typed_errors(kind: Kind) {
    let api = api(kind).await;
    let (_, _, token) = user(&api, 1, "alice").await;
    let mut bad_key = keys("a", 1);
    bad_key["one_time_keys"][0]["key"] = json!("not base64!");
    let cases = [
        (Method::PUT, "/v1/devices/me/keys", keys("a", 51)),
        (Method::PUT, "/v1/devices/me/keys", bad_key),
        (Method::PUT, "/v1/devices/me/keys", json!({"identity": {}})),
        (Method::POST, "/v1/keys/claim", json!({"devices": ["zz"]})),
        (
            Method::POST,
            "/v1/keys/claim",
            json!({"devices": vec!["00".repeat(16); 65]}),
        ),
        (Method::POST, "/v1/keys/claim", json!({"devices": 1})),
    ];
    for (method, path, body) in cases {
        let (s, out) = call(&api, method.clone(), path, &token, body).await;
        assert!(s.is_client_error(), "{method} {path}: {s} {out}");
        assert_eq!(
            out["error"]["code"], "invalid_input",
            "{method} {path}: {out}"
        );
    }
}
