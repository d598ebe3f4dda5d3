//! Storage for the CommuCat control plane: one interface, [`Store`], over two backends
//! (embedded SQLite, the default, and PostgreSQL, selected by a `postgres://` URL), with
//! forward-only migrations and durable offline envelopes stored by a [`GroupCommitter`].
//!
//! # Shape
//!
//! - [`Store`] is an enum over [`SqliteStore`] and [`PgStore`] with `async fn` methods; each
//!   call dispatches with a `match`. A closed enum rather than a trait: there are two
//!   backends and no third is planned outside this crate, the futures stay `Send` and
//!   unboxed, and callers name one concrete type (`docs/design/0005-storage.md`).
//! - SQLite calls run on dedicated threads that own their connections; the tokio runtime only
//!   awaits a reply. PostgreSQL calls use a `deadpool-postgres` pool.
//! - [`GroupCommitter`] owns a thread and a connection of its own per store and commits many
//!   envelopes per transaction; every request completes only after its COMMIT returned.
//! - Migrations live in `migrations/{sqlite,postgres}/NNNN_name.sql`, are compiled in, applied
//!   by [`Store::open`] and [`migrate()`], and recorded in `schema_version`; a database newer
//!   than the code is refused ([`StoreError::SchemaTooNew`]).
//!
//! The store reads no clock: every time is a parameter in milliseconds since the Unix epoch.
//! Errors come by class ([`ErrorClass`]): transient, constraint, fatal.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod commit;
mod convert;
mod error;
pub mod migrate;
mod model;
mod postgres;
mod social;
mod sqlite;

pub use commit::{
    BATCH_ENVELOPES_MAX, BATCH_WAIT_MAX, CommitConfig, CommitStats, Completion, GroupCommitter,
    QUEUE_DEPTH_MAX, RefuseReason, Refused, Submitter, WRITERS_MAX,
};
pub use error::{Entity, ErrorClass, Invalid, StoreError};
pub use model::{
    Device, Envelope, Migrated, NewDevice, SessionToken, StoredEnvelope, TokenHash, TokenOwner,
    UserId,
};
pub use postgres::PgStore;
pub use social::{
    Added, CLAIM_DEVICES_MAX, ClaimOutcome, ClaimedKeys, Conversation, ConversationKind,
    ConversationLookup, FriendRequest, FriendRequestOutcome, GROUP_TITLE_LEN_MAX,
    KEY_ID_TEXT_LEN_MAX, KEY_TEXT_LEN_MAX, KeyUpload, Member, NewPairedDevice,
    ONE_TIME_KEYS_PER_UPLOAD_MAX, ONE_TIME_KEYS_STORED_MAX, Role, SEQ_BLOCK_MAX,
    SIGNATURE_TEXT_LEN_MAX, SendCheck, SignedKey, UserSummary,
};
pub use sqlite::{SQLITE_JOBS_QUEUED_MAX, SqliteStore};

use dp_core::{DeviceId, MessageId};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The largest envelope body the store accepts: the data plane's own bound, so that every
/// envelope a client may send can be stored.
pub const ENVELOPE_BODY_LEN_MAX: usize = dp_core::limits::ENVELOPE_BODY_LEN_MAX;
/// The most envelopes one [`Store::fetch_pending`] returns.
pub const FETCH_LIMIT_MAX: usize = 1024;
/// The most message ids one [`Store::delete_acknowledged`] takes.
pub const ACK_IDS_MAX: usize = 1024;
/// The most envelopes one [`Store::purge_expired`] deletes (call again while it returns this).
pub const PURGE_LIMIT_MAX: usize = 10_000;
/// The default bound on pending envelopes per recipient device.
pub const INBOX_PENDING_MAX_DEFAULT: u64 = 10_000;
/// The longest user handle, in bytes.
pub const HANDLE_LEN_MAX: usize = 64;
/// The longest device name, in bytes.
pub const DEVICE_NAME_LEN_MAX: usize = 64;
/// The name of the SQLite database file inside the data directory.
pub const SQLITE_FILE_NAME: &str = "commucat.sqlite3";

const _: () = {
    assert!(ACK_IDS_MAX >= dp_core::limits::ACKS_PER_FRAME_MAX);
    assert!(FETCH_LIMIT_MAX <= PURGE_LIMIT_MAX);
};

/// Which database, and where.
#[derive(Clone, PartialEq, Eq)]
pub enum Backend {
    /// A PostgreSQL server, by `postgres://` (or `postgresql://`) URL.
    Postgres {
        /// The connection URL (may contain a password: never printed).
        url: String,
    },
    /// An SQLite database file.
    Sqlite {
        /// The file (created on first open).
        path: PathBuf,
    },
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Postgres { .. } => f.write_str("Postgres { url: … }"),
            Self::Sqlite { path } => f.debug_struct("Sqlite").field("path", path).finish(),
        }
    }
}

/// How to open a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// The database.
    pub backend: Backend,
    /// Pending envelopes per recipient device at most; past it stores fail with
    /// [`StoreError::InboxFull`].
    pub inbox_pending_max: u64,
    /// SQLite: worker threads (each with its own connection) for calls other than group
    /// commit.
    pub sqlite_threads: usize,
    /// PostgreSQL: pooled connections for calls other than group commit.
    pub postgres_pool_size: usize,
    /// How long a call waits for a lock (SQLite `busy_timeout`) or a connection (pool wait,
    /// connect) before failing as transient.
    pub busy_timeout: Duration,
}

impl StoreConfig {
    /// The default: an SQLite file named [`SQLITE_FILE_NAME`] in `data_dir`.
    pub fn in_data_dir(data_dir: &Path) -> Self {
        Self::with_backend(Backend::Sqlite {
            path: data_dir.join(SQLITE_FILE_NAME),
        })
    }

    /// A `postgres://` or `postgresql://` URL selects PostgreSQL; anything else (or nothing)
    /// is the default SQLite file in `data_dir`; `sqlite:PATH` names another SQLite file.
    pub fn from_location(location: Option<&str>, data_dir: &Path) -> Self {
        match location {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Self::with_backend(Backend::Postgres {
                    url: url.to_string(),
                })
            }
            Some(path) if path.starts_with("sqlite:") => Self::with_backend(Backend::Sqlite {
                path: PathBuf::from(&path["sqlite:".len()..]),
            }),
            _ => Self::in_data_dir(data_dir),
        }
    }

    /// The defaults for everything but the backend.
    pub fn with_backend(backend: Backend) -> Self {
        Self {
            backend,
            inbox_pending_max: INBOX_PENDING_MAX_DEFAULT,
            sqlite_threads: 2,
            postgres_pool_size: 8,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// Applies pending migrations and returns the versions before and after; refuses a database
/// newer than this build. [`Store::open`] does the same; this is for `commucat migrate`.
pub async fn migrate(config: &StoreConfig) -> Result<Migrated, StoreError> {
    match &config.backend {
        Backend::Sqlite { path } => {
            let path = path.clone();
            let timeout = config.busy_timeout;
            tokio::task::spawn_blocking(move || {
                let mut conn = sqlite::connect(&path, timeout)?;
                sqlite::migrate(&mut conn)
            })
            .await
            .map_err(|e| StoreError::unavailable(format!("migration thread: {e}")))?
        }
        Backend::Postgres { url } => {
            let pg = postgres::parse_url(url, config.busy_timeout)?;
            let (mut client, connection) = pg.connect(tokio_postgres::NoTls).await?;
            let driver = tokio::spawn(connection);
            let result = postgres::migrate(&mut client).await;
            drop(client);
            let _ = driver.await;
            result
        }
    }
}

/// [`migrate()`] for a caller without a tokio runtime (a plain thread, `commucat migrate`): runs
/// it on a current-thread runtime of its own.
pub fn migrate_blocking(config: &StoreConfig) -> Result<Migrated, StoreError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::config(format!("runtime: {e}")))?
        .block_on(migrate(config))
}

/// The control plane's store: SQLite or PostgreSQL behind one set of `async fn`s.
#[derive(Clone, Debug)]
pub enum Store {
    /// Embedded SQLite.
    Sqlite(SqliteStore),
    /// PostgreSQL.
    Postgres(PgStore),
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Store::Sqlite($s) => $call.await,
            Store::Postgres($s) => $call.await,
        }
    };
}

impl Store {
    /// Opens the store (creating an SQLite file and its directory if needed) and applies
    /// pending migrations. Must be called inside a tokio runtime.
    pub async fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        match &config.backend {
            Backend::Sqlite { path } => Ok(Self::Sqlite(SqliteStore::open(config, path).await?)),
            Backend::Postgres { url } => Ok(Self::Postgres(PgStore::open(config, url).await?)),
        }
    }

    /// Applies pending migrations (a no-op when the schema is current).
    pub async fn migrate(&self) -> Result<Migrated, StoreError> {
        dispatch!(self, s => s.migrate())
    }

    /// Stores one envelope in a transaction of its own, idempotent per (recipient, message
    /// id). For throughput use a [`GroupCommitter`].
    pub async fn store_envelope(&self, envelope: Envelope) -> Result<(), StoreError> {
        if envelope.body.len() > ENVELOPE_BODY_LEN_MAX {
            return Err(Invalid::BodyTooLong.into());
        }
        dispatch!(self, s => s.store_envelope(envelope))
    }

    /// Up to `limit` (at most [`FETCH_LIMIT_MAX`]) unexpired envelopes for `device` with a
    /// sequence number above `after_seq`, in server order.
    pub async fn fetch_pending(
        &self,
        device: DeviceId,
        after_seq: u64,
        limit: usize,
        now_ms: u64,
    ) -> Result<Vec<StoredEnvelope>, StoreError> {
        if limit > FETCH_LIMIT_MAX {
            return Err(Invalid::BatchTooLarge.into());
        }
        dispatch!(self, s => s.fetch_pending(device, after_seq, limit, now_ms))
    }

    /// Deletes the envelopes `device` acknowledged (at most [`ACK_IDS_MAX`] ids); rows of
    /// other recipients are never touched. Returns how many were deleted.
    pub async fn delete_acknowledged(
        &self,
        device: DeviceId,
        messages: &[MessageId],
    ) -> Result<u64, StoreError> {
        if messages.len() > ACK_IDS_MAX {
            return Err(Invalid::BatchTooLarge.into());
        }
        if messages.is_empty() {
            return Ok(0);
        }
        let messages = messages.to_vec();
        dispatch!(self, s => s.delete_acknowledged(device, messages))
    }

    /// Deletes up to `limit` (at most [`PURGE_LIMIT_MAX`]) envelopes that expired at or
    /// before `now_ms`, oldest expiry first. Returns how many were deleted.
    pub async fn purge_expired(&self, now_ms: u64, limit: usize) -> Result<u64, StoreError> {
        if limit > PURGE_LIMIT_MAX {
            return Err(Invalid::BatchTooLarge.into());
        }
        dispatch!(self, s => s.purge_expired(now_ms, limit))
    }

    /// Envelopes stored for `device` and not yet acknowledged or purged (expired ones count
    /// until the purge removes them).
    pub async fn count_pending(&self, device: DeviceId) -> Result<u64, StoreError> {
        dispatch!(self, s => s.count_pending(device))
    }

    /// Creates a user with a unique `handle`.
    pub async fn create_user(&self, handle: &str, now_ms: u64) -> Result<UserId, StoreError> {
        if handle.is_empty() || handle.len() > HANDLE_LEN_MAX {
            return Err(Invalid::Handle.into());
        }
        let handle = handle.to_string();
        dispatch!(self, s => s.create_user(handle, now_ms))
    }

    /// Registers a device for an existing user.
    pub async fn add_device(&self, device: &NewDevice) -> Result<(), StoreError> {
        if device.name.len() > DEVICE_NAME_LEN_MAX {
            return Err(Invalid::DeviceName.into());
        }
        let device = device.clone();
        dispatch!(self, s => s.add_device(device))
    }

    /// The device with this id, revoked or not.
    pub async fn device(&self, id: DeviceId) -> Result<Option<Device>, StoreError> {
        dispatch!(self, s => s.device(id))
    }

    /// Revokes a device and every session token issued to it. Returns whether it was live.
    pub async fn revoke_device(&self, id: DeviceId, now_ms: u64) -> Result<bool, StoreError> {
        dispatch!(self, s => s.revoke_device(id, now_ms))
    }

    /// Records a session token (its hash only) for a live device.
    pub async fn create_session_token(
        &self,
        token: &SessionToken,
        device: DeviceId,
        now_ms: u64,
        expires_at_ms: u64,
    ) -> Result<(), StoreError> {
        let token = token.clone();
        dispatch!(self, s => s.create_session_token(token, device, now_ms, expires_at_ms))
    }

    /// Whom the token authenticates, if it is known, unexpired, unrevoked and its device is
    /// live.
    pub async fn verify_session_token(
        &self,
        token: &SessionToken,
        now_ms: u64,
    ) -> Result<Option<TokenOwner>, StoreError> {
        let token = token.clone();
        dispatch!(self, s => s.verify_session_token(token, now_ms))
    }

    /// Revokes a session token. Returns whether it was live.
    pub async fn revoke_session_token(
        &self,
        token: &SessionToken,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let token = token.clone();
        dispatch!(self, s => s.revoke_session_token(token, now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_selects_the_backend() {
        let dir = Path::new("/var/lib/commucat");
        assert_eq!(
            StoreConfig::from_location(None, dir).backend,
            Backend::Sqlite {
                path: dir.join(SQLITE_FILE_NAME)
            }
        );
        assert_eq!(
            StoreConfig::from_location(Some("sqlite:/tmp/x.db"), dir).backend,
            Backend::Sqlite {
                path: PathBuf::from("/tmp/x.db")
            }
        );
        for url in ["postgres://u@db/c", "postgresql://u@db/c"] {
            assert_eq!(
                StoreConfig::from_location(Some(url), dir).backend,
                Backend::Postgres {
                    url: url.to_string()
                }
            );
        }
    }

    #[test]
    fn debug_never_prints_a_postgres_url() {
        let config = StoreConfig::with_backend(Backend::Postgres {
            url: "postgres://user:hunter2@db/commucat".to_string(),
        });
        let printed = format!("{config:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("Postgres"));
    }
}
