//! A small blocking client of the REST API (`docs/API.md`, `/openapi.json`): typed results,
//! errors by class, bounded responses.
//!
//! It speaks plain HTTP/1.1 over a `TcpStream`, one request per connection (`connection:
//! close`): the API binds to loopback by default and an operator who exposes it puts a
//! TLS-terminating proxy in front, so `https://` URLs are refused here rather than half
//! supported. Messages never travel over this API.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The most bytes read of one response (headers and body).
pub const RESPONSE_BYTES_MAX: usize = 4 << 20;
/// How long one request may take to connect, and to read or write each chunk.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an API call failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ApiError {
    /// The URL is not `http://HOST:PORT[/PATH]`.
    Url(String),
    /// The server could not be reached, or the connection failed.
    Io(std::io::Error),
    /// The server answered with an error (`docs/API.md` §Errors).
    Status {
        /// The HTTP status.
        status: u16,
        /// The stable error code, e.g. `not_friends`.
        code: String,
        /// The human-readable message.
        message: String,
    },
    /// The response could not be understood.
    Malformed(String),
}

impl ApiError {
    /// The stable error code when the server answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Status { code, .. } => Some(code),
            _ => None,
        }
    }
}

impl core::fmt::Display for ApiError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Url(url) => write!(f, "{url} is not an http://HOST:PORT/v1 URL"),
            Self::Io(error) => write!(f, "cannot reach the REST API: {error}"),
            Self::Status {
                status,
                code,
                message,
            } => write!(f, "{message} ({code}, HTTP {status})"),
            Self::Malformed(what) => {
                write!(f, "the REST API answered something unexpected: {what}")
            }
        }
    }
}

impl std::error::Error for ApiError {}

impl From<std::io::Error> for ApiError {
    fn from(error: std::io::Error) -> Self {
        Self::Io(error)
    }
}

/// A device of an account.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct Device {
    /// 32 hex digits.
    pub id: String,
    /// 64 hex digits.
    pub public_key: String,
    /// Its name.
    pub name: String,
    /// When it joined, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// When it was revoked, if it was.
    pub revoked_at_ms: Option<u64>,
}

/// An account, as others see it.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct User {
    /// The account id.
    pub id: i64,
    /// The handle.
    pub handle: String,
    /// When it was created.
    pub created_at_ms: u64,
}

/// The caller.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct Me {
    /// The account id.
    pub user_id: i64,
    /// The handle.
    pub handle: String,
    /// This device, 32 hex digits.
    pub device_id: String,
}

/// A new pairing code.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct PairingCode {
    /// `XXXXX-XXXXX`.
    pub code: String,
    /// When it stops working.
    pub expires_at_ms: u64,
}

/// A pending friend request.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct FriendRequest {
    /// Who asked.
    pub from: User,
    /// Who was asked.
    pub to: User,
    /// When.
    pub created_at_ms: u64,
}

/// Pending friend requests.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct FriendRequests {
    /// Asked of the caller.
    pub incoming: Vec<FriendRequest>,
    /// Asked by the caller.
    pub outgoing: Vec<FriendRequest>,
}

/// The outcome of a friend request.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct FriendOutcome {
    /// e.g. `requested`, or `friends` when the other side had asked already.
    pub outcome: String,
}

/// A conversation.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct Conversation {
    /// Server-assigned id.
    pub id: u64,
    /// `direct` or `group`.
    pub kind: String,
    /// A group's title.
    pub title: Option<String>,
    /// The creating account.
    pub created_by: i64,
    /// When.
    pub created_at_ms: u64,
}

/// A member of a conversation.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct Member {
    /// The account id.
    pub user_id: i64,
    /// The handle.
    pub handle: String,
    /// `owner`, `admin` or `member`.
    pub role: String,
    /// When they joined.
    pub joined_at_ms: u64,
}

/// A conversation and its members.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct ConversationDetail {
    /// The conversation.
    pub conversation: Conversation,
    /// Its members.
    pub members: Vec<Member>,
}

#[derive(Deserialize)]
struct IdOut {
    id: u64,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorInner,
}

#[derive(Deserialize)]
struct ErrorInner {
    code: String,
    message: String,
}

/// A blocking REST API client for one device (its bearer token).
#[derive(Clone)]
pub struct Api {
    host: String,
    base: String,
    token: Option<String>,
}

impl core::fmt::Debug for Api {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never the token.
        f.debug_struct("Api")
            .field("host", &self.host)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Api {
    /// A client of the API at `url`, e.g. `http://127.0.0.1:7080/v1`.
    ///
    /// # Errors
    ///
    /// The URL is not `http://HOST:PORT[/PATH]`.
    pub fn new(url: &str) -> Result<Self, ApiError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| ApiError::Url(url.to_string()))?;
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        if host.is_empty() || !host.contains(':') {
            return Err(ApiError::Url(url.to_string()));
        }
        let path = path.trim_end_matches('/');
        let base = if path.is_empty() {
            "/v1".to_string()
        } else {
            format!("/{path}")
        };
        Ok(Self {
            host: host.to_string(),
            base,
            token: None,
        })
    }

    /// Uses `token` (from the session's issue-token operation) from now on.
    pub fn set_token(&mut self, token: Option<String>) {
        self.token = token;
    }

    /// `GET /v1/me`.
    ///
    /// # Errors
    ///
    /// As every call: unreachable, an error answer, or a malformed one.
    pub fn me(&self) -> Result<Me, ApiError> {
        self.json("GET", "/me", None)
    }

    /// `GET /v1/devices`.
    ///
    /// # Errors
    ///
    /// As [`Api::me`].
    pub fn devices(&self) -> Result<Vec<Device>, ApiError> {
        self.json("GET", "/devices", None)
    }

    /// `DELETE /v1/devices/{id}`.
    ///
    /// # Errors
    ///
    /// As [`Api::me`].
    pub fn revoke_device(&self, id: &str) -> Result<(), ApiError> {
        self.call("DELETE", &format!("/devices/{}", encode(id)), None)
            .map(drop)
    }

    /// `POST /v1/pairing-codes`.
    ///
    /// # Errors
    ///
    /// As [`Api::me`].
    pub fn pairing_code(&self) -> Result<PairingCode, ApiError> {
        self.json("POST", "/pairing-codes", Some("{}"))
    }

    /// `GET /v1/friends`.
    ///
    /// # Errors
    ///
    /// As [`Api::me`].
    pub fn friends(&self) -> Result<Vec<User>, ApiError> {
        self.json("GET", "/friends", None)
    }

    /// `GET /v1/friends/requests`.
    ///
    /// # Errors
    ///
    /// As [`Api::me`].
    pub fn friend_requests(&self) -> Result<FriendRequests, ApiError> {
        self.json("GET", "/friends/requests", None)
    }

    /// `POST /v1/friends/requests` `{"handle"}`.
    ///
    /// # Errors
    ///
    /// As [`Api::me`].
    pub fn request_friend(&self, handle: &str) -> Result<FriendOutcome, ApiError> {
        let body = serde_json::json!({ "handle": handle }).to_string();
        self.json("POST", "/friends/requests", Some(&body))
    }

    /// `POST /v1/friends/requests/{handle}/accept`.
    ///
    /// # Errors
    ///
    /// As [`Api::me`].
    pub fn accept_friend(&self, handle: &str) -> Result<(), ApiError> {
        let path = format!("/friends/requests/{}/accept", encode(handle));
        self.call("POST", &path, Some("{}")).map(drop)
    }

    /// `POST /v1/friends/requests/{handle}/reject`.
    ///
    /// # Errors
    ///
    /// As [`Api::me`].
    pub fn reject_friend(&self, handle: &str) -> Result<(), ApiError> {
        let path = format!("/friends/requests/{}/reject", encode(handle));
        self.call("POST", &path, Some("{}")).map(drop)
    }

    /// `DELETE /v1/friends/{handle}`.
    ///
    /// # Errors
    ///
    /// As [`Api::me`].
    pub fn remove_friend(&self, handle: &str) -> Result<(), ApiError> {
        self.call("DELETE", &format!("/friends/{}", encode(handle)), None)
            .map(drop)
    }

    /// `GET /v1/users/{handle}/devices`: a friend's devices and keys.
    ///
    /// # Errors
    ///
    /// As [`Api::me`].
    pub fn user_devices(&self, handle: &str) -> Result<Vec<Device>, ApiError> {
        self.json("GET", &format!("/users/{}/devices", encode(handle)), None)
    }

    /// `GET /v1/conversations`.
    ///
    /// # Errors
    ///
    /// As [`Api::me`].
    pub fn conversations(&self) -> Result<Vec<Conversation>, ApiError> {
        self.json("GET", "/conversations", None)
    }

    /// `POST /v1/conversations/groups` `{"title"}`: the new group's id.
    ///
    /// # Errors
    ///
    /// As [`Api::me`].
    pub fn create_group(&self, title: &str) -> Result<u64, ApiError> {
        let body = serde_json::json!({ "title": title }).to_string();
        let out: IdOut = self.json("POST", "/conversations/groups", Some(&body))?;
        Ok(out.id)
    }

    /// `GET /v1/conversations/{id}`.
    ///
    /// # Errors
    ///
    /// As [`Api::me`].
    pub fn conversation(&self, id: u64) -> Result<ConversationDetail, ApiError> {
        self.json("GET", &format!("/conversations/{id}"), None)
    }

    /// `POST /v1/conversations/{id}/members` `{"handle"}`.
    ///
    /// # Errors
    ///
    /// As [`Api::me`].
    pub fn add_member(&self, id: u64, handle: &str) -> Result<(), ApiError> {
        let body = serde_json::json!({ "handle": handle }).to_string();
        self.call("POST", &format!("/conversations/{id}/members"), Some(&body))
            .map(drop)
    }

    /// `DELETE /v1/conversations/{id}/members/{handle}`.
    ///
    /// # Errors
    ///
    /// As [`Api::me`].
    pub fn remove_member(&self, id: u64, handle: &str) -> Result<(), ApiError> {
        let path = format!("/conversations/{id}/members/{}", encode(handle));
        self.call("DELETE", &path, None).map(drop)
    }

    /// `POST /v1/conversations/{id}/leave`.
    ///
    /// # Errors
    ///
    /// As [`Api::me`].
    pub fn leave(&self, id: u64) -> Result<(), ApiError> {
        self.call("POST", &format!("/conversations/{id}/leave"), Some("{}"))
            .map(drop)
    }

    fn json<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<T, ApiError> {
        let bytes = self.call(method, path, body)?;
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Malformed(e.to_string()))
    }

    /// One request; the body of a 2xx answer, or the error it carried.
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Result<Vec<u8>, ApiError> {
        let addr = self
            .host
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| ApiError::Url(self.host.clone()))?;
        let mut stream = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)?;
        stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
        let mut head = format!(
            "{method} {}{path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\naccept: application/json\r\n",
            self.base, self.host
        );
        if let Some(token) = &self.token {
            head.push_str(&format!("authorization: Bearer {token}\r\n"));
        }
        let body = body.unwrap_or("");
        if !body.is_empty() {
            head.push_str("content-type: application/json\r\n");
        }
        head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
        stream.write_all(head.as_bytes())?;
        stream.write_all(body.as_bytes())?;
        let mut response = Vec::new();
        stream
            .take(u64::try_from(RESPONSE_BYTES_MAX).unwrap_or(u64::MAX) + 1)
            .read_to_end(&mut response)?;
        if response.len() > RESPONSE_BYTES_MAX {
            return Err(ApiError::Malformed("response too large".into()));
        }
        let (status, body) = parse_response(&response)?;
        if (200..300).contains(&status) {
            return Ok(body);
        }
        Err(match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(error) => ApiError::Status {
                status,
                code: error.error.code,
                message: error.error.message,
            },
            Err(_) => ApiError::Status {
                status,
                code: "http".into(),
                message: String::from_utf8_lossy(&body).chars().take(200).collect(),
            },
        })
    }
}

/// Percent-encodes a path segment (handles and ids are plain, but a user may type anything).
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The status and body of an HTTP/1.1 response read to its end.
fn parse_response(response: &[u8]) -> Result<(u16, Vec<u8>), ApiError> {
    let malformed = |what: &str| ApiError::Malformed(what.to_string());
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| malformed("no end of headers"))?;
    let head = std::str::from_utf8(&response[..split]).map_err(|_| malformed("headers"))?;
    let body = &response[split + 4..];
    let status_line = head.lines().next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| malformed("status line"))?;
    let chunked = head.lines().any(|line| {
        let lower = line.to_ascii_lowercase();
        lower.starts_with("transfer-encoding:") && lower.contains("chunked")
    });
    let body = if chunked {
        dechunk(body).ok_or_else(|| malformed("chunked body"))?
    } else {
        body.to_vec()
    };
    Ok((status, body))
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split_into_host_and_base_path() {
        let api = Api::new("http://127.0.0.1:7080/v1/").unwrap();
        assert_eq!(
            (api.host.as_str(), api.base.as_str()),
            ("127.0.0.1:7080", "/v1")
        );
        let api = Api::new("http://localhost:1").unwrap();
        assert_eq!(api.base, "/v1");
        assert!(matches!(Api::new("https://x:1/v1"), Err(ApiError::Url(_))));
        assert!(matches!(
            Api::new("http://nohostport/v1"),
            Err(ApiError::Url(_))
        ));
    }

    #[test]
    fn responses_plain_and_chunked_are_parsed() {
        let (status, body) =
            parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((status, body.as_slice()), (200, b"{}".as_slice()));
        let chunked =
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let (status, body) = parse_response(chunked).unwrap();
        assert_eq!((status, body.as_slice()), (404, b"abcde".as_slice()));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode("alice"), "alice");
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
    }
}
