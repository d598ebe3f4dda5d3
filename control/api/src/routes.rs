//! The routes, their request and response bodies, and the OpenAPI document generated from
//! them.

use crate::AppState;
use crate::auth::{AdminAuth, Authed};
use crate::error::{ApiError, ErrorBody};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put};
use axum::{Json, Router};
use control_core::{
    Conversation, ConversationKind, DeviceView, FriendRequest, FriendRequestOutcome, Member, Role,
    UserId, UserSummary,
};
use dp_core::{ConversationId, DeviceId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

// ---------------------------------------------------------------------------------------------
// Extractors whose rejections are typed JSON errors.

/// A JSON body; a malformed or oversized one is a typed error.
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(JsonRejection::BytesRejection(r))
                if r.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the request body is too large",
                ))
            }
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_input",
                "the body must be JSON (Content-Type: application/json)",
            )),
            Err(_) => Err(ApiError::invalid(
                "the body is not valid JSON for this endpoint",
            )),
        }
    }
}

/// Path parameters; a malformed one is a typed error.
pub(crate) struct PathParams<T>(pub(crate) T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Self(p.0))
            .map_err(|_: PathRejection| ApiError::invalid("a path parameter is malformed"))
    }
}

/// Query parameters; a malformed one is a typed error.
pub(crate) struct QueryParams<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|_: QueryRejection| ApiError::invalid("a query parameter is malformed"))
    }
}

// ---------------------------------------------------------------------------------------------
// Bodies.

/// A device as listed.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceOut {
    /// The device id: 32 hex digits.
    pub id: String,
    /// The device's Noise static public key: 64 hex digits.
    pub public_key: String,
    /// Its name.
    pub name: String,
    /// When it was added (milliseconds since the Unix epoch).
    pub created_at_ms: u64,
    /// When it was revoked, if it was.
    pub revoked_at_ms: Option<u64>,
}

impl From<DeviceView> for DeviceOut {
    fn from(d: DeviceView) -> Self {
        Self {
            id: hex::encode(d.id.0),
            public_key: hex::encode(d.public_key),
            name: d.name,
            created_at_ms: d.created_at_ms,
            revoked_at_ms: d.revoked_at_ms,
        }
    }
}

/// A user as listed.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserOut {
    /// The server's id for the user.
    pub id: i64,
    /// The handle.
    pub handle: String,
    /// When the account was created (milliseconds since the Unix epoch).
    pub created_at_ms: u64,
}

impl From<UserSummary> for UserOut {
    fn from(u: UserSummary) -> Self {
        Self {
            id: u.id.0,
            handle: u.handle,
            created_at_ms: u.created_at_ms,
        }
    }
}

/// Who the caller is.
#[derive(Debug, Serialize, ToSchema)]
pub struct MeOut {
    /// The caller's account id.
    pub user_id: i64,
    /// The caller's handle.
    pub handle: String,
    /// The caller's device id (32 hex digits).
    pub device_id: String,
}

/// A new name for a device.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameIn {
    /// At most 64 bytes, no control characters.
    pub name: String,
}

/// The data-plane command a revocation produced.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevokedOut {
    /// The revoked device (32 hex digits); its live sessions are being closed.
    pub revoked: String,
}

/// A pairing code, shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct PairingCodeOut {
    /// `XXXXX-XXXXX`; the new device claims it over its own Noise session.
    pub code: String,
    /// When it expires (milliseconds since the Unix epoch).
    pub expires_at_ms: u64,
}

/// A user, by handle.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HandleIn {
    /// The user's handle.
    pub handle: String,
}

/// What a friend request did: `requested`, `already_requested`, `accepted` (the other had
/// asked too) or `already_friends`.
#[derive(Debug, Serialize, ToSchema)]
pub struct FriendRequestOut {
    /// The outcome.
    pub outcome: String,
}

/// A pending friend request.
#[derive(Debug, Serialize, ToSchema)]
pub struct FriendRequestItem {
    /// Who asked.
    pub from: UserOut,
    /// Whom.
    pub to: UserOut,
    /// When (milliseconds since the Unix epoch).
    pub created_at_ms: u64,
}

impl From<FriendRequest> for FriendRequestItem {
    fn from(r: FriendRequest) -> Self {
        Self {
            from: r.from.into(),
            to: r.to.into(),
            created_at_ms: r.created_at_ms,
        }
    }
}

/// Pending friend requests, both ways.
#[derive(Debug, Serialize, ToSchema)]
pub struct FriendRequestsOut {
    /// To the caller.
    pub incoming: Vec<FriendRequestItem>,
    /// From the caller.
    pub outgoing: Vec<FriendRequestItem>,
}

/// A conversation.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationOut {
    /// The server-assigned id.
    pub id: u64,
    /// `direct` or `group`.
    pub kind: String,
    /// A group's title.
    pub title: Option<String>,
    /// The creator's account id.
    pub created_by: i64,
    /// When (milliseconds since the Unix epoch).
    pub created_at_ms: u64,
}

impl From<Conversation> for ConversationOut {
    fn from(c: Conversation) -> Self {
        Self {
            id: c.id.0,
            kind: c.kind.as_str().to_string(),
            title: c.title,
            created_by: c.created_by.0,
            created_at_ms: c.created_at_ms,
        }
    }
}

/// A member of a conversation.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberOut {
    /// The account id.
    pub user_id: i64,
    /// The handle.
    pub handle: String,
    /// `owner`, `admin` or `member`.
    pub role: String,
    /// When the user joined (milliseconds since the Unix epoch).
    pub joined_at_ms: u64,
}

impl From<Member> for MemberOut {
    fn from(m: Member) -> Self {
        Self {
            user_id: m.user.0,
            handle: m.handle,
            role: m.role.as_str().to_string(),
            joined_at_ms: m.joined_at_ms,
        }
    }
}

/// A conversation with its members.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationDetailOut {
    /// The conversation.
    pub conversation: ConversationOut,
    /// Its members.
    pub members: Vec<MemberOut>,
}

/// A new conversation's id.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationIdOut {
    /// The server-assigned id.
    pub id: u64,
}

/// A new group.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupIn {
    /// 1 to 128 bytes, no control characters.
    pub title: String,
}

/// A role to give.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleIn {
    /// `admin` or `member`.
    pub role: String,
}

/// Paging of the admin user list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersQuery {
    /// Users with an id above this (default 0).
    pub after: Option<i64>,
    /// At most this many (default and maximum 1000).
    pub limit: Option<u32>,
}

/// A device's end-to-end identity keys (`docs/design/0014-end-to-end-encryption.md`).
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityKeysBody {
    /// The Curve25519 identity key, unpadded base64.
    pub curve25519: String,
    /// The Ed25519 signing key, unpadded base64.
    pub ed25519: String,
}

/// A Curve25519 key signed by the device's Ed25519 key.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignedKeyBody {
    /// The client's id for the key, unpadded base64, at most 32 characters.
    pub key_id: String,
    /// The public key, unpadded base64, at most 64 characters.
    pub key: String,
    /// The Ed25519 signature over the key's 32 bytes, unpadded base64, at most 128 characters.
    pub signature: String,
}

impl From<SignedKeyBody> for control_core::SignedKey {
    fn from(k: SignedKeyBody) -> Self {
        Self {
            key_id: k.key_id,
            key: k.key,
            signature: k.signature,
        }
    }
}

impl From<control_core::SignedKey> for SignedKeyBody {
    fn from(k: control_core::SignedKey) -> Self {
        Self {
            key_id: k.key_id,
            key: k.key,
            signature: k.signature,
        }
    }
}

/// The keys a device publishes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishKeysIn {
    /// The device's identity keys (a change empties its one-time key pool).
    pub identity: IdentityKeysBody,
    /// The fallback key, handed out when the one-time keys run out.
    pub fallback_key: SignedKeyBody,
    /// One-time keys to append to the pool (at most 50; the pool keeps at most 50).
    #[serde(default)]
    pub one_time_keys: Vec<SignedKeyBody>,
}

/// What the pool holds after a publish.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublishKeysOut {
    /// One-time keys stored for the device now.
    pub one_time_keys: u64,
}

/// Which devices' keys to claim.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimKeysIn {
    /// Device ids, 32 hex digits each, at most 64.
    pub devices: Vec<String>,
}

/// One device's claimed keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClaimedKeysBody {
    /// The device id: 32 hex digits.
    pub device_id: String,
    /// Its identity keys.
    pub identity: IdentityKeysBody,
    /// A one-time key, consumed by this claim, or the fallback key.
    pub one_time_key: SignedKeyBody,
    /// Whether `one_time_key` is the fallback key (the pool was empty).
    pub fallback: bool,
}

/// The claimed keys: devices the caller may not message, unknown ones and those without
/// published keys are absent.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClaimKeysOut {
    /// One entry per device that has keys and that the caller may message.
    pub devices: Vec<ClaimedKeysBody>,
}

/// Health.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusOut {
    /// `ok`.
    pub status: String,
}

fn parse_device(text: &str) -> Result<DeviceId, ApiError> {
    let bytes = hex::decode(text).map_err(|_| ApiError::invalid("a device id is 32 hex digits"))?;
    let id: [u8; 16] = bytes
        .try_into()
        .map_err(|_| ApiError::invalid("a device id is 32 hex digits"))?;
    Ok(DeviceId(id))
}

fn ok_status() -> Json<StatusOut> {
    Json(StatusOut {
        status: "ok".to_string(),
    })
}

type ApiResult<T> = Result<Json<T>, ApiError>;

// ---------------------------------------------------------------------------------------------
// Handlers.

/// The process answers.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, body = StatusOut)))]
async fn healthz() -> Json<StatusOut> {
    ok_status()
}

/// The store answers (ready to serve).
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = StatusOut), (status = 503, body = ErrorBody)))]
async fn readyz(State(state): State<AppState>) -> ApiResult<StatusOut> {
    state.control().store().ping().await.map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the store does not answer",
        )
    })?;
    Ok(ok_status())
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "health",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
async fn openapi() -> Response {
    Json(ApiDoc::openapi()).into_response()
}

/// The caller: account and device.
#[utoipa::path(get, path = "/v1/me", tag = "session", security(("bearer" = [])),
    responses((status = 200, body = MeOut), (status = 401, body = ErrorBody)))]
async fn me(State(state): State<AppState>, auth: Authed) -> ApiResult<MeOut> {
    let user = state
        .control()
        .store()
        .user(auth.caller.user())
        .await
        .map_err(control_core::ControlError::from)?
        .ok_or_else(ApiError::unauthenticated)?;
    Ok(Json(MeOut {
        user_id: user.id.0,
        handle: user.handle,
        device_id: hex::encode(auth.caller.device().0),
    }))
}

/// Revokes the bearer token this request presents (log out).
#[utoipa::path(delete, path = "/v1/session", tag = "session", security(("bearer" = [])),
    responses((status = 204, description = "Revoked"), (status = 401, body = ErrorBody)))]
async fn logout(State(state): State<AppState>, auth: Authed) -> Result<StatusCode, ApiError> {
    state
        .control()
        .revoke_token(&auth.caller, &auth.token)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The devices of the caller's account, revoked ones included.
#[utoipa::path(get, path = "/v1/devices", tag = "devices", security(("bearer" = [])),
    responses((status = 200, body = [DeviceOut]), (status = 401, body = ErrorBody)))]
async fn list_devices(State(state): State<AppState>, auth: Authed) -> ApiResult<Vec<DeviceOut>> {
    let devices = state.control().devices(&auth.caller).await?;
    Ok(Json(devices.into_iter().map(DeviceOut::from).collect()))
}

/// Renames a device of the caller's account.
#[utoipa::path(patch, path = "/v1/devices/{device_id}", tag = "devices", security(("bearer" = [])),
    params(("device_id" = String, Path, description = "32 hex digits")),
    request_body = RenameIn,
    responses((status = 204, description = "Renamed"), (status = 404, body = ErrorBody)))]
async fn rename_device(
    State(state): State<AppState>,
    auth: Authed,
    PathParams(device): PathParams<String>,
    JsonBody(body): JsonBody<RenameIn>,
) -> Result<StatusCode, ApiError> {
    let device = parse_device(&device)?;
    state
        .control()
        .rename_device(&auth.caller, device, &body.name)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// How long a revocation waits for room on the data plane's command channel.
const FORWARD_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

async fn forward(state: &AppState, command: control_core::ControlCommand) -> Result<(), ApiError> {
    // The revocation is durable already; the command closes live sessions. If the data plane
    // does not take it in time the client gets `unavailable` and retries (revoking again
    // returns the command again). A closed channel means no data plane is attached (an API
    // served on its own): nothing to close.
    match tokio::time::timeout(FORWARD_WAIT, state.inner.commands.send(command)).await {
        Ok(_) => Ok(()),
        Err(_) => {
            tracing::error!("the data plane did not take a revoke command in time");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "revoked; closing live sessions is delayed, retry",
            ))
        }
    }
}

/// Tells the data plane that a conversation's membership changed, so its next message is
/// checked against the new members. The change is durable already; if the data plane does not
/// take the command in time it is logged, and the data plane's cache expiry
/// (`dp_shard::CONVERSATION_CACHE_TTL`) bounds how long it routes by the old members.
async fn membership_changed(state: &AppState, id: ConversationId) {
    let command = control_core::ControlCommand::ConversationChanged(id);
    if tokio::time::timeout(FORWARD_WAIT, state.inner.commands.send(command))
        .await
        .is_err()
    {
        tracing::error!(
            conversation = id.0,
            "the data plane did not take a membership change in time"
        );
    }
}

/// Tells the data plane that `user`'s friendships changed, so the presence of its devices and
/// its friends' devices goes to the new audience. If the data plane does not take the command
/// in time it is logged, and its cache expiry (`dp_shard::AUDIENCE_CACHE_TTL`) bounds how long
/// presence goes to the old audience.
async fn audience_changed(state: &AppState, user: UserId) {
    let command = control_core::ControlCommand::AudienceChanged(user);
    if tokio::time::timeout(FORWARD_WAIT, state.inner.commands.send(command))
        .await
        .is_err()
    {
        tracing::error!(
            user = user.0,
            "the data plane did not take an audience change in time"
        );
    }
}

/// Revokes a device of the caller's account (its tokens die and its live sessions close).
#[utoipa::path(delete, path = "/v1/devices/{device_id}", tag = "devices", security(("bearer" = [])),
    params(("device_id" = String, Path, description = "32 hex digits")),
    responses((status = 200, body = RevokedOut), (status = 404, body = ErrorBody)))]
async fn revoke_device(
    State(state): State<AppState>,
    auth: Authed,
    PathParams(device): PathParams<String>,
) -> ApiResult<RevokedOut> {
    let device = parse_device(&device)?;
    let command = state.control().revoke_device(&auth.caller, device).await?;
    forward(&state, command).await?;
    Ok(Json(RevokedOut {
        revoked: hex::encode(device.0),
    }))
}

/// Creates a single-use pairing code for the caller's account; a new device claims it over
/// its own Noise session.
#[utoipa::path(post, path = "/v1/pairing-codes", tag = "devices", security(("bearer" = [])),
    responses((status = 201, body = PairingCodeOut), (status = 409, body = ErrorBody)))]
async fn create_pairing_code(
    State(state): State<AppState>,
    auth: Authed,
) -> Result<(StatusCode, Json<PairingCodeOut>), ApiError> {
    let code = state.control().create_pairing_code(&auth.caller).await?;
    Ok((
        StatusCode::CREATED,
        Json(PairingCodeOut {
            code: code.code,
            expires_at_ms: code.expires_at_ms,
        }),
    ))
}

/// The caller's friends.
#[utoipa::path(get, path = "/v1/friends", tag = "friends", security(("bearer" = [])),
    responses((status = 200, body = [UserOut])))]
async fn list_friends(State(state): State<AppState>, auth: Authed) -> ApiResult<Vec<UserOut>> {
    let friends = state.control().friends(&auth.caller).await?;
    Ok(Json(friends.into_iter().map(UserOut::from).collect()))
}

/// Ends a friendship.
#[utoipa::path(delete, path = "/v1/friends/{handle}", tag = "friends", security(("bearer" = [])),
    params(("handle" = String, Path)),
    responses((status = 204, description = "Removed"), (status = 403, body = ErrorBody)))]
async fn remove_friend(
    State(state): State<AppState>,
    auth: Authed,
    PathParams(handle): PathParams<String>,
) -> Result<StatusCode, ApiError> {
    if let Some(control_core::ControlCommand::ConversationChanged(id)) =
        state.control().remove_friend(&auth.caller, &handle).await?
    {
        // Their direct conversation can no longer be written to.
        membership_changed(&state, id).await;
    }
    audience_changed(&state, auth.caller.user()).await;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's pending friend requests, both ways.
#[utoipa::path(get, path = "/v1/friends/requests", tag = "friends", security(("bearer" = [])),
    responses((status = 200, body = FriendRequestsOut)))]
async fn list_friend_requests(
    State(state): State<AppState>,
    auth: Authed,
) -> ApiResult<FriendRequestsOut> {
    let requests = state.control().friend_requests(&auth.caller).await?;
    Ok(Json(FriendRequestsOut {
        incoming: requests.incoming.into_iter().map(Into::into).collect(),
        outgoing: requests.outgoing.into_iter().map(Into::into).collect(),
    }))
}

/// Asks a user for friendship (accepted at once if that user had asked the caller).
#[utoipa::path(post, path = "/v1/friends/requests", tag = "friends", security(("bearer" = [])),
    request_body = HandleIn,
    responses((status = 200, body = FriendRequestOut), (status = 404, body = ErrorBody)))]
async fn request_friend(
    State(state): State<AppState>,
    auth: Authed,
    JsonBody(body): JsonBody<HandleIn>,
) -> ApiResult<FriendRequestOut> {
    let outcome = state
        .control()
        .request_friend(&auth.caller, &body.handle)
        .await?;
    if outcome == FriendRequestOutcome::Accepted {
        audience_changed(&state, auth.caller.user()).await;
    }
    let outcome = match outcome {
        FriendRequestOutcome::Requested => "requested",
        FriendRequestOutcome::AlreadyRequested => "already_requested",
        FriendRequestOutcome::Accepted => "accepted",
        FriendRequestOutcome::AlreadyFriends => "already_friends",
    };
    Ok(Json(FriendRequestOut {
        outcome: outcome.to_string(),
    }))
}

/// Accepts the request from `handle`.
#[utoipa::path(post, path = "/v1/friends/requests/{handle}/accept", tag = "friends",
    security(("bearer" = [])), params(("handle" = String, Path)),
    responses((status = 204, description = "Friends now"), (status = 404, body = ErrorBody)))]
async fn accept_friend(
    State(state): State<AppState>,
    auth: Authed,
    PathParams(handle): PathParams<String>,
) -> Result<StatusCode, ApiError> {
    state.control().accept_friend(&auth.caller, &handle).await?;
    audience_changed(&state, auth.caller.user()).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Rejects the request from `handle`.
#[utoipa::path(post, path = "/v1/friends/requests/{handle}/reject", tag = "friends",
    security(("bearer" = [])), params(("handle" = String, Path)),
    responses((status = 204, description = "Rejected"), (status = 404, body = ErrorBody)))]
async fn reject_friend(
    State(state): State<AppState>,
    auth: Authed,
    PathParams(handle): PathParams<String>,
) -> Result<StatusCode, ApiError> {
    state.control().reject_friend(&auth.caller, &handle).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Withdraws the caller's request to `handle`.
#[utoipa::path(delete, path = "/v1/friends/requests/{handle}", tag = "friends",
    security(("bearer" = [])), params(("handle" = String, Path)),
    responses((status = 204, description = "Withdrawn"), (status = 404, body = ErrorBody)))]
async fn cancel_friend_request(
    State(state): State<AppState>,
    auth: Authed,
    PathParams(handle): PathParams<String>,
) -> Result<StatusCode, ApiError> {
    state
        .control()
        .cancel_friend_request(&auth.caller, &handle)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A user's live devices and keys: for the user itself and accepted friends only.
#[utoipa::path(get, path = "/v1/users/{handle}/devices", tag = "friends",
    security(("bearer" = [])), params(("handle" = String, Path)),
    responses((status = 200, body = [DeviceOut]), (status = 403, body = ErrorBody)))]
async fn user_devices(
    State(state): State<AppState>,
    auth: Authed,
    PathParams(handle): PathParams<String>,
) -> ApiResult<Vec<DeviceOut>> {
    let devices = state.control().user_devices(&auth.caller, &handle).await?;
    Ok(Json(devices.into_iter().map(DeviceOut::from).collect()))
}

/// Publishes the calling device's end-to-end keys: identity keys, fallback key and one-time
/// keys (appended to its pool up to its cap). The server checks shapes and bounds only.
#[utoipa::path(put, path = "/v1/devices/me/keys", tag = "keys", security(("bearer" = [])),
    request_body = PublishKeysIn,
    responses((status = 200, body = PublishKeysOut), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody)))]
async fn publish_keys(
    State(state): State<AppState>,
    auth: Authed,
    JsonBody(body): JsonBody<PublishKeysIn>,
) -> ApiResult<PublishKeysOut> {
    if body.one_time_keys.len() > control_core::ONE_TIME_KEYS_PER_UPLOAD_MAX {
        return Err(ApiError::invalid("at most 50 one-time keys in one upload"));
    }
    let upload = control_core::KeyUpload {
        curve25519: body.identity.curve25519,
        ed25519: body.identity.ed25519,
        fallback: body.fallback_key.into(),
        one_time: body.one_time_keys.into_iter().map(Into::into).collect(),
    };
    let count = state.control().publish_keys(&auth.caller, &upload).await?;
    Ok(Json(PublishKeysOut {
        one_time_keys: count,
    }))
}

/// Claims end-to-end keys of devices the caller may message (its own account's and accepted
/// friends'): each device's identity keys and one one-time key, consumed atomically, or its
/// fallback key when none is left. Other devices are silently absent.
#[utoipa::path(post, path = "/v1/keys/claim", tag = "keys", security(("bearer" = [])),
    request_body = ClaimKeysIn,
    responses((status = 200, body = ClaimKeysOut), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody)))]
async fn claim_keys(
    State(state): State<AppState>,
    auth: Authed,
    JsonBody(body): JsonBody<ClaimKeysIn>,
) -> ApiResult<ClaimKeysOut> {
    if body.devices.len() > control_core::CLAIM_DEVICES_MAX {
        return Err(ApiError::invalid("at most 64 devices in one claim"));
    }
    let devices = body
        .devices
        .iter()
        .map(|d| parse_device(d))
        .collect::<Result<Vec<_>, _>>()?;
    let claimed = state.control().claim_keys(&auth.caller, &devices).await?;
    Ok(Json(ClaimKeysOut {
        devices: claimed
            .into_iter()
            .map(|c| ClaimedKeysBody {
                device_id: hex::encode(c.device.0),
                identity: IdentityKeysBody {
                    curve25519: c.curve25519,
                    ed25519: c.ed25519,
                },
                one_time_key: c.one_time.into(),
                fallback: c.fallback,
            })
            .collect(),
    }))
}

/// The caller's conversations.
#[utoipa::path(get, path = "/v1/conversations", tag = "conversations", security(("bearer" = [])),
    responses((status = 200, body = [ConversationOut])))]
async fn list_conversations(
    State(state): State<AppState>,
    auth: Authed,
) -> ApiResult<Vec<ConversationOut>> {
    let list = state.control().conversations(&auth.caller).await?;
    Ok(Json(list.into_iter().map(Into::into).collect()))
}

/// The direct conversation with a friend (created on first use).
#[utoipa::path(post, path = "/v1/conversations/direct", tag = "conversations",
    security(("bearer" = [])), request_body = HandleIn,
    responses((status = 200, body = ConversationIdOut), (status = 403, body = ErrorBody)))]
async fn direct_conversation(
    State(state): State<AppState>,
    auth: Authed,
    JsonBody(body): JsonBody<HandleIn>,
) -> ApiResult<ConversationIdOut> {
    let id = state
        .control()
        .direct_conversation(&auth.caller, &body.handle)
        .await?;
    Ok(Json(ConversationIdOut { id: id.0 }))
}

/// Creates a group owned by the caller.
#[utoipa::path(post, path = "/v1/conversations/groups", tag = "conversations",
    security(("bearer" = [])), request_body = GroupIn,
    responses((status = 201, body = ConversationIdOut), (status = 400, body = ErrorBody)))]
async fn create_group(
    State(state): State<AppState>,
    auth: Authed,
    JsonBody(body): JsonBody<GroupIn>,
) -> Result<(StatusCode, Json<ConversationIdOut>), ApiError> {
    let id = state
        .control()
        .create_group(&auth.caller, &body.title)
        .await?;
    Ok((StatusCode::CREATED, Json(ConversationIdOut { id: id.0 })))
}

/// A conversation and its members (members only).
#[utoipa::path(get, path = "/v1/conversations/{id}", tag = "conversations",
    security(("bearer" = [])), params(("id" = u64, Path)),
    responses((status = 200, body = ConversationDetailOut), (status = 404, body = ErrorBody)))]
async fn get_conversation(
    State(state): State<AppState>,
    auth: Authed,
    PathParams(id): PathParams<u64>,
) -> ApiResult<ConversationDetailOut> {
    let detail = state
        .control()
        .conversation(&auth.caller, ConversationId(id))
        .await?;
    Ok(Json(ConversationDetailOut {
        conversation: detail.conversation.into(),
        members: detail.members.into_iter().map(Into::into).collect(),
    }))
}

/// An owner or admin invites a friend into a group.
#[utoipa::path(post, path = "/v1/conversations/{id}/members", tag = "conversations",
    security(("bearer" = [])), params(("id" = u64, Path)), request_body = HandleIn,
    responses((status = 204, description = "Member"), (status = 403, body = ErrorBody)))]
async fn invite(
    State(state): State<AppState>,
    auth: Authed,
    PathParams(id): PathParams<u64>,
    JsonBody(body): JsonBody<HandleIn>,
) -> Result<StatusCode, ApiError> {
    state
        .control()
        .invite(&auth.caller, ConversationId(id), &body.handle)
        .await?;
    membership_changed(&state, ConversationId(id)).await;
    Ok(StatusCode::NO_CONTENT)
}

/// An owner or admin removes a member.
#[utoipa::path(delete, path = "/v1/conversations/{id}/members/{handle}", tag = "conversations",
    security(("bearer" = [])), params(("id" = u64, Path), ("handle" = String, Path)),
    responses((status = 204, description = "Removed"), (status = 403, body = ErrorBody)))]
async fn remove_member(
    State(state): State<AppState>,
    auth: Authed,
    PathParams((id, handle)): PathParams<(u64, String)>,
) -> Result<StatusCode, ApiError> {
    state
        .control()
        .remove_member(&auth.caller, ConversationId(id), &handle)
        .await?;
    membership_changed(&state, ConversationId(id)).await;
    Ok(StatusCode::NO_CONTENT)
}

/// The owner sets a member's role (`admin` or `member`).
#[utoipa::path(put, path = "/v1/conversations/{id}/members/{handle}/role", tag = "conversations",
    security(("bearer" = [])), params(("id" = u64, Path), ("handle" = String, Path)),
    request_body = RoleIn,
    responses((status = 204, description = "Set"), (status = 403, body = ErrorBody)))]
async fn set_role(
    State(state): State<AppState>,
    auth: Authed,
    PathParams((id, handle)): PathParams<(u64, String)>,
    JsonBody(body): JsonBody<RoleIn>,
) -> Result<StatusCode, ApiError> {
    let role = match body.role.as_str() {
        "admin" => Role::Admin,
        "member" => Role::Member,
        _ => return Err(ApiError::invalid("a role is admin or member")),
    };
    state
        .control()
        .set_role(&auth.caller, ConversationId(id), &handle, role)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller leaves a group.
#[utoipa::path(post, path = "/v1/conversations/{id}/leave", tag = "conversations",
    security(("bearer" = [])), params(("id" = u64, Path)),
    responses((status = 204, description = "Left"), (status = 404, body = ErrorBody)))]
async fn leave(
    State(state): State<AppState>,
    auth: Authed,
    PathParams(id): PathParams<u64>,
) -> Result<StatusCode, ApiError> {
    state
        .control()
        .leave(&auth.caller, ConversationId(id))
        .await?;
    membership_changed(&state, ConversationId(id)).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Admin: accounts, paged by id.
#[utoipa::path(get, path = "/v1/admin/users", tag = "admin", security(("admin" = [])),
    params(
        ("after" = Option<i64>, Query, description = "Users with an id above this (default 0)"),
        ("limit" = Option<u32>, Query, description = "At most this many (default and maximum 1000)")
    ),
    responses((status = 200, body = [UserOut]), (status = 401, body = ErrorBody)))]
async fn admin_users(
    State(state): State<AppState>,
    AdminAuth(admin): AdminAuth,
    QueryParams(query): QueryParams<UsersQuery>,
) -> ApiResult<Vec<UserOut>> {
    let limit = usize::try_from(query.limit.unwrap_or(1000)).unwrap_or(1000);
    let users = state
        .control()
        .admin_list_users(&admin, UserId(query.after.unwrap_or(0)), limit)
        .await?;
    Ok(Json(users.into_iter().map(UserOut::from).collect()))
}

/// Admin: an account's devices.
#[utoipa::path(get, path = "/v1/admin/users/{handle}/devices", tag = "admin",
    security(("admin" = [])), params(("handle" = String, Path)),
    responses((status = 200, body = [DeviceOut]), (status = 401, body = ErrorBody)))]
async fn admin_user_devices(
    State(state): State<AppState>,
    AdminAuth(admin): AdminAuth,
    PathParams(handle): PathParams<String>,
) -> ApiResult<Vec<DeviceOut>> {
    let devices = state.control().admin_devices(&admin, &handle).await?;
    Ok(Json(devices.into_iter().map(DeviceOut::from).collect()))
}

/// Admin: revokes any device.
#[utoipa::path(delete, path = "/v1/admin/devices/{device_id}", tag = "admin",
    security(("admin" = [])), params(("device_id" = String, Path, description = "32 hex digits")),
    responses((status = 200, body = RevokedOut), (status = 401, body = ErrorBody)))]
async fn admin_revoke_device(
    State(state): State<AppState>,
    AdminAuth(admin): AdminAuth,
    PathParams(device): PathParams<String>,
) -> ApiResult<RevokedOut> {
    let device = parse_device(&device)?;
    let command = state.control().admin_revoke_device(&admin, device).await?;
    forward(&state, command).await?;
    Ok(Json(RevokedOut {
        revoked: hex::encode(device.0),
    }))
}

async fn no_route() -> ApiError {
    ApiError::no_route()
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}

pub(crate) fn routes(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .route("/v1/me", get(me))
        .route("/v1/session", delete(logout))
        .route("/v1/devices", get(list_devices))
        .route(
            "/v1/devices/{device_id}",
            patch(rename_device).delete(revoke_device),
        )
        .route("/v1/pairing-codes", post(create_pairing_code))
        .route("/v1/friends", get(list_friends))
        .route(
            "/v1/friends/requests",
            get(list_friend_requests).post(request_friend),
        )
        .route(
            "/v1/friends/requests/{handle}",
            delete(cancel_friend_request),
        )
        .route("/v1/friends/requests/{handle}/accept", post(accept_friend))
        .route("/v1/friends/requests/{handle}/reject", post(reject_friend))
        .route("/v1/friends/{handle}", delete(remove_friend))
        .route("/v1/users/{handle}/devices", get(user_devices))
        .route("/v1/devices/me/keys", put(publish_keys))
        .route("/v1/keys/claim", post(claim_keys))
        .route("/v1/conversations", get(list_conversations))
        .route("/v1/conversations/direct", post(direct_conversation))
        .route("/v1/conversations/groups", post(create_group))
        .route("/v1/conversations/{id}", get(get_conversation))
        .route("/v1/conversations/{id}/members", post(invite))
        .route(
            "/v1/conversations/{id}/members/{handle}",
            delete(remove_member),
        )
        .route(
            "/v1/conversations/{id}/members/{handle}/role",
            put(set_role),
        )
        .route("/v1/conversations/{id}/leave", post(leave))
        .route("/v1/admin/users", get(admin_users))
        .route("/v1/admin/users/{handle}/devices", get(admin_user_devices))
        .route("/v1/admin/devices/{device_id}", delete(admin_revoke_device))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A session token (64 hex digits) the device obtained over its Noise session",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "admin",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The operator's admin credential"))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document, generated from the handlers and types above.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "CommuCat control API", description = "Accounts, devices, pairing, friends, end-to-end key directory and conversations outside the Noise session; operator endpoints; health."),
    paths(
        healthz, readyz, openapi, me, logout, list_devices, rename_device, revoke_device,
        create_pairing_code, list_friends, remove_friend, list_friend_requests, request_friend,
        accept_friend, reject_friend, cancel_friend_request, user_devices, publish_keys, claim_keys,
        list_conversations,
        direct_conversation, create_group, get_conversation, invite, remove_member, set_role,
        leave, admin_users, admin_user_devices, admin_revoke_device
    ),
    components(schemas(ErrorBody, crate::error::ErrorDetail)),
    modifiers(&Security)
)]
pub struct ApiDoc;

// Keep the kinds the API names in step with the domain's.
const _: fn(ConversationKind) -> &'static str = ConversationKind::as_str;
