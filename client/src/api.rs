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
/// The most tries of one call under a [`RateLimitRetry`], whatever it asks for.
pub const RATE_LIMIT_TRIES_MAX: u32 = 1000;
/// The longest pause before trying a rate-limited call again, whatever `Retry-After` says.
pub const RATE_LIMIT_PAUSE_MAX: Duration = Duration::from_secs(60);

/// Trying a call again after a `429 rate_limited` answer (off unless set with
/// [`Api::set_rate_limit_retry`]). The pause is the answer's `Retry-After` (in seconds) when it
/// has one, else [`RateLimitRetry::pause`]; never more than [`RateLimitRetry::pause_max`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimitRetry {
    /// How many times a call is tried in all, at most [`RATE_LIMIT_TRIES_MAX`]; the last
    /// refusal is returned.
    pub tries: u32,
    /// The pause when the answer has no `Retry-After`.
    pub pause: Duration,
    /// The longest pause, at most [`RATE_LIMIT_PAUSE_MAX`].
    pub pause_max: Duration,
}

impl RateLimitRetry {
    /// The pause after a 429 answer that carried `retry_after`.
    fn pause_after(&self, retry_after: Option<Duration>) -> Duration {
        retry_after
            .unwrap_or(self.pause)
            .min(self.pause_max)
            .min(RATE_LIMIT_PAUSE_MAX)
    }
}

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
    retry: Option<RateLimitRetry>,
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
            retry: None,
        })
    }

    /// Uses `token` (from the session's issue-token operation) from now on.
    pub fn set_token(&mut self, token: Option<String>) {
        self.token = token;
    }

    /// Tries calls refused with `429 rate_limited` again as `retry` says (`None`: never).
    pub fn set_rate_limit_retry(&mut self, retry: Option<RateLimitRetry>) {
        self.retry = retry;
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

    /// `PUT /v1/devices/me/keys`: publishes this device's end-to-end keys
    /// ([`crate::e2e::E2e::keys_to_publish`]); the answer says how many one-time keys the
    /// server holds for it now.
    ///
    /// # Errors
    ///
    /// As [`Api::me`].
    pub fn publish_keys(
        &self,
        keys: &crate::e2e::PublishKeys,
    ) -> Result<crate::e2e::PublishResponse, ApiError> {
        let body = serde_json::to_string(keys).map_err(|e| ApiError::Malformed(e.to_string()))?;
        self.json("PUT", "/devices/me/keys", Some(&body))
    }

    /// `POST /v1/keys/claim`: one-time keys of devices the caller may message (at most 64
    /// devices; the others are absent from the answer).
    ///
    /// # Errors
    ///
    /// As [`Api::me`].
    pub fn claim_keys(
        &self,
        devices: &[dp_core::DeviceId],
    ) -> Result<crate::e2e::ClaimResponse, ApiError> {
        let request = crate::e2e::ClaimRequest::new(devices);
        let body =
            serde_json::to_string(&request).map_err(|e| ApiError::Malformed(e.to_string()))?;
        self.json("POST", "/keys/claim", Some(&body))
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

    /// The body of a 2xx answer, or the error it carried; a rate-limited call is tried again
    /// when the client was told to ([`Api::set_rate_limit_retry`]).
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Result<Vec<u8>, ApiError> {
        let tries = self
            .retry
            .map_or(1, |r| r.tries.clamp(1, RATE_LIMIT_TRIES_MAX));
        let mut tried = 0;
        loop {
            let answer = self.once(method, path, body)?;
            tried += 1;
            match (answer.status, self.retry) {
                (429, Some(retry)) if tried < tries => {
                    std::thread::sleep(retry.pause_after(answer.retry_after));
                }
                _ => return answer.into_result(),
            }
        }
    }

    /// One request and its answer, whatever its status.
    fn once(&self, method: &str, path: &str, body: Option<&str>) -> Result<Answer, ApiError> {
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
        parse_response(&response)
    }
}

/// An HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// `Retry-After` in seconds, when present.
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

impl Answer {
    /// The body of a 2xx answer, or the error it carried.
    fn into_result(self) -> Result<Vec<u8>, ApiError> {
        let Self { status, body, .. } = self;
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

/// The status, `Retry-After` and body of an HTTP/1.1 response read to its end.
fn parse_response(response: &[u8]) -> Result<Answer, ApiError> {
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
    let retry_after = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        let seconds = value.trim().parse().ok()?;
        name.eq_ignore_ascii_case("retry-after")
            .then(|| Duration::from_secs(seconds))
    });
    let chunked = head.lines().any(|line| {
        let lower = line.to_ascii_lowercase();
        lower.starts_with("transfer-encoding:") && lower.contains("chunked")
    });
    let body = if chunked {
        dechunk(body).ok_or_else(|| malformed("chunked body"))?
    } else {
        body.to_vec()
    };
    Ok(Answer {
        status,
        retry_after,
        body,
    })
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
        let answer = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!(
            (answer.status, answer.body.as_slice()),
            (200, b"{}".as_slice())
        );
        assert_eq!(answer.retry_after, None);
        let chunked =
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let answer = parse_response(chunked).unwrap();
        assert_eq!(
            (answer.status, answer.body.as_slice()),
            (404, b"abcde".as_slice())
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
    }

    #[test]
    fn retry_after_is_read_and_bounded() {
        let answer =
            parse_response(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\n\r\n").unwrap();
        assert_eq!(answer.retry_after, Some(Duration::from_secs(3)));
        let date =
            b"HTTP/1.1 429 Too Many Requests\r\nretry-after: Wed, 21 Oct 2015 07:28:00 GMT\r\n\r\n";
        assert_eq!(parse_response(date).unwrap().retry_after, None);
        let retry = RateLimitRetry {
            tries: 5,
            pause: Duration::from_millis(100),
            pause_max: Duration::from_secs(2),
        };
        assert_eq!(retry.pause_after(None), Duration::from_millis(100));
        assert_eq!(
            retry.pause_after(Some(Duration::from_secs(1))),
            Duration::from_secs(1)
        );
        assert_eq!(
            retry.pause_after(Some(Duration::from_secs(3600))),
            Duration::from_secs(2)
        );
    }

    /// A server on a free port that answers each connection with the next of `answers`;
    /// returns the API URL and how many requests it has read.
    #[allow(clippy::disallowed_methods)] // a test server needs its own thread
    fn serve(answers: Vec<&'static str>) -> (String, std::sync::Arc<std::sync::atomic::AtomicU32>) {
        use std::sync::atomic::{AtomicU32, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(AtomicU32::new(0));
        let counter = seen.clone();
        std::thread::spawn(move || {
            for answer in answers {
                let (mut stream, _) = listener.accept().unwrap();
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap() == 1 {
                    head.push(byte[0]);
                }
                counter.fetch_add(1, Ordering::SeqCst);
                stream.write_all(answer.as_bytes()).unwrap();
            }
        });
        (url, seen)
    }

    const LIMITED: &str = "HTTP/1.1 429 Too Many Requests\r\nretry-after: 0\r\ncontent-type: \
        application/json\r\n\r\n{\"error\":{\"code\":\"rate_limited\",\"message\":\"slow down\"}}";
    const ME: &str = "HTTP/1.1 200 OK\r\n\r\n{\"user_id\":7,\"handle\":\"a\",\"device_id\":\"00\"}";

    #[test]
    fn a_rate_limited_call_is_tried_again_when_asked() {
        let (url, seen) = serve(vec![LIMITED, LIMITED, ME]);
        let mut api = Api::new(&url).unwrap();
        api.set_rate_limit_retry(Some(RateLimitRetry {
            tries: 3,
            pause: Duration::ZERO,
            pause_max: Duration::ZERO,
        }));
        assert_eq!(api.me().unwrap().user_id, 7);
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[test]
    fn rate_limited_tries_are_bounded_and_the_last_refusal_returned() {
        let (url, seen) = serve(vec![LIMITED, LIMITED, ME]);
        let mut api = Api::new(&url).unwrap();
        api.set_rate_limit_retry(Some(RateLimitRetry {
            tries: 2,
            pause: Duration::ZERO,
            pause_max: Duration::ZERO,
        }));
        let error = api.me().unwrap_err();
        assert_eq!(error.code(), Some("rate_limited"), "{error}");
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 2);
        // Without a retry policy the first refusal is the answer.
        let (url, seen) = serve(vec![LIMITED, ME]);
        let error = Api::new(&url).unwrap().me().unwrap_err();
        assert!(
            matches!(error, ApiError::Status { status: 429, .. }),
            "{error}"
        );
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode("alice"), "alice");
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
    }
}
