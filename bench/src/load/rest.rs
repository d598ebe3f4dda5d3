//! The few account and group calls the `fanout` scenario needs to set up a CommuCat group:
//! session operations (`Request` frames, PROTOCOL.md §7.7) and REST calls (docs/API.md) over
//! plain HTTP/1.1, one connection per call. Kept in one small module so a typed REST client
//! in `commucat-client` can replace it.

use anyhow::{Context, Result, bail};
use commucat_client::{Client, ErrorCode, Event};
use dp_core::SeededRng;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Session operation: register this device as the first of a new account.
const OP_REGISTER: u16 = 0x0001;
/// Session operation: issue a REST bearer token for this device.
const OP_ISSUE_TOKEN: u16 = 0x0003;
/// How long one session operation or REST call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a rate-limited (429) REST call is tried again before giving up; the API's
/// default allows bursts of 100 per address and 60 per device, then 20 and 10 per second.
const RATE_LIMITED_RETRIES_MAX: u32 = 200;
/// The pause after a 429 answer.
const RATE_LIMITED_PAUSE: Duration = Duration::from_millis(100);
/// The largest response read.
const RESPONSE_BYTES_MAX: u64 = 1 << 20;

/// Runs one session operation and waits for its answer; returns the JSON body.
pub fn session_op(client: &mut Client<SeededRng>, id: u32, op: u16, body: &Value) -> Result<Value> {
    client
        .request(id, op, body.to_string().as_bytes())
        .map_err(|e| anyhow::anyhow!("request {op:#06x}: {e}"))?;
    loop {
        match client
            .next_event(CALL_TIMEOUT)
            .map_err(|e| anyhow::anyhow!("request {op:#06x}: {e}"))?
        {
            Some(Event::Response {
                request_id,
                status,
                body,
            }) if request_id == id => {
                let text = String::from_utf8_lossy(&body);
                if status != ErrorCode::OK {
                    bail!("request {op:#06x} refused with {status:?}: {text}");
                }
                return serde_json::from_str(&text)
                    .with_context(|| format!("request {op:#06x}: not JSON: {text}"));
            }
            Some(_) => {}
            None => bail!("request {op:#06x}: no answer within {CALL_TIMEOUT:?}"),
        }
    }
}

/// Registers the session's device as the first device of a new account `handle`, then gets
/// its REST token.
pub fn register_with_token(client: &mut Client<SeededRng>, handle: &str) -> Result<String> {
    session_op(
        client,
        1,
        OP_REGISTER,
        &json!({ "handle": handle, "device_name": "bench" }),
    )?;
    let issued = session_op(client, 2, OP_ISSUE_TOKEN, &json!({}))?;
    issued["token"]
        .as_str()
        .map(str::to_owned)
        .context("token answer without a token")
}

/// A REST API at an address.
#[derive(Clone, Copy, Debug)]
pub struct Rest {
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Rest {
    /// `method path` with `token` and an optional JSON body; a 2xx answer's JSON body (or
    /// `null`). Rate-limited calls are tried again after a pause.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        for _ in 0..RATE_LIMITED_RETRIES_MAX {
            let (status, text) = self.once(method, path, token, body)?;
            match status {
                200..=299 if text.trim().is_empty() => return Ok(Value::Null),
                200..=299 => {
                    return serde_json::from_str(&text)
                        .with_context(|| format!("{method} {path}: not JSON: {text}"));
                }
                429 => std::thread::sleep(RATE_LIMITED_PAUSE),
                _ => bail!("{method} {path}: HTTP {status}: {text}"),
            }
        }
        bail!("{method} {path}: still rate-limited after {RATE_LIMITED_RETRIES_MAX} tries")
    }

    fn once(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> Result<(u16, String)> {
        let mut stream = TcpStream::connect_timeout(&self.addr, CALL_TIMEOUT)
            .with_context(|| format!("cannot reach the REST API at {}", self.addr))?;
        stream.set_read_timeout(Some(CALL_TIMEOUT))?;
        let body = body.map(Value::to_string).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {token}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        stream.write_all(request.as_bytes())?;
        let mut response = String::new();
        stream
            .take(RESPONSE_BYTES_MAX)
            .read_to_string(&mut response)
            .with_context(|| format!("{method} {path}: no answer"))?;
        parse_response(&response).with_context(|| format!("{method} {path}: bad answer"))
    }
}

/// The status code and body of an HTTP/1.1 response with a `content-length` (or none).
fn parse_response(response: &str) -> Result<(u16, String)> {
    let status = response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .context("no HTTP/1.1 status line")?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_string();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_gives_its_status_and_body() {
        let (status, body) =
            parse_response("HTTP/1.1 201 Created\r\ncontent-length: 8\r\n\r\n{\"id\":7}").unwrap();
        assert_eq!((status, body.as_str()), (201, "{\"id\":7}"));
        assert!(parse_response("garbage").is_err());
    }
}
