//! Control operations over a device's Noise session (`Request` → `Response` frames): what a
//! device needs before it has a bearer token for the REST API. The device's identity is the
//! handshake's `PeerAuthenticated`, never a field of the request.
//!
//! | op | name | request body (JSON) | response body (JSON) |
//! |---|---|---|---|
//! | `0x0001` | register | `{"handle", "device_name"}` | `{"user"}` |
//! | `0x0002` | claim pairing code | `{"code", "device_name"}` | `{"user"}` |
//! | `0x0003` | issue token | `{}` | `{"token", "expires_at_ms"}` |
//!
//! A failure carries an error code in the `Response` status and `{"error": CODE}` in the body,
//! with the control domain's stable code (`invalid_input`, `handle_taken`, ...).

use control_core::{Control, ControlError};
use dp_noise::PeerAuthenticated;
use dp_proto::ErrorCode;
use serde::Deserialize;
use serde_json::json;

/// Register a user's first device.
pub const OP_REGISTER: u16 = 0x0001;
/// Join an account with a pairing code from one of its devices.
pub const OP_CLAIM_PAIRING_CODE: u16 = 0x0002;
/// Get a bearer token for the REST API.
pub const OP_ISSUE_TOKEN: u16 = 0x0003;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Register {
    handle: String,
    device_name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Claim {
    code: String,
    device_name: String,
}

/// Runs operation `op` for `peer`; returns the `Response` status and body.
pub async fn handle(
    control: &Control,
    peer: &PeerAuthenticated,
    op: u16,
    body: &[u8],
) -> (ErrorCode, Vec<u8>) {
    let result = match op {
        OP_REGISTER => match serde_json::from_slice::<Register>(body) {
            Ok(args) => control
                .register(peer, &args.handle, &args.device_name)
                .await
                .map(|registered| json!({ "user": registered.user.0 })),
            Err(_) => Err(ControlError::InvalidInput(
                "register takes handle and device_name",
            )),
        },
        OP_CLAIM_PAIRING_CODE => match serde_json::from_slice::<Claim>(body) {
            Ok(args) => control
                .claim_pairing_code(peer, &args.code, &args.device_name)
                .await
                .map(|registered| json!({ "user": registered.user.0 })),
            Err(_) => Err(ControlError::InvalidInput(
                "claim takes code and device_name",
            )),
        },
        OP_ISSUE_TOKEN => match control.session_caller(peer).await {
            Ok(caller) => control.issue_token(&caller).await.map(
                |issued| json!({ "token": issued.to_hex(), "expires_at_ms": issued.expires_at_ms }),
            ),
            Err(error) => Err(error),
        },
        _ => return (ErrorCode::NOT_FOUND, error_body("unknown_operation")),
    };
    match result {
        Ok(value) => (ErrorCode::OK, value.to_string().into_bytes()),
        Err(error) => (status(&error), error_body(error.code())),
    }
}

fn error_body(code: &str) -> Vec<u8> {
    json!({ "error": code }).to_string().into_bytes()
}

/// The `Response` status for a domain error; the body names the precise code.
fn status(error: &ControlError) -> ErrorCode {
    match error {
        ControlError::InvalidInput(_) => ErrorCode::MALFORMED_FRAME,
        ControlError::Unauthenticated => ErrorCode::UNAUTHENTICATED,
        ControlError::Forbidden(_)
        | ControlError::NotFriends
        | ControlError::NotAMember
        | ControlError::InvalidPairingCode => ErrorCode::FORBIDDEN,
        ControlError::NotFound(_) => ErrorCode::NOT_FOUND,
        ControlError::HandleTaken | ControlError::DeviceExists => ErrorCode::CONFLICT,
        ControlError::LimitReached(_) | ControlError::RateLimited => ErrorCode::RATE_LIMITED,
        ControlError::Unavailable => ErrorCode::STORAGE_UNAVAILABLE,
        // `Internal`, and any error added to the domain later.
        _ => ErrorCode::INTERNAL,
    }
}
