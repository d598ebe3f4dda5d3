//! Goal: the fan-out echo server delivers every message, in order, to every recipient, and
//! `--group` is bounded. Method: the real server on loopback, blocking sockets.

use super::*;

#[test]
fn the_fanout_echo_server_delivers_every_message_to_every_recipient() {
    let target = start_echo().unwrap();
    let mut recipients: Vec<std::net::TcpStream> = (0..3)
        .map(|_| echo_connect(target.addr, ROLE_RECIPIENT).unwrap())
        .collect();
    let mut sender = echo_connect(target.addr, ROLE_SENDER).unwrap();
    // 200 messages of 64 bytes, each different.
    let sent: Vec<u8> = (0..200u32 * 64).map(|i| (i / 64 + i % 7) as u8).collect();
    for chunk in sent.chunks(640) {
        sender.write_all(chunk).unwrap();
    }
    for recipient in &mut recipients {
        recipient
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut got = vec![0u8; sent.len()];
        recipient.read_exact(&mut got).unwrap();
        assert_eq!(got, sent, "a recipient got other bytes");
    }
    target.stop();
}

#[test]
fn the_group_is_one_to_group_max() {
    assert!(check_group(0).is_err());
    assert!(check_group(1).is_ok());
    assert!(check_group(GROUP_MAX).is_ok());
    assert!(check_group(GROUP_MAX + 1).is_err());
}
