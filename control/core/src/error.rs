//! The domain's errors, each with a stable code (the REST API's `error.code`, `docs/API.md`)
//! and a message that carries no internal detail.

use control_store::{ErrorClass, StoreError};
use thiserror::Error;

/// Every error a [`crate::Control`] operation returns.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ControlError {
    /// A caller-supplied value is malformed or out of bounds (the message says which).
    #[error("{0}")]
    InvalidInput(&'static str),
    /// No valid credential (unknown, expired or revoked token; unregistered or revoked device).
    #[error("not authenticated")]
    Unauthenticated,
    /// Authenticated, but the caller may not do this (the message says why).
    #[error("{0}")]
    Forbidden(&'static str),
    /// The two users are not friends (both consenting), and the operation needs them to be.
    #[error("not friends")]
    NotFriends,
    /// The caller is not a member of the conversation.
    #[error("not a member of this conversation")]
    NotAMember,
    /// No such thing, or none the caller may see.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The handle is taken on this server.
    #[error("handle taken")]
    HandleTaken,
    /// This device (its key) is registered already.
    #[error("device already registered")]
    DeviceExists,
    /// The pairing code is unknown, expired, used, or its creating device was revoked.
    #[error("invalid or expired pairing code")]
    InvalidPairingCode,
    /// A bound was reached (devices per account, members per group, live pairing codes).
    #[error("{0}")]
    LimitReached(&'static str),
    /// Too many requests from this identity or address; retry later.
    #[error("rate limited")]
    RateLimited,
    /// The store is unavailable for now; retry later.
    #[error("temporarily unavailable")]
    Unavailable,
    /// Something that is not the caller's fault. The cause is kept for the operator's log and
    /// never shown to a client.
    #[error("internal error")]
    Internal(#[source] StoreError),
}

impl ControlError {
    /// The stable code: part of the API, never changed once released.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidInput(_) => "invalid_input",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden(_) => "forbidden",
            Self::NotFriends => "not_friends",
            Self::NotAMember => "not_a_member",
            Self::NotFound(_) => "not_found",
            Self::HandleTaken => "handle_taken",
            Self::DeviceExists => "device_exists",
            Self::InvalidPairingCode => "invalid_pairing_code",
            Self::LimitReached(_) => "limit_reached",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    /// Every code, for documentation and tests.
    pub const CODES: &'static [&'static str] = &[
        "invalid_input",
        "unauthenticated",
        "forbidden",
        "not_friends",
        "not_a_member",
        "not_found",
        "handle_taken",
        "device_exists",
        "invalid_pairing_code",
        "limit_reached",
        "rate_limited",
        "unavailable",
        "internal",
    ];
}

impl From<StoreError> for ControlError {
    fn from(error: StoreError) -> Self {
        match error.class() {
            ErrorClass::Transient => Self::Unavailable,
            ErrorClass::Constraint | ErrorClass::Fatal => match error {
                StoreError::Invalid(_) => Self::InvalidInput("a value is out of bounds"),
                other => Self::Internal(other),
            },
        }
    }
}
