//! Errors by class: transient (retry later), constraint (the request conflicts with stored
//! state or a limit; retrying the same request gives the same answer) and fatal (configuration,
//! corruption or a bug; an operator must look).

use thiserror::Error;

/// What a caller does with an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The request conflicts with stored state or a limit; retrying it unchanged is pointless.
    Constraint,
    /// Configuration, corruption, a schema from the future or a bug: an operator must look.
    Fatal,
    /// The database or the store is unavailable for now (connection lost, busy, queue full,
    /// shutting down); the same request may succeed later. Stores are idempotent, so a retry
    /// after an unknown outcome is safe.
    Transient,
}

/// Which row a conflict or a missing row concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entity {
    /// A device (by id).
    Device,
    /// A device's public key (already registered to another device row).
    DeviceKey,
    /// A session token.
    SessionToken,
    /// A user (by id or handle).
    User,
}

/// Which caller-supplied value was out of bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// An envelope body longer than [`crate::ENVELOPE_BODY_LEN_MAX`].
    BodyTooLong,
    /// A device name longer than [`crate::DEVICE_NAME_LEN_MAX`].
    DeviceName,
    /// A fetch, acknowledgement or purge larger than its named maximum.
    BatchTooLarge,
    /// A handle that is empty or longer than [`crate::HANDLE_LEN_MAX`].
    Handle,
    /// A stored value that the code cannot represent (an integer past `i64::MAX`).
    Range,
    /// A published key, key id or signature that is empty, longer than its named maximum
    /// or not unpadded base64.
    Key,
}

/// Every error the store returns.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreError {
    /// The row already exists (a unique key is taken).
    #[error("{0:?} already exists")]
    Conflict(Entity),
    /// The stored data does not match the schema this code expects (a corrupt file, a value of
    /// the wrong length).
    #[error("stored data is corrupt: {detail}")]
    Corrupt {
        /// What was found.
        detail: String,
    },
    /// The store cannot be opened as configured (bad URL, unreadable file, wrong permissions).
    #[error("store configuration: {detail}")]
    Config {
        /// What is wrong and where.
        detail: String,
    },
    /// The recipient's inbox holds its maximum of pending envelopes.
    #[error("inbox full: {pending} pending envelopes, at most {max}")]
    InboxFull {
        /// Envelopes pending for the recipient.
        pending: u64,
        /// The configured bound.
        max: u64,
    },
    /// A caller-supplied value is out of bounds.
    #[error("invalid value: {0:?}")]
    Invalid(Invalid),
    /// The row does not exist (or is revoked where a live one is needed).
    #[error("{0:?} not found")]
    NotFound(Entity),
    /// The database's schema is newer than this code: refused rather than misread.
    #[error(
        "the database has schema version {found}, newer than this build's {supported}; \
         run a newer commucat or restore a backup"
    )]
    SchemaTooNew {
        /// The highest version recorded in `schema_version`.
        found: i64,
        /// The highest version this build knows.
        supported: i64,
    },
    /// The database or the store is unavailable for now.
    #[error("store unavailable: {detail}")]
    Unavailable {
        /// Why (the backend's message; never contains envelope bodies or tokens).
        detail: String,
    },
}

impl StoreError {
    /// The class that tells a caller what to do.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Conflict(_) | Self::InboxFull { .. } | Self::Invalid(_) | Self::NotFound(_) => {
                ErrorClass::Constraint
            }
            Self::Corrupt { .. } | Self::Config { .. } | Self::SchemaTooNew { .. } => {
                ErrorClass::Fatal
            }
            Self::Unavailable { .. } => ErrorClass::Transient,
        }
    }

    /// Whether the same request may succeed later.
    pub fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }

    pub(crate) fn unavailable(detail: impl Into<String>) -> Self {
        Self::Unavailable {
            detail: detail.into(),
        }
    }

    pub(crate) fn corrupt(detail: impl Into<String>) -> Self {
        Self::Corrupt {
            detail: detail.into(),
        }
    }

    pub(crate) fn config(detail: impl Into<String>) -> Self {
        Self::Config {
            detail: detail.into(),
        }
    }

    /// The store has stopped (its worker thread or committer is gone).
    pub(crate) fn closed() -> Self {
        Self::unavailable("the store is shutting down")
    }
}

impl From<Invalid> for StoreError {
    fn from(what: Invalid) -> Self {
        Self::Invalid(what)
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        match &error {
            rusqlite::Error::SqliteFailure(failure, _) => match failure.code {
                ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::OutOfMemory => Self::unavailable(error.to_string()),
                ErrorCode::ConstraintViolation => Self::corrupt(format!(
                    "unexpected constraint violation (a bug or a foreign write): {error}"
                )),
                ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => {
                    Self::corrupt(error.to_string())
                }
                ErrorCode::CannotOpen
                | ErrorCode::PermissionDenied
                | ErrorCode::ReadOnly
                | ErrorCode::NoLargeFileSupport => Self::config(error.to_string()),
                _ => Self::corrupt(error.to_string()),
            },
            rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::IntegralValueOutOfRange(..) => Self::corrupt(error.to_string()),
            _ => Self::corrupt(format!("sqlite: {error}")),
        }
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        let Some(code) = error.code() else {
            // No SQLSTATE: the connection failed or closed, or a row did not convert.
            return if error.is_closed() || error.to_string().contains("connect") {
                Self::unavailable(error.to_string())
            } else {
                Self::unavailable(format!("postgres: {error}"))
            };
        };
        let class = &code.code()[..2];
        match class {
            // Connection exception, transaction rollback (serialization, deadlock), insufficient
            // resources, object not available (lock timeout), operator intervention
            // (shutdown), system error (I/O).
            "08" | "40" | "53" | "55" | "57" | "58" => Self::unavailable(error.to_string()),
            "23" => Self::corrupt(format!(
                "unexpected constraint violation (a bug or a foreign write): {error}"
            )),
            // Invalid authorization, invalid catalog name (no such database).
            "28" | "3D" => Self::config(error.to_string()),
            "XX" => Self::corrupt(error.to_string()),
            _ => Self::corrupt(format!("postgres: {error}")),
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        match error {
            deadpool_postgres::PoolError::Backend(error) => error.into(),
            other => Self::unavailable(format!("postgres pool: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_kept_apart() {
        assert_eq!(
            StoreError::InboxFull { pending: 1, max: 1 }.class(),
            ErrorClass::Constraint
        );
        assert_eq!(
            StoreError::Conflict(Entity::User).class(),
            ErrorClass::Constraint
        );
        assert!(StoreError::closed().is_transient());
        assert_eq!(
            StoreError::SchemaTooNew {
                found: 9,
                supported: 1
            }
            .class(),
            ErrorClass::Fatal
        );
    }

    #[test]
    fn sqlite_busy_is_transient_and_corruption_is_fatal() {
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        assert!(StoreError::from(busy).is_transient());
        let corrupt = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            None,
        );
        assert_eq!(StoreError::from(corrupt).class(), ErrorClass::Fatal);
    }
}
