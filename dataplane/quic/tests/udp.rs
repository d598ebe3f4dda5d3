//! Goal: the carrier works over real UDP sockets, not only the simulated network. Method: a
//! server and a client on 127.0.0.1, std's blocking `UdpSocket`s with short read timeouts, one
//! thread taking turns; the client sends 256 KiB, the server echoes every byte back. The loop
//! stops at a wall-clock deadline so a failure cannot hang the suite.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Test code drives the carriers with a real clock, as the IO layer will.
#![allow(clippy::disallowed_methods)]

use core::time::Duration;
use dp_core::{Instant, SeededRng};
use dp_quic::{
    Certificate, QuicClient, QuicConfig, QuicConnId, QuicEvent, QuicServer, StreamError, TimeBase,
    Transmit,
};
use std::net::UdpSocket;

fn send_all(socket: &UdpSocket, transmit: &Transmit, buf: &[u8]) {
    let size = transmit.segment_size.unwrap_or(transmit.len);
    for datagram in buf[..transmit.len].chunks(size) {
        socket.send_to(datagram, transmit.destination).unwrap();
    }
}

#[test]
fn echo_over_loopback_udp() {
    let epoch = std::time::Instant::now();
    let time = TimeBase::new(epoch, Duration::from_secs(1_800_000_000));
    let now = || Instant(u64::try_from(epoch.elapsed().as_nanos()).unwrap());
    let mut rng = SeededRng::new(5);
    let cert = Certificate::generate(&mut rng).unwrap();
    let config = QuicConfig::default();
    let mut server = QuicServer::new(config, &cert, time, 0, &mut rng).unwrap();
    let mut client = QuicClient::new(config, time, &mut rng).unwrap();

    let server_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let client_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    for socket in [&server_socket, &client_socket] {
        socket
            .set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
    }
    let server_addr = server_socket.local_addr().unwrap();
    let conn = client.connect(now(), server_addr).unwrap();

    let message: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    let mut to_send: &[u8] = &message;
    let mut echoed = Vec::new();
    let mut server_conn: Option<QuicConnId> = None;
    let mut pending_echo: Vec<u8> = Vec::new();
    let mut client_ready = false;
    let mut buf = Vec::new();
    let mut rx = vec![0u8; 65536];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);

    while echoed.len() < message.len() {
        assert!(std::time::Instant::now() < deadline, "echo did not finish");
        let t = now();
        server.handle_timeout(t);
        client.handle_timeout(t);
        while let Some(event) = client.poll_event() {
            match event {
                QuicEvent::StreamOpened { conn: c, .. } if c == conn => client_ready = true,
                QuicEvent::Closed { reason, .. } => panic!("client closed: {reason:?}"),
                _ => {}
            }
        }
        while let Some(event) = server.poll_event() {
            match event {
                QuicEvent::StreamOpened { conn: c, peer } => {
                    assert_eq!(peer, client_socket.local_addr().unwrap());
                    server_conn = Some(c);
                }
                QuicEvent::Closed { reason, .. } => panic!("server closed: {reason:?}"),
                _ => {}
            }
        }
        if client_ready && !to_send.is_empty() {
            let n = client.write(conn, to_send).unwrap();
            to_send = &to_send[n..];
        }
        if let Some(sc) = server_conn {
            loop {
                match server.read(sc, &mut rx) {
                    Ok(0) => break,
                    Ok(n) => pending_echo.extend_from_slice(&rx[..n]),
                    Err(error) => panic!("server read: {error}"),
                }
            }
            let n = server.write(sc, &pending_echo).unwrap();
            pending_echo.drain(..n);
        }
        loop {
            match client.read(conn, &mut rx) {
                Ok(0) | Err(StreamError::NotOpen) => break,
                Ok(n) => echoed.extend_from_slice(&rx[..n]),
                Err(error) => panic!("client read: {error}"),
            }
        }
        while let Some(transmit) = client.poll_transmit(now(), &mut buf) {
            send_all(&client_socket, &transmit, &buf);
        }
        while let Some(transmit) = server.poll_transmit(now(), &mut buf) {
            send_all(&server_socket, &transmit, &buf);
        }
        for (socket, is_server) in [(&server_socket, true), (&client_socket, false)] {
            while let Ok((n, from)) = socket.recv_from(&mut rx) {
                let bytes = rx[..n].to_vec();
                if is_server {
                    server.handle_datagram(now(), from, None, None, &bytes);
                } else {
                    client.handle_datagram(now(), from, None, None, &bytes);
                }
            }
        }
    }
    assert!(echoed == message);
    assert_eq!(server.conns_len(), 1);
    assert!(server.stats().datagrams_in > 100);
}
