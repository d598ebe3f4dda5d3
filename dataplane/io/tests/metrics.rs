//! Goal: the shards' counters reach the Prometheus endpoint. Method: a real server on
//! loopback with the endpoint on, two plain TCP connections, then scrapes until the accepted
//! connections show (the shards publish once per loop iteration).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use dp_core::SeededRng;
use dp_io::{Server, ServerConfig};
use dp_noise::StaticKeypair;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn scrape(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

fn accepted_total(text: &str) -> u64 {
    text.lines()
        .filter(|line| line.starts_with("commucat_conns_accepted_total{"))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

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
    let mut text = String::new();
    for _ in 0..100 {
        text = scrape(metrics, "/metrics");
        if accepted_total(&text) == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("content-type: text/plain; version=0.0.4"));
    assert_eq!(accepted_total(&text), 2, "{text}");
    assert!(text.contains("commucat_conns{shard=\"1\"}"));

    let missing = scrape(metrics, "/admin");
    assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
    server.shutdown();
}
