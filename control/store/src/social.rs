//! The control domain's queries: accounts and devices, pairing codes, friends with consent and
//! conversations with members and roles, over the tables of `0001_init`.
//!
//! Each operation is one `async fn` written once against [`Tx`], a small transaction interface
//! that both backends implement, so that SQLite and PostgreSQL run the same statements (SQL is
//! written with `$N` placeholders; SQLite receives them as `?N`). An operation runs in one
//! transaction: committed when it returns `Ok`, rolled back otherwise. On SQLite the
//! transaction is `BEGIN IMMEDIATE` (read-only operations: `BEGIN DEFERRED`) on a worker thread and the operation's future completes in
//! one poll (every SQLite call is synchronous); on PostgreSQL it runs on a pooled connection
//! at READ COMMITTED, so every check-then-write that could race is a single conditional
//! statement (`INSERT … ON CONFLICT DO NOTHING RETURNING`, `UPDATE … WHERE … RETURNING`).
//!
//! Authorisation is not this module's business: `control-core` decides who may do what and
//! calls these with ids it has already checked.

use crate::error::{Entity, StoreError};
use crate::model::{Device, UserId};
use crate::postgres::PgStore;
use crate::sqlite::SqliteStore;
use crate::{DEVICE_NAME_LEN_MAX, HANDLE_LEN_MAX, Invalid, Store, convert};
use dp_core::{ConversationId, DeviceId};
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// The longest group title, in bytes (the schema's bound).
pub const GROUP_TITLE_LEN_MAX: usize = 128;
/// The most sequence numbers one [`Store::conversation_lookup`] reserves.
pub const SEQ_BLOCK_MAX: u64 = 1 << 20;

/// A user as listed: id, handle and creation time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSummary {
    /// The user's id.
    pub id: UserId,
    /// The handle, unique on this server.
    pub handle: String,
    /// When the account was created (milliseconds since the Unix epoch).
    pub created_at_ms: u64,
}

/// A device that joins an account: its id and its own Noise static public key (the server
/// never generates a client's key pair).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewPairedDevice {
    /// The device id, derived from the public key.
    pub id: DeviceId,
    /// The device's Noise static public key, as its handshake authenticated it.
    pub public_key: [u8; 32],
    /// A human-readable name, at most [`DEVICE_NAME_LEN_MAX`] bytes.
    pub name: String,
}

/// What a pairing claim did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The device joined this account; the code is consumed.
    Joined(UserId),
    /// No such code, or it expired, was claimed already, or its creating device was revoked.
    NoSuchCode,
    /// The account already has its maximum of live devices (the code stays unclaimed).
    AccountFull,
}

/// What adding a member did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Added {
    /// The user is now a member.
    Added,
    /// The user was a member already (nothing changed).
    AlreadyMember,
    /// The conversation has its maximum of members.
    Full,
}

/// The answer of the per-send membership check ([`Store::send_check`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendCheck {
    /// The sending device is unknown or revoked.
    UnknownDevice,
    /// Its user is not a member of the conversation (or there is no such conversation).
    NotAMember,
    /// A direct conversation whose two users are no longer friends.
    NotFriends,
    /// Allowed: the live devices of every member, the sender excluded, in id order.
    Allowed(Vec<DeviceId>),
}

/// What the data plane needs to route a conversation's messages ([`Store::conversation_lookup`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationLookup {
    /// The live devices of every member, in id order.
    pub devices: Vec<DeviceId>,
    /// Whether members may send: always in a group; in a direct conversation only while the
    /// two users are friends.
    pub may_send: bool,
    /// Sequence numbers reserved for the conversation, never reserved again: `start >= 1`.
    pub seq: core::ops::Range<u64>,
}

/// A pending friend request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FriendRequest {
    /// Who asked.
    pub from: UserSummary,
    /// Whom.
    pub to: UserSummary,
    /// When (milliseconds since the Unix epoch).
    pub created_at_ms: u64,
}

/// What a friend request did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FriendRequestOutcome {
    /// A new request now waits for the other user's consent.
    Requested,
    /// The same request was already waiting (nothing changed).
    AlreadyRequested,
    /// The other user had already asked: both consented, so they are now friends.
    Accepted,
    /// They were already friends (nothing changed).
    AlreadyFriends,
}

/// A conversation's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConversationKind {
    /// Between two users who are friends.
    Direct,
    /// A group with roles.
    Group,
}

impl ConversationKind {
    /// The stored name: `direct` or `group`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Group => "group",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "direct" => Ok(Self::Direct),
            "group" => Ok(Self::Group),
            other => Err(StoreError::corrupt(format!("conversation kind {other:?}"))),
        }
    }
}

/// A member's role in a conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// An ordinary member.
    Member,
    /// May invite and remove members.
    Admin,
    /// Created the group (or inherited it); may also change roles.
    Owner,
}

impl Role {
    /// The stored name: `owner`, `admin` or `member`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Admin => "admin",
            Self::Member => "member",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "owner" => Ok(Self::Owner),
            "admin" => Ok(Self::Admin),
            "member" => Ok(Self::Member),
            other => Err(StoreError::corrupt(format!("role {other:?}"))),
        }
    }
}

/// A conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conversation {
    /// The server-assigned id.
    pub id: ConversationId,
    /// Direct or group.
    pub kind: ConversationKind,
    /// A group's title.
    pub title: Option<String>,
    /// Who created it.
    pub created_by: UserId,
    /// When (milliseconds since the Unix epoch).
    pub created_at_ms: u64,
}

/// A member of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The user.
    pub user: UserId,
    /// The user's handle.
    pub handle: String,
    /// The role.
    pub role: Role,
    /// When the user joined (milliseconds since the Unix epoch).
    pub joined_at_ms: u64,
}

// ---------------------------------------------------------------------------------------------
// The transaction interface.

/// A column or parameter value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Val {
    Null,
    Int(i64),
    Bytes(Vec<u8>),
    Text(String),
}

impl Val {
    fn int(&self) -> Result<i64, StoreError> {
        match self {
            Self::Int(v) => Ok(*v),
            other => Err(StoreError::corrupt(format!(
                "{other:?} where an integer belongs"
            ))),
        }
    }

    fn opt_int(&self) -> Result<Option<i64>, StoreError> {
        match self {
            Self::Null => Ok(None),
            other => other.int().map(Some),
        }
    }

    fn text(&self) -> Result<String, StoreError> {
        match self {
            Self::Text(v) => Ok(v.clone()),
            other => Err(StoreError::corrupt(format!("{other:?} where text belongs"))),
        }
    }

    fn opt_text(&self) -> Result<Option<String>, StoreError> {
        match self {
            Self::Null => Ok(None),
            other => other.text().map(Some),
        }
    }

    fn bytes(&self) -> Result<&[u8], StoreError> {
        match self {
            Self::Bytes(v) => Ok(v),
            other => Err(StoreError::corrupt(format!("{other:?} where bytes belong"))),
        }
    }
}

fn int(value: u64) -> Val {
    Val::Int(convert::to_i64(value))
}

fn bytes(value: &[u8]) -> Val {
    Val::Bytes(value.to_vec())
}

fn limit(value: usize) -> Val {
    Val::Int(i64::try_from(value).unwrap_or(i64::MAX))
}

type Row = Vec<Val>;

/// One open transaction. Statements use `$1`, `$2`… placeholders and never bind a NULL.
pub(crate) trait Tx: Send {
    /// Runs a statement and returns its rows.
    fn query(
        &mut self,
        sql: &'static str,
        params: &[Val],
    ) -> impl Future<Output = Result<Vec<Row>, StoreError>> + Send;

    /// Runs a statement and returns how many rows it changed.
    fn execute(
        &mut self,
        sql: &'static str,
        params: &[Val],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

async fn query_one<T: Tx>(
    tx: &mut T,
    sql: &'static str,
    params: &[Val],
) -> Result<Option<Row>, StoreError> {
    Ok(tx.query(sql, params).await?.into_iter().next())
}

async fn exists<T: Tx>(tx: &mut T, sql: &'static str, params: &[Val]) -> Result<bool, StoreError> {
    Ok(query_one(tx, sql, params).await?.is_some())
}

/// SQLite: a transaction (`BEGIN IMMEDIATE` for writers, `BEGIN DEFERRED` for read-only
/// operations) on a worker thread's connection.
struct SqliteTx<'c> {
    conn: &'c mut rusqlite::Connection,
}

fn sqlite_sql(sql: &str) -> String {
    sql.replace('$', "?")
}

fn sqlite_params(params: &[Val]) -> Vec<rusqlite::types::Value> {
    params
        .iter()
        .map(|v| match v {
            Val::Null => rusqlite::types::Value::Null,
            Val::Int(i) => rusqlite::types::Value::Integer(*i),
            Val::Bytes(b) => rusqlite::types::Value::Blob(b.clone()),
            Val::Text(t) => rusqlite::types::Value::Text(t.clone()),
        })
        .collect()
}

impl SqliteTx<'_> {
    fn query_now(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&sqlite_sql(sql))?;
        let columns = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(sqlite_params(params)))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let mut values = Vec::with_capacity(columns);
            for i in 0..columns {
                values.push(match row.get_ref(i)? {
                    rusqlite::types::ValueRef::Null => Val::Null,
                    rusqlite::types::ValueRef::Integer(v) => Val::Int(v),
                    rusqlite::types::ValueRef::Real(_) => {
                        return Err(StoreError::corrupt("a REAL column"));
                    }
                    rusqlite::types::ValueRef::Text(t) => {
                        Val::Text(String::from_utf8_lossy(t).into_owned())
                    }
                    rusqlite::types::ValueRef::Blob(b) => Val::Bytes(b.to_vec()),
                });
            }
            out.push(values);
        }
        Ok(out)
    }

    fn execute_now(&mut self, sql: &str, params: &[Val]) -> Result<u64, StoreError> {
        let mut stmt = self.conn.prepare_cached(&sqlite_sql(sql))?;
        Ok(stmt.execute(rusqlite::params_from_iter(sqlite_params(params)))? as u64)
    }
}

impl Tx for SqliteTx<'_> {
    fn query(
        &mut self,
        sql: &'static str,
        params: &[Val],
    ) -> impl Future<Output = Result<Vec<Row>, StoreError>> + Send {
        std::future::ready(self.query_now(sql, params))
    }

    fn execute(
        &mut self,
        sql: &'static str,
        params: &[Val],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        std::future::ready(self.execute_now(sql, params))
    }
}

/// Completes a future that never waits (an operation over [`SqliteTx`]) on the current thread.
fn complete_now<F: Future>(future: F) -> Result<F::Output, StoreError> {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(out) => Ok(out),
        Poll::Pending => Err(StoreError::corrupt("a SQLite operation waited (a bug)")),
    }
}

/// PostgreSQL: a transaction on a pooled connection.
struct PgTx<'a> {
    tx: deadpool_postgres::Transaction<'a>,
}

type PgParam = Box<dyn tokio_postgres::types::ToSql + Sync + Send>;

fn pg_params(params: &[Val]) -> Vec<PgParam> {
    params
        .iter()
        .map(|v| -> PgParam {
            match v {
                Val::Null => Box::new(Option::<i64>::None),
                Val::Int(i) => Box::new(*i),
                Val::Bytes(b) => Box::new(b.clone()),
                Val::Text(t) => Box::new(t.clone()),
            }
        })
        .collect()
}

fn pg_row(row: &tokio_postgres::Row) -> Result<Row, StoreError> {
    use tokio_postgres::types::Type;
    let mut out = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let ty = column.type_();
        let value = if *ty == Type::INT8 {
            row.try_get::<_, Option<i64>>(i)?.map(Val::Int)
        } else if *ty == Type::INT4 {
            row.try_get::<_, Option<i32>>(i)?
                .map(|v| Val::Int(v.into()))
        } else if *ty == Type::BOOL {
            row.try_get::<_, Option<bool>>(i)?
                .map(|v| Val::Int(v.into()))
        } else if *ty == Type::BYTEA {
            row.try_get::<_, Option<Vec<u8>>>(i)?.map(Val::Bytes)
        } else if *ty == Type::TEXT || *ty == Type::VARCHAR {
            row.try_get::<_, Option<String>>(i)?.map(Val::Text)
        } else {
            return Err(StoreError::corrupt(format!("a column of type {ty}")));
        };
        out.push(value.unwrap_or(Val::Null));
    }
    Ok(out)
}

impl Tx for PgTx<'_> {
    fn query(
        &mut self,
        sql: &'static str,
        params: &[Val],
    ) -> impl Future<Output = Result<Vec<Row>, StoreError>> + Send {
        let boxed = pg_params(params);
        async move {
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = boxed
                .iter()
                .map(|b| b.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            let stmt = self.tx.prepare_cached(sql).await?;
            let rows = self.tx.query(&stmt, &refs).await?;
            rows.iter().map(pg_row).collect()
        }
    }

    fn execute(
        &mut self,
        sql: &'static str,
        params: &[Val],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        let boxed = pg_params(params);
        async move {
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = boxed
                .iter()
                .map(|b| b.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            let stmt = self.tx.prepare_cached(sql).await?;
            Ok(self.tx.execute(&stmt, &refs).await?)
        }
    }
}

/// PostgreSQL, read-only operations: statements on a pooled connection in autocommit.
struct PgConn<'a> {
    client: &'a deadpool_postgres::Client,
}

impl Tx for PgConn<'_> {
    fn query(
        &mut self,
        sql: &'static str,
        params: &[Val],
    ) -> impl Future<Output = Result<Vec<Row>, StoreError>> + Send {
        let boxed = pg_params(params);
        async move {
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = boxed
                .iter()
                .map(|b| b.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            let stmt = self.client.prepare_cached(sql).await?;
            let rows = self.client.query(&stmt, &refs).await?;
            rows.iter().map(pg_row).collect()
        }
    }

    fn execute(
        &mut self,
        _sql: &'static str,
        _params: &[Val],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        std::future::ready(Err(StoreError::corrupt(
            "a write in a read-only operation (a bug)",
        )))
    }
}

/// Runs one operation (an expression over the transaction named `$tx`) in one transaction on
/// either backend (`read`: a read-only operation, see below): the same expression is compiled
/// once per backend.
macro_rules! in_tx {
    (@pg write, $s:expr, |$tx:ident| $op:expr) => {{
        let mut client = pg_store($s).client().await?;
        let mut inner = PgTx {
            tx: client.transaction().await?,
        };
        let out = {
            let $tx = &mut inner;
            $op.await
        };
        if out.is_ok() {
            inner.tx.commit().await?;
        } else {
            let _ = inner.tx.rollback().await;
        }
        out
    }};
    (@pg read, $s:expr, |$tx:ident| $op:expr) => {{
        // Reads at READ COMMITTED see each statement's own snapshot inside a transaction or
        // not: without BEGIN and COMMIT they cost two round trips less.
        let client = pg_store($s).client().await?;
        let mut inner = PgConn { client: &client };
        let $tx = &mut inner;
        $op.await
    }};
    (@run $store:expr, $begin:literal, $mode:ident, |$tx:ident| $op:expr) => {
        match $store {
            Store::Sqlite(s) => {
                sqlite_store(s)
                    .call(move |conn| {
                        conn.execute_batch($begin)?;
                        let out = {
                            let mut inner = SqliteTx { conn: &mut *conn };
                            let $tx = &mut inner;
                            complete_now($op).and_then(|r| r)
                        };
                        if out.is_ok() {
                            if let Err(e) = conn.execute_batch("COMMIT") {
                                let _ = conn.execute_batch("ROLLBACK");
                                return Err(e.into());
                            }
                        } else {
                            let _ = conn.execute_batch("ROLLBACK");
                        }
                        out
                    })
                    .await
            }
            Store::Postgres(s) => in_tx!(@pg $mode, s, |$tx| $op),
        }
    };
    ($store:expr, read, |$tx:ident| $op:expr) => {
        // A read-only operation: on SQLite a deferred transaction takes no write lock, so it
        // never waits for the group committer; on PostgreSQL no transaction at all.
        in_tx!(@run $store, "BEGIN DEFERRED", read, |$tx| $op)
    };
    ($store:expr, |$tx:ident| $op:expr) => {
        in_tx!(@run $store, "BEGIN IMMEDIATE", write, |$tx| $op)
    };
}

fn sqlite_store(s: &SqliteStore) -> &SqliteStore {
    s
}

fn pg_store(s: &PgStore) -> &PgStore {
    s
}

// ---------------------------------------------------------------------------------------------
// Row conversions.

fn user_row(row: &[Val]) -> Result<UserSummary, StoreError> {
    Ok(UserSummary {
        id: UserId(row[0].int()?),
        handle: row[1].text()?,
        created_at_ms: convert::to_u64(row[2].int()?)?,
    })
}

fn device_row(row: &[Val]) -> Result<Device, StoreError> {
    Ok(Device {
        id: DeviceId(convert::blob16(row[0].bytes()?)?),
        public_key: convert::blob32(row[1].bytes()?)?,
        user: UserId(row[2].int()?),
        name: row[3].text()?,
        created_at_ms: convert::to_u64(row[4].int()?)?,
        revoked_at_ms: row[5].opt_int()?.map(convert::to_u64).transpose()?,
    })
}

fn conversation_row(row: &[Val]) -> Result<Conversation, StoreError> {
    Ok(Conversation {
        id: ConversationId(convert::to_u64(row[0].int()?)?),
        kind: ConversationKind::parse(&row[1].text()?)?,
        title: row[2].opt_text()?,
        created_by: UserId(row[3].int()?),
        created_at_ms: convert::to_u64(row[4].int()?)?,
    })
}

fn conversation_id(id: ConversationId) -> Val {
    int(id.0)
}

fn pair(a: UserId, b: UserId) -> (Val, Val) {
    (Val::Int(a.0.min(b.0)), Val::Int(a.0.max(b.0)))
}

// ---------------------------------------------------------------------------------------------
// Operations (one transaction each).

async fn insert_device<T: Tx>(
    tx: &mut T,
    device: &NewPairedDevice,
    user: UserId,
    now_ms: u64,
) -> Result<(), StoreError> {
    if exists(
        tx,
        "SELECT 1 FROM devices WHERE id = $1",
        &[bytes(&device.id.0)],
    )
    .await?
    {
        return Err(StoreError::Conflict(Entity::Device));
    }
    if exists(
        tx,
        "SELECT 1 FROM devices WHERE public_key = $1",
        &[bytes(&device.public_key)],
    )
    .await?
    {
        return Err(StoreError::Conflict(Entity::DeviceKey));
    }
    // The checks above give the precise conflict; ON CONFLICT covers a concurrent insert of
    // the same device between them and here (PostgreSQL, READ COMMITTED).
    let inserted = tx
        .execute(
            "INSERT INTO devices (id, public_key, user_id, name, created_at_ms)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            &[
                bytes(&device.id.0),
                bytes(&device.public_key),
                Val::Int(user.0),
                Val::Text(device.name.clone()),
                int(now_ms),
            ],
        )
        .await?;
    if inserted == 0 {
        return Err(StoreError::Conflict(Entity::Device));
    }
    Ok(())
}

async fn register_first_device<T: Tx>(
    tx: &mut T,
    handle: String,
    device: NewPairedDevice,
    now_ms: u64,
) -> Result<UserId, StoreError> {
    // The device checks come first, so that a device that already belongs to an account
    // gets `Conflict(Device)` whatever handle it asks for.
    if exists(
        tx,
        "SELECT 1 FROM devices WHERE id = $1",
        &[bytes(&device.id.0)],
    )
    .await?
    {
        return Err(StoreError::Conflict(Entity::Device));
    }
    let row = query_one(
        tx,
        "INSERT INTO users (handle, created_at_ms) VALUES ($1, $2)
         ON CONFLICT (handle) DO NOTHING RETURNING id",
        &[Val::Text(handle), int(now_ms)],
    )
    .await?;
    let Some(row) = row else {
        return Err(StoreError::Conflict(Entity::User));
    };
    let user = UserId(row[0].int()?);
    insert_device(tx, &device, user, now_ms).await?;
    Ok(user)
}

async fn live_devices_count<T: Tx>(tx: &mut T, user: UserId) -> Result<u64, StoreError> {
    let row = query_one(
        tx,
        "SELECT COUNT(*) FROM devices WHERE user_id = $1 AND revoked_at_ms IS NULL",
        &[Val::Int(user.0)],
    )
    .await?;
    convert::to_u64(row.map(|r| r[0].int()).transpose()?.unwrap_or(0))
}

async fn claim_pairing_code<T: Tx>(
    tx: &mut T,
    code_hash: [u8; 32],
    device: NewPairedDevice,
    devices_max: u64,
    now_ms: u64,
) -> Result<ClaimOutcome, StoreError> {
    // One conditional statement consumes the code: two concurrent claims cannot both win. A
    // code whose creating device has been revoked since is dead.
    let row = query_one(
        tx,
        "UPDATE pairing_codes SET claimed_at_ms = $2
         WHERE code_hash = $1 AND claimed_at_ms IS NULL AND expires_at_ms > $2
           AND created_by_device IN (SELECT id FROM devices WHERE revoked_at_ms IS NULL)
         RETURNING user_id",
        &[bytes(&code_hash), int(now_ms)],
    )
    .await?;
    let Some(row) = row else {
        return Ok(ClaimOutcome::NoSuchCode);
    };
    let user = UserId(row[0].int()?);
    if live_devices_count(tx, user).await? >= devices_max {
        // An error return rolls the claim back: the code stays usable.
        return Err(StoreError::InboxFull {
            pending: devices_max,
            max: devices_max,
        });
    }
    insert_device(tx, &device, user, now_ms).await?;
    tx.execute(
        "UPDATE pairing_codes SET claimed_by_device = $2 WHERE code_hash = $1",
        &[bytes(&code_hash), bytes(&device.id.0)],
    )
    .await?;
    Ok(ClaimOutcome::Joined(user))
}

async fn friend_request<T: Tx>(
    tx: &mut T,
    from: UserId,
    to: UserId,
    now_ms: u64,
) -> Result<FriendRequestOutcome, StoreError> {
    if !exists(tx, "SELECT 1 FROM users WHERE id = $1", &[Val::Int(to.0)]).await? {
        return Err(StoreError::NotFound(Entity::User));
    }
    let (low, high) = pair(from, to);
    if exists(
        tx,
        "SELECT 1 FROM friendships WHERE user_low = $1 AND user_high = $2",
        &[low.clone(), high.clone()],
    )
    .await?
    {
        return Ok(FriendRequestOutcome::AlreadyFriends);
    }
    let reverse = tx
        .execute(
            "DELETE FROM friend_requests WHERE from_user = $1 AND to_user = $2",
            &[Val::Int(to.0), Val::Int(from.0)],
        )
        .await?;
    if reverse > 0 {
        tx.execute(
            "INSERT INTO friendships (user_low, user_high, created_at_ms) VALUES ($1, $2, $3)
             ON CONFLICT (user_low, user_high) DO NOTHING",
            &[low, high, int(now_ms)],
        )
        .await?;
        return Ok(FriendRequestOutcome::Accepted);
    }
    let inserted = tx
        .execute(
            "INSERT INTO friend_requests (from_user, to_user, created_at_ms) VALUES ($1, $2, $3)
             ON CONFLICT (from_user, to_user) DO NOTHING",
            &[Val::Int(from.0), Val::Int(to.0), int(now_ms)],
        )
        .await?;
    Ok(if inserted == 1 {
        FriendRequestOutcome::Requested
    } else {
        FriendRequestOutcome::AlreadyRequested
    })
}

async fn accept_friend_request<T: Tx>(
    tx: &mut T,
    me: UserId,
    from: UserId,
    now_ms: u64,
) -> Result<bool, StoreError> {
    let deleted = tx
        .execute(
            "DELETE FROM friend_requests WHERE from_user = $1 AND to_user = $2",
            &[Val::Int(from.0), Val::Int(me.0)],
        )
        .await?;
    if deleted == 0 {
        return Ok(false);
    }
    let (low, high) = pair(me, from);
    tx.execute(
        "INSERT INTO friendships (user_low, user_high, created_at_ms) VALUES ($1, $2, $3)
         ON CONFLICT (user_low, user_high) DO NOTHING",
        &[low, high, int(now_ms)],
    )
    .await?;
    Ok(true)
}

async fn friend_requests<T: Tx>(
    tx: &mut T,
    user: UserId,
    incoming: bool,
    max: usize,
) -> Result<Vec<FriendRequest>, StoreError> {
    let sql = if incoming {
        "SELECT f.id, f.handle, f.created_at_ms, t.id, t.handle, t.created_at_ms, r.created_at_ms
         FROM friend_requests r JOIN users f ON f.id = r.from_user JOIN users t ON t.id = r.to_user
         WHERE r.to_user = $1 ORDER BY r.created_at_ms, f.id LIMIT $2"
    } else {
        "SELECT f.id, f.handle, f.created_at_ms, t.id, t.handle, t.created_at_ms, r.created_at_ms
         FROM friend_requests r JOIN users f ON f.id = r.from_user JOIN users t ON t.id = r.to_user
         WHERE r.from_user = $1 ORDER BY r.created_at_ms, t.id LIMIT $2"
    };
    tx.query(sql, &[Val::Int(user.0), limit(max)])
        .await?
        .iter()
        .map(|row| {
            Ok(FriendRequest {
                from: user_row(&row[0..3])?,
                to: user_row(&row[3..6])?,
                created_at_ms: convert::to_u64(row[6].int()?)?,
            })
        })
        .collect()
}

async fn create_direct<T: Tx>(
    tx: &mut T,
    a: UserId,
    b: UserId,
    now_ms: u64,
) -> Result<(ConversationId, bool), StoreError> {
    let (low, high) = pair(a, b);
    let existing = "SELECT conversation_id FROM direct_conversations
                    WHERE user_low = $1 AND user_high = $2";
    if let Some(row) = query_one(tx, existing, &[low.clone(), high.clone()]).await? {
        return Ok((ConversationId(convert::to_u64(row[0].int()?)?), false));
    }
    let row = query_one(
        tx,
        "INSERT INTO conversations (kind, created_by, created_at_ms)
         VALUES ('direct', $1, $2) RETURNING id",
        &[Val::Int(a.0), int(now_ms)],
    )
    .await?
    .ok_or_else(|| StoreError::corrupt("INSERT … RETURNING returned nothing"))?;
    let id = row[0].int()?;
    let inserted = tx
        .execute(
            "INSERT INTO direct_conversations (user_low, user_high, conversation_id)
             VALUES ($1, $2, $3) ON CONFLICT (user_low, user_high) DO NOTHING",
            &[low.clone(), high.clone(), Val::Int(id)],
        )
        .await?;
    if inserted == 0 {
        // A concurrent creation won: use its conversation and drop ours.
        tx.execute("DELETE FROM conversations WHERE id = $1", &[Val::Int(id)])
            .await?;
        let row = query_one(tx, existing, &[low, high])
            .await?
            .ok_or_else(|| StoreError::unavailable("direct conversation raced; retry"))?;
        return Ok((ConversationId(convert::to_u64(row[0].int()?)?), false));
    }
    for user in [a, b] {
        tx.execute(
            "INSERT INTO conversation_members (conversation_id, user_id, role, joined_at_ms)
             VALUES ($1, $2, 'member', $3)",
            &[Val::Int(id), Val::Int(user.0), int(now_ms)],
        )
        .await?;
    }
    Ok((ConversationId(convert::to_u64(id)?), true))
}

async fn create_group<T: Tx>(
    tx: &mut T,
    owner: UserId,
    title: String,
    now_ms: u64,
) -> Result<ConversationId, StoreError> {
    let row = query_one(
        tx,
        "INSERT INTO conversations (kind, title, created_by, created_at_ms)
         VALUES ('group', $1, $2, $3) RETURNING id",
        &[Val::Text(title), Val::Int(owner.0), int(now_ms)],
    )
    .await?
    .ok_or_else(|| StoreError::corrupt("INSERT … RETURNING returned nothing"))?;
    let id = row[0].int()?;
    tx.execute(
        "INSERT INTO conversation_members (conversation_id, user_id, role, joined_at_ms)
         VALUES ($1, $2, 'owner', $3)",
        &[Val::Int(id), Val::Int(owner.0), int(now_ms)],
    )
    .await?;
    Ok(ConversationId(convert::to_u64(id)?))
}

async fn add_member<T: Tx>(
    tx: &mut T,
    conversation: ConversationId,
    user: UserId,
    role: Role,
    members_max: u64,
    now_ms: u64,
) -> Result<Added, StoreError> {
    let count = query_one(
        tx,
        "SELECT COUNT(*) FROM conversation_members WHERE conversation_id = $1",
        &[conversation_id(conversation)],
    )
    .await?
    .map(|r| r[0].int())
    .transpose()?
    .unwrap_or(0);
    if convert::to_u64(count)? >= members_max {
        return Ok(Added::Full);
    }
    let inserted = tx
        .execute(
            "INSERT INTO conversation_members (conversation_id, user_id, role, joined_at_ms)
             VALUES ($1, $2, $3, $4) ON CONFLICT (conversation_id, user_id) DO NOTHING",
            &[
                conversation_id(conversation),
                Val::Int(user.0),
                Val::Text(role.as_str().to_string()),
                int(now_ms),
            ],
        )
        .await?;
    Ok(if inserted == 1 {
        Added::Added
    } else {
        Added::AlreadyMember
    })
}

async fn members<T: Tx>(
    tx: &mut T,
    conversation: ConversationId,
    max: usize,
) -> Result<Vec<Member>, StoreError> {
    tx.query(
        "SELECT m.user_id, u.handle, m.role, m.joined_at_ms
         FROM conversation_members m JOIN users u ON u.id = m.user_id
         WHERE m.conversation_id = $1 ORDER BY m.joined_at_ms, m.user_id LIMIT $2",
        &[conversation_id(conversation), limit(max)],
    )
    .await?
    .iter()
    .map(|row| {
        Ok(Member {
            user: UserId(row[0].int()?),
            handle: row[1].text()?,
            role: Role::parse(&row[2].text()?)?,
            joined_at_ms: convert::to_u64(row[3].int()?)?,
        })
    })
    .collect()
}

/// Removes `user` from a group; when the owner leaves, the longest-standing admin (else
/// member) becomes owner, so a group with members always has one. Returns whether `user` was a
/// member.
async fn remove_member<T: Tx>(
    tx: &mut T,
    conversation: ConversationId,
    user: UserId,
) -> Result<bool, StoreError> {
    let role = query_one(
        tx,
        "DELETE FROM conversation_members WHERE conversation_id = $1 AND user_id = $2
         RETURNING role",
        &[conversation_id(conversation), Val::Int(user.0)],
    )
    .await?;
    let Some(role) = role else {
        return Ok(false);
    };
    if Role::parse(&role[0].text()?)? == Role::Owner {
        tx.execute(
            "UPDATE conversation_members SET role = 'owner'
             WHERE conversation_id = $1 AND user_id = (
                 SELECT user_id FROM conversation_members WHERE conversation_id = $1
                 ORDER BY CASE role WHEN 'admin' THEN 0 ELSE 1 END, joined_at_ms, user_id
                 LIMIT 1)",
            &[conversation_id(conversation)],
        )
        .await?;
    }
    Ok(true)
}

async fn conversation_lookup<T: Tx>(
    tx: &mut T,
    conversation: ConversationId,
    max: usize,
    seq_count: u64,
) -> Result<Option<ConversationLookup>, StoreError> {
    let Some(kind) = query_one(
        tx,
        "SELECT kind FROM conversations WHERE id = $1",
        &[conversation_id(conversation)],
    )
    .await?
    else {
        return Ok(None);
    };
    let may_send = if ConversationKind::parse(&kind[0].text()?)? == ConversationKind::Direct {
        let users = tx
            .query(
                "SELECT user_id FROM conversation_members WHERE conversation_id = $1
                 ORDER BY user_id LIMIT 2",
                &[conversation_id(conversation)],
            )
            .await?;
        match users.as_slice() {
            [a, b] => {
                let (low, high) = pair(UserId(a[0].int()?), UserId(b[0].int()?));
                exists(
                    tx,
                    "SELECT 1 FROM friendships WHERE user_low = $1 AND user_high = $2",
                    &[low, high],
                )
                .await?
            }
            _ => false,
        }
    } else {
        true
    };
    let devices = tx
        .query(
            "SELECT d.id FROM conversation_members m JOIN devices d ON d.user_id = m.user_id
             WHERE m.conversation_id = $1 AND d.revoked_at_ms IS NULL ORDER BY d.id LIMIT $2",
            &[conversation_id(conversation), limit(max)],
        )
        .await?
        .iter()
        .map(|r| Ok(DeviceId(convert::blob16(r[0].bytes()?)?)))
        .collect::<Result<Vec<_>, StoreError>>()?;
    tx.execute(
        "INSERT INTO conversation_seq (conversation_id, next) VALUES ($1, 1)
         ON CONFLICT (conversation_id) DO NOTHING",
        &[conversation_id(conversation)],
    )
    .await?;
    let count = seq_count.clamp(1, SEQ_BLOCK_MAX);
    let row = query_one(
        tx,
        "UPDATE conversation_seq SET next = next + $2 WHERE conversation_id = $1 RETURNING next",
        &[conversation_id(conversation), int(count)],
    )
    .await?
    .ok_or_else(|| StoreError::corrupt("conversation_seq row missing after insert"))?;
    let end = convert::to_u64(row[0].int()?)?;
    let start = end
        .checked_sub(count)
        .filter(|&start| start >= 1)
        .ok_or_else(|| StoreError::corrupt(format!("conversation_seq next {end}")))?;
    Ok(Some(ConversationLookup {
        devices,
        may_send,
        seq: start..end,
    }))
}

async fn send_check<T: Tx>(
    tx: &mut T,
    device: DeviceId,
    conversation: ConversationId,
    max: usize,
) -> Result<SendCheck, StoreError> {
    let Some(sender) = query_one(
        tx,
        "SELECT user_id FROM devices WHERE id = $1 AND revoked_at_ms IS NULL",
        &[bytes(&device.0)],
    )
    .await?
    else {
        return Ok(SendCheck::UnknownDevice);
    };
    let user = sender[0].int()?;
    let Some(kind) = query_one(
        tx,
        "SELECT c.kind FROM conversation_members m JOIN conversations c ON c.id = m.conversation_id
         WHERE m.conversation_id = $1 AND m.user_id = $2",
        &[conversation_id(conversation), Val::Int(user)],
    )
    .await?
    else {
        return Ok(SendCheck::NotAMember);
    };
    if ConversationKind::parse(&kind[0].text()?)? == ConversationKind::Direct {
        let other = query_one(
            tx,
            "SELECT user_id FROM conversation_members WHERE conversation_id = $1 AND user_id <> $2",
            &[conversation_id(conversation), Val::Int(user)],
        )
        .await?;
        let friends = match other {
            Some(row) => {
                let (low, high) = pair(UserId(user), UserId(row[0].int()?));
                exists(
                    tx,
                    "SELECT 1 FROM friendships WHERE user_low = $1 AND user_high = $2",
                    &[low, high],
                )
                .await?
            }
            None => false,
        };
        if !friends {
            return Ok(SendCheck::NotFriends);
        }
    }
    let devices = tx
        .query(
            "SELECT d.id FROM conversation_members m JOIN devices d ON d.user_id = m.user_id
             WHERE m.conversation_id = $1 AND d.revoked_at_ms IS NULL AND d.id <> $2
             ORDER BY d.id LIMIT $3",
            &[conversation_id(conversation), bytes(&device.0), limit(max)],
        )
        .await?
        .iter()
        .map(|r| Ok(DeviceId(convert::blob16(r[0].bytes()?)?)))
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(SendCheck::Allowed(devices))
}

// ---------------------------------------------------------------------------------------------
// The public methods.

fn check_handle(handle: &str) -> Result<(), StoreError> {
    if handle.is_empty() || handle.len() > HANDLE_LEN_MAX {
        return Err(Invalid::Handle.into());
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), StoreError> {
    if name.len() > DEVICE_NAME_LEN_MAX {
        return Err(Invalid::DeviceName.into());
    }
    Ok(())
}

impl Store {
    /// Whether the database answers (a `SELECT 1` in a transaction): readiness.
    pub async fn ping(&self) -> Result<(), StoreError> {
        in_tx!(self, read, |tx| async move {
            tx.query("SELECT 1", &[]).await.map(|_| ())
        })
    }

    /// Creates a user with `handle` and its first device, atomically: either both rows exist
    /// afterwards or neither. `Conflict(User)` for a taken handle, `Conflict(Device)` or
    /// `Conflict(DeviceKey)` for a device already registered.
    pub async fn register_first_device(
        &self,
        handle: &str,
        device: &NewPairedDevice,
        now_ms: u64,
    ) -> Result<UserId, StoreError> {
        check_handle(handle)?;
        check_name(&device.name)?;
        let (handle, device) = (handle.to_string(), device.clone());
        in_tx!(self, |tx| register_first_device(tx, handle, device, now_ms))
    }

    /// The user with this id.
    pub async fn user(&self, user: UserId) -> Result<Option<UserSummary>, StoreError> {
        in_tx!(self, read, |tx| async move {
            query_one(
                tx,
                "SELECT id, handle, created_at_ms FROM users WHERE id = $1",
                &[Val::Int(user.0)],
            )
            .await?
            .map(|r| user_row(&r))
            .transpose()
        })
    }

    /// The user with this handle.
    pub async fn user_by_handle(&self, handle: &str) -> Result<Option<UserSummary>, StoreError> {
        check_handle(handle)?;
        let handle = handle.to_string();
        in_tx!(self, read, |tx| async move {
            query_one(
                tx,
                "SELECT id, handle, created_at_ms FROM users WHERE handle = $1",
                &[Val::Text(handle)],
            )
            .await?
            .map(|r| user_row(&r))
            .transpose()
        })
    }

    /// Up to `max` users with an id above `after`, in id order (for paging).
    pub async fn list_users(
        &self,
        after: UserId,
        max: usize,
    ) -> Result<Vec<UserSummary>, StoreError> {
        in_tx!(self, read, |tx| async move {
            tx.query(
                "SELECT id, handle, created_at_ms FROM users WHERE id > $1 ORDER BY id LIMIT $2",
                &[Val::Int(after.0), limit(max)],
            )
            .await?
            .iter()
            .map(|r| user_row(r))
            .collect::<Result<Vec<_>, _>>()
        })
    }

    /// Up to `max` devices of `user`, revoked ones included, oldest first.
    pub async fn devices_of(&self, user: UserId, max: usize) -> Result<Vec<Device>, StoreError> {
        in_tx!(self, read, |tx| async move {
            tx.query(
                "SELECT id, public_key, user_id, name, created_at_ms, revoked_at_ms
                 FROM devices WHERE user_id = $1 ORDER BY created_at_ms, id LIMIT $2",
                &[Val::Int(user.0), limit(max)],
            )
            .await?
            .iter()
            .map(|r| device_row(r))
            .collect::<Result<Vec<_>, _>>()
        })
    }

    /// Live devices of `user`.
    pub async fn live_device_count(&self, user: UserId) -> Result<u64, StoreError> {
        in_tx!(self, read, |tx| live_devices_count(tx, user))
    }

    /// Renames a live device of `user`. Returns whether it did (false: no such live device of
    /// that user).
    pub async fn rename_device(
        &self,
        user: UserId,
        device: DeviceId,
        name: &str,
    ) -> Result<bool, StoreError> {
        check_name(name)?;
        let name = name.to_string();
        in_tx!(self, |tx| async move {
            tx.execute(
                "UPDATE devices SET name = $3
                 WHERE id = $1 AND user_id = $2 AND revoked_at_ms IS NULL",
                &[bytes(&device.0), Val::Int(user.0), Val::Text(name)],
            )
            .await
            .map(|n| n == 1)
        })
    }

    /// Records a pairing code (its hash only) for `user`, created by its live device
    /// `by_device`, unless the user already has `live_max` unclaimed, unexpired codes
    /// (returns false then).
    pub async fn create_pairing_code(
        &self,
        code_hash: [u8; 32],
        user: UserId,
        by_device: DeviceId,
        now_ms: u64,
        expires_at_ms: u64,
        live_max: u64,
    ) -> Result<bool, StoreError> {
        in_tx!(self, |tx| async move {
            let live = query_one(
                tx,
                "SELECT COUNT(*) FROM pairing_codes
                 WHERE user_id = $1 AND claimed_at_ms IS NULL AND expires_at_ms > $2",
                &[Val::Int(user.0), int(now_ms)],
            )
            .await?
            .map(|r| r[0].int())
            .transpose()?
            .unwrap_or(0);
            if convert::to_u64(live)? >= live_max {
                return Ok(false);
            }
            let inserted = tx
                .execute(
                    "INSERT INTO pairing_codes
                         (code_hash, user_id, created_by_device, created_at_ms, expires_at_ms)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (code_hash) DO NOTHING",
                    &[
                        bytes(&code_hash),
                        Val::Int(user.0),
                        bytes(&by_device.0),
                        int(now_ms),
                        int(expires_at_ms),
                    ],
                )
                .await?;
            if inserted == 0 {
                // 2^-128 for random codes: treat as a retryable accident.
                return Err(StoreError::unavailable("pairing code collision; retry"));
            }
            Ok(true)
        })
    }

    /// Consumes the pairing code with this hash and adds `device` to its account, in one
    /// transaction. A device or key conflict (an error) leaves the code unclaimed, and so does
    /// a full account.
    pub async fn claim_pairing_code(
        &self,
        code_hash: [u8; 32],
        device: &NewPairedDevice,
        devices_max: u64,
        now_ms: u64,
    ) -> Result<ClaimOutcome, StoreError> {
        check_name(&device.name)?;
        let device = device.clone();
        let out = in_tx!(self, |tx| claim_pairing_code(
            tx,
            code_hash,
            device,
            devices_max,
            now_ms
        ));
        match out {
            Err(StoreError::InboxFull { .. }) => Ok(ClaimOutcome::AccountFull),
            other => other,
        }
    }

    /// Deletes pairing codes that expired or were claimed before `before_ms`. Returns how
    /// many.
    pub async fn purge_pairing_codes(&self, before_ms: u64) -> Result<u64, StoreError> {
        in_tx!(self, |tx| async move {
            tx.execute(
                "DELETE FROM pairing_codes WHERE expires_at_ms <= $1 OR claimed_at_ms <= $1",
                &[int(before_ms)],
            )
            .await
        })
    }

    /// `from` asks `to` for friendship; when `to` had already asked `from`, both consented and
    /// they become friends. `NotFound(User)` when `to` does not exist.
    pub async fn friend_request(
        &self,
        from: UserId,
        to: UserId,
        now_ms: u64,
    ) -> Result<FriendRequestOutcome, StoreError> {
        in_tx!(self, |tx| friend_request(tx, from, to, now_ms))
    }

    /// `me` accepts the request `from` sent. Returns whether there was one.
    pub async fn accept_friend_request(
        &self,
        me: UserId,
        from: UserId,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        in_tx!(self, |tx| accept_friend_request(tx, me, from, now_ms))
    }

    /// Deletes the pending request `from` → `to` (a rejection by `to` or a withdrawal by
    /// `from`). Returns whether there was one.
    pub async fn delete_friend_request(
        &self,
        from: UserId,
        to: UserId,
    ) -> Result<bool, StoreError> {
        in_tx!(self, |tx| async move {
            tx.execute(
                "DELETE FROM friend_requests WHERE from_user = $1 AND to_user = $2",
                &[Val::Int(from.0), Val::Int(to.0)],
            )
            .await
            .map(|n| n == 1)
        })
    }

    /// Up to `max` pending requests to `user` (`incoming`) or from `user`.
    pub async fn friend_requests(
        &self,
        user: UserId,
        incoming: bool,
        max: usize,
    ) -> Result<Vec<FriendRequest>, StoreError> {
        in_tx!(self, read, |tx| friend_requests(tx, user, incoming, max))
    }

    /// Ends the friendship of `a` and `b`. Returns whether there was one.
    pub async fn remove_friend(&self, a: UserId, b: UserId) -> Result<bool, StoreError> {
        let (low, high) = pair(a, b);
        in_tx!(self, |tx| async move {
            tx.execute(
                "DELETE FROM friendships WHERE user_low = $1 AND user_high = $2",
                &[low, high],
            )
            .await
            .map(|n| n == 1)
        })
    }

    /// Whether `a` and `b` are friends (both consented).
    pub async fn are_friends(&self, a: UserId, b: UserId) -> Result<bool, StoreError> {
        let (low, high) = pair(a, b);
        in_tx!(self, read, |tx| exists(
            tx,
            "SELECT 1 FROM friendships WHERE user_low = $1 AND user_high = $2",
            &[low, high]
        ))
    }

    /// Whether `a` and `b` are members of at least one common conversation. Members of a group
    /// message each other without being friends, so they may see each other's devices and
    /// claim each other's end-to-end keys.
    pub async fn share_a_conversation(&self, a: UserId, b: UserId) -> Result<bool, StoreError> {
        in_tx!(self, read, |tx| exists(
            tx,
            "SELECT 1 FROM conversation_members m1
             JOIN conversation_members m2 ON m2.conversation_id = m1.conversation_id
             WHERE m1.user_id = $1 AND m2.user_id = $2",
            &[Val::Int(a.0), Val::Int(b.0)]
        ))
    }

    /// Up to `max` friends of `user`, by handle.
    pub async fn friends(&self, user: UserId, max: usize) -> Result<Vec<UserSummary>, StoreError> {
        in_tx!(self, read, |tx| async move {
            tx.query(
                "SELECT u.id, u.handle, u.created_at_ms FROM friendships f
                 JOIN users u ON u.id = CASE WHEN f.user_low = $1 THEN f.user_high ELSE f.user_low END
                 WHERE f.user_low = $1 OR f.user_high = $1 ORDER BY u.handle LIMIT $2",
                &[Val::Int(user.0), limit(max)],
            )
            .await?
            .iter()
            .map(|r| user_row(r))
            .collect::<Result<Vec<_>, _>>()
        })
    }

    /// The direct conversation of `a` and `b`, if they have one (nothing is created).
    pub async fn direct_conversation_id(
        &self,
        a: UserId,
        b: UserId,
    ) -> Result<Option<ConversationId>, StoreError> {
        let (low, high) = pair(a, b);
        in_tx!(self, read, |tx| async move {
            query_one(
                tx,
                "SELECT conversation_id FROM direct_conversations
                 WHERE user_low = $1 AND user_high = $2",
                &[low, high],
            )
            .await?
            .map(|row| Ok(ConversationId(convert::to_u64(row[0].int()?)?)))
            .transpose()
        })
    }

    /// The direct conversation of `a` and `b`, created (with both as members) if it does not
    /// exist yet. Returns its id and whether it was created now.
    pub async fn create_direct_conversation(
        &self,
        a: UserId,
        b: UserId,
        now_ms: u64,
    ) -> Result<(ConversationId, bool), StoreError> {
        in_tx!(self, |tx| create_direct(tx, a, b, now_ms))
    }

    /// Creates a group with `owner` as its owner and only member.
    pub async fn create_group(
        &self,
        owner: UserId,
        title: &str,
        now_ms: u64,
    ) -> Result<ConversationId, StoreError> {
        if title.len() > GROUP_TITLE_LEN_MAX {
            return Err(Invalid::DeviceName.into());
        }
        let title = title.to_string();
        in_tx!(self, |tx| create_group(tx, owner, title, now_ms))
    }

    /// The conversation with this id.
    pub async fn conversation(
        &self,
        id: ConversationId,
    ) -> Result<Option<Conversation>, StoreError> {
        in_tx!(self, read, |tx| async move {
            query_one(
                tx,
                "SELECT id, kind, title, created_by, created_at_ms FROM conversations WHERE id = $1",
                &[conversation_id(id)],
            )
            .await?
            .map(|r| conversation_row(&r))
            .transpose()
        })
    }

    /// Up to `max` conversations `user` is a member of, oldest first.
    pub async fn conversations_of(
        &self,
        user: UserId,
        max: usize,
    ) -> Result<Vec<Conversation>, StoreError> {
        in_tx!(self, read, |tx| async move {
            tx.query(
                "SELECT c.id, c.kind, c.title, c.created_by, c.created_at_ms
                 FROM conversation_members m JOIN conversations c ON c.id = m.conversation_id
                 WHERE m.user_id = $1 ORDER BY c.id LIMIT $2",
                &[Val::Int(user.0), limit(max)],
            )
            .await?
            .iter()
            .map(|r| conversation_row(r))
            .collect::<Result<Vec<_>, _>>()
        })
    }

    /// `user`'s role in the conversation, if a member.
    pub async fn member_role(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<Option<Role>, StoreError> {
        in_tx!(self, read, |tx| async move {
            query_one(
                tx,
                "SELECT role FROM conversation_members WHERE conversation_id = $1 AND user_id = $2",
                &[conversation_id(conversation), Val::Int(user.0)],
            )
            .await?
            .map(|r| r[0].text().and_then(|t| Role::parse(&t)))
            .transpose()
        })
    }

    /// Up to `max` members of the conversation, oldest first.
    pub async fn members(
        &self,
        conversation: ConversationId,
        max: usize,
    ) -> Result<Vec<Member>, StoreError> {
        in_tx!(self, read, |tx| members(tx, conversation, max))
    }

    /// Adds `user` with `role`, unless already a member or the conversation has
    /// `members_max` members.
    pub async fn add_member(
        &self,
        conversation: ConversationId,
        user: UserId,
        role: Role,
        members_max: u64,
        now_ms: u64,
    ) -> Result<Added, StoreError> {
        in_tx!(self, |tx| add_member(
            tx,
            conversation,
            user,
            role,
            members_max,
            now_ms
        ))
    }

    /// Removes `user` (handing ownership on when the owner goes). Returns whether it was a
    /// member.
    pub async fn remove_member(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<bool, StoreError> {
        in_tx!(self, |tx| remove_member(tx, conversation, user))
    }

    /// Sets a member's role. Returns whether `user` is a member.
    pub async fn set_member_role(
        &self,
        conversation: ConversationId,
        user: UserId,
        role: Role,
    ) -> Result<bool, StoreError> {
        in_tx!(self, |tx| async move {
            tx.execute(
                "UPDATE conversation_members SET role = $3 WHERE conversation_id = $1 AND user_id = $2",
                &[
                    conversation_id(conversation),
                    Val::Int(user.0),
                    Val::Text(role.as_str().to_string()),
                ],
            )
            .await
            .map(|n| n == 1)
        })
    }

    /// Up to `max` live devices of every member of the conversation, in id order.
    pub async fn member_devices(
        &self,
        conversation: ConversationId,
        max: usize,
    ) -> Result<Vec<DeviceId>, StoreError> {
        in_tx!(self, read, |tx| async move {
            tx.query(
                "SELECT d.id FROM conversation_members m JOIN devices d ON d.user_id = m.user_id
                 WHERE m.conversation_id = $1 AND d.revoked_at_ms IS NULL ORDER BY d.id LIMIT $2",
                &[conversation_id(conversation), limit(max)],
            )
            .await?
            .iter()
            .map(|r| Ok(DeviceId(convert::blob16(r[0].bytes()?)?)))
            .collect::<Result<Vec<_>, _>>()
        })
    }

    /// Deletes session tokens that expired, or were revoked, at or before `before_ms`.
    /// Returns how many.
    pub async fn purge_session_tokens(&self, before_ms: u64) -> Result<u64, StoreError> {
        in_tx!(self, |tx| async move {
            tx.execute(
                "DELETE FROM session_tokens WHERE expires_at_ms <= $1 OR revoked_at_ms <= $1",
                &[int(before_ms)],
            )
            .await
        })
    }

    /// The data plane's per-send check in one read transaction: may `device` send to
    /// `conversation`, and to which devices (at most `max`)?
    pub async fn send_check(
        &self,
        device: DeviceId,
        conversation: ConversationId,
        max: usize,
    ) -> Result<SendCheck, StoreError> {
        in_tx!(self, read, |tx| send_check(tx, device, conversation, max))
    }

    /// For the data plane's conversation routing, in one transaction: the live devices of
    /// every member (at most `max`), whether members may send, and the next `seq_count`
    /// (1 ..= [`SEQ_BLOCK_MAX`]) sequence numbers of the conversation, reserved durably so
    /// that no later call hands them out again. `None` if there is no such conversation.
    pub async fn conversation_lookup(
        &self,
        conversation: ConversationId,
        max: usize,
        seq_count: u64,
    ) -> Result<Option<ConversationLookup>, StoreError> {
        in_tx!(self, |tx| conversation_lookup(
            tx,
            conversation,
            max,
            seq_count
        ))
    }

    /// Revokes every live session token of `device` (a logout everywhere). Returns how many.
    pub async fn revoke_device_tokens(
        &self,
        device: DeviceId,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        in_tx!(self, |tx| async move {
            tx.execute(
                "UPDATE session_tokens SET revoked_at_ms = $2
                 WHERE device_id = $1 AND revoked_at_ms IS NULL",
                &[bytes(&device.0), int(now_ms)],
            )
            .await
        })
    }
}

// The end-to-end key directory: a child module, so that it runs its operations through the
// same transaction interface and `in_tx!`.
mod keys;

pub use keys::{
    CLAIM_DEVICES_MAX, ClaimedKeys, KEY_ID_TEXT_LEN_MAX, KEY_TEXT_LEN_MAX, KeyUpload,
    ONE_TIME_KEYS_PER_UPLOAD_MAX, ONE_TIME_KEYS_STORED_MAX, SIGNATURE_TEXT_LEN_MAX, SignedKey,
};
