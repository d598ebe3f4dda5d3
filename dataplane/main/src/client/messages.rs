//! Message commands: send, listen, chat.
#![allow(clippy::disallowed_methods)] // chat reads stdin on its own thread; listen reads the clock

use super::Out;
use super::content;
use super::profile::{Received, parse_device_id};
use super::session::Ctx;
use anyhow::{Context, Result, anyhow, bail};
use commucat_client::{
    Client, ConversationId, DeviceId, ErrorCode, Event, MessageId, OsRng, Recipient,
    ReconnectEvent, SendStatus,
};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::time::{Duration, Instant};

/// How long `send` waits for the server to take its messages.
const SEND_WAIT: Duration = Duration::from_secs(10);
/// Lines typed in `chat` waiting to be sent.
const CHAT_LINES_MAX: usize = 64;
/// How often `listen` and `chat` look at the clock and the keyboard while idle.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Devices remembered by name in one run (the account's and its friends').
const DIRECTORY_MAX: usize = 4096;

/// The devices a message to `handle` goes to: theirs and this account's other devices.
fn targets(ctx: &Ctx, handle: &str) -> Result<Vec<DeviceId>> {
    let own_handle = ctx.handle()?.to_string();
    let this = dp_noise::device_id(ctx.profile.key()?.public());
    let mut devices = Vec::new();
    if handle != own_handle {
        let theirs = ctx.api(|api| api.user_devices(handle))?;
        devices.extend(
            theirs
                .iter()
                .filter(|d| d.revoked_at_ms.is_none())
                .filter_map(|d| parse_device_id(&d.id)),
        );
        if devices.is_empty() {
            bail!("{handle} has no devices to send to");
        }
    }
    let own = ctx.api(|api| api.devices())?;
    devices.extend(
        own.iter()
            .filter(|d| d.revoked_at_ms.is_none())
            .filter_map(|d| parse_device_id(&d.id))
            .filter(|d| *d != this),
    );
    devices.sort_unstable();
    devices.dedup();
    if devices.is_empty() {
        bail!("no other device to send to");
    }
    Ok(devices)
}

fn status_name(status: SendStatus) -> &'static str {
    match status {
        SendStatus::Delivered => "delivered",
        SendStatus::Stored => "stored",
        _ => "retry",
    }
}

pub(crate) fn send(ctx: &Ctx, handle: &str, text: &str, out: Out) -> Result<()> {
    let devices = targets(ctx, handle)?;
    let inner = content::inner_text(text);
    let (bodies, missing) = ctx
        .profile
        .with_e2e(|e2e| content::seal_each(ctx, e2e, &devices, &inner))?;
    if bodies.is_empty() {
        bail!("{}", content::missing_keys(&missing, handle));
    }
    let mut client = ctx.connect()?;
    let mut waiting: BTreeMap<MessageId, DeviceId> = BTreeMap::new();
    for (device, body) in &bodies {
        let id = client
            .send(Recipient::Device(*device), body)
            .map_err(|e| anyhow!("the connection failed while sending: {e}: try again"))?;
        waiting.insert(id, *device);
    }
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    wait_acks(
        ctx,
        &mut client,
        &mut waiting,
        None,
        |id, device, status| {
            *counts.entry(status_name(status)).or_default() += 1;
            out.emit(
                &json!({ "type": "sent", "to": handle, "device": hex::encode(device.0),
                     "id": hex::encode(id.0), "status": status_name(status) }),
                String::new,
            );
        },
    )?;
    if !out.json {
        let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
        println!(
            "sent to {handle}, end-to-end encrypted ({} device{}: {})",
            bodies.len(),
            if bodies.len() == 1 { "" } else { "s" },
            summary.join(", ")
        );
    }
    if !missing.is_empty() {
        bail!("{}", content::missing_keys(&missing, handle));
    }
    Ok(())
}

/// Waits until the server has taken every message in `waiting` (delivered or stored).
fn wait_acks(
    ctx: &Ctx,
    client: &mut Client<OsRng>,
    waiting: &mut BTreeMap<MessageId, DeviceId>,
    group: Option<u64>,
    mut taken: impl FnMut(MessageId, DeviceId, SendStatus),
) -> Result<()> {
    let deadline = Instant::now() + SEND_WAIT;
    while !waiting.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "the server did not confirm {} message(s) in time; they may still arrive: check \
                 the connection and send again if needed",
                waiting.len()
            );
        }
        match client.next_event(left) {
            Ok(Some(Event::SendAck {
                message, status, ..
            })) if status != SendStatus::Retry => {
                if let Some(device) = waiting.remove(&message) {
                    taken(message, device, status);
                }
            }
            Ok(Some(Event::Delivered(delivery))) => ctx.stash(&delivery)?,
            Ok(Some(Event::Error { code, .. })) => bail!("{}", refusal(code, group)),
            Ok(Some(Event::Closed(reason))) => {
                bail!("the server closed the session ({reason:?}) before confirming: send again")
            }
            Ok(_) => {}
            Err(error) => bail!("the connection failed: {error}: send again"),
        }
    }
    let _ = client.flush();
    Ok(())
}

/// What to say when the server refuses a send with an `Error` frame.
fn refusal(code: ErrorCode, group: Option<u64>) -> String {
    match group {
        Some(group) if code == ErrorCode::FORBIDDEN => format!(
            "the server refused the message to group {group} (FORBIDDEN): check that you are a \
             member with `commucat client groups show {group}`; if you are, this server does not \
             accept group messages yet"
        ),
        Some(group) => format!(
            "the server refused the message to group {group} ({code}): see docs/PROTOCOL.md §8"
        ),
        None => format!("the server refused the message ({code}): see docs/PROTOCOL.md §8"),
    }
}

/// The live devices of `group`'s members, other than this one, and the members whose devices
/// cannot be looked up (for example one who left between the two requests).
fn member_devices(ctx: &Ctx, group: u64) -> Result<(Vec<DeviceId>, Vec<String>)> {
    let own = ctx.handle()?.to_string();
    let this = dp_noise::device_id(ctx.profile.key()?.public());
    let detail = ctx.api(|api| api.conversation(group))?;
    let mut devices = Vec::new();
    let mut unreachable = Vec::new();
    for member in &detail.members {
        let listed = if member.handle == own {
            ctx.api(|api| api.devices())
        } else {
            ctx.api(|api| api.user_devices(&member.handle))
        };
        match listed {
            Ok(listed) => devices.extend(
                listed
                    .iter()
                    .filter(|d| d.revoked_at_ms.is_none())
                    .filter_map(|d| parse_device_id(&d.id))
                    .filter(|d| *d != this),
            ),
            Err(_) => unreachable.push(member.handle.clone()),
        }
    }
    devices.sort_unstable();
    devices.dedup();
    Ok((devices, unreachable))
}

pub(crate) fn send_group(ctx: &Ctx, group: u64, text: &str, out: Out) -> Result<()> {
    let (devices, unreachable) = member_devices(ctx, group)?;
    for handle in &unreachable {
        eprintln!(
            "warning: the devices of {handle}, a member of group {group}, cannot be looked up, \
             so they cannot read this message (check `groups show {group}` and try again)"
        );
    }
    let inner = content::inner_text(text);
    // Share a new group session with the devices that can receive it, then encrypt once.
    let (key_bodies, missing, body) = ctx.profile.with_e2e(|e2e| {
        let claimed = content::claim(ctx, e2e, &devices)?;
        // Devices without published keys cannot get the room key: leave them out of the
        // session, so that it is rotated and shared again once they publish.
        let (reachable, no_keys): (Vec<DeviceId>, Vec<DeviceId>) = devices
            .iter()
            .partition(|d| content::reachable(e2e, &claimed, **d));
        let room_key = e2e
            .groups()
            .prepare(group, &reachable)
            .map_err(|e| anyhow!("{e}"))?;
        let (key_bodies, missing) = match room_key {
            Some(key) => content::seal_claimed(e2e, &key.devices, &claimed, &key.payload)?,
            None => (Vec::new(), Vec::new()),
        };
        let body = e2e
            .groups()
            .encrypt(group, &inner)
            .map_err(|e| anyhow!("{e}"))?;
        let mut all_missing = no_keys;
        all_missing.extend(missing);
        Ok((key_bodies, all_missing, body))
    })?;
    let mut client = ctx.connect()?;
    let mut waiting: BTreeMap<MessageId, DeviceId> = BTreeMap::new();
    let sent = (|| -> Result<MessageId> {
        for (device, key_body) in &key_bodies {
            let id = client
                .send(Recipient::Device(*device), key_body)
                .map_err(|e| anyhow!("the connection failed while sending: {e}: try again"))?;
            waiting.insert(id, *device);
        }
        let id = client
            .send(Recipient::Conversation(ConversationId(group)), &body)
            .map_err(|e| anyhow!("the connection failed while sending: {e}: try again"))?;
        waiting.insert(id, DeviceId::default());
        Ok(id)
    })();
    let result = sent.and_then(|group_id| {
        wait_acks(
            ctx,
            &mut client,
            &mut waiting,
            Some(group),
            |id, _, status| {
                if id == group_id {
                    out.emit(
                        &json!({ "type": "sent", "group": group, "id": hex::encode(id.0),
                             "status": status_name(status), "devices": devices.len() }),
                        || {
                            format!(
                                "sent to group {group}, end-to-end encrypted ({})",
                                status_name(status)
                            )
                        },
                    );
                }
            },
        )
    });
    if result.is_err() && !key_bodies.is_empty() {
        // The members may not have the new session's key: start another next time.
        ctx.profile.with_e2e(|e2e| {
            e2e.groups().discard_outbound(group);
            Ok(())
        })?;
    }
    result?;
    if !missing.is_empty() {
        eprintln!("warning: {}", content::missing_keys(&missing, "a member"));
    }
    Ok(())
}

/// Device ids to handles, for showing who wrote.
struct Directory {
    names: BTreeMap<DeviceId, String>,
    tried: BTreeSet<DeviceId>,
}

impl Directory {
    fn new() -> Self {
        Self {
            names: BTreeMap::new(),
            tried: BTreeSet::new(),
        }
    }

    /// The handle of `device`'s account; the directory is reloaded once per unknown device.
    fn handle(&mut self, ctx: &Ctx, device: DeviceId) -> Option<String> {
        if !self.names.contains_key(&device)
            && self.tried.len() < DIRECTORY_MAX
            && self.tried.insert(device)
        {
            let _ = self.load(ctx);
        }
        self.names.get(&device).cloned()
    }

    fn load(&mut self, ctx: &Ctx) -> Result<()> {
        let own = ctx.handle()?.to_string();
        let mut add = |handle: &str, devices: Vec<commucat_client::api::Device>| {
            for d in devices {
                if let Some(id) = parse_device_id(&d.id)
                    && self.names.len() < DIRECTORY_MAX
                {
                    self.names.insert(id, handle.to_string());
                }
            }
        };
        add(&own, ctx.api(|api| api.devices())?);
        for friend in ctx.api(|api| api.friends())? {
            if let Ok(devices) = ctx.api(|api| api.user_devices(&friend.handle)) {
                add(&friend.handle, devices);
            }
        }
        Ok(())
    }
}

/// `HH:MM:SS` (UTC) of a Unix time in ms.
fn clock_time(ms: u64) -> String {
    let secs = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}

/// Opens one received message and prints what it holds (a room key shows nothing; it may
/// release group messages that waited for it). Returns how many messages were shown.
fn show(ctx: &Ctx, directory: &mut Directory, received: Received, out: Out) -> u64 {
    let mut shown = 0;
    for opened in content::open(ctx, received) {
        print_message(ctx, directory, &opened, out);
        shown += 1;
    }
    shown
}

/// Prints one message: its text, or why it is unreadable.
fn print_message(ctx: &Ctx, directory: &mut Directory, opened: &content::Opened, out: Out) {
    let received = &opened.received;
    let device = parse_device_id(&received.device).unwrap_or_default();
    let from = directory.handle(ctx, device);
    let mut value = json!({
        "type": "message",
        "id": received.id,
        "from": from,
        "device": received.device,
        "conversation": received.conversation,
        "seq": received.seq,
        "sent_at_ms": received.sent_at_ms,
        "encrypted": opened.encrypted,
    });
    match &opened.text {
        Ok(text) => value["text"] = json!(text),
        Err(error) => value["error"] = json!(format!("unreadable ({error:#})")),
    }
    out.emit(&value, || {
        let who = from.clone().unwrap_or_else(|| "unknown".to_string());
        let short = &received.device[..received.device.len().min(8)];
        let place = if received.conversation == 0 {
            String::new()
        } else {
            format!(" in group {}", received.conversation)
        };
        let clear = if opened.encrypted {
            ""
        } else {
            " [unencrypted]"
        };
        match &opened.text {
            Ok(text) => format!(
                "[{}] {who} ({short}){place}{clear}: {text}",
                clock_time(received.sent_at_ms)
            ),
            Err(error) => format!(
                "[{}] {who} ({short}){place}: <unreadable ({error:#})>",
                clock_time(received.sent_at_ms)
            ),
        }
    });
}

/// Reports connection changes on stderr (stdout stays one object per message).
fn report(event: &ReconnectEvent) {
    match event {
        ReconnectEvent::Disconnected { reason, retry_in } => eprintln!(
            "connection lost ({reason}); reconnecting in {:.1} s",
            retry_in.as_secs_f64()
        ),
        ReconnectEvent::Reconnected { resent, .. } => {
            eprintln!("reconnected; {resent} unconfirmed message(s) sent again");
        }
        ReconnectEvent::Event(Event::Error { code, .. }) => {
            eprintln!("{}", refusal(*code, None));
        }
        _ => {}
    }
}

pub(crate) fn listen(ctx: &Ctx, count: Option<u64>, timeout: Option<u64>, out: Out) -> Result<()> {
    ctx.handle()?;
    let deadline = timeout.map(|secs| Instant::now() + Duration::from_secs(secs));
    let mut directory = Directory::new();
    let mut shown = 0u64;
    if let Err(error) = content::top_up(ctx) {
        eprintln!("warning: cannot publish end-to-end keys ({error:#}); new senders may fail");
    }
    for kept in ctx.profile.inbox() {
        shown += show(ctx, &mut directory, kept, out);
    }
    ctx.profile.clear_inbox()?;
    // Each message is acknowledged only once it is shown and its id stored in the profile: a
    // crash before that gets it delivered again, not lost.
    let mut client = ctx.connect_reconnecting_app_acked()?;
    loop {
        let reached = count.is_some_and(|count| shown >= count);
        let wait = if reached {
            // Show what has arrived already, then stop (what is not shown is not acknowledged
            // and comes again next time).
            Duration::ZERO
        } else {
            match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            }
        };
        match client.next_event(wait)? {
            Some(ReconnectEvent::Event(Event::Delivered(delivery))) => {
                let message = Received::from(&delivery);
                shown += show(ctx, &mut directory, message, out);
                ctx.profile.mark_seen(delivery.message)?;
                client.ack(delivery.message);
            }
            Some(other) => report(&other),
            None if reached || deadline.is_some_and(|d| Instant::now() >= d) => break,
            None => {}
        }
    }
    client.flush();
    let waiting = ctx
        .profile
        .with_e2e(|e2e| Ok(e2e.groups().pending()))
        .unwrap_or(0);
    if waiting > 0 {
        eprintln!(
            "{waiting} group message(s) still wait for their key from the sender; they are shown \
             by a later listen once it arrives"
        );
    }
    if !out.json {
        eprintln!("{shown} message(s)");
    }
    Ok(())
}

pub(crate) fn chat(ctx: &Ctx, handle: &str, out: Out) -> Result<()> {
    let devices = targets(ctx, handle)?;
    let mut directory = Directory::new();
    let mut client = ctx.connect_reconnecting()?;
    let (lines_tx, lines_rx) = std::sync::mpsc::sync_channel::<String>(CHAT_LINES_MAX);
    std::thread::Builder::new()
        .name("chat-stdin".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        })
        .context("cannot start the keyboard reader")?;
    if !out.json {
        eprintln!("chatting with {handle}; type a line and Enter to send, Ctrl-D to end");
    }
    let mut ended_at: Option<Instant> = None;
    loop {
        match client.next_event(POLL_INTERVAL)? {
            Some(ReconnectEvent::Event(Event::Delivered(delivery))) => {
                ctx.profile.mark_seen(delivery.message)?;
                show(ctx, &mut directory, Received::from(&delivery), out);
            }
            Some(other) => report(&other),
            None => {}
        }
        loop {
            match lines_rx.try_recv() {
                Ok(line) if line.trim().is_empty() => {}
                Ok(line) => {
                    let inner = content::inner_text(&line);
                    let (bodies, missing) = ctx
                        .profile
                        .with_e2e(|e2e| content::seal_each(ctx, e2e, &devices, &inner))?;
                    if !missing.is_empty() {
                        eprintln!("{}", content::missing_keys(&missing, handle));
                    }
                    for (device, body) in &bodies {
                        let id = client
                            .send(Recipient::Device(*device), body)
                            .map_err(|e| anyhow!("cannot send: {e}"))?;
                        if out.json {
                            out.emit(
                                &json!({ "type": "sent", "to": handle,
                                         "device": hex::encode(device.0),
                                         "id": hex::encode(id.0) }),
                                String::new,
                            );
                        }
                    }
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    ended_at.get_or_insert_with(Instant::now);
                    break;
                }
            }
        }
        if let Some(at) = ended_at {
            // Input ended: leave once the server has taken what was typed.
            if client.unacknowledged() == 0 {
                break;
            }
            if at.elapsed() > SEND_WAIT {
                bail!(
                    "{} message(s) were not confirmed by the server before exit: send them again",
                    client.unacknowledged()
                );
            }
        }
    }
    client.flush();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_time_is_utc_hours_minutes_seconds() {
        assert_eq!(clock_time(0), "00:00:00");
        assert_eq!(clock_time(1_700_000_000_000), "22:13:20");
    }

    #[test]
    fn a_forbidden_send_names_the_likely_cause() {
        assert!(refusal(ErrorCode::FORBIDDEN, Some(3)).contains("groups show 3"));
        assert!(refusal(ErrorCode::CONFLICT, None).contains("CONFLICT"));
    }
}
