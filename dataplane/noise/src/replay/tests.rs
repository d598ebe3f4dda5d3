//! Goal: the window accepts each counter at most once and refuses counters behind it, at every
//! edge. Method: explicit edge cases, then a property against a `BTreeSet` oracle.

use super::*;
use proptest::prelude::*;
use std::collections::BTreeSet;

fn accept(window: &mut ReplayWindow, counter: u64) -> bool {
    let ok = window.check(counter);
    if ok {
        window.commit(counter);
    }
    ok
}

#[test]
fn duplicate_is_refused() {
    let mut w = ReplayWindow::new();
    assert!(accept(&mut w, 0));
    assert!(!accept(&mut w, 0));
    assert!(accept(&mut w, 5));
    assert!(!accept(&mut w, 5));
    assert!(accept(&mut w, 3));
    assert!(!accept(&mut w, 3));
}

#[test]
fn too_old_is_refused_and_window_edge_is_exact() {
    let mut w = ReplayWindow::new();
    let top = 10_000;
    assert!(accept(&mut w, top));
    // next = top + 1; the oldest acceptable counter is next - REPLAY_WINDOW_BITS.
    let oldest = top + 1 - REPLAY_WINDOW_BITS;
    assert!(!w.check(oldest - 1));
    assert!(w.check(oldest));
    assert!(accept(&mut w, oldest));
    assert!(!accept(&mut w, oldest));
}

#[test]
fn far_future_jump_clears_the_window() {
    let mut w = ReplayWindow::new();
    for c in 0..100 {
        assert!(accept(&mut w, c));
    }
    let far = 1u64 << 40;
    assert!(accept(&mut w, far));
    assert!(!accept(&mut w, far));
    assert!(!w.check(99));
    // Counters just below the new top are fresh, even though their ring slots were used.
    assert!(accept(&mut w, far - 1));
    assert!(accept(&mut w, far - 64));
    assert!(accept(&mut w, far - REPLAY_WINDOW_BITS + 1));
}

#[test]
fn ring_wrap_does_not_leave_stale_bits() {
    let mut w = ReplayWindow::new();
    // Walk the top forward by less than a whole window each step, over many laps of the ring,
    // and check the counters skipped over are still accepted.
    let mut top = 0u64;
    for step in [1u64, 63, 64, 65, 700, 2047, 1, 129, 2000] {
        top += step;
        assert!(accept(&mut w, top), "top {top}");
        if step > 1 {
            assert!(w.check(top - 1), "skipped counter {} refused", top - 1);
        }
    }
}

#[test]
fn counter_max_is_handled() {
    let mut w = ReplayWindow::new();
    assert!(accept(&mut w, u64::MAX - 1));
    assert!(!accept(&mut w, u64::MAX - 1));
    assert!(accept(&mut w, u64::MAX - 2));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn matches_set_oracle(ops in proptest::collection::vec(0u64..6000, 1..400)) {
        let mut w = ReplayWindow::new();
        let mut seen = BTreeSet::new();
        let mut highest: Option<u64> = None;
        for c in ops {
            let expected = !seen.contains(&c)
                && highest.is_none_or(|h| c + REPLAY_WINDOW_BITS > h);
            prop_assert_eq!(accept(&mut w, c), expected, "counter {}", c);
            if expected {
                seen.insert(c);
                highest = Some(highest.map_or(c, |h| h.max(c)));
            }
        }
    }
}
