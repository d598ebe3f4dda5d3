//! The embedded SQLite backend: one database file in the data directory, WAL journal,
//! `synchronous=FULL`, a busy timeout, and every call executed on dedicated threads that own
//! their connections (SQLite calls block; the tokio runtime never runs one).

use crate::commit::BatchWriter;
use crate::error::{Entity, StoreError};
use crate::migrate::{self, Migration};
use crate::model::{
    Device, Envelope, Migrated, NewDevice, SessionToken, StoredEnvelope, TokenOwner, UserId,
};
use crate::{StoreConfig, convert};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use dp_core::{ConversationId, DeviceId, MessageId};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// Jobs waiting for a SQLite worker thread; past this a call fails as transient.
pub const SQLITE_JOBS_QUEUED_MAX: usize = 4096;
/// The committer's connection checkpoints the WAL once it holds this many pages (40 MiB at
/// 4 KiB pages; SQLite's default is 1000).
const WAL_AUTOCHECKPOINT_PAGES: i64 = 10_000;
/// Each connection's page cache, in KiB (SQLite's negative `cache_size` unit).
const PAGE_CACHE_KIB: i64 = 64 * 1024;
/// Reads through a memory map of up to this many bytes instead of `pread` calls.
const MMAP_BYTES: i64 = 256 * 1024 * 1024;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// A handle to the SQLite store. Cloning shares the worker threads; they stop when the last
/// handle is dropped.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    busy_timeout: Duration,
    inbox_pending_max: u64,
    jobs: Sender<Job>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// Opens a connection with the durability settings every connection of this store uses.
///
/// `journal_mode=WAL`: readers never block the writer. `synchronous=FULL`: every COMMIT
/// fsyncs the WAL before it returns, so a committed transaction survives power loss and OS
/// crashes, not only a killed process (a process kill alone loses nothing once `write()` has
/// returned, in any mode). Group commit pays that fsync once per batch.
pub(crate) fn connect(path: &Path, busy_timeout: Duration) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::config(format!("open {}: {e}", path.display())))?;
    conn.busy_timeout(busy_timeout)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::config(format!(
            "{} refuses WAL mode (journal_mode is {mode})",
            path.display()
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "cache_size", -PAGE_CACHE_KIB)?;
    let _: i64 = conn.query_row(&format!("PRAGMA mmap_size = {MMAP_BYTES}"), [], |row| {
        row.get(0)
    })?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Applies the pending migrations in one `BEGIN IMMEDIATE` transaction each (the write lock
/// serialises concurrent openers).
pub(crate) fn migrate(conn: &mut Connection) -> Result<Migrated, StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version    INTEGER PRIMARY KEY,
             name       TEXT NOT NULL,
             applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
         ) STRICT",
    )?;
    let mut from = None;
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current: i64 = tx.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_version",
            [],
            |r| r.get(0),
        )?;
        from.get_or_insert(current);
        let pending: &[Migration] = migrate::pending(migrate::SQLITE, current)?;
        let Some(next) = pending.first() else {
            tx.commit()?;
            return Ok(Migrated {
                from: from.unwrap_or(current),
                to: current,
            });
        };
        tx.execute_batch(next.sql)?;
        tx.execute(
            "INSERT INTO schema_version (version, name) VALUES (?1, ?2)",
            params![next.version, next.name],
        )?;
        tx.commit()?;
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file, applies migrations and starts the worker
    /// threads.
    pub(crate) async fn open(config: &StoreConfig, path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::config(format!("create {}: {e}", dir.display())))?;
        }
        let (jobs, queue) = crossbeam_channel::bounded::<Job>(SQLITE_JOBS_QUEUED_MAX);
        let threads = config.sqlite_threads.max(1);
        for index in 0..threads {
            let conn = connect(path, config.busy_timeout)?;
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("store-sqlite-{index}"))
                .spawn(move || work(conn, &queue))
                .map_err(|e| StoreError::config(format!("spawn a SQLite thread: {e}")))?;
        }
        let store = Self {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                busy_timeout: config.busy_timeout,
                inbox_pending_max: config.inbox_pending_max,
                jobs,
            }),
        };
        store.call(migrate).await?;
        Ok(store)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.inner.path
    }

    pub(crate) fn busy_timeout(&self) -> Duration {
        self.inner.busy_timeout
    }

    pub(crate) fn inbox_pending_max(&self) -> u64 {
        self.inner.inbox_pending_max
    }

    /// Runs `f` on a worker thread and waits for its result without blocking the runtime.
    pub(crate) async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let (reply, result) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = reply.send(f(conn));
        });
        self.inner.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => StoreError::unavailable("SQLite job queue full"),
            TrySendError::Disconnected(_) => StoreError::closed(),
        })?;
        result.await.map_err(|_| StoreError::closed())?
    }

    pub(crate) async fn migrate(&self) -> Result<Migrated, StoreError> {
        self.call(migrate).await
    }

    pub(crate) async fn store_envelope(&self, envelope: Envelope) -> Result<(), StoreError> {
        let max = self.inner.inbox_pending_max;
        self.call(move |conn| {
            let mut outcomes = Vec::with_capacity(1);
            write_envelopes(conn, &[&envelope], max, &mut outcomes)?;
            outcomes.pop().unwrap_or(Ok(()))
        })
        .await
    }

    pub(crate) async fn fetch_pending(
        &self,
        device: DeviceId,
        after_seq: u64,
        limit: usize,
        now_ms: u64,
    ) -> Result<Vec<StoredEnvelope>, StoreError> {
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, message_id, sender, conversation_id, sent_at_ms, expires_at_ms, body,
                        conversation_seq
                 FROM envelopes
                 WHERE recipient = ?1 AND seq > ?2 AND expires_at_ms > ?3
                 ORDER BY seq LIMIT ?4",
            )?;
            let mut rows = stmt.query(params![
                device.0,
                convert::to_i64(after_seq),
                convert::to_i64(now_ms),
                i64::try_from(limit).unwrap_or(i64::MAX),
            ])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let conversation: Option<i64> = row.get(3)?;
                out.push(StoredEnvelope {
                    seq: convert::to_u64(row.get(0)?)?,
                    envelope: Envelope {
                        message: MessageId(convert::blob16(&row.get::<_, Vec<u8>>(1)?)?),
                        sender: DeviceId(convert::blob16(&row.get::<_, Vec<u8>>(2)?)?),
                        recipient: device,
                        conversation: conversation
                            .map(convert::to_u64)
                            .transpose()?
                            .map(ConversationId),
                        sent_at_ms: convert::to_u64(row.get(4)?)?,
                        expires_at_ms: convert::to_u64(row.get(5)?)?,
                        body: row.get(6)?,
                        conversation_seq: convert::to_u64(row.get(7)?)?,
                    },
                });
            }
            Ok(out)
        })
        .await
    }

    pub(crate) async fn delete_acknowledged(
        &self,
        device: DeviceId,
        messages: Vec<MessageId>,
    ) -> Result<u64, StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut deleted = 0u64;
            {
                let mut stmt = tx.prepare_cached(
                    "DELETE FROM envelopes WHERE recipient = ?1 AND message_id = ?2",
                )?;
                for message in &messages {
                    deleted += stmt.execute(params![device.0, message.0])? as u64;
                }
                if deleted > 0 {
                    tx.prepare_cached(
                        "UPDATE inbox_counts SET pending = pending - ?2 WHERE device = ?1",
                    )?
                    .execute(params![device.0, convert::to_i64(deleted)])?;
                }
            }
            tx.commit()?;
            Ok(deleted)
        })
        .await
    }

    pub(crate) async fn purge_expired(&self, now_ms: u64, limit: usize) -> Result<u64, StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut per_device: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
            {
                let mut select = tx.prepare_cached(
                    "SELECT seq, recipient FROM envelopes WHERE expires_at_ms <= ?1
                     ORDER BY expires_at_ms LIMIT ?2",
                )?;
                let expired: Vec<(i64, Vec<u8>)> = select
                    .query_map(
                        params![
                            convert::to_i64(now_ms),
                            i64::try_from(limit).unwrap_or(i64::MAX)
                        ],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )?
                    .collect::<Result<_, _>>()?;
                let mut delete = tx.prepare_cached("DELETE FROM envelopes WHERE seq = ?1")?;
                for (seq, recipient) in expired {
                    if delete.execute([seq])? == 1 {
                        *per_device.entry(recipient).or_default() += 1;
                    }
                }
                let mut update = tx.prepare_cached(
                    "UPDATE inbox_counts SET pending = pending - ?2 WHERE device = ?1",
                )?;
                for (device, count) in &per_device {
                    update.execute(params![device, count])?;
                }
            }
            tx.commit()?;
            Ok(per_device.values().map(|&n| n as u64).sum())
        })
        .await
    }

    pub(crate) async fn count_pending(&self, device: DeviceId) -> Result<u64, StoreError> {
        self.call(move |conn| count_pending(conn, &device.0)).await
    }

    pub(crate) async fn create_user(
        &self,
        handle: String,
        now_ms: u64,
    ) -> Result<UserId, StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let taken = tx
                .query_row("SELECT 1 FROM users WHERE handle = ?1", [&handle], |_| {
                    Ok(())
                })
                .optional()?
                .is_some();
            if taken {
                return Err(StoreError::Conflict(Entity::User));
            }
            tx.execute(
                "INSERT INTO users (handle, created_at_ms) VALUES (?1, ?2)",
                params![handle, convert::to_i64(now_ms)],
            )?;
            let id = tx.last_insert_rowid();
            tx.commit()?;
            Ok(UserId(id))
        })
        .await
    }

    pub(crate) async fn add_device(&self, device: NewDevice) -> Result<(), StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let exists = |sql: &str, value: &dyn rusqlite::ToSql| -> Result<bool, StoreError> {
                Ok(tx.query_row(sql, [value], |_| Ok(())).optional()?.is_some())
            };
            if !exists("SELECT 1 FROM users WHERE id = ?1", &device.user.0)? {
                return Err(StoreError::NotFound(Entity::User));
            }
            if exists("SELECT 1 FROM devices WHERE id = ?1", &device.id.0)? {
                return Err(StoreError::Conflict(Entity::Device));
            }
            if exists(
                "SELECT 1 FROM devices WHERE public_key = ?1",
                &device.public_key,
            )? {
                return Err(StoreError::Conflict(Entity::DeviceKey));
            }
            tx.execute(
                "INSERT INTO devices (id, public_key, user_id, name, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    device.id.0,
                    device.public_key,
                    device.user.0,
                    device.name,
                    convert::to_i64(device.created_at_ms)
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn device(&self, id: DeviceId) -> Result<Option<Device>, StoreError> {
        self.call(move |conn| {
            let row = conn
                .prepare_cached(
                    "SELECT public_key, user_id, name, created_at_ms, revoked_at_ms
                     FROM devices WHERE id = ?1",
                )?
                .query_row([id.0], |row| {
                    Ok((
                        row.get::<_, Vec<u8>>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, i64>(3)?,
                        row.get::<_, Option<i64>>(4)?,
                    ))
                })
                .optional()?;
            let Some((key, user, name, created, revoked)) = row else {
                return Ok(None);
            };
            Ok(Some(Device {
                id,
                public_key: convert::blob32(&key)?,
                user: UserId(user),
                name,
                created_at_ms: convert::to_u64(created)?,
                revoked_at_ms: revoked.map(convert::to_u64).transpose()?,
            }))
        })
        .await
    }

    pub(crate) async fn revoke_device(
        &self,
        id: DeviceId,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = convert::to_i64(now_ms);
            let changed = tx.execute(
                "UPDATE devices SET revoked_at_ms = ?2 WHERE id = ?1 AND revoked_at_ms IS NULL",
                params![id.0, now],
            )?;
            tx.execute(
                "UPDATE session_tokens SET revoked_at_ms = ?2
                 WHERE device_id = ?1 AND revoked_at_ms IS NULL",
                params![id.0, now],
            )?;
            tx.commit()?;
            Ok(changed == 1)
        })
        .await
    }

    pub(crate) async fn create_session_token(
        &self,
        token: SessionToken,
        device: DeviceId,
        now_ms: u64,
        expires_at_ms: u64,
    ) -> Result<(), StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let live = tx
                .query_row(
                    "SELECT 1 FROM devices WHERE id = ?1 AND revoked_at_ms IS NULL",
                    [device.0],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if !live {
                return Err(StoreError::NotFound(Entity::Device));
            }
            let hash = token.hash();
            let taken = tx
                .query_row(
                    "SELECT 1 FROM session_tokens WHERE token_hash = ?1",
                    [hash.0],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if taken {
                return Err(StoreError::Conflict(Entity::SessionToken));
            }
            tx.execute(
                "INSERT INTO session_tokens (token_hash, device_id, created_at_ms, expires_at_ms)
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    hash.0,
                    device.0,
                    convert::to_i64(now_ms),
                    convert::to_i64(expires_at_ms)
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn verify_session_token(
        &self,
        token: SessionToken,
        now_ms: u64,
    ) -> Result<Option<TokenOwner>, StoreError> {
        self.call(move |conn| {
            let row = conn
                .prepare_cached(
                    "SELECT d.id, d.user_id FROM session_tokens t JOIN devices d ON d.id = t.device_id
                     WHERE t.token_hash = ?1 AND t.revoked_at_ms IS NULL AND t.expires_at_ms > ?2
                       AND d.revoked_at_ms IS NULL",
                )?
                .query_row(params![token.hash().0, convert::to_i64(now_ms)], |row| {
                    Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, i64>(1)?))
                })
                .optional()?;
            row.map(|(device, user)| {
                Ok(TokenOwner {
                    device: DeviceId(convert::blob16(&device)?),
                    user: UserId(user),
                })
            })
            .transpose()
        })
        .await
    }

    pub(crate) async fn revoke_session_token(
        &self,
        token: SessionToken,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        self.call(move |conn| {
            let changed = conn.execute(
                "UPDATE session_tokens SET revoked_at_ms = ?2
                 WHERE token_hash = ?1 AND revoked_at_ms IS NULL",
                params![token.hash().0, convert::to_i64(now_ms)],
            )?;
            Ok(changed == 1)
        })
        .await
    }
}

fn work(mut conn: Connection, queue: &Receiver<Job>) {
    // Ends when every sender (every store handle) is gone.
    while let Ok(job) = queue.recv() {
        job(&mut conn);
    }
}

fn count_pending(conn: &Connection, device: &[u8]) -> Result<u64, StoreError> {
    let pending: Option<i64> = conn
        .prepare_cached("SELECT pending FROM inbox_counts WHERE device = ?1")?
        .query_row([device], |row| row.get(0))
        .optional()?;
    convert::to_u64(pending.unwrap_or(0))
}

/// Stores `batch` in one transaction: idempotent per (recipient, message id), bounded per
/// recipient at `inbox_max` pending envelopes. Pushes one outcome per envelope; an `Err`
/// return means nothing was committed.
pub(crate) fn write_envelopes(
    conn: &mut Connection,
    batch: &[&Envelope],
    inbox_max: u64,
    outcomes: &mut Vec<Result<(), StoreError>>,
) -> Result<(), StoreError> {
    let start = outcomes.len();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let result = (|| {
        // recipient → (pending, changed)
        let mut counts: BTreeMap<DeviceId, (u64, bool)> = BTreeMap::new();
        let mut insert = tx.prepare_cached(
            "INSERT INTO envelopes
                 (recipient, message_id, sender, conversation_id, sent_at_ms, expires_at_ms, body,
                  conversation_seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (recipient, message_id) DO NOTHING",
        )?;
        let mut exists =
            tx.prepare_cached("SELECT 1 FROM envelopes WHERE recipient = ?1 AND message_id = ?2")?;
        for envelope in batch {
            let entry = match counts.entry(envelope.recipient) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert((count_pending(&tx, &envelope.recipient.0)?, false))
                }
            };
            if entry.0 >= inbox_max {
                let duplicate = exists
                    .query_row(
                        params![envelope.recipient.0, envelope.message.0],
                        |_| Ok(()),
                    )
                    .optional()?
                    .is_some();
                outcomes.push(if duplicate {
                    Ok(())
                } else {
                    Err(StoreError::InboxFull {
                        pending: entry.0,
                        max: inbox_max,
                    })
                });
                continue;
            }
            let inserted = insert.execute(params![
                envelope.recipient.0,
                envelope.message.0,
                envelope.sender.0,
                envelope.conversation.map(|c| convert::to_i64(c.0)),
                convert::to_i64(envelope.sent_at_ms),
                convert::to_i64(envelope.expires_at_ms),
                envelope.body,
                convert::to_i64(envelope.conversation_seq),
            ])?;
            if inserted == 1 {
                entry.0 += 1;
                entry.1 = true;
            }
            outcomes.push(Ok(()));
        }
        let mut upsert = tx.prepare_cached(
            "INSERT INTO inbox_counts (device, pending) VALUES (?1, ?2)
             ON CONFLICT (device) DO UPDATE SET pending = excluded.pending",
        )?;
        for (device, (pending, changed)) in &counts {
            if *changed {
                upsert.execute(params![device.0, convert::to_i64(*pending)])?;
            }
        }
        Ok::<(), StoreError>(())
    })();
    if let Err(error) = result {
        outcomes.truncate(start);
        return Err(error);
    }
    if let Err(error) = tx.commit() {
        outcomes.truncate(start);
        return Err(error.into());
    }
    Ok(())
}

/// The committer's writer for SQLite: its own connection, opened lazily and reopened after an
/// error.
pub(crate) struct SqliteWriter {
    path: PathBuf,
    busy_timeout: Duration,
    inbox_max: u64,
    conn: Option<Connection>,
}

impl SqliteWriter {
    pub(crate) fn new(store: &SqliteStore) -> Self {
        Self {
            path: store.path().to_path_buf(),
            busy_timeout: store.busy_timeout(),
            inbox_max: store.inbox_pending_max(),
            conn: None,
        }
    }
}

impl BatchWriter for SqliteWriter {
    fn write(
        &mut self,
        batch: &[&Envelope],
        outcomes: &mut Vec<Result<(), StoreError>>,
    ) -> Result<(), StoreError> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            slot => {
                let conn = connect(&self.path, self.busy_timeout)?;
                // Fewer, larger checkpoints: a page rewritten by many batches is copied into
                // the database file once per checkpoint rather than once per batch.
                conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
                slot.insert(conn)
            }
        };
        let result = write_envelopes(conn, batch, self.inbox_max, outcomes);
        if result.is_err() {
            self.conn = None;
        }
        result
    }
}
