//! The CommuCat control plane's REST API, on tokio and axum, over [`control_core::Control`].
//!
//! - `/v1/...`: every domain operation a client needs outside its Noise session,
//!   authenticated with `Authorization: Bearer <session token>` (a token the device obtained
//!   over its Noise session, `Control::issue_token`).
//! - `/v1/admin/...`: operator endpoints behind the admin credential (a random secret in a
//!   file with 0600 permissions, [`load_admin_credential`]; compared in constant time; never
//!   logged or echoed).
//! - `/healthz` (the process answers) and `/readyz` (the store answers).
//! - `/openapi.json`: the OpenAPI 3.1 document, generated from the code (`utoipa`).
//!
//! Every request is rate-limited by source address (IPv4 address or IPv6 /64, never ip:port)
//! and every authenticated one also by its device; request bodies are bounded; errors are
//! typed JSON ([`error::ErrorBody`]) with stable codes. No endpoint takes an address to
//! connect to, and the API makes no outbound connection.
//!
//! Run it with [`serve`] on the caller's tokio runtime, or mount [`router`] elsewhere.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod auth;
pub mod error;
pub mod routes;

pub use auth::SourceAddr;
pub use routes::ApiDoc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use control_core::ratelimit::{Rate, RateLimiter, SourceKey};
use control_core::{AdminCredential, Control, ControlCommand};
use dp_core::DeviceId;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// The API's address and bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiConfig {
    /// Where to listen ([`bind`]); loopback by default, so exposing the API is a decision.
    pub bind: SocketAddr,
    /// The largest request body accepted, in bytes.
    pub body_limit_bytes: usize,
    /// Requests per source address (IPv4 address or IPv6 /64).
    pub per_source: Rate,
    /// Requests per authenticated device.
    pub per_identity: Rate,
    /// Sources and identities tracked by the limiters at most (each).
    pub limiter_keys_max: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            body_limit_bytes: 16 * 1024,
            per_source: Rate {
                burst: 100,
                per_second: 20,
            },
            per_identity: Rate {
                burst: 60,
                per_second: 10,
            },
            limiter_keys_max: 100_000,
        }
    }
}

/// The default port of the REST API.
pub const DEFAULT_PORT: u16 = 7080;

/// Binds the configured address (for [`serve`]).
pub async fn bind(config: &ApiConfig) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(config.bind).await
}

/// The state every handler shares: the domain, the admin credential, the channel that carries
/// data-plane commands (device revocations) to the data plane, and the rate limiters.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    control: Arc<Control>,
    admin: Option<AdminCredential>,
    commands: mpsc::Sender<ControlCommand>,
    config: ApiConfig,
    per_source: Mutex<RateLimiter<SourceKey>>,
    per_identity: Mutex<RateLimiter<DeviceId>>,
}

impl AppState {
    /// The state: `admin` is `None` to disable the admin endpoints (they then refuse every
    /// request); `commands` receives every [`ControlCommand`] an operation produced, for the
    /// data plane.
    pub fn new(
        control: Arc<Control>,
        admin: Option<AdminCredential>,
        commands: mpsc::Sender<ControlCommand>,
        config: ApiConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                per_source: Mutex::new(RateLimiter::new(
                    config.per_source,
                    config.limiter_keys_max,
                )),
                per_identity: Mutex::new(RateLimiter::new(
                    config.per_identity,
                    config.limiter_keys_max,
                )),
                control,
                admin,
                commands,
                config,
            }),
        }
    }

    /// The domain.
    pub fn control(&self) -> &Control {
        &self.inner.control
    }
}

/// The router with every route, its limits and its fallbacks. Serve it with connect info
/// (`into_make_service_with_connect_info::<SocketAddr>()`, as [`serve`] does) so that rate
/// limits see the source address.
pub fn router(state: AppState) -> Router {
    let limit = state.inner.config.body_limit_bytes;
    routes::routes(state.clone())
        .layer(axum::middleware::from_fn_with_state(
            state,
            auth::limit_by_source,
        ))
        .layer(DefaultBodyLimit::max(limit))
}

/// Serves the API on `listener` until the future is dropped or fails.
pub fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
) -> impl Future<Output = std::io::Result<()>> + Send {
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    async move { axum::serve(listener, app).await }
}

/// Serves the API on `listener` until `shutdown` completes, then finishes the requests in
/// flight.
pub fn serve_with_shutdown(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = std::io::Result<()>> + Send {
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    }
}

/// Why the admin credential file was refused.
#[derive(Debug, thiserror::Error)]
pub enum CredentialFileError {
    /// It could not be read or written.
    #[error("admin credential file {path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// The system's error.
        error: std::io::Error,
    },
    /// Group or others may read or write it.
    #[error(
        "admin credential file {path} has mode {mode:o}; it must be readable by its owner only: chmod 600 {path}"
    )]
    Permissions {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// Its content is too short to be a credential.
    #[error("admin credential file {path} holds fewer than 32 characters; generate a new one")]
    TooShort {
        /// The file.
        path: String,
    },
}

/// Reads the admin credential from `path`, refusing a file that group or others may access.
pub fn load_admin_credential(path: &Path) -> Result<AdminCredential, CredentialFileError> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display().to_string();
    let io = |error| CredentialFileError::Io {
        path: shown.clone(),
        error,
    };
    let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CredentialFileError::Permissions { path: shown, mode });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    AdminCredential::new(&text).map_err(|_| CredentialFileError::TooShort { path: shown })
}

/// Generates a new admin credential and writes it to `path` (created with mode 0600; an
/// existing file is refused). Returns the credential; the secret is only in the file.
pub fn generate_admin_credential(path: &Path) -> Result<AdminCredential, CredentialFileError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let shown = path.display().to_string();
    let io = |error| CredentialFileError::Io {
        path: shown.clone(),
        error,
    };
    let (credential, text) = AdminCredential::generate().map_err(|_| {
        io(std::io::Error::other(
            "the operating system's random source failed",
        ))
    })?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.write_all(b"\n").map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(credential)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn credential_file_must_be_private_and_never_shows_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.key");
        let credential = generate_admin_credential(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let secret = std::fs::read_to_string(&path).unwrap();
        let secret = secret.trim();
        assert!(credential.verify(secret.as_bytes()).is_some());
        assert!(
            load_admin_credential(&path)
                .unwrap()
                .verify(secret.as_bytes())
                .is_some()
        );
        assert!(
            generate_admin_credential(&path).is_err(),
            "never overwritten"
        );

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_admin_credential(&path).unwrap_err();
        assert!(matches!(
            err,
            CredentialFileError::Permissions { mode: 0o644, .. }
        ));
        let shown = format!("{err} {err:?}");
        assert!(shown.contains("chmod 600"));
        assert!(!shown.contains(secret));

        std::fs::write(&path, "short").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            load_admin_credential(&path),
            Err(CredentialFileError::TooShort { .. })
        ));
    }
}
