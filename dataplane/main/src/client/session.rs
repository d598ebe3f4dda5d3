//! Reaching the server: the Noise session (control operations of PROTOCOL.md §7.7) and the REST
//! API with the token the session issues. Errors say what went wrong and what to do.

use super::profile::{Profile, Received, Settings};
use anyhow::{Context, Result, anyhow, bail};
use commucat_client::api::{Api, ApiError};
use commucat_client::{
    AckMode, Client, ConnectionConfig, Delivery, Error, ErrorCode, Event, OpError, Ops, OsRng,
    ReconnectingClient,
};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// How long to wait for the answer to a control operation.
pub(crate) const REQUEST_WAIT: Duration = Duration::from_secs(10);

/// One profile's view of the server.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) profile: Profile,
    pub(crate) settings: Settings,
}

impl Ctx {
    pub(crate) fn load(profile: Profile) -> Result<Self> {
        let settings = profile.settings()?;
        Ok(Self { profile, settings })
    }

    /// The account handle, or the error telling how to get one.
    pub(crate) fn handle(&self) -> Result<&str> {
        self.settings.handle.as_deref().ok_or_else(|| {
            anyhow!(
                "not registered: run `commucat client register HANDLE` (a new account) or \
                 `commucat client pair claim CODE` (a new device of an account)"
            )
        })
    }

    fn server_addr(&self) -> Result<SocketAddr> {
        self.settings
            .server
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| {
                anyhow!(
                    "cannot resolve the server address {}: fix it with `commucat client init`",
                    self.settings.server
                )
            })
    }

    fn config(&self) -> Result<ConnectionConfig> {
        let server: [u8; 32] = hex::decode(&self.settings.server_key)
            .ok()
            .and_then(|b| b.try_into().ok())
            .context("the profile's server key is not 64 hex digits: run `commucat client init`")?;
        Ok(ConnectionConfig::new(self.profile.key()?, server))
    }

    fn connect_error(&self, error: &Error) -> anyhow::Error {
        let server = &self.settings.server;
        match error {
            Error::Io(io) => anyhow!(
                "cannot reach the server at {server} ({io}): is `commucat serve` running there?"
            ),
            Error::Eof | Error::Timeout | Error::Closed(_) | Error::Client(_) => anyhow!(
                "the server at {server} refused the handshake ({error}): check the server key \
                 in the profile against the `server public key` line `commucat serve` prints"
            ),
            _ => anyhow!("cannot connect to {server}: {error}"),
        }
    }

    /// A session with the server.
    pub(crate) fn connect(&self) -> Result<Client<OsRng>> {
        let mut config = self.config()?;
        config.keepalive = Some(Duration::from_secs(20));
        Client::connect_with(
            self.server_addr()?,
            config,
            OsRng,
            commucat_client::Clock::new(),
            Some(self.profile.dedup()),
        )
        .map_err(|e| self.connect_error(&e))
    }

    /// A session that reconnects by itself.
    pub(crate) fn connect_reconnecting(&self) -> Result<ReconnectingClient> {
        ReconnectingClient::connect(
            self.server_addr()?,
            self.config()?,
            Some(self.profile.dedup()),
        )
        .map_err(|e| self.connect_error(&e))
    }

    /// A session that reconnects by itself and acknowledges a delivery only when told to
    /// ([`ReconnectingClient::ack`]), after the message is stored: until then the server keeps
    /// it and delivers it again.
    pub(crate) fn connect_reconnecting_app_acked(&self) -> Result<ReconnectingClient> {
        let mut config = self.config()?;
        config.ack = AckMode::Application;
        ReconnectingClient::connect(self.server_addr()?, config, Some(self.profile.dedup()))
            .map_err(|e| self.connect_error(&e))
    }

    /// Keeps a message that arrived during another command for the next `listen`.
    pub(crate) fn stash(&self, delivery: &Delivery) -> Result<()> {
        let received = Received::from(delivery);
        if self.profile.keep(&received)? {
            self.profile.mark_seen(delivery.message)?;
        } else {
            eprintln!(
                "warning: the inbox is full; a message was dropped: run `commucat client listen`"
            );
        }
        Ok(())
    }

    /// Control operations (PROTOCOL.md §7.7) on `client`; messages that arrive meanwhile go
    /// to the inbox.
    pub(crate) fn ops<'a>(&'a self, client: &'a mut Client<OsRng>) -> Ops<'a, OsRng> {
        Ops::new(client).wait(REQUEST_WAIT).on_event(|event| {
            if let Event::Delivered(delivery) = event {
                self.stash(&delivery)?;
            }
            Ok(())
        })
    }

    /// A fresh REST token over the session, saved in the profile.
    pub(crate) fn issue_token(&self, client: &mut Client<OsRng>) -> Result<String> {
        let token = match self.ops(client).issue_token() {
            Ok(issued) => issued.token,
            Err(error) if error.status() == Some(ErrorCode::UNAUTHENTICATED) => bail!(
                "this device has no account (not registered, or revoked): run `commucat client \
                 register HANDLE` or `commucat client pair claim CODE` in a new profile"
            ),
            Err(error @ OpError::Refused { status, .. }) => {
                bail!("the server refused a token ({status}): {}", reason(&error))
            }
            Err(error) => return Err(op_error(error)),
        };
        self.profile.save_token(&token)?;
        Ok(token)
    }

    fn fresh_api(&self, refresh: bool) -> Result<Api> {
        self.handle()?;
        let mut api = Api::new(&self.settings.api)
            .map_err(|e| anyhow!("{e}: fix the API URL with `commucat client init --api URL`"))?;
        let token = match self.profile.token() {
            Some(token) if !refresh => token,
            _ => {
                let mut client = self.connect()?;
                let token = self.issue_token(&mut client)?;
                let _ = client.flush();
                token
            }
        };
        api.set_token(Some(token));
        Ok(api)
    }

    /// Runs `call` against the REST API; a refused token is renewed over the session once.
    pub(crate) fn api<T>(&self, call: impl Fn(&Api) -> Result<T, ApiError>) -> Result<T> {
        let api = self.fresh_api(false)?;
        match call(&api) {
            Err(ApiError::Status { status: 401, .. }) => {
                let api = self.fresh_api(true)?;
                call(&api).map_err(|e| self.api_error(e))
            }
            other => other.map_err(|e| self.api_error(e)),
        }
    }

    fn api_error(&self, error: ApiError) -> anyhow::Error {
        let hint = match error.code() {
            Some("not_friends") => {
                "you are not friends: `commucat client friends add HANDLE`, then they accept"
            }
            Some("not_found") => {
                "check the name or id (`commucat client friends list`, `groups list`)"
            }
            Some("rate_limited") => "wait a moment and try again",
            Some("unavailable") => "the server's store is busy: try again",
            Some("limit_reached") => "a limit was reached: remove something first",
            Some("forbidden") => "you are not allowed to do that here",
            Some("invalid_pairing_code") => "create a new code with `commucat client pair create`",
            Some("unauthenticated") => "this device may have been revoked",
            _ if matches!(error, ApiError::Io(_)) => {
                "is the server running, and is the profile's API URL right (`init --api URL`)?"
            }
            _ => "see docs/API.md",
        };
        anyhow!("{error}: {hint}")
    }
}

/// A control operation's failure that is not a refusal, as the CLI says it.
pub(crate) fn op_error(error: OpError) -> anyhow::Error {
    match error {
        OpError::Connection(_) | OpError::Closed(_) | OpError::Timeout => {
            anyhow!("{error}: try again")
        }
        OpError::Refused { status, .. } => {
            anyhow!("the server refused ({status}): {}", reason(&error))
        }
        other => anyhow!("{other}"),
    }
}

/// Why the server refused a control operation: its stable code, or the body it sent.
pub(crate) fn reason(error: &OpError) -> &str {
    error.reason().unwrap_or("")
}
