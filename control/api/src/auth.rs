//! Who is asking: the source address (for rate limits), the bearer session token (for a
//! device), and the admin credential (for `/v1/admin`).

use crate::AppState;
use crate::error::ApiError;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use control_core::ratelimit::SourceKey;
use control_core::{Admin, Caller, SessionToken, parse_token};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The peer address of the connection a request came on (set by axum's connect info). Only
/// its IP address is used: rate limits never key by port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceAddr(pub SocketAddr);

fn source_key(parts_ext: &axum::http::Extensions) -> SourceKey {
    let ip = parts_ext
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        // Without connect info (a router mounted without it), every request shares one
        // bucket: stricter, never looser.
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    SourceKey::from_ip(ip)
}

/// Middleware: one token bucket per source address.
pub(crate) async fn limit_by_source(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let key = source_key(request.extensions());
    let now = state.control().now_ms();
    let allowed = match state.inner.per_source.lock() {
        Ok(mut limiter) => limiter.allow(&key, now),
        Err(_) => false,
    };
    if !allowed {
        return ApiError::rate_limited().into_response();
    }
    next.run(request).await
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, credential) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(credential.trim())
}

/// An authenticated device (by its bearer session token), rate-limited per device.
#[derive(Clone, Debug)]
pub(crate) struct Authed {
    pub(crate) caller: Caller,
    pub(crate) token: SessionToken,
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts)
            .and_then(parse_token)
            .ok_or_else(ApiError::unauthenticated)?;
        let caller = state.control().authenticate_token(&token).await?;
        let now = state.control().now_ms();
        let allowed = match state.inner.per_identity.lock() {
            Ok(mut limiter) => limiter.allow(&caller.device(), now),
            Err(_) => false,
        };
        if !allowed {
            return Err(ApiError::rate_limited());
        }
        Ok(Self { caller, token })
    }
}

/// The operator, by the admin credential (`Authorization: Bearer <admin secret>`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct AdminAuth(pub(crate) Admin);

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let verified = match (&state.inner.admin, bearer(parts)) {
            (Some(credential), Some(presented)) => credential.verify(presented.as_bytes()),
            _ => None,
        };
        match verified {
            Some(admin) => Ok(Self(admin)),
            None => {
                // The presented value is never logged: only that a refusal happened and
                // from where.
                tracing::warn!(source = ?source_key(&parts.extensions), "admin credential refused");
                Err(ApiError::unauthenticated())
            }
        }
    }
}
