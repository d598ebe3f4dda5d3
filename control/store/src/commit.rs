//! Group commit: many envelope stores per transaction, each acknowledged only after COMMIT.
//!
//! A [`GroupCommitter`] owns one thread and one database connection of its own. Requests wait
//! in a bounded queue; the thread takes the first, then keeps taking until the batch holds
//! [`CommitConfig::batch_envelopes_max`] envelopes or [`CommitConfig::batch_wait`] has passed
//! since the first, writes the batch in one transaction, and completes every request of the
//! batch with its own outcome once COMMIT has returned (or all of them with the error if the
//! transaction failed; nothing of it is then committed). While a batch commits, the next one
//! fills, so under load the batch size follows the commit latency by itself.
//!
//! Two ways in, the same queue:
//! - [`GroupCommitter::store`], an `async fn` for tokio tasks: waits for room in the queue,
//!   then for the outcome;
//! - [`Submitter`], for a plain thread that must never block (the control thread of
//!   `dp-io`): [`Submitter::try_submit`] with a caller-chosen token refuses at once when the
//!   queue or the submitter's in-flight bound is full, and [`Submitter::poll_completion`]
//!   returns finished tokens. An optional wake-up callback runs once per batch that completed
//!   any of the submitter's requests (for example a `mio::Waker`).

use crate::error::{Invalid, StoreError};
use crate::model::Envelope;
use crate::{ENVELOPE_BODY_LEN_MAX, Store};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{Semaphore, oneshot};

/// The largest batch a committer may be configured with.
pub const BATCH_ENVELOPES_MAX: usize = 16_384;
/// The longest bounded wait a committer may be configured with.
pub const BATCH_WAIT_MAX: Duration = Duration::from_millis(100);
/// The deepest request queue a committer may be configured with.
pub const QUEUE_DEPTH_MAX: usize = 1 << 20;
/// The most writer threads (connections) a committer may be configured with.
pub const WRITERS_MAX: usize = 16;

/// How a committer batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitConfig {
    /// Envelopes per transaction at most; 1 means one envelope per transaction (the baseline
    /// that group commit is measured against).
    pub batch_envelopes_max: usize,
    /// How long the committer waits for more requests after the first of a batch. Zero means
    /// "take what is queued and commit".
    pub batch_wait: Duration,
    /// Requests queued (not yet taken into a batch) at most; past it `store` waits and
    /// `try_submit` refuses.
    pub queue_depth: usize,
    /// Writer threads, each with its own connection, taking batches from the one queue.
    /// PostgreSQL runs several transactions at once (they overlap their inserts and serialise
    /// only on the recipients' counter rows until COMMIT); SQLite has one writer at a time, so
    /// it always uses one.
    pub writers: usize,
}

impl Default for CommitConfig {
    fn default() -> Self {
        Self {
            batch_envelopes_max: 4096,
            batch_wait: Duration::from_millis(1),
            queue_depth: 8192,
            writers: 2,
        }
    }
}

impl CommitConfig {
    fn clamped(self) -> Self {
        Self {
            batch_envelopes_max: self.batch_envelopes_max.clamp(1, BATCH_ENVELOPES_MAX),
            batch_wait: self.batch_wait.min(BATCH_WAIT_MAX),
            queue_depth: self.queue_depth.clamp(1, QUEUE_DEPTH_MAX),
            writers: self.writers.clamp(1, WRITERS_MAX),
        }
    }
}

/// Counters of a committer since it started (monotonic; read without locks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Transactions attempted.
    pub batches: u64,
    /// Transactions that failed as a whole.
    pub batches_failed: u64,
    /// Envelopes in committed transactions (stored, duplicates and refusals alike).
    pub envelopes: u64,
}

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    batches_failed: AtomicU64,
    envelopes: AtomicU64,
}

/// Writes one batch in one transaction (one implementation per backend).
pub(crate) trait BatchWriter: Send + 'static {
    /// Pushes one outcome per envelope after COMMIT returned; an `Err` means nothing of the
    /// batch was committed (and no outcome was pushed).
    fn write(
        &mut self,
        batch: &[&Envelope],
        outcomes: &mut Vec<Result<(), StoreError>>,
    ) -> Result<(), StoreError>;
}

/// A finished submission of a [`Submitter`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The token given to [`Submitter::try_submit`].
    pub token: u64,
    /// `Ok` once the envelope is committed (or was already stored: stores are idempotent).
    pub result: Result<(), StoreError>,
}

/// Why [`Submitter::try_submit`] refused an envelope; the envelope comes back with it.
#[derive(Debug)]
pub struct Refused {
    /// Why.
    pub reason: RefuseReason,
    /// The envelope, unchanged.
    pub envelope: Box<Envelope>,
}

/// Why an envelope was refused before it was queued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefuseReason {
    /// The committer has stopped.
    Closed,
    /// The submitter has [`Submitter::in_flight`] at its bound; poll completions first.
    InFlightFull,
    /// The envelope itself is invalid (body too long).
    Invalid(StoreError),
    /// The committer's queue is full; retry after completions arrive.
    QueueFull,
}

type Wake = Arc<dyn Fn() + Send + Sync>;

struct Sink {
    completions: Sender<Completion>,
    wake: Option<Wake>,
}

enum Reply {
    Async(oneshot::Sender<Result<(), StoreError>>),
    Token(u64, Arc<Sink>),
}

struct Request {
    envelope: Envelope,
    reply: Option<Reply>,
}

impl Request {
    fn complete(mut self, result: Result<(), StoreError>) -> Option<Arc<Sink>> {
        match self.reply.take() {
            Some(Reply::Async(tx)) => {
                let _ = tx.send(result);
                None
            }
            Some(Reply::Token(token, sink)) => {
                let _ = sink.completions.send(Completion { token, result });
                Some(sink)
            }
            None => None,
        }
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        // A request dropped without an outcome (the committer stopped with it queued) still
        // completes, as a transient failure, so that no submitter waits for ever.
        if let Some(Reply::Token(token, sink)) = self.reply.take() {
            let _ = sink.completions.send(Completion {
                token,
                result: Err(StoreError::closed()),
            });
            if let Some(wake) = &sink.wake {
                wake();
            }
        }
    }
}

enum Msg {
    Store(Request),
    /// Commit what is queued, then end the thread.
    Stop,
}

struct Shared {
    queue: Sender<Msg>,
    /// One permit per free queue slot: `store` waits on it, `try_submit` tries it.
    room: Arc<Semaphore>,
    closed: AtomicBool,
    counters: Arc<Counters>,
}

impl Shared {
    fn validate(envelope: &Envelope) -> Result<(), StoreError> {
        if envelope.body.len() > ENVELOPE_BODY_LEN_MAX {
            return Err(Invalid::BodyTooLong.into());
        }
        Ok(())
    }

    /// Queues `request`; hands it back (boxed: the rare path) if the committer has stopped.
    fn enqueue(&self, request: Request) -> Result<(), Box<Request>> {
        match self.queue.try_send(Msg::Store(request)) {
            Ok(()) => Ok(()),
            Err(e) => match e.into_inner() {
                Msg::Store(request) => Err(Box::new(request)),
                // `enqueue` only sends `Msg::Store`, so only that comes back.
                Msg::Stop => Err(Box::new(Request {
                    envelope: empty_envelope(),
                    reply: None,
                })),
            },
        }
    }
}

/// The group committer of one store: a thread, a connection and a bounded queue.
pub struct GroupCommitter {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for GroupCommitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommitter")
            .field("queued", &self.shared.queue.len())
            .field("closed", &self.shared.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl GroupCommitter {
    /// Starts the committer thread for `store`. Its connection opens lazily on the first
    /// batch (and again after a failed one), so a database that is down at start-up shows as
    /// transient errors on stores, not as a failure here.
    pub fn start(store: &Store, config: CommitConfig) -> Result<Self, StoreError> {
        let mut config = config.clamped();
        if matches!(store, Store::Sqlite(_)) {
            config.writers = 1;
        }
        // One slot per writer more than the permits: room for the stop messages.
        let (queue, requests) = crossbeam_channel::bounded(config.queue_depth + config.writers);
        let room = Arc::new(Semaphore::new(config.queue_depth));
        let counters = Arc::new(Counters::default());
        let mut committer = Self {
            shared: Arc::new(Shared {
                queue,
                room: Arc::clone(&room),
                closed: AtomicBool::new(false),
                counters: Arc::clone(&counters),
            }),
            threads: Vec::with_capacity(config.writers),
        };
        for index in 0..config.writers {
            let writer: Box<dyn BatchWriter> = match store {
                Store::Sqlite(s) => Box::new(crate::sqlite::SqliteWriter::new(s)),
                Store::Postgres(s) => Box::new(crate::postgres::PgWriter::new(s)?),
            };
            let (requests, room, counters) =
                (requests.clone(), Arc::clone(&room), Arc::clone(&counters));
            let thread = std::thread::Builder::new()
                .name(format!("store-commit-{index}"))
                .spawn(move || run(writer, &requests, &room, &counters, config))
                .map_err(|e| StoreError::config(format!("spawn a committer thread: {e}")))?;
            committer.threads.push(thread);
        }
        Ok(committer)
    }

    /// Stores `envelope` durably: returns `Ok` only after the transaction that holds it has
    /// committed (or if it was already stored). Waits for room when the queue is full.
    ///
    /// Dropping the future after the request was queued does not withdraw it: the envelope
    /// may still be committed. Stores are idempotent, so storing it again is always safe.
    pub async fn store(&self, envelope: Envelope) -> Result<(), StoreError> {
        Shared::validate(&envelope)?;
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(StoreError::closed());
        }
        let permit = Arc::clone(&self.shared.room)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::closed())?;
        permit.forget(); // given back by the committer when it takes the request
        let (tx, rx) = oneshot::channel();
        let request = Request {
            envelope,
            reply: Some(Reply::Async(tx)),
        };
        if self.shared.enqueue(request).is_err() {
            return Err(StoreError::closed());
        }
        rx.await.map_err(|_| StoreError::closed())?
    }

    /// A non-blocking submission handle for a plain thread, with at most `in_flight_max`
    /// submissions outstanding, and `wake` called after each batch that completed any of them.
    /// `wake` runs on the committer's thread: it must be cheap and never block (a
    /// `mio::Waker::wake`, an eventfd write, an unpark).
    pub fn submitter(
        &self,
        in_flight_max: usize,
        wake: Option<Arc<dyn Fn() + Send + Sync>>,
    ) -> Submitter {
        let (completions, inbox) = crossbeam_channel::unbounded();
        Submitter {
            shared: Arc::clone(&self.shared),
            sink: Arc::new(Sink { completions, wake }),
            inbox,
            in_flight: 0,
            in_flight_max: in_flight_max.max(1),
        }
    }

    /// The committer's counters.
    pub fn stats(&self) -> CommitStats {
        let c = &self.shared.counters;
        CommitStats {
            batches: c.batches.load(Ordering::Relaxed),
            batches_failed: c.batches_failed.load(Ordering::Relaxed),
            envelopes: c.envelopes.load(Ordering::Relaxed),
        }
    }

    /// Requests queued and not yet taken into a batch.
    pub fn queued(&self) -> usize {
        self.shared.queue.len()
    }

    /// Stops taking new requests, commits what is queued, and waits for the thread to end.
    /// Blocks: from async code call it inside `spawn_blocking`.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.room.close();
        // Submitters share the queue's sender, so each thread is told explicitly.
        for _ in 0..self.threads.len() {
            let _ = self.shared.queue.send(Msg::Stop);
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for GroupCommitter {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A placeholder left where an envelope was moved out (no allocation).
fn empty_envelope() -> Envelope {
    Envelope {
        message: dp_core::MessageId([0; 16]),
        sender: dp_core::DeviceId([0; 16]),
        recipient: dp_core::DeviceId([0; 16]),
        conversation: None,
        conversation_seq: 0,
        sent_at_ms: 0,
        expires_at_ms: 0,
        body: Vec::new(),
    }
}

/// A plain thread's way into a [`GroupCommitter`]: never blocks. Owned by one thread.
pub struct Submitter {
    shared: Arc<Shared>,
    sink: Arc<Sink>,
    inbox: Receiver<Completion>,
    in_flight: usize,
    in_flight_max: usize,
}

impl std::fmt::Debug for Submitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submitter")
            .field("in_flight", &self.in_flight)
            .field("in_flight_max", &self.in_flight_max)
            .finish_non_exhaustive()
    }
}

impl Submitter {
    /// Queues `envelope` under `token` without blocking; its [`Completion`] arrives through
    /// [`Self::poll_completion`] once the batch holding it has committed.
    pub fn try_submit(&mut self, token: u64, envelope: Envelope) -> Result<(), Refused> {
        let refuse = |reason, envelope| {
            Err(Refused {
                reason,
                envelope: Box::new(envelope),
            })
        };
        if let Err(error) = Shared::validate(&envelope) {
            return refuse(RefuseReason::Invalid(error), envelope);
        }
        if self.shared.closed.load(Ordering::Acquire) {
            return refuse(RefuseReason::Closed, envelope);
        }
        if self.in_flight >= self.in_flight_max {
            return refuse(RefuseReason::InFlightFull, envelope);
        }
        match self.shared.room.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                return refuse(RefuseReason::QueueFull, envelope);
            }
            Err(tokio::sync::TryAcquireError::Closed) => {
                return refuse(RefuseReason::Closed, envelope);
            }
        }
        let request = Request {
            envelope,
            reply: Some(Reply::Token(token, Arc::clone(&self.sink))),
        };
        match self.shared.enqueue(request) {
            Ok(()) => {
                self.in_flight += 1;
                Ok(())
            }
            Err(mut request) => {
                // Not queued: no completion will come, so none is owed.
                request.reply = None;
                let envelope = std::mem::replace(&mut request.envelope, empty_envelope());
                refuse(RefuseReason::Closed, envelope)
            }
        }
    }

    /// The next finished submission, if any. Never blocks.
    pub fn poll_completion(&mut self) -> Option<Completion> {
        match self.inbox.try_recv() {
            Ok(completion) => {
                self.in_flight = self.in_flight.saturating_sub(1);
                Some(completion)
            }
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => None,
        }
    }

    /// Submissions whose completion has not been polled yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

/// The committer thread.
fn run(
    mut writer: Box<dyn BatchWriter>,
    requests: &Receiver<Msg>,
    room: &Semaphore,
    counters: &Counters,
    config: CommitConfig,
) {
    let mut batch: Vec<Request> = Vec::with_capacity(config.batch_envelopes_max);
    let mut outcomes: Vec<Result<(), StoreError>> = Vec::with_capacity(config.batch_envelopes_max);
    let mut woken: Vec<Arc<Sink>> = Vec::new();
    let mut stopping = false;
    while !stopping {
        let Ok(first) = requests.recv() else {
            break;
        };
        stopping |= take(&mut batch, first, room);
        // The bounded wait runs from the first request of the batch.
        #[allow(clippy::disallowed_methods)] // the committer is IO code: it owns a clock
        let deadline = std::time::Instant::now() + config.batch_wait;
        while !stopping && batch.len() < config.batch_envelopes_max {
            let next = match requests.try_recv() {
                Ok(request) => request,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) if config.batch_wait.is_zero() => break,
                Err(TryRecvError::Empty) => match requests.recv_deadline(deadline) {
                    Ok(request) => request,
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                },
            };
            stopping |= take(&mut batch, next, room);
        }
        // No drain on stop: the stop messages are queued after every request accepted before
        // `close`, so in FIFO order those have all been taken (by this thread or another)
        // before any thread sees its stop; draining here could swallow another thread's stop.
        commit(
            &mut *writer,
            &mut batch,
            &mut outcomes,
            &mut woken,
            counters,
            config,
        );
    }
}

/// Moves a request into the batch and frees its queue slot; returns whether it was the stop
/// message.
fn take(batch: &mut Vec<Request>, msg: Msg, room: &Semaphore) -> bool {
    match msg {
        Msg::Store(request) => {
            room.add_permits(1);
            batch.push(request);
            false
        }
        Msg::Stop => true,
    }
}

fn commit(
    writer: &mut dyn BatchWriter,
    batch: &mut Vec<Request>,
    outcomes: &mut Vec<Result<(), StoreError>>,
    woken: &mut Vec<Arc<Sink>>,
    counters: &Counters,
    config: CommitConfig,
) {
    while !batch.is_empty() {
        let size = batch.len().min(config.batch_envelopes_max);
        let chunk: Vec<Request> = batch.drain(..size).collect();
        outcomes.clear();
        let envelopes: Vec<&Envelope> = chunk.iter().map(|r| &r.envelope).collect();
        let result = writer.write(&envelopes, outcomes);
        drop(envelopes);
        counters.batches.fetch_add(1, Ordering::Relaxed);
        match &result {
            Ok(()) => counters.envelopes.fetch_add(size as u64, Ordering::Relaxed),
            Err(_) => counters.batches_failed.fetch_add(1, Ordering::Relaxed),
        };
        for (i, request) in chunk.into_iter().enumerate() {
            let outcome = match &result {
                Ok(()) => outcomes
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| Err(StoreError::corrupt("batch outcome missing"))),
                Err(error) => Err(error.clone()),
            };
            if let Some(sink) = request.complete(outcome)
                && !woken.iter().any(|s| Arc::ptr_eq(s, &sink))
            {
                woken.push(sink);
            }
        }
        for sink in woken.drain(..) {
            if let Some(wake) = &sink.wake {
                wake();
            }
        }
    }
}
