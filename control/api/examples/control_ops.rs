//! Control operations per second on SQLite and (given a URL) PostgreSQL, each beside a
//! baseline measured in the same run: a device lookup by primary key through the store (the
//! cheapest database call) for the domain operations, and `GET /healthz` (no database) for the
//! REST requests. Requests go through the whole router in process (no sockets).
//!
//! ```text
//! url=$(scripts/postgres.sh start)
//! cargo run -p control-api --example control_ops -- --postgres "$url"
//! scripts/postgres.sh stop "$url"
//! ```
//!
//! Options: `--seconds S` per measurement (default 3), `--tasks N` concurrent tasks (default
//! 4), `--postgres URL`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)] // a benchmark

#[path = "../../core/tests/common/noise.rs"]
#[allow(dead_code, unreachable_pub)]
mod noise;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use control_api::{ApiConfig, AppState, router};
use control_core::ratelimit::Rate;
use control_core::{Control, Limits, SystemClock};
use control_store::{Backend, Store, StoreConfig};
use dp_core::ConversationId;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;

struct Options {
    seconds: u64,
    tasks: usize,
    postgres: Option<String>,
}

fn options() -> Options {
    let mut o = Options {
        seconds: 3,
        tasks: 4,
        postgres: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| panic!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--seconds" => o.seconds = value().parse().unwrap(),
            "--tasks" => o.tasks = value().parse().unwrap(),
            "--postgres" => o.postgres = Some(value()),
            other => panic!("unknown option {other}"),
        }
    }
    o
}

/// Runs `op` from `tasks` concurrent tasks for `seconds`; returns operations per second.
async fn rate<F, Fut>(tasks: usize, seconds: u64, op: F) -> f64
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let op = op.clone();
        handles.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                op().await;
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for h in handles {
        total += h.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

async fn run(name: &str, config: StoreConfig, o: &Options) {
    let store = Store::open(&config).await.unwrap();
    let control = Arc::new(Control::new(
        store.clone(),
        Box::new(SystemClock),
        Limits::default(),
    ));
    // Three friends in a group, two devices each.
    let mut callers = Vec::new();
    for (i, handle) in ["alice", "bob", "carol"].iter().enumerate() {
        let (_, peer) = noise::device(i as u64 + 1);
        control.register(&peer, handle, "phone").await.unwrap();
        let caller = control.session_caller(&peer).await.unwrap();
        let code = control.create_pairing_code(&caller).await.unwrap();
        let (_, second) = noise::device(i as u64 + 100);
        control
            .claim_pairing_code(&second, &code.code, "laptop")
            .await
            .unwrap();
        callers.push(caller);
    }
    for (a, b) in [(0, 1), (0, 2)] {
        let other = ["alice", "bob", "carol"][b];
        control.request_friend(&callers[a], other).await.unwrap();
        control.accept_friend(&callers[b], "alice").await.unwrap();
    }
    let group = control.create_group(&callers[0], "g").await.unwrap();
    control.invite(&callers[0], group, "bob").await.unwrap();
    control.invite(&callers[0], group, "carol").await.unwrap();
    let token = control.issue_token(&callers[1]).await.unwrap();
    let hex = token.to_hex();
    let sender = callers[1].device();

    let (tx, _rx) = tokio::sync::mpsc::channel(16);
    let unlimited = Rate {
        burst: u32::MAX,
        per_second: u32::MAX,
    };
    let app = router(AppState::new(
        control.clone(),
        None,
        tx,
        ApiConfig {
            per_source: unlimited,
            per_identity: unlimited,
            ..ApiConfig::default()
        },
    ));
    let from: SocketAddr = "127.0.0.1:1".parse().unwrap();

    let s = store.clone();
    let lookup = rate(o.tasks, o.seconds, move || {
        let s = s.clone();
        async move {
            s.device(sender).await.unwrap().unwrap();
        }
    })
    .await;
    let c = control.clone();
    let verify = rate(o.tasks, o.seconds, move || {
        let (c, t) = (c.clone(), token.token.clone());
        async move {
            c.authenticate_token(&t).await.unwrap();
        }
    })
    .await;
    let c = control.clone();
    let send = rate(o.tasks, o.seconds, move || {
        let c = c.clone();
        async move {
            let to = c.may_send(sender, ConversationId(group.0)).await.unwrap();
            assert_eq!(to.len(), 5);
        }
    })
    .await;
    let request = |path: &'static str, auth: Option<String>| {
        let app = app.clone();
        move || {
            let app = app.clone();
            let auth = auth.clone();
            async move {
                let mut r = Request::builder().uri(path);
                if let Some(t) = auth {
                    r = r.header("authorization", format!("Bearer {t}"));
                }
                let mut r = r.body(Body::empty()).unwrap();
                r.extensions_mut().insert(ConnectInfo(from));
                let response = app.oneshot(r).await.unwrap();
                assert!(response.status().is_success());
            }
        }
    };
    let health = rate(o.tasks, o.seconds, request("/healthz", None)).await;
    let me = rate(o.tasks, o.seconds, request("/v1/me", Some(hex.clone()))).await;
    let devices = rate(o.tasks, o.seconds, request("/v1/devices", Some(hex))).await;

    println!("\n{name} ({} tasks, {} s each)", o.tasks, o.seconds);
    println!("| operation | per second | ratio to its baseline |");
    println!("|---|---:|---:|");
    println!("| baseline: `Store::device` (primary-key read) | {lookup:.0} | 1.00 |");
    println!(
        "| `Control::authenticate_token` | {verify:.0} | {:.2} |",
        verify / lookup
    );
    println!(
        "| `Control::may_send` (group of 3, 6 devices) | {send:.0} | {:.2} |",
        send / lookup
    );
    println!("| baseline: `GET /healthz` (no database) | {health:.0} | 1.00 |");
    println!("| `GET /v1/me` | {me:.0} | {:.2} |", me / health);
    println!(
        "| `GET /v1/devices` | {devices:.0} | {:.2} |",
        devices / health
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let o = options();
    let dir = tempfile::tempdir().unwrap();
    run("SQLite", StoreConfig::in_data_dir(dir.path()), &o).await;
    if let Some(url) = &o.postgres {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let driver = tokio::spawn(connection);
        let name = format!("control_ops_{}", std::process::id());
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        drop(client);
        let _ = driver.await;
        let url = with_dbname(url, &name);
        run(
            "PostgreSQL",
            StoreConfig::with_backend(Backend::Postgres { url }),
            &o,
        )
        .await;
    } else {
        println!(
            "\n(PostgreSQL skipped: pass --postgres URL, e.g. from scripts/postgres.sh start)"
        );
    }
}

fn with_dbname(url: &str, dbname: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let query = tail.find('?').map(|i| &tail[i..]).unwrap_or("");
    format!("{scheme}://{authority}/{dbname}{query}")
}
