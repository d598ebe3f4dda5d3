//! Goal: credited messages are never lost or refused for room, best-effort messages are dropped
//! only when the unreserved room is used up, order is kept, and nothing exceeds its bound.
//! Method: an oracle model over random operation sequences (s2n-quic `sync/spsc` style), and a
//! two-thread run.

use super::*;
use proptest::prelude::*;
use std::collections::VecDeque;

#[derive(Clone, Debug)]
enum Operation {
    Credited,
    BestEffort,
    Flush,
    Drain(usize),
    /// The receiver finished `n` credited messages and returns their credits.
    Return(u32),
}

fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        3 => Just(Operation::Credited),
        3 => Just(Operation::BestEffort),
        2 => Just(Operation::Flush),
        2 => (0usize..20).prop_map(Operation::Drain),
        1 => (0u32..8).prop_map(Operation::Return),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn matches_the_model(ops in proptest::collection::vec(operation(), 1..300)) {
        let config = LinkConfig::new(8, 4, 3).unwrap();
        let (mut tx, mut rx) = link::<(bool, u32)>(config);
        tx.grant(8);
        let mut sent_credited = VecDeque::new();
        let mut all_sent = Vec::new();
        let mut received = Vec::new();
        let mut drained_unreturned = 0u32;
        for (next, op) in (0u32..).zip(ops) {
            match op {
                Operation::Credited => {
                    let had = tx.credits();
                    match tx.send_credited((true, next)) {
                        Ok(_) => {
                            prop_assert!(had > 0);
                            sent_credited.push_back(next);
                            all_sent.push(next);
                        }
                        Err(e) => {
                            prop_assert_eq!(e, SendError::NoCredit);
                            prop_assert_eq!(had, 0);
                        }
                    }
                }
                Operation::BestEffort => {
                    if tx.send_best_effort((false, next)).is_ok() {
                        all_sent.push(next);
                    }
                }
                Operation::Flush => {
                    tx.flush();
                }
                Operation::Drain(n) => {
                    rx.drain(n, |m| {
                        if m.0 {
                            drained_unreturned += 1;
                        }
                        received.push(m);
                    });
                }
                Operation::Return(n) => {
                    // The receiver returns credits only for credited messages it has taken.
                    let n = n.min(drained_unreturned);
                    drained_unreturned -= n;
                    tx.grant(n);
                }
            }
            prop_assert!(rx.len() <= config.ring_slots());
            prop_assert!(tx.staged_len() < config.batch_max as usize || tx.staged_len() == 0);
        }
        tx.flush();
        rx.drain(usize::MAX, |m| received.push(m));
        // Everything accepted arrives, in order, and every credited message is among it.
        let ids: Vec<u32> = received.iter().map(|(_, id)| *id).collect();
        prop_assert_eq!(&ids, &all_sent);
        let credited: Vec<u32> = received.iter().filter(|(c, _)| *c).map(|(_, id)| *id).collect();
        prop_assert_eq!(credited, Vec::from(sent_credited));
        prop_assert_eq!(tx.stats().published as usize, all_sent.len());
    }
}

#[test]
fn best_effort_never_takes_reserved_room() {
    let config = LinkConfig::new(4, 2, 100).unwrap();
    let (mut tx, mut rx) = link::<u32>(config);
    tx.grant(4);
    assert!(tx.send_best_effort(1).is_ok());
    assert!(tx.send_best_effort(2).is_ok());
    assert_eq!(tx.send_best_effort(3), Err(SendError::Dropped));
    for i in 0..4 {
        assert!(tx.send_credited(10 + i).is_ok());
    }
    assert_eq!(tx.send_credited(99), Err(SendError::NoCredit));
    tx.flush();
    // Credited work waiting in the ring sheds best-effort work too.
    rx.drain(2, |_| {});
    assert_eq!(tx.send_best_effort(4), Err(SendError::Dropped));
    let mut got = Vec::new();
    rx.drain(usize::MAX, |m| got.push(m));
    assert_eq!(got, vec![10, 11, 12, 13]);
    assert_eq!(tx.stats().dropped, 2);
    assert_eq!(tx.stats().refused, 1);
}

#[test]
fn flush_reports_a_parked_receiver_once() {
    let config = LinkConfig::new(4, 4, 100).unwrap();
    let (mut tx, mut rx) = link::<u32>(config);
    assert!(rx.park());
    tx.send_best_effort(1).unwrap();
    assert!(tx.flush(), "the receiver was parked: wake it");
    tx.send_best_effort(2).unwrap();
    assert!(!tx.flush(), "already woken");
    assert!(!rx.park(), "messages are waiting: do not sleep");
    rx.drain(10, |_| {});
    assert!(rx.park());
}

#[test]
fn config_is_valid_by_construction() {
    assert_eq!(LinkConfig::new(0, 1, 1), Err(ConfigError::Zero));
    assert_eq!(
        LinkConfig::new(RING_SLOTS_MAX, 1, 1),
        Err(ConfigError::TooLarge)
    );
    assert!(LinkConfig::new(1, 1, 1).is_ok());
}

#[test]
fn two_threads_keep_order_and_lose_no_credited_message() {
    const N: u32 = 200_000;
    let config = LinkConfig::new(256, 64, 32).unwrap();
    let (mut tx, mut rx) = link::<u32>(config);
    let (mut credit_tx, mut credit_rx) = link::<u32>(LinkConfig::new(1, 1024, 1).unwrap());
    tx.grant(256);
    #[allow(clippy::disallowed_methods)] // a test thread, standing in for a shard
    let consumer = std::thread::spawn(move || {
        let mut expected = 0u32;
        while expected < N {
            let mut returned = 0;
            rx.drain(64, |m| {
                assert_eq!(m, expected);
                expected += 1;
                returned += 1;
            });
            if returned > 0 {
                while credit_tx.send_best_effort(returned).is_err() {
                    credit_tx.flush();
                }
                credit_tx.flush();
            }
        }
    });
    let mut sent = 0u32;
    while sent < N {
        credit_rx.drain(usize::MAX, |n| tx.grant(n));
        if tx.send_credited(sent).is_ok() {
            sent += 1;
        } else {
            tx.flush();
        }
    }
    tx.flush();
    consumer.join().unwrap();
    assert_eq!(tx.stats().published, u64::from(N));
}
