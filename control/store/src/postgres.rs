//! The PostgreSQL backend: `tokio-postgres` behind a `deadpool-postgres` pool for calls, and a
//! dedicated connection for the group committer. Durability is PostgreSQL's own: COMMIT
//! returns after the WAL record is flushed (`synchronous_commit=on`, the default, which the
//! store does not change).

use crate::commit::BatchWriter;
use crate::error::{Entity, StoreError};
use crate::migrate::{self, Migration};
use crate::model::{
    Device, Envelope, Migrated, NewDevice, SessionToken, StoredEnvelope, TokenOwner, UserId,
};
use crate::{StoreConfig, convert};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use dp_core::{ConversationId, DeviceId, MessageId};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::{NoTls, Statement};

/// Any 64-bit constant works: it names the advisory lock that serialises migrations when
/// several nodes start at once.
const MIGRATION_LOCK_KEY: i64 = 0x636f_6d6d_7563_6174; // "commucat"

/// A handle to the PostgreSQL store. Cloning shares the pool.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    config: Arc<tokio_postgres::Config>,
    inbox_pending_max: u64,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The configuration may hold a password: hosts and database only.
        f.debug_struct("PgStore")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .finish_non_exhaustive()
    }
}

/// Parses a `postgres://` URL (or a key=value connection string).
pub(crate) fn parse_url(
    url: &str,
    timeout: Duration,
) -> Result<tokio_postgres::Config, StoreError> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| StoreError::config(format!("PostgreSQL URL: {e}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(timeout);
    }
    // A lock wait longer than the busy timeout fails (SQLSTATE 55P03, transient), as SQLite's
    // `busy_timeout` does, instead of holding a connection and its callers indefinitely.
    let lock_timeout = format!("-c lock_timeout={}", timeout.as_millis().max(1));
    let options = match config.get_options() {
        Some(options) if !options.is_empty() => format!("{options} {lock_timeout}"),
        _ => lock_timeout,
    };
    config.options(options);
    config.application_name("commucat");
    Ok(config)
}

const SCHEMA_VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_version (
    version    BIGINT PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)";

/// Applies the pending migrations, each in its own transaction, under an advisory lock.
pub(crate) async fn migrate(client: &mut tokio_postgres::Client) -> Result<Migrated, StoreError> {
    let mut from = None;
    loop {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
            .await?;
        tx.batch_execute(SCHEMA_VERSION_TABLE).await?;
        let current: i64 = tx
            .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
            .await?
            .get(0);
        from.get_or_insert(current);
        let pending: &[Migration] = migrate::pending(migrate::POSTGRES, current)?;
        let Some(next) = pending.first() else {
            tx.commit().await?;
            return Ok(Migrated {
                from: from.unwrap_or(current),
                to: current,
            });
        };
        tx.batch_execute(next.sql).await?;
        tx.execute(
            "INSERT INTO schema_version (version, name) VALUES ($1, $2)",
            &[&next.version, &next.name],
        )
        .await?;
        tx.commit().await?;
    }
}

/// The statements of one envelope batch, prepared on the connection that runs it.
pub(crate) struct BatchStatements {
    insert: Statement,
    ensure_counts: Statement,
    lock_counts: Statement,
    delete: Statement,
    add_counts: Statement,
}

const INSERT: &str = "INSERT INTO envelopes
     (recipient, message_id, sender, conversation_id, sent_at_ms, expires_at_ms, body,
      conversation_seq)
     SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::bytea[], $4::int8[], $5::int8[],
                          $6::int8[], $7::bytea[], $8::int8[])
     ON CONFLICT (recipient, message_id) DO NOTHING
     RETURNING seq, recipient, message_id";
const ENSURE_COUNTS: &str = "INSERT INTO inbox_counts (device, pending)
     SELECT d, 0 FROM unnest($1::bytea[]) AS d ORDER BY d ON CONFLICT (device) DO NOTHING";
const LOCK_COUNTS: &str = "SELECT device, pending FROM inbox_counts
     WHERE device = ANY($1::bytea[]) ORDER BY device FOR UPDATE";
const DELETE: &str = "DELETE FROM envelopes WHERE seq = ANY($1::int8[])";
const ADD_COUNTS: &str = "UPDATE inbox_counts SET pending = inbox_counts.pending + d.n
     FROM unnest($1::bytea[], $2::int8[]) AS d(device, n) WHERE inbox_counts.device = d.device";

impl BatchStatements {
    async fn prepare(client: &tokio_postgres::Client) -> Result<Self, StoreError> {
        Ok(Self {
            insert: client.prepare(INSERT).await?,
            ensure_counts: client.prepare(ENSURE_COUNTS).await?,
            lock_counts: client.prepare(LOCK_COUNTS).await?,
            delete: client.prepare(DELETE).await?,
            add_counts: client.prepare(ADD_COUNTS).await?,
        })
    }

    async fn prepare_cached(client: &deadpool_postgres::Client) -> Result<Self, StoreError> {
        Ok(Self {
            insert: client.prepare_cached(INSERT).await?,
            ensure_counts: client.prepare_cached(ENSURE_COUNTS).await?,
            lock_counts: client.prepare_cached(LOCK_COUNTS).await?,
            delete: client.prepare_cached(DELETE).await?,
            add_counts: client.prepare_cached(ADD_COUNTS).await?,
        })
    }
}

type Key = ([u8; 16], [u8; 16]);

/// Stores `batch` inside `tx` (the caller commits): idempotent per (recipient, message id),
/// bounded per recipient at `inbox_max`.
///
/// Envelopes are inserted first and the recipients' counter rows locked (in device order, the
/// order every writer takes) only afterwards, so that concurrent batches overlap their inserts
/// and serialise only on the counters until COMMIT. Rows past a recipient's bound are then
/// deleted again (the last ones of the batch) and refused with `InboxFull`: the rare path.
pub(crate) async fn write_envelopes(
    tx: &tokio_postgres::Transaction<'_>,
    stmts: &BatchStatements,
    batch: &[&Envelope],
    inbox_max: u64,
    outcomes: &mut Vec<Result<(), StoreError>>,
) -> Result<(), StoreError> {
    let recipients: Vec<&[u8]> = batch.iter().map(|e| &e.recipient.0[..]).collect();
    let messages: Vec<&[u8]> = batch.iter().map(|e| &e.message.0[..]).collect();
    let senders: Vec<&[u8]> = batch.iter().map(|e| &e.sender.0[..]).collect();
    let bodies: Vec<&[u8]> = batch.iter().map(|e| &e.body[..]).collect();
    let conversations: Vec<Option<i64>> = batch
        .iter()
        .map(|e| e.conversation.map(|c| convert::to_i64(c.0)))
        .collect();
    let conversation_seqs: Vec<i64> = batch
        .iter()
        .map(|e| convert::to_i64(e.conversation_seq))
        .collect();
    let sent: Vec<i64> = batch
        .iter()
        .map(|e| convert::to_i64(e.sent_at_ms))
        .collect();
    let expires: Vec<i64> = batch
        .iter()
        .map(|e| convert::to_i64(e.expires_at_ms))
        .collect();
    let rows = tx
        .query(
            &stmts.insert,
            &[
                &recipients,
                &messages,
                &senders,
                &conversations,
                &sent,
                &expires,
                &bodies,
                &conversation_seqs,
            ],
        )
        .await?;
    // key → seq of the row this batch inserted.
    let mut inserted: BTreeMap<Key, i64> = BTreeMap::new();
    for row in &rows {
        let (r, m): (&[u8], &[u8]) = (row.try_get(1)?, row.try_get(2)?);
        inserted.insert((convert::blob16(r)?, convert::blob16(m)?), row.try_get(0)?);
    }
    // Per recipient, the keys this batch inserted, in batch order.
    let mut added: BTreeMap<[u8; 16], Vec<Key>> = BTreeMap::new();
    let mut first = BTreeSet::new();
    for e in batch {
        let key = (e.recipient.0, e.message.0);
        if inserted.contains_key(&key) && first.insert(key) {
            added.entry(key.0).or_default().push(key);
        }
    }
    let mut refused: BTreeMap<Key, u64> = BTreeMap::new();
    if !added.is_empty() {
        let devices: Vec<&[u8]> = added.keys().map(|d| &d[..]).collect();
        tx.execute(&stmts.ensure_counts, &[&devices]).await?;
        let mut pending: BTreeMap<[u8; 16], u64> = BTreeMap::new();
        for row in tx.query(&stmts.lock_counts, &[&devices]).await? {
            let device: &[u8] = row.try_get(0)?;
            pending.insert(convert::blob16(device)?, convert::to_u64(row.try_get(1)?)?);
        }
        let mut over_seqs = Vec::new();
        let mut counts = Vec::with_capacity(added.len());
        for (device, keys) in &added {
            let before = pending.get(device).copied().unwrap_or(0);
            let room = usize::try_from(inbox_max.saturating_sub(before)).unwrap_or(usize::MAX);
            let kept = keys.len().min(room);
            for key in &keys[kept..] {
                over_seqs.push(inserted.get(key).copied().unwrap_or(0));
                refused.insert(*key, before + kept as u64);
            }
            counts.push(kept as i64);
        }
        if !over_seqs.is_empty() {
            tx.execute(&stmts.delete, &[&over_seqs]).await?;
        }
        tx.execute(&stmts.add_counts, &[&devices, &counts]).await?;
    }
    outcomes.extend(batch.iter().map(|e| {
        match refused.get(&(e.recipient.0, e.message.0)) {
            Some(&pending) => Err(StoreError::InboxFull {
                pending,
                max: inbox_max,
            }),
            // Inserted, or already stored (a retry): both are success.
            None => Ok(()),
        }
    }));
    Ok(())
}

impl PgStore {
    pub(crate) async fn open(config: &StoreConfig, url: &str) -> Result<Self, StoreError> {
        let pg = parse_url(url, config.busy_timeout)?;
        let manager = Manager::from_config(
            pg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.postgres_pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(config.busy_timeout))
            .create_timeout(Some(config.busy_timeout))
            .build()
            .map_err(|e| StoreError::config(format!("PostgreSQL pool: {e}")))?;
        let store = Self {
            pool,
            config: Arc::new(pg),
            inbox_pending_max: config.inbox_pending_max,
        };
        store.migrate().await?;
        Ok(store)
    }

    pub(crate) fn inbox_pending_max(&self) -> u64 {
        self.inbox_pending_max
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        Ok(self.pool.get().await?)
    }

    pub(crate) async fn migrate(&self) -> Result<Migrated, StoreError> {
        let mut client = self.client().await?;
        migrate(&mut client).await
    }

    pub(crate) async fn store_envelope(&self, envelope: Envelope) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let stmts = BatchStatements::prepare_cached(&client).await?;
        let tx = client.transaction().await?;
        let mut outcomes = Vec::with_capacity(1);
        write_envelopes(
            &tx,
            &stmts,
            &[&envelope],
            self.inbox_pending_max,
            &mut outcomes,
        )
        .await?;
        tx.commit().await?;
        outcomes.pop().unwrap_or(Ok(()))
    }

    pub(crate) async fn fetch_pending(
        &self,
        device: DeviceId,
        after_seq: u64,
        limit: usize,
        now_ms: u64,
    ) -> Result<Vec<StoredEnvelope>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT seq, message_id, sender, conversation_id, sent_at_ms, expires_at_ms, body,
                        conversation_seq
                 FROM envelopes
                 WHERE recipient = $1 AND seq > $2 AND expires_at_ms > $3
                 ORDER BY seq LIMIT $4",
            )
            .await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(
                &stmt,
                &[
                    &&device.0[..],
                    &convert::to_i64(after_seq),
                    &convert::to_i64(now_ms),
                    &limit,
                ],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let conversation: Option<i64> = row.try_get(3)?;
                Ok(StoredEnvelope {
                    seq: convert::to_u64(row.try_get(0)?)?,
                    envelope: Envelope {
                        message: MessageId(convert::blob16(row.try_get(1)?)?),
                        sender: DeviceId(convert::blob16(row.try_get(2)?)?),
                        recipient: device,
                        conversation: conversation
                            .map(convert::to_u64)
                            .transpose()?
                            .map(ConversationId),
                        sent_at_ms: convert::to_u64(row.try_get(4)?)?,
                        expires_at_ms: convert::to_u64(row.try_get(5)?)?,
                        body: row.try_get(6)?,
                        conversation_seq: convert::to_u64(row.try_get(7)?)?,
                    },
                })
            })
            .collect()
    }

    pub(crate) async fn delete_acknowledged(
        &self,
        device: DeviceId,
        messages: Vec<MessageId>,
    ) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let lock = client
            .prepare_cached("SELECT pending FROM inbox_counts WHERE device = $1 FOR UPDATE")
            .await?;
        let delete = client
            .prepare_cached(
                "DELETE FROM envelopes WHERE recipient = $1 AND message_id = ANY($2::bytea[])",
            )
            .await?;
        let update = client
            .prepare_cached("UPDATE inbox_counts SET pending = pending - $2 WHERE device = $1")
            .await?;
        let ids: Vec<&[u8]> = messages.iter().map(|m| &m.0[..]).collect();
        let tx = client.transaction().await?;
        // The counter first: the order every writer takes (see `write_envelopes`).
        tx.query(&lock, &[&&device.0[..]]).await?;
        let deleted = tx.execute(&delete, &[&&device.0[..], &ids]).await?;
        if deleted > 0 {
            tx.execute(&update, &[&&device.0[..], &convert::to_i64(deleted)])
                .await?;
        }
        tx.commit().await?;
        Ok(deleted)
    }

    pub(crate) async fn purge_expired(&self, now_ms: u64, limit: usize) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let select = client
            .prepare_cached(
                "SELECT seq, recipient FROM envelopes WHERE expires_at_ms <= $1
                 ORDER BY expires_at_ms LIMIT $2",
            )
            .await?;
        let lock = client
            .prepare_cached(
                "SELECT device FROM inbox_counts WHERE device = ANY($1::bytea[])
                 ORDER BY device FOR UPDATE",
            )
            .await?;
        let delete = client
            .prepare_cached("DELETE FROM envelopes WHERE seq = ANY($1::int8[]) RETURNING recipient")
            .await?;
        let update = client
            .prepare_cached(
                "UPDATE inbox_counts SET pending = inbox_counts.pending - d.n
                 FROM unnest($1::bytea[], $2::int8[]) AS d(device, n)
                 WHERE inbox_counts.device = d.device",
            )
            .await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let tx = client.transaction().await?;
        let expired = tx
            .query(&select, &[&convert::to_i64(now_ms), &limit])
            .await?;
        let mut seqs = Vec::with_capacity(expired.len());
        let mut devices = BTreeSet::new();
        for row in &expired {
            seqs.push(row.try_get::<_, i64>(0)?);
            devices.insert(row.try_get::<_, Vec<u8>>(1)?);
        }
        let devices: Vec<&[u8]> = devices.iter().map(Vec::as_slice).collect();
        tx.query(&lock, &[&devices]).await?;
        let mut per_device: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
        for row in tx.query(&delete, &[&seqs]).await? {
            *per_device.entry(row.try_get(0)?).or_default() += 1;
        }
        let devices: Vec<&[u8]> = per_device.keys().map(Vec::as_slice).collect();
        let counts: Vec<i64> = per_device.values().copied().collect();
        tx.execute(&update, &[&devices, &counts]).await?;
        tx.commit().await?;
        Ok(counts.iter().map(|&n| n as u64).sum())
    }

    pub(crate) async fn count_pending(&self, device: DeviceId) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT pending FROM inbox_counts WHERE device = $1")
            .await?;
        let row = client.query_opt(&stmt, &[&&device.0[..]]).await?;
        match row {
            Some(row) => convert::to_u64(row.try_get(0)?),
            None => Ok(0),
        }
    }

    pub(crate) async fn create_user(
        &self,
        handle: String,
        now_ms: u64,
    ) -> Result<UserId, StoreError> {
        let client = self.client().await?;
        // ON CONFLICT DO NOTHING: a taken handle returns no row, never a constraint error.
        let stmt = client
            .prepare_cached(
                "INSERT INTO users (handle, created_at_ms) VALUES ($1, $2)
                 ON CONFLICT (handle) DO NOTHING RETURNING id",
            )
            .await?;
        match client
            .query_opt(&stmt, &[&handle, &convert::to_i64(now_ms)])
            .await?
        {
            Some(row) => Ok(UserId(row.try_get(0)?)),
            None => Err(StoreError::Conflict(Entity::User)),
        }
    }

    pub(crate) async fn add_device(&self, device: NewDevice) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The user row is locked so that it cannot vanish before the insert.
        let user = tx
            .query_opt(
                "SELECT 1 FROM users WHERE id = $1 FOR SHARE",
                &[&device.user.0],
            )
            .await?;
        if user.is_none() {
            return Err(StoreError::NotFound(Entity::User));
        }
        let inserted = tx
            .query_opt(
                "INSERT INTO devices (id, public_key, user_id, name, created_at_ms)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING 1",
                &[
                    &&device.id.0[..],
                    &&device.public_key[..],
                    &device.user.0,
                    &device.name,
                    &convert::to_i64(device.created_at_ms),
                ],
            )
            .await?;
        if inserted.is_none() {
            let same_id = tx
                .query_opt("SELECT 1 FROM devices WHERE id = $1", &[&&device.id.0[..]])
                .await?;
            return Err(StoreError::Conflict(if same_id.is_some() {
                Entity::Device
            } else {
                Entity::DeviceKey
            }));
        }
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn device(&self, id: DeviceId) -> Result<Option<Device>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT public_key, user_id, name, created_at_ms, revoked_at_ms
                 FROM devices WHERE id = $1",
            )
            .await?;
        let Some(row) = client.query_opt(&stmt, &[&&id.0[..]]).await? else {
            return Ok(None);
        };
        let revoked: Option<i64> = row.try_get(4)?;
        Ok(Some(Device {
            id,
            public_key: convert::blob32(row.try_get(0)?)?,
            user: UserId(row.try_get(1)?),
            name: row.try_get(2)?,
            created_at_ms: convert::to_u64(row.try_get(3)?)?,
            revoked_at_ms: revoked.map(convert::to_u64).transpose()?,
        }))
    }

    pub(crate) async fn revoke_device(
        &self,
        id: DeviceId,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let now = convert::to_i64(now_ms);
        let tx = client.transaction().await?;
        let changed = tx
            .execute(
                "UPDATE devices SET revoked_at_ms = $2 WHERE id = $1 AND revoked_at_ms IS NULL",
                &[&&id.0[..], &now],
            )
            .await?;
        tx.execute(
            "UPDATE session_tokens SET revoked_at_ms = $2
             WHERE device_id = $1 AND revoked_at_ms IS NULL",
            &[&&id.0[..], &now],
        )
        .await?;
        tx.commit().await?;
        Ok(changed == 1)
    }

    pub(crate) async fn create_session_token(
        &self,
        token: SessionToken,
        device: DeviceId,
        now_ms: u64,
        expires_at_ms: u64,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let live = tx
            .query_opt(
                "SELECT 1 FROM devices WHERE id = $1 AND revoked_at_ms IS NULL FOR SHARE",
                &[&&device.0[..]],
            )
            .await?;
        if live.is_none() {
            return Err(StoreError::NotFound(Entity::Device));
        }
        let inserted = tx
            .execute(
                "INSERT INTO session_tokens (token_hash, device_id, created_at_ms, expires_at_ms)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[
                    &&token.hash().0[..],
                    &&device.0[..],
                    &convert::to_i64(now_ms),
                    &convert::to_i64(expires_at_ms),
                ],
            )
            .await?;
        if inserted == 0 {
            return Err(StoreError::Conflict(Entity::SessionToken));
        }
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn verify_session_token(
        &self,
        token: SessionToken,
        now_ms: u64,
    ) -> Result<Option<TokenOwner>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT d.id, d.user_id FROM session_tokens t JOIN devices d ON d.id = t.device_id
                 WHERE t.token_hash = $1 AND t.revoked_at_ms IS NULL AND t.expires_at_ms > $2
                   AND d.revoked_at_ms IS NULL",
            )
            .await?;
        let row = client
            .query_opt(&stmt, &[&&token.hash().0[..], &convert::to_i64(now_ms)])
            .await?;
        row.map(|row| {
            Ok(TokenOwner {
                device: DeviceId(convert::blob16(row.try_get(0)?)?),
                user: UserId(row.try_get(1)?),
            })
        })
        .transpose()
    }

    pub(crate) async fn revoke_session_token(
        &self,
        token: SessionToken,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let changed = client
            .execute(
                "UPDATE session_tokens SET revoked_at_ms = $2
                 WHERE token_hash = $1 AND revoked_at_ms IS NULL",
                &[&&token.hash().0[..], &convert::to_i64(now_ms)],
            )
            .await?;
        Ok(changed == 1)
    }
}

/// The committer's writer for PostgreSQL: its own connection on a current-thread runtime
/// that lives on the committer's thread, connected lazily and again after an error.
pub(crate) struct PgWriter {
    config: Arc<tokio_postgres::Config>,
    inbox_max: u64,
    runtime: tokio::runtime::Runtime,
    conn: Option<(tokio_postgres::Client, BatchStatements)>,
}

impl PgWriter {
    pub(crate) fn new(store: &PgStore) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::config(format!("committer runtime: {e}")))?;
        Ok(Self {
            config: Arc::clone(&store.config),
            inbox_max: store.inbox_pending_max(),
            runtime,
            conn: None,
        })
    }
}

impl BatchWriter for PgWriter {
    fn write(
        &mut self,
        batch: &[&Envelope],
        outcomes: &mut Vec<Result<(), StoreError>>,
    ) -> Result<(), StoreError> {
        let Self {
            config,
            inbox_max,
            runtime,
            conn,
        } = self;
        let start = outcomes.len();
        let result = runtime.block_on(async {
            if conn.is_none() {
                let (client, connection) = config.connect(NoTls).await?;
                tokio::spawn(async move {
                    // Ends with an error when the server goes away; the next batch sees a
                    // closed client and reconnects.
                    let _ = connection.await;
                });
                let stmts = BatchStatements::prepare(&client).await?;
                *conn = Some((client, stmts));
            }
            let Some((client, stmts)) = conn.as_mut() else {
                return Err(StoreError::closed());
            };
            let tx = client.transaction().await?;
            write_envelopes(&tx, stmts, batch, *inbox_max, outcomes).await?;
            tx.commit().await?;
            Ok(())
        });
        if result.is_err() {
            outcomes.truncate(start);
            if conn.as_ref().is_some_and(|(client, _)| client.is_closed()) {
                *conn = None;
            }
        }
        result
    }
}
