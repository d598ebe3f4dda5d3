//! Client-side deduplication of delivered messages by id, bounded.

use dp_core::MessageId;
use std::collections::{BTreeSet, VecDeque};

/// Remembers the last `capacity` message ids seen; older ones are forgotten in arrival order.
///
/// The server may deliver a message again until it has the client's `DeliveryAck` (after a
/// reconnect, for example), so a client keeps the ids of what it has already handed to the
/// application. The window is bounded: an id older than the last `capacity` deliveries is no
/// longer recognised.
#[derive(Clone, Debug)]
pub struct Dedup {
    capacity: usize,
    order: VecDeque<MessageId>,
    seen: BTreeSet<MessageId>,
}

impl Dedup {
    /// A window of `capacity` ids (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            order: VecDeque::with_capacity(capacity.min(4096)),
            seen: BTreeSet::new(),
        }
    }

    /// Records `id`; returns true if it is new, false if it was seen within the window.
    pub fn insert(&mut self, id: MessageId) -> bool {
        if !self.seen.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }

    /// Whether `id` is within the window.
    pub fn contains(&self, id: MessageId) -> bool {
        self.seen.contains(&id)
    }

    /// The most ids remembered.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> MessageId {
        MessageId([n; 16])
    }

    #[test]
    fn duplicates_are_refused_within_the_window_and_forgotten_after_it() {
        let mut dedup = Dedup::new(3);
        assert!(dedup.insert(id(1)));
        assert!(!dedup.insert(id(1)));
        assert!(dedup.insert(id(2)));
        assert!(dedup.insert(id(3)));
        assert!(dedup.insert(id(4)));
        assert_eq!(dedup.len(), 3);
        assert!(!dedup.contains(id(1)), "the oldest id left the window");
        assert!(dedup.insert(id(1)));
        assert!(!dedup.insert(id(4)));
    }
}
