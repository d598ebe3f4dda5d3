//! Connection deadlines on a coarse timer, so neither [`Shard::poll_timeout`] nor
//! [`Shard::handle_timeout`] scans every connection.
//!
//! Each connection is filed once under the tick of its deadline. Deadlines only move later
//! (a received byte pushes the idle deadline; completing the handshake swaps the handshake
//! deadline for a later idle one), so nothing is refiled when they move: when a tick comes due,
//! each connection under it is either expired or filed again under its current deadline. A
//! connection is refiled at most once per idle timeout, and a handle whose connection is gone is
//! dropped when its tick comes.
//!
//! [`Shard::poll_timeout`]: crate::Shard::poll_timeout
//! [`Shard::handle_timeout`]: crate::Shard::handle_timeout

use crate::conn::ConnId;
use dp_core::Instant;
use std::collections::BTreeMap;

/// The timer's resolution: a connection expires at most this late.
const TICK_NS: u64 = 250_000_000;
/// Emptied tick lists kept for reuse.
const SPARE_MAX: usize = 64;

#[derive(Default)]
pub(crate) struct Timers {
    due: BTreeMap<u64, Vec<ConnId>>,
    spare: Vec<Vec<ConnId>>,
}

impl Timers {
    /// Files `id` under `deadline` (never, for `Instant(u64::MAX)`).
    pub(crate) fn schedule(&mut self, id: ConnId, deadline: Instant) {
        if deadline.0 == u64::MAX {
            return;
        }
        let spare = &mut self.spare;
        self.due
            .entry(deadline.0.div_ceil(TICK_NS))
            .or_insert_with(|| spare.pop().unwrap_or_default())
            .push(id);
    }

    /// When the earliest tick comes due.
    pub(crate) fn next(&self) -> Instant {
        self.due
            .first_key_value()
            .map_or(Instant(u64::MAX), |(&tick, _)| {
                Instant(tick.saturating_mul(TICK_NS))
            })
    }

    /// The connections of the earliest tick, if it is due at `now`; hand the list back with
    /// [`Timers::recycle`].
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Vec<ConnId>> {
        let (&tick, _) = self.due.first_key_value()?;
        if tick.saturating_mul(TICK_NS) > now.0 {
            return None;
        }
        self.due.remove(&tick)
    }

    pub(crate) fn recycle(&mut self, mut ids: Vec<ConnId>) {
        ids.clear();
        if self.spare.len() < SPARE_MAX {
            self.spare.push(ids);
        }
    }
}
