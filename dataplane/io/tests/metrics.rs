//! Goal: the shards' counters reach the Prometheus endpoint. Method: a real server on
//! loopback with the endpoint on, two plain TCP connections, then scrapes until the accepted
//! connections show (the shards publish once per loop iteration).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{scrape, total, wait_for};
use dp_core::SeededRng;
use dp_io::{Server, ServerConfig};
use dp_noise::StaticKeypair;
use std::net::TcpStream;

#[test]
fn shard_counters_are_served_as_prometheus_text() {
    let key = StaticKeypair::generate(&mut SeededRng::new(9));
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), key);
    config.shards = 2;
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let server = Server::start(config).unwrap();
    let metrics = server.metrics_addr().unwrap();

    let _a = TcpStream::connect(server.local_addr()).unwrap();
    let _b = TcpStream::connect(server.local_addr()).unwrap();
    let accepted = wait_for(metrics, "commucat_conns_accepted_total", |n| n == 2);
    assert_eq!(accepted, 2);
    let text = scrape(metrics, "/metrics");
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("content-type: text/plain; version=0.0.4"));
    assert_eq!(total(&text, "commucat_conns_accepted_total"), 2, "{text}");
    assert!(text.contains("commucat_conns{shard=\"1\"}"));

    let missing = scrape(metrics, "/admin");
    assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
    server.shutdown();
}
