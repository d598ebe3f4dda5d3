//! Session operations (`docs/PROTOCOL.md` §7.7): what a device does over its own Noise session
//! before it holds a REST token — register as the first device of a new account, join an
//! account with a pairing code, and get a bearer token for the REST API ([`crate::api`]).
//!
//! Each operation is a `Request` frame with a JSON body, answered by one `Response` with the
//! same `request_id`. A refusal keeps the server's status and its stable code
//! ([`OpError::Refused`]). Events that arrive while an operation waits for its answer (a
//! message delivered meanwhile) go to the caller's handler ([`Ops::on_event`]) or are dropped.

use crate::blocking::{Client, Error};
use crate::connection::{CloseReason, Event};
use dp_core::Rng;
use dp_proto::ErrorCode;
use serde::Deserialize;
use std::time::Duration;

/// Operation: register this device as the first of a new account.
pub const OP_REGISTER: u16 = 0x0001;
/// Operation: join an account with a pairing code from one of its devices.
pub const OP_CLAIM_PAIRING: u16 = 0x0002;
/// Operation: issue a bearer token for the REST API.
pub const OP_ISSUE_TOKEN: u16 = 0x0003;
/// How long an operation waits for its answer unless told otherwise ([`Ops::wait`]).
pub const OP_WAIT_DEFAULT: Duration = Duration::from_secs(10);
/// The most characters of a refused answer's body kept when it carries no error code.
pub const REFUSAL_TEXT_MAX: usize = 200;

/// An account id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(pub i64);

/// A REST bearer token issued over the session.
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct IssuedToken {
    /// 64 hex digits, for `authorization: Bearer`.
    pub token: String,
    /// When it stops working, ms since the Unix epoch.
    pub expires_at_ms: u64,
}

impl core::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never the token.
        f.debug_struct("IssuedToken")
            .field("expires_at_ms", &self.expires_at_ms)
            .finish_non_exhaustive()
    }
}

/// What an event handler may fail with.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// Why a session operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum OpError {
    /// The request could not be sent or the connection failed while waiting.
    Connection(Error),
    /// The server closed the session while the operation waited.
    Closed(CloseReason),
    /// No answer arrived in time.
    Timeout,
    /// The server refused the operation.
    Refused {
        /// The `Response` status (§7.8), e.g. [`ErrorCode::CONFLICT`].
        status: ErrorCode,
        /// The stable code of the body `{"error": code}`, e.g. `handle_taken`.
        code: Option<String>,
        /// The body as text, at most [`REFUSAL_TEXT_MAX`] characters.
        body: String,
    },
    /// A successful answer was not what §7.7 specifies.
    Malformed(String),
    /// The handler of the events that arrived meanwhile failed.
    Handler(HandlerError),
}

impl OpError {
    /// The server's status when it refused the operation.
    pub fn status(&self) -> Option<ErrorCode> {
        match self {
            Self::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The stable error code when the server refused the operation with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Refused { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// Why the server refused: its stable code, or else the body it sent.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Refused {
                code: Some(code), ..
            } => Some(code),
            Self::Refused { body, .. } => Some(body),
            _ => None,
        }
    }
}

impl core::fmt::Display for OpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Connection(error) => write!(f, "the connection failed: {error}"),
            Self::Closed(reason) => write!(f, "the server closed the session ({reason:?})"),
            Self::Timeout => write!(f, "the server did not answer in time"),
            Self::Refused { status, .. } => {
                write!(f, "refused ({status}): {}", self.reason().unwrap_or(""))
            }
            Self::Malformed(what) => write!(f, "the server answered something unexpected: {what}"),
            Self::Handler(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for OpError {}

impl From<Error> for OpError {
    fn from(error: Error) -> Self {
        Self::Connection(error)
    }
}

type EventHandler<'c> = Box<dyn FnMut(Event) -> Result<(), HandlerError> + 'c>;

/// Session operations on one client: how long each waits for its answer and what happens to
/// the events that arrive meanwhile. Request ids count up from 1.
pub struct Ops<'c, R: Rng> {
    client: &'c mut Client<R>,
    wait: Duration,
    next_request_id: u32,
    on_event: Option<EventHandler<'c>>,
}

impl<R: Rng> core::fmt::Debug for Ops<'_, R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ops")
            .field("wait", &self.wait)
            .field("next_request_id", &self.next_request_id)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct UserOut {
    user: i64,
}

impl<'c, R: Rng> Ops<'c, R> {
    /// Operations on `client`, each waiting [`OP_WAIT_DEFAULT`], dropping other events.
    pub fn new(client: &'c mut Client<R>) -> Self {
        Self {
            client,
            wait: OP_WAIT_DEFAULT,
            next_request_id: 1,
            on_event: None,
        }
    }

    /// Waits at most `wait` for each event (the answer, or another event before it).
    #[must_use]
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Hands the events that arrive before an answer to `handler` (the client has already
    /// acknowledged a delivered message: keep it, or it is lost); its error ends the operation.
    /// [`Event::Closed`] is not handed over: it ends the operation with [`OpError::Closed`].
    #[must_use]
    pub fn on_event(mut self, handler: impl FnMut(Event) -> Result<(), HandlerError> + 'c) -> Self {
        self.on_event = Some(Box::new(handler));
        self
    }

    /// Operation 0x0001: registers this device as the first of a new account `handle`.
    ///
    /// # Errors
    ///
    /// The connection failed or closed, no answer in time, a refusal (`CONFLICT` for a taken
    /// handle or a device that has an account, `MALFORMED_FRAME` for an invalid handle), or a
    /// malformed answer.
    pub fn register(&mut self, handle: &str, device_name: &str) -> Result<UserId, OpError> {
        let body = serde_json::json!({ "handle": handle, "device_name": device_name });
        let out: UserOut = self.call(OP_REGISTER, &body)?;
        Ok(UserId(out.user))
    }

    /// Operation 0x0002: joins the account that created the pairing code `code`.
    ///
    /// # Errors
    ///
    /// As [`Ops::register`]; a wrong, used or expired code is refused with `FORBIDDEN` (or
    /// `MALFORMED_FRAME`), a device that has an account with `CONFLICT`.
    pub fn claim_pairing_code(&mut self, code: &str, device_name: &str) -> Result<UserId, OpError> {
        let body = serde_json::json!({ "code": code, "device_name": device_name });
        let out: UserOut = self.call(OP_CLAIM_PAIRING, &body)?;
        Ok(UserId(out.user))
    }

    /// Operation 0x0003: a bearer token for the REST API, for this device.
    ///
    /// # Errors
    ///
    /// As [`Ops::register`]; a device with no account (never registered, or revoked) is
    /// refused with `UNAUTHENTICATED`.
    pub fn issue_token(&mut self) -> Result<IssuedToken, OpError> {
        self.call(OP_ISSUE_TOKEN, &serde_json::json!({}))
    }

    /// Runs operation `op` with the JSON `body` and decodes its successful answer.
    ///
    /// # Errors
    ///
    /// As [`Ops::register`].
    pub fn call<T: serde::de::DeserializeOwned>(
        &mut self,
        op: u16,
        body: &serde_json::Value,
    ) -> Result<T, OpError> {
        let answer = self.call_raw(op, body.to_string().as_bytes())?;
        serde_json::from_slice(&answer)
            .map_err(|e| OpError::Malformed(format!("operation {op:#06x}: {e}")))
    }

    /// Runs operation `op` with `body` and returns the body of its successful answer.
    ///
    /// # Errors
    ///
    /// As [`Ops::register`], but the answer is not decoded.
    pub fn call_raw(&mut self, op: u16, body: &[u8]) -> Result<Vec<u8>, OpError> {
        let request_id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1);
        self.client.request(request_id, op, body)?;
        loop {
            match self.client.next_event(self.wait)? {
                Some(Event::Response {
                    request_id: id,
                    status,
                    body,
                }) if id == request_id => {
                    return if status == ErrorCode::OK {
                        Ok(body)
                    } else {
                        Err(refused(status, &body))
                    };
                }
                Some(Event::Closed(reason)) => return Err(OpError::Closed(reason)),
                Some(event) => {
                    if let Some(handler) = &mut self.on_event {
                        handler(event).map_err(OpError::Handler)?;
                    }
                }
                None => return Err(OpError::Timeout),
            }
        }
    }
}

/// The refusal a non-OK `Response` carries.
fn refused(status: ErrorCode, body: &[u8]) -> OpError {
    let code = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string));
    OpError::Refused {
        status,
        code,
        body: String::from_utf8_lossy(body)
            .chars()
            .take(REFUSAL_TEXT_MAX)
            .collect(),
    }
}

/// Operation 0x0001 on `client` with [`Ops::new`]'s defaults: see [`Ops::register`].
///
/// # Errors
///
/// As [`Ops::register`].
pub fn register<R: Rng>(
    client: &mut Client<R>,
    handle: &str,
    device_name: &str,
) -> Result<UserId, OpError> {
    Ops::new(client).register(handle, device_name)
}

/// Operation 0x0002 on `client` with [`Ops::new`]'s defaults: see [`Ops::claim_pairing_code`].
///
/// # Errors
///
/// As [`Ops::claim_pairing_code`].
pub fn claim_pairing_code<R: Rng>(
    client: &mut Client<R>,
    code: &str,
    device_name: &str,
) -> Result<UserId, OpError> {
    Ops::new(client).claim_pairing_code(code, device_name)
}

/// Operation 0x0003 on `client` with [`Ops::new`]'s defaults: see [`Ops::issue_token`].
///
/// # Errors
///
/// As [`Ops::issue_token`].
pub fn issue_token<R: Rng>(client: &mut Client<R>) -> Result<IssuedToken, OpError> {
    Ops::new(client).issue_token()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_keeps_the_status_and_the_stable_code() {
        let error = refused(ErrorCode::CONFLICT, br#"{"error":"handle_taken"}"#);
        assert_eq!(error.status(), Some(ErrorCode::CONFLICT));
        assert_eq!(error.code(), Some("handle_taken"));
        assert_eq!(error.reason(), Some("handle_taken"));
        assert!(error.to_string().contains("handle_taken"), "{error}");
    }

    #[test]
    fn a_refusal_without_a_code_keeps_its_body_bounded() {
        let long = vec![b'x'; REFUSAL_TEXT_MAX * 2];
        let error = refused(ErrorCode::INTERNAL, &long);
        assert_eq!(error.code(), None);
        assert_eq!(error.reason().map(str::len), Some(REFUSAL_TEXT_MAX));
        let error = refused(ErrorCode::INTERNAL, b"\xff{}");
        assert_eq!(error.code(), None);
        assert!(error.reason().is_some_and(|r| r.ends_with("{}")));
    }

    #[test]
    fn an_issued_token_is_never_printed() {
        let token = IssuedToken {
            token: "ab".repeat(32),
            expires_at_ms: 7,
        };
        let shown = format!("{token:?}");
        assert!(!shown.contains("abab"), "{shown}");
        assert!(shown.contains('7'), "{shown}");
    }
}
