//! The datagram replay window: a sliding bitmap of [`REPLAY_WINDOW_BITS`] counters behind the
//! highest one seen (RFC 6479; boringtun's `ReceivingKeyCounterValidator`).
//!
//! `check` runs before decryption and changes nothing; `commit` runs only after the datagram
//! authenticated, so forged packets cannot move the window.

use dp_core::limits::REPLAY_WINDOW_BITS;

const WORDS: usize = (REPLAY_WINDOW_BITS / 64) as usize;

/// A sliding replay window over 64-bit counters.
#[derive(Clone, Debug)]
pub struct ReplayWindow {
    /// One more than the highest counter committed (0: nothing yet).
    next: u64,
    bitmap: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    /// An empty window.
    pub const fn new() -> Self {
        Self {
            next: 0,
            bitmap: [0; WORDS],
        }
    }

    /// Whether `counter` would be accepted: newer than everything seen, or inside the window
    /// and not seen yet.
    pub fn check(&self, counter: u64) -> bool {
        if counter >= self.next {
            return true;
        }
        if self.next - counter > REPLAY_WINDOW_BITS {
            return false;
        }
        let (word, bit) = Self::slot(counter);
        self.bitmap[word] & (1 << bit) == 0
    }

    /// Records `counter` as seen. Call only after `check` passed and the datagram authenticated.
    pub fn commit(&mut self, counter: u64) {
        if counter >= self.next {
            let advance = counter - self.next + 1;
            if advance >= REPLAY_WINDOW_BITS {
                self.bitmap = [0; WORDS];
            } else {
                // Clear the slots of the counters we skip over, so stale bits from a previous
                // lap of the ring do not read as "seen".
                let mut clear = self.next;
                while clear <= counter {
                    let (word, bit) = Self::slot(clear);
                    if bit == 0 && counter - clear >= 63 {
                        self.bitmap[word] = 0;
                        clear += 64;
                    } else {
                        self.bitmap[word] &= !(1 << bit);
                        clear += 1;
                    }
                }
            }
            self.next = counter.saturating_add(1);
        }
        let (word, bit) = Self::slot(counter);
        self.bitmap[word] |= 1 << bit;
    }

    fn slot(counter: u64) -> (usize, u32) {
        (
            ((counter / 64) % WORDS as u64) as usize,
            (counter % 64) as u32,
        )
    }
}

#[cfg(test)]
mod tests;
