//! A blocking client that survives drops: it reconnects after a lost socket or a `GoAway`
//! with exponential backoff and full jitter, keeps the dedup window and every sent body the
//! server has not taken yet across reconnects, and sends those bodies again (same message ids;
//! receivers drop duplicates by id).
//!
//! [`Backoff`] is the schedule alone (no clock, randomness injected), so it is unit-tested;
//! [`ReconnectingClient`] drives [`Client`]s with it.
#![allow(clippy::disallowed_methods)] // a blocking driver: it reads the clock via `Clock`

use crate::blocking::{Client, Clock, Error, OsRng};
use crate::connection::{ClientError, CloseReason, ConnectionConfig, Event, UNACKED_BYTES_MAX};
use crate::dedup::Dedup;
use core::time::Duration;
use dp_core::{ConversationId, DeviceId, Instant, MessageId, Rng};
use dp_proto::{PresenceState, ReceiptKind, Recipient, SendStatus, TypingState};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;

/// The cap of the first reconnect delay; each failed attempt doubles it.
pub const RECONNECT_DELAY_MIN: Duration = Duration::from_millis(100);
/// The largest cap of a reconnect delay.
pub const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(30);
/// The most events held for the application between calls.
const PENDING_EVENTS_MAX: usize = 4096;

const _: () = assert!(RECONNECT_DELAY_MIN.as_nanos() < RECONNECT_DELAY_MAX.as_nanos());

/// Exponential backoff with full jitter: the `n`th delay (from 0) is uniform in
/// `[0, min(max, min_cap · 2^n)]`. [`Backoff::reset`] after a connection worked.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(RECONNECT_DELAY_MIN, RECONNECT_DELAY_MAX)
    }
}

impl Backoff {
    /// A schedule whose first cap is `min` and whose caps never exceed `max` (`max >= min`).
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The cap of the next delay.
    pub fn cap(&self) -> Duration {
        self.min
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max)
    }

    /// Failed attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The next delay, drawn uniformly in `[0, cap]`; the cap then doubles.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let cap = u64::try_from(self.cap().as_nanos()).unwrap_or(u64::MAX);
        self.attempt = self.attempt.saturating_add(1);
        let mut bytes = [0u8; 8];
        rng.public_fill(&mut bytes);
        let draw = u64::from_le_bytes(bytes);
        Duration::from_nanos(if cap == u64::MAX {
            draw
        } else {
            draw % (cap + 1)
        })
    }

    /// Back to the first cap (after a connection was established).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// What a [`ReconnectingClient`] tells the application.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReconnectEvent {
    /// An event of the current connection. `Closed` is followed by `Disconnected`.
    Event(Event),
    /// The connection was lost; the next attempt is in `retry_in`.
    Disconnected {
        /// Why, in words.
        reason: String,
        /// The pause before the next attempt.
        retry_in: Duration,
    },
    /// A new connection is up; `resent` unacknowledged messages went again.
    Reconnected {
        /// Connections made since the first.
        reconnects: u64,
        /// Messages sent again.
        resent: usize,
    },
}

/// A sent body the server has not taken yet.
#[derive(Debug)]
struct Kept {
    recipient: Recipient,
    body: Vec<u8>,
}

/// A [`Client`] that reconnects with [`Backoff`] after a drop or `GoAway` and resends what the
/// server did not acknowledge. Bounded: at most [`UNACKED_BYTES_MAX`] body bytes are kept.
#[derive(Debug)]
pub struct ReconnectingClient {
    addr: SocketAddr,
    config: ConnectionConfig,
    clock: Clock,
    rng: OsRng,
    client: Option<Client<OsRng>>,
    /// The dedup window while no connection holds it.
    dedup: Option<Dedup>,
    kept: BTreeMap<MessageId, Kept>,
    kept_bytes: usize,
    backoff: Backoff,
    next_attempt: Instant,
    pending: VecDeque<ReconnectEvent>,
    reconnects: u64,
    /// The presence the application last set, set again on each new connection.
    presence: Option<PresenceState>,
}

impl ReconnectingClient {
    /// Connects the first time (its failure is returned: a wrong address or key should be
    /// reported, not retried forever). `dedup` carries ids seen by earlier runs.
    ///
    /// # Errors
    ///
    /// As [`Client::connect`].
    pub fn connect(
        addr: SocketAddr,
        config: ConnectionConfig,
        dedup: Option<Dedup>,
    ) -> Result<Self, Error> {
        let clock = Clock::new();
        let client = Client::connect_with(addr, config.clone(), OsRng, clock, dedup)?;
        Ok(Self {
            addr,
            config,
            clock,
            rng: OsRng,
            client: Some(client),
            dedup: None,
            kept: BTreeMap::new(),
            kept_bytes: 0,
            backoff: Backoff::default(),
            next_attempt: Instant(0),
            pending: VecDeque::new(),
            reconnects: 0,
            presence: None,
        })
    }

    /// This device's id.
    pub fn device(&self) -> DeviceId {
        dp_noise::device_id(self.config.key.public())
    }

    /// Whether a connection is up now.
    pub fn is_connected(&self) -> bool {
        self.client.is_some()
    }

    /// The current connection, if one is up (for control requests).
    pub fn client_mut(&mut self) -> Option<&mut Client<OsRng>> {
        self.client.as_mut()
    }

    /// Messages sent and not yet taken by the server.
    pub fn unacknowledged(&self) -> usize {
        self.kept.len()
    }

    /// Reconnections made so far.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// Sends `body` to `recipient` under a fresh id. While disconnected the message is kept
    /// and goes out on the next connection.
    ///
    /// # Errors
    ///
    /// [`ClientError::OutboundFull`] when [`UNACKED_BYTES_MAX`] bytes wait already.
    pub fn send(&mut self, recipient: Recipient, body: &[u8]) -> Result<MessageId, Error> {
        if self.kept_bytes + body.len() > UNACKED_BYTES_MAX {
            return Err(Error::Client(ClientError::OutboundFull));
        }
        let mut id = [0u8; 16];
        self.rng.public_fill(&mut id);
        let message = MessageId(id);
        self.kept.insert(
            message,
            Kept {
                recipient,
                body: body.to_vec(),
            },
        );
        self.kept_bytes += body.len();
        if let Some(client) = self.client.as_mut()
            && let Err(error) = client.send_with_id(message, recipient, body)
        {
            self.drop_connection(format!("send failed: {error}"), Duration::ZERO);
        }
        Ok(message)
    }

    /// Acknowledges a delivery the application has stored (see
    /// [`crate::AckMode::Application`]). While disconnected the id goes into the dedup
    /// window: the server's redelivery on the next connection is then acknowledged and not
    /// reported again.
    pub fn ack(&mut self, message: MessageId) {
        if let Some(client) = self.client.as_mut() {
            if let Err(error) = client.ack(message) {
                self.drop_connection(format!("ack failed: {error}"), Duration::ZERO);
                self.ack_offline(message);
            }
        } else {
            self.ack_offline(message);
        }
    }

    fn ack_offline(&mut self, message: MessageId) {
        let window = self.config.dedup_window;
        self.dedup
            .get_or_insert_with(|| Dedup::new(window))
            .insert(message);
    }

    /// Sends a typing indicator for `conversation` on the current connection.
    ///
    /// # Errors
    ///
    /// [`ClientError::Closed`] while disconnected (typing indicators are not kept).
    pub fn typing(
        &mut self,
        conversation: ConversationId,
        state: TypingState,
    ) -> Result<(), Error> {
        let client = self
            .client
            .as_mut()
            .ok_or(Error::Client(ClientError::Closed))?;
        let result = client.typing(conversation, state);
        if let Err(error) = &result {
            let reason = format!("typing failed: {error}");
            self.drop_connection(reason, Duration::ZERO);
        }
        result
    }

    /// Sends receipts for `messages` of `conversation` on the current connection.
    ///
    /// # Errors
    ///
    /// [`ClientError::Closed`] while disconnected (receipts are not kept).
    pub fn receipt(
        &mut self,
        conversation: ConversationId,
        kind: ReceiptKind,
        messages: &[MessageId],
    ) -> Result<(), Error> {
        let client = self
            .client
            .as_mut()
            .ok_or(Error::Client(ClientError::Closed))?;
        let result = client.receipt(conversation, kind, messages);
        if let Err(error) = &result {
            let reason = format!("receipt failed: {error}");
            self.drop_connection(reason, Duration::ZERO);
        }
        result
    }

    /// Sets this device's presence, now if connected, and again on every new connection.
    pub fn set_presence(&mut self, state: PresenceState) {
        self.presence = Some(state);
        if let Some(client) = self.client.as_mut()
            && let Err(error) = client.set_presence(state)
        {
            self.drop_connection(format!("presence failed: {error}"), Duration::ZERO);
        }
    }

    /// Writes what is queued (acknowledgements included) on the current connection.
    pub fn flush(&mut self) {
        if let Some(client) = self.client.as_mut()
            && let Err(error) = client.flush()
        {
            self.drop_connection(format!("write failed: {error}"), Duration::ZERO);
        }
    }

    /// The next event within `timeout` (`None` when it passed), reconnecting as needed.
    ///
    /// # Errors
    ///
    /// None today: connection failures become [`ReconnectEvent::Disconnected`]; the `Result`
    /// leaves room for fatal errors.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<ReconnectEvent>, Error> {
        let deadline = self.clock.now().saturating_add(timeout);
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(Some(event));
            }
            let now = self.clock.now();
            let left = deadline.saturating_duration_since(now);
            let Some(client) = self.client.as_mut() else {
                if left.is_zero() {
                    return Ok(None);
                }
                let wait = self.next_attempt.saturating_duration_since(now);
                if wait.is_zero() {
                    self.attempt();
                } else {
                    std::thread::sleep(wait.min(left));
                }
                continue;
            };
            // Called even with no time left: it returns events already received.
            match client.next_event(left) {
                Ok(Some(event)) => {
                    self.observe(&event);
                    return Ok(Some(ReconnectEvent::Event(event)));
                }
                Ok(None) => {
                    if client.connection().state() == crate::State::Closed {
                        self.drop_connection("the connection closed".into(), Duration::ZERO);
                    } else if self.clock.now() >= deadline {
                        return Ok(None);
                    }
                }
                Err(error) => self.drop_connection(error.to_string(), Duration::ZERO),
            }
        }
    }

    /// Updates the kept bodies and the connection state from an event of the connection.
    fn observe(&mut self, event: &Event) {
        match event {
            Event::SendAck {
                message, status, ..
            } if *status != SendStatus::Retry => {
                if let Some(kept) = self.kept.remove(message) {
                    self.kept_bytes -= kept.body.len();
                }
            }
            Event::GoAway {
                code,
                reconnect_after_ms,
            } => {
                let hint = Duration::from_millis(u64::from(*reconnect_after_ms));
                self.drop_connection(format!("the server went away ({code:?})"), hint);
            }
            Event::Closed(reason) => {
                let reason = match reason {
                    CloseReason::Local => "closed locally".to_string(),
                    other => format!("closed: {other:?}"),
                };
                self.drop_connection(reason, Duration::ZERO);
            }
            _ => {}
        }
    }

    /// Ends the current connection (keeping its dedup window) and schedules the next attempt
    /// after the backoff delay, and at least `at_least`.
    fn drop_connection(&mut self, reason: String, at_least: Duration) {
        if let Some(mut client) = self.client.take() {
            let _ = client.flush();
            self.dedup = Some(client.take_dedup());
            client.abort();
        }
        let delay = self.backoff.next_delay(&mut self.rng).max(at_least);
        self.next_attempt = self.clock.now().saturating_add(delay);
        self.push(ReconnectEvent::Disconnected {
            reason,
            retry_in: delay,
        });
    }

    /// One connection attempt; on success resends every kept body.
    fn attempt(&mut self) {
        let dedup = self.dedup.clone();
        match Client::connect_with(self.addr, self.config.clone(), OsRng, self.clock, dedup) {
            Ok(mut client) => {
                self.dedup = None;
                self.backoff.reset();
                self.reconnects += 1;
                let mut resent = 0;
                let mut failed = None;
                if let Some(state) = self.presence
                    && let Err(error) = client.set_presence(state)
                {
                    failed = Some(error);
                }
                for (message, kept) in self.kept.iter().take_while(|_| failed.is_none()) {
                    if let Err(error) = client.send_with_id(*message, kept.recipient, &kept.body) {
                        failed = Some(error);
                        break;
                    }
                    resent += 1;
                }
                self.client = Some(client);
                self.push(ReconnectEvent::Reconnected {
                    reconnects: self.reconnects,
                    resent,
                });
                if let Some(error) = failed {
                    self.drop_connection(format!("resend failed: {error}"), Duration::ZERO);
                }
            }
            Err(error) => {
                let delay = self.backoff.next_delay(&mut self.rng);
                self.next_attempt = self.clock.now().saturating_add(delay);
                self.push(ReconnectEvent::Disconnected {
                    reason: format!("reconnect failed: {error}"),
                    retry_in: delay,
                });
            }
        }
    }

    fn push(&mut self, event: ReconnectEvent) {
        if self.pending.len() >= PENDING_EVENTS_MAX {
            self.pending.pop_front();
        }
        self.pending.push_back(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Draws a fixed sequence of u64s.
    struct Fixed(Vec<u64>);

    impl Rng for Fixed {
        fn public_fill(&mut self, dest: &mut [u8]) {
            let next = self.0.remove(0);
            dest.copy_from_slice(&next.to_le_bytes()[..dest.len()]);
        }
        fn private_fill(&mut self, dest: &mut [u8]) {
            self.public_fill(dest);
        }
    }

    #[test]
    fn caps_double_from_min_to_max_and_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        // u64::MAX draws the top of each window: exactly the cap.
        let mut rng = Fixed(vec![u64::MAX; 8]);
        let delays: Vec<u128> = (0..6)
            .map(|_| backoff.next_delay(&mut rng).as_millis())
            .collect();
        // u64::MAX % (cap + 1) is the cap only when cap + 1 divides 2^64; so compare caps.
        assert!(
            delays
                .iter()
                .zip([100, 200, 400, 800, 1000, 1000])
                .all(|(d, c)| *d <= c)
        );
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let caps: Vec<u128> = (0..6)
            .map(|_| {
                let cap = backoff.cap().as_millis();
                backoff.next_delay(&mut Fixed(vec![0]));
                cap
            })
            .collect();
        assert_eq!(caps, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff.attempts(), 6);
        backoff.reset();
        assert_eq!(backoff.cap(), Duration::from_millis(100));
    }

    #[test]
    fn full_jitter_spans_zero_to_the_cap() {
        let mut backoff = Backoff::new(Duration::from_nanos(1000), Duration::from_secs(1));
        // cap 1000 ns: draws are taken modulo 1001.
        assert_eq!(
            backoff.next_delay(&mut Fixed(vec![0])),
            Duration::from_nanos(0)
        );
        // cap 2000 ns now.
        assert_eq!(
            backoff.next_delay(&mut Fixed(vec![2000])),
            Duration::from_nanos(2000)
        );
        // cap 4000 ns: 4001 wraps to 0, 4002 to 1.
        assert_eq!(
            backoff.next_delay(&mut Fixed(vec![4002])),
            Duration::from_nanos(1)
        );
    }

    #[test]
    fn the_default_schedule_uses_the_named_limits() {
        let mut backoff = Backoff::default();
        assert_eq!(backoff.cap(), RECONNECT_DELAY_MIN);
        for _ in 0..64 {
            let delay = backoff.next_delay(&mut Fixed(vec![u64::MAX - 1]));
            assert!(delay <= RECONNECT_DELAY_MAX);
        }
        assert_eq!(backoff.cap(), RECONNECT_DELAY_MAX);
    }
}
