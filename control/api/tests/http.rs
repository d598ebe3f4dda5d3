//! The REST API in process (`tower::ServiceExt::oneshot`, with the source address set as a
//! real connection would) and on a real loopback listener, against embedded SQLite and a real
//! PostgreSQL (`sqlite::<name>` and `postgres::<name>`). Tests named `attack_*` are written as
//! the attack they prevent (DESIGN.md §6.2, §6.4, §6.7–6.9; the original's S8–S13).

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
use control_core::ratelimit::Rate;
use control_core::{AdminCredential, Control, ControlCommand, Limits, ManualClock};
use dp_core::ConversationId;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use support::Kind;
use tokio::sync::mpsc;
use tower::ServiceExt;

conformance!(
    rest_flow_devices_friends_groups,
    attack_claimed_id_in_a_payload_is_ignored,
    attack_rate_limit_bypassed_with_a_new_source_port,
    attack_endpoint_that_fetches_a_client_chosen_url,
    attack_admin_endpoints_without_or_with_a_wrong_credential,
    attack_database_error_details_in_an_error_body,
    attack_revoked_device_keeps_using_its_token,
    oversized_and_malformed_requests_get_typed_errors,
    health_readiness_and_openapi,
    real_listener_on_loopback,
    no_input_to_any_documented_route_gets_a_5xx,
);

const NOW: u64 = 1_800_000_000_000;
const ADMIN_SECRET: &str = "0123456789abcdef0123456789abcdef-admin-secret";

struct Api {
    app: Router,
    control: Arc<Control>,
    commands: mpsc::Receiver<ControlCommand>,
    state: AppState,
    db: support::TestStore,
}

async fn api(kind: Kind) -> Api {
    api_with(kind, ApiConfig::default()).await
}

async fn api_with(kind: Kind, config: ApiConfig) -> Api {
    let db = support::open(kind).await;
    let clock = Arc::new(ManualClock::new(NOW));
    let control = Arc::new(Control::new(
        db.store.clone(),
        Box::new(clock),
        Limits::default(),
    ));
    let (tx, commands) = mpsc::channel(16);
    let state = AppState::new(
        control.clone(),
        Some(AdminCredential::new(ADMIN_SECRET).unwrap()),
        tx,
        config,
    );
    Api {
        app: router(state.clone()),
        control,
        commands,
        state,
        db,
    }
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

const HOME: &str = "198.51.100.7:40000";

/// A registered user with a session token (as its Noise session would hand it over).
async fn user(api: &Api, seed: u64, handle: &str) -> String {
    let (_, peer) = noise::device(seed);
    api.control.register(&peer, handle, "phone").await.unwrap();
    let caller = api.control.session_caller(&peer).await.unwrap();
    api.control.issue_token(&caller).await.unwrap().to_hex()
}

async fn send(
    app: &Router,
    method: Method,
    path: &str,
    auth: Option<&str>,
    body: Option<Value>,
    from: SocketAddr,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = auth {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body = match body {
        Some(value) => {
            request = request.header("content-type", "application/json");
            Body::from(value.to_string())
        }
        None => Body::empty(),
    };
    let mut request = request.body(body).unwrap();
    request.extensions_mut().insert(ConnectInfo(from));
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
    };
    (status, value)
}

async fn call(
    api: &Api,
    method: Method,
    path: &str,
    auth: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    send(&api.app, method, path, auth, body, addr(HOME)).await
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

/// A whole client session over REST: devices, pairing code, friends with consent, a direct
/// conversation and a group with roles.
async fn rest_flow_devices_friends_groups(kind: Kind) {
    let mut api = api(kind).await;
    let alice = user(&api, 1, "alice").await;
    let bob = user(&api, 2, "bob").await;
    let (s, me) = call(&api, Method::GET, "/v1/me", Some(&alice), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(me["handle"], "alice");
    let (s, devices) = call(&api, Method::GET, "/v1/devices", Some(&alice), None).await;
    assert_eq!(s, StatusCode::OK);
    let device = devices[0]["id"].as_str().unwrap().to_string();
    assert_eq!(device, me["device_id"]);
    let (s, _) = call(
        &api,
        Method::PATCH,
        &format!("/v1/devices/{device}"),
        Some(&alice),
        Some(json!({"name": "work phone"})),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, devices) = call(&api, Method::GET, "/v1/devices", Some(&alice), None).await;
    assert_eq!(devices[0]["name"], "work phone");
    let (s, pairing) = call(&api, Method::POST, "/v1/pairing-codes", Some(&alice), None).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(pairing["code"].as_str().unwrap().len(), 11);

    let (s, out) = call(
        &api,
        Method::POST,
        "/v1/friends/requests",
        Some(&alice),
        Some(json!({"handle": "bob"})),
    )
    .await;
    assert_eq!(
        (s, out["outcome"].as_str()),
        (StatusCode::OK, Some("requested"))
    );
    let (_, requests) = call(&api, Method::GET, "/v1/friends/requests", Some(&bob), None).await;
    assert_eq!(requests["incoming"][0]["from"]["handle"], "alice");
    let (s, body) = call(
        &api,
        Method::POST,
        "/v1/conversations/direct",
        Some(&alice),
        Some(json!({"handle": "bob"})),
    )
    .await;
    assert_eq!((s, code(&body)), (StatusCode::FORBIDDEN, "not_friends"));
    let (s, _) = call(
        &api,
        Method::POST,
        "/v1/friends/requests/alice/accept",
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    // A friendship began: the data plane forgets the presence audiences around bob.
    assert!(matches!(
        api.commands.try_recv().unwrap(),
        ControlCommand::AudienceChanged(_)
    ));
    let (_, friends) = call(&api, Method::GET, "/v1/friends", Some(&alice), None).await;
    assert_eq!(friends[0]["handle"], "bob");
    let (s, keys) = call(
        &api,
        Method::GET,
        "/v1/users/alice/devices",
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(keys[0]["public_key"].as_str().unwrap().len(), 64);
    let (s, direct) = call(
        &api,
        Method::POST,
        "/v1/conversations/direct",
        Some(&alice),
        Some(json!({"handle": "bob"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, group) = call(
        &api,
        Method::POST,
        "/v1/conversations/groups",
        Some(&alice),
        Some(json!({"title": "plans"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let gid = group["id"].as_u64().unwrap();
    assert_ne!(gid, direct["id"].as_u64().unwrap());
    let (s, _) = call(
        &api,
        Method::POST,
        &format!("/v1/conversations/{gid}/members"),
        Some(&alice),
        Some(json!({"handle": "bob"})),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    // The data plane hears of every membership change.
    assert_eq!(
        api.commands.try_recv().unwrap(),
        ControlCommand::ConversationChanged(ConversationId(gid))
    );
    let (s, _) = call(
        &api,
        Method::PUT,
        &format!("/v1/conversations/{gid}/members/bob/role"),
        Some(&alice),
        Some(json!({"role": "admin"})),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, detail) = call(
        &api,
        Method::GET,
        &format!("/v1/conversations/{gid}"),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(detail["members"][1]["role"], "admin");
    let (s, _) = call(
        &api,
        Method::POST,
        &format!("/v1/conversations/{gid}/leave"),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        api.commands.try_recv().unwrap(),
        ControlCommand::ConversationChanged(ConversationId(gid))
    );
    let (_, list) = call(&api, Method::GET, "/v1/conversations", Some(&bob), None).await;
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "only the direct one is left"
    );
    let (s, _) = call(&api, Method::DELETE, "/v1/friends/bob", Some(&alice), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    // Their direct conversation can no longer be written to: the data plane hears of it.
    assert_eq!(
        api.commands.try_recv().unwrap(),
        ControlCommand::ConversationChanged(ConversationId(direct["id"].as_u64().unwrap()))
    );
    // And the presence audiences around alice.
    assert!(matches!(
        api.commands.try_recv().unwrap(),
        ControlCommand::AudienceChanged(_)
    ));
    let (s, _) = call(&api, Method::DELETE, "/v1/session", Some(&alice), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, body) = call(&api, Method::GET, "/v1/me", Some(&alice), None).await;
    assert_eq!(
        (s, code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );
}

/// DESIGN.md §6.2, S3: Mallory's request names Alice's device and account in the body and in
/// headers. Unknown fields are refused, headers are ignored, and the caller is always the
/// token's own device.
async fn attack_claimed_id_in_a_payload_is_ignored(kind: Kind) {
    let api = api(kind).await;
    let alice = user(&api, 1, "alice").await;
    let mallory = user(&api, 2, "mallory").await;
    let (_, alice_me) = call(&api, Method::GET, "/v1/me", Some(&alice), None).await;
    let alice_device = alice_me["device_id"].as_str().unwrap();
    let (s, body) = call(
        &api,
        Method::POST,
        "/v1/pairing-codes",
        Some(&mallory),
        Some(json!({"user_id": alice_me["user_id"], "device_id": alice_device})),
    )
    .await;
    // The endpoint takes no body: the code is for Mallory's account whatever she sends.
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let (s, body) = call(
        &api,
        Method::POST,
        "/v1/friends/requests",
        Some(&mallory),
        Some(json!({"handle": "alice", "from_user": alice_me["user_id"]})),
    )
    .await;
    assert_eq!((s, code(&body)), (StatusCode::BAD_REQUEST, "invalid_input"));
    let mut request = Request::builder()
        .uri("/v1/devices")
        .header("authorization", format!("Bearer {mallory}"))
        .header("x-device-id", alice_device)
        .header("x-user-id", alice_me["user_id"].to_string())
        .body(Body::empty())
        .unwrap();
    request.extensions_mut().insert(ConnectInfo(addr(HOME)));
    let response = api.app.clone().oneshot(request).await.unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let devices: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(devices.as_array().unwrap().len(), 1);
    assert_ne!(
        devices[0]["id"], alice_device,
        "Mallory sees only her own device"
    );
    let (s, body) = call(
        &api,
        Method::DELETE,
        &format!("/v1/devices/{alice_device}"),
        Some(&mallory),
        None,
    )
    .await;
    assert_eq!((s, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
}

/// DESIGN.md §6.7, S11: the original keyed its limiter by ip:port, so each new connection
/// got a fresh bucket. Here requests from new source ports of one address (and from one IPv6
/// /64) share a bucket; another address has its own.
async fn attack_rate_limit_bypassed_with_a_new_source_port(kind: Kind) {
    let burst = 5;
    let api = api_with(
        kind,
        ApiConfig {
            per_source: Rate {
                burst,
                per_second: 0,
            },
            ..ApiConfig::default()
        },
    )
    .await;
    for port in 0..burst {
        let from = SocketAddr::new(addr(HOME).ip(), 50_000 + port as u16);
        let (s, _) = send(&api.app, Method::GET, "/healthz", None, None, from).await;
        assert_eq!(s, StatusCode::OK);
    }
    let (s, body) = send(
        &api.app,
        Method::GET,
        "/healthz",
        None,
        None,
        addr("198.51.100.7:61000"),
    )
    .await;
    assert_eq!(
        (s, code(&body)),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    let (s, _) = send(
        &api.app,
        Method::GET,
        "/healthz",
        None,
        None,
        addr("198.51.100.8:1"),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "another address has its own bucket");

    for i in 0..burst {
        let from = addr(&format!("[2001:db8:5:6::{i}]:1{i}"));
        let (s, _) = send(&api.app, Method::GET, "/healthz", None, None, from).await;
        assert_eq!(s, StatusCode::OK);
    }
    let (s, _) = send(
        &api.app,
        Method::GET,
        "/healthz",
        None,
        None,
        addr("[2001:db8:5:6:ffff::1]:999"),
    )
    .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "one /64 is one source");

    // An authenticated identity has its own bucket, whatever address it comes from.
    let api = api_with(
        kind,
        ApiConfig {
            per_identity: Rate {
                burst,
                per_second: 0,
            },
            ..ApiConfig::default()
        },
    )
    .await;
    let alice = user(&api, 1, "alice").await;
    for i in 0..burst {
        let from = addr(&format!("203.0.113.{i}:80"));
        let (s, _) = send(&api.app, Method::GET, "/v1/me", Some(&alice), None, from).await;
        assert_eq!(s, StatusCode::OK);
    }
    let (s, body) = send(
        &api.app,
        Method::GET,
        "/v1/me",
        Some(&alice),
        None,
        addr("203.0.113.99:1"),
    )
    .await;
    assert_eq!(
        (s, code(&body)),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
}

/// DESIGN.md §6.8, S9/S10: the original's assist endpoint connected to any host:port a
/// client named, and `/p2p` was an open relay. No operation in the generated OpenAPI takes a
/// URL, host, port or address, none is a relay, and unknown paths such as the original's are
/// 404.
async fn attack_endpoint_that_fetches_a_client_chosen_url(kind: Kind) {
    let api = api(kind).await;
    let (s, doc) = call(&api, Method::GET, "/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let suspicious = [
        "url", "uri", "host", "port", "addr", "address", "endpoint", "target", "callback",
        "webhook", "relay", "proxy", "fetch", "redirect",
    ];
    let mut names = Vec::new();
    collect_names(&doc["paths"], &mut names);
    collect_names(&doc["components"]["schemas"], &mut names);
    for path in doc["paths"].as_object().unwrap().keys() {
        names.push(path.clone());
    }
    assert!(
        names.len() > 40,
        "the walk found the document's names: {names:?}"
    );
    for name in &names {
        let lower = name.to_lowercase();
        for word in suspicious {
            assert!(
                !lower
                    .split(|c: char| !c.is_ascii_alphanumeric())
                    .any(|w| w == word),
                "{name:?} looks like a place to connect to"
            );
        }
    }
    let text = doc.to_string();
    assert!(!text.contains("\"format\":\"uri\""));
    for path in ["/api/p2p/assist", "/p2p", "/v1/p2p/assist", "/v1/relay"] {
        let (s, body) = call(
            &api,
            Method::POST,
            path,
            None,
            Some(json!({"host": "10.0.0.1"})),
        )
        .await;
        assert_eq!(
            (s, code(&body)),
            (StatusCode::NOT_FOUND, "not_found"),
            "{path}"
        );
    }
}

/// Every property name, parameter name and tag in a JSON subtree.
fn collect_names(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                if key == "properties"
                    && let Some(props) = child.as_object()
                {
                    out.extend(props.keys().cloned());
                }
                if key == "name"
                    && let Some(name) = child.as_str()
                {
                    out.push(name.to_string());
                }
                collect_names(child, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_names(i, out)),
        _ => {}
    }
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Self;
    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}

/// DESIGN.md §6.9, S13: admin endpoints refuse a request without the admin credential, with a
/// wrong one, and with a user's session token; the right one works. Neither the credential nor
/// a wrong guess appears in the log or in any response body.
async fn attack_admin_endpoints_without_or_with_a_wrong_credential(kind: Kind) {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let mut api = api(kind).await;
    let alice = user(&api, 1, "alice").await;
    let (_, me) = call(&api, Method::GET, "/v1/me", Some(&alice), None).await;
    let device = me["device_id"].as_str().unwrap().to_string();
    let wrong = "0123456789abcdef0123456789abcdef-admin-secreT";
    let mut bodies = String::new();
    for credential in [None, Some(wrong), Some(alice.as_str()), Some("")] {
        for (method, path) in [
            (Method::GET, "/v1/admin/users".to_string()),
            (Method::GET, "/v1/admin/users/alice/devices".to_string()),
            (Method::DELETE, format!("/v1/admin/devices/{device}")),
        ] {
            let (s, body) = call(&api, method, &path, credential, None).await;
            assert_eq!(
                (s, code(&body)),
                (StatusCode::UNAUTHORIZED, "unauthenticated"),
                "{path} with {credential:?}"
            );
            bodies.push_str(&body.to_string());
        }
    }
    assert!(api.commands.try_recv().is_err(), "no revocation happened");
    let (s, users) = call(
        &api,
        Method::GET,
        "/v1/admin/users",
        Some(ADMIN_SECRET),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(users[0]["handle"], "alice");
    bodies.push_str(&users.to_string());
    let (s, body) = call(
        &api,
        Method::DELETE,
        &format!("/v1/admin/devices/{device}"),
        Some(ADMIN_SECRET),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    bodies.push_str(&body.to_string());
    let revoked = api.commands.try_recv().unwrap();
    assert_eq!(
        hex::encode(match revoked {
            ControlCommand::RevokeDevice(d) => d.0,
            other => panic!("{other:?}"),
        }),
        device
    );
    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains("admin credential refused"),
        "refusals are logged: {logged}"
    );
    for secret in [ADMIN_SECRET, wrong, "admin-secret", alice.as_str()] {
        assert!(!logged.contains(secret), "a secret in the log");
        assert!(!bodies.contains(secret), "a secret in a response body");
    }
    assert!(!format!("{:?}", api.state).contains("admin-secret"));
}

/// The original returned free text with internal detail. With a table gone from under it, a
/// request gets `internal` and nothing else: no SQL, no table name, no driver message.
async fn attack_database_error_details_in_an_error_body(kind: Kind) {
    let api = api(kind).await;
    let alice = user(&api, 1, "alice").await;
    support::raw_execute(&api.db.config, "DROP TABLE friendships").await;
    let (s, body) = call(&api, Method::GET, "/v1/friends", Some(&alice), None).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        body,
        json!({"error": {"code": "internal", "message": "internal error"}})
    );
}

/// DESIGN.md §6.4, S8/S16 over REST: revoking a device (by another device of the account)
/// emits the data plane's revoke command and the revoked device's token stops working at once.
async fn attack_revoked_device_keeps_using_its_token(kind: Kind) {
    let mut api = api(kind).await;
    let phone = user(&api, 1, "alice").await;
    let (s, pairing) = call(&api, Method::POST, "/v1/pairing-codes", Some(&phone), None).await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, laptop_peer) = noise::device(2);
    api.control
        .claim_pairing_code(&laptop_peer, pairing["code"].as_str().unwrap(), "laptop")
        .await
        .unwrap();
    let laptop_caller = api.control.session_caller(&laptop_peer).await.unwrap();
    let laptop = api
        .control
        .issue_token(&laptop_caller)
        .await
        .unwrap()
        .to_hex();
    let (s, _) = call(&api, Method::GET, "/v1/devices", Some(&laptop), None).await;
    assert_eq!(s, StatusCode::OK);
    let laptop_id = hex::encode(laptop_peer.device().0);
    let (s, body) = call(
        &api,
        Method::DELETE,
        &format!("/v1/devices/{laptop_id}"),
        Some(&phone),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["revoked"], laptop_id);
    assert_eq!(
        api.commands.try_recv().unwrap(),
        ControlCommand::RevokeDevice(laptop_peer.device())
    );
    let (s, body) = call(&api, Method::GET, "/v1/devices", Some(&laptop), None).await;
    assert_eq!(
        (s, code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );
    // A malformed or made-up token is the same answer.
    for token in ["", "abc", &"00".repeat(32), &"zz".repeat(32)] {
        let (s, body) = call(&api, Method::GET, "/v1/me", Some(token), None).await;
        assert_eq!(
            (s, code(&body)),
            (StatusCode::UNAUTHORIZED, "unauthenticated")
        );
    }
}

/// Bodies past the limit, malformed JSON, wrong types, unknown routes and methods: each a
/// typed JSON error, never a 5xx.
async fn oversized_and_malformed_requests_get_typed_errors(kind: Kind) {
    let api = api_with(
        kind,
        ApiConfig {
            body_limit_bytes: 256,
            ..ApiConfig::default()
        },
    )
    .await;
    let alice = user(&api, 1, "alice").await;
    let big = json!({"title": "x".repeat(1000)});
    let (s, body) = call(
        &api,
        Method::POST,
        "/v1/conversations/groups",
        Some(&alice),
        Some(big),
    )
    .await;
    assert_eq!(
        (s, code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    let mut request = Request::builder()
        .method(Method::POST)
        .uri("/v1/conversations/groups")
        .header("authorization", format!("Bearer {alice}"))
        .header("content-type", "application/json")
        .body(Body::from("{\"title\": "))
        .unwrap();
    request.extensions_mut().insert(ConnectInfo(addr(HOME)));
    let response = api.app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    for (method, path, body) in [
        (
            Method::POST,
            "/v1/conversations/groups",
            json!({"title": 5}),
        ),
        (
            Method::POST,
            "/v1/conversations/groups",
            json!({"title": ""}),
        ),
        (
            Method::POST,
            "/v1/friends/requests",
            json!({"handle": "NOT A HANDLE"}),
        ),
        (Method::GET, "/v1/conversations/not-a-number", Value::Null),
        (Method::PATCH, "/v1/devices/xyz", json!({"name": "n"})),
    ] {
        let body = (!body.is_null()).then_some(body);
        let (s, answer) = call(&api, method, path, Some(&alice), body).await;
        assert_eq!(
            (s, code(&answer)),
            (StatusCode::BAD_REQUEST, "invalid_input"),
            "{path}"
        );
    }
    let (s, body) = call(&api, Method::GET, "/v1/nowhere", Some(&alice), None).await;
    assert_eq!((s, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let (s, body) = call(&api, Method::PUT, "/v1/devices", Some(&alice), None).await;
    assert_eq!(
        (s, code(&body)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
}

/// `/healthz`, `/readyz` (the store answers) and `/openapi.json` (generated, every route in
/// it).
async fn health_readiness_and_openapi(kind: Kind) {
    let api = api(kind).await;
    let (s, body) = call(&api, Method::GET, "/healthz", None, None).await;
    assert_eq!((s, &body["status"]), (StatusCode::OK, &json!("ok")));
    let (s, _) = call(&api, Method::GET, "/readyz", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, doc) = call(&api, Method::GET, "/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/v1/devices/{device_id}",
        "/v1/pairing-codes",
        "/v1/friends/requests/{handle}/accept",
        "/v1/conversations/{id}/members/{handle}/role",
        "/v1/admin/devices/{device_id}",
        "/readyz",
    ] {
        assert!(paths.contains_key(path), "{path} missing from the OpenAPI");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

/// The API on a real socket (127.0.0.1:0) through `control_api::serve`, spoken to with plain
/// HTTP/1.1.
async fn real_listener_on_loopback(kind: Kind) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = api(kind).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();
    let server = tokio::spawn(control_api::serve(listener, api.state.clone()));
    let mut stream = tokio::net::TcpStream::connect(local).await.unwrap();
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("{\"status\":\"ok\"}"));
    server.abort();
}

/// A small schema-driven fuzz: every route and method in the generated OpenAPI document, with
/// hostile path parameters and bodies, authenticated and not. No answer is a 5xx, and every
/// error is the typed JSON shape.
async fn no_input_to_any_documented_route_gets_a_5xx(kind: Kind) {
    let api = api_with(
        kind,
        ApiConfig {
            per_source: Rate {
                burst: 100_000,
                per_second: 100_000,
            },
            per_identity: Rate {
                burst: 100_000,
                per_second: 100_000,
            },
            ..ApiConfig::default()
        },
    )
    .await;
    let alice = user(&api, 1, "alice").await;
    let (_, doc) = call(&api, Method::GET, "/openapi.json", None, None).await;
    let params = [
        "alice",
        "0",
        "18446744073709551615",
        "-1",
        "%00",
        "%2e%2e%2f",
        "%F0%9F%90%88",
        "00000000000000000000000000000000",
        "zz",
        &"a".repeat(300),
    ];
    let bodies = [
        None,
        Some(json!({})),
        Some(json!(null)),
        Some(json!([1, 2])),
        Some(json!({"handle": "alice"})),
        Some(json!({"handle": "\u{0}"})),
        Some(json!({"title": "t", "name": "n", "role": "owner"})),
        Some(json!({"name": "x".repeat(65)})),
        Some(json!({"role": "admin"})),
    ];
    let mut requests = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            for param in params {
                let concrete: String = path
                    .split('/')
                    .map(|seg| if seg.starts_with('{') { param } else { seg })
                    .collect::<Vec<_>>()
                    .join("/");
                for body in &bodies {
                    for auth in [Some(alice.as_str()), None, Some(ADMIN_SECRET)] {
                        let (s, answer) =
                            call(&api, method.clone(), &concrete, auth, body.clone()).await;
                        requests += 1;
                        assert!(
                            !s.is_server_error(),
                            "{method} {concrete} {body:?} -> {s} {answer}"
                        );
                        if !s.is_success() {
                            assert!(
                                answer["error"]["code"].is_string(),
                                "{method} {concrete}: {answer}"
                            );
                        }
                    }
                }
            }
        }
    }
    eprintln!("schema-driven requests: {requests}, none 5xx");
    assert!(requests > 1000, "{requests} requests");
}
