//! Account commands: init, register, pairing, devices, friends, groups.

use super::profile::{Profile, Settings};
use super::session::{Ctx, op_error, reason};
use super::{FriendsCommand, GroupsCommand, Out};
use anyhow::{Context, Result, bail};
use commucat_client::ErrorCode;
use serde_json::json;

pub(crate) fn init(
    profile: &Profile,
    server: String,
    server_key: &str,
    api: String,
    device_name: String,
    out: Out,
) -> Result<()> {
    let key_ok = hex::decode(server_key).is_ok_and(|k| k.len() == 32);
    if !key_ok {
        bail!(
            "--server-key must be 64 hex digits: copy the `server public key` line that \
             `commucat serve` prints"
        );
    }
    commucat_client::api::Api::new(&api)
        .map_err(|e| anyhow::anyhow!("--api: {e}; for example http://127.0.0.1:7080/v1"))?;
    if profile.exists() {
        let old = profile.settings()?;
        if let Some(handle) = &old.handle {
            bail!(
                "the profile {} is already registered as {handle} on {}: use another --profile \
                 for another device or account",
                profile.dir.display(),
                old.server
            );
        }
    }
    profile.create_dir()?;
    let key = profile.key()?;
    let settings = Settings {
        server,
        server_key: server_key.to_ascii_lowercase(),
        api,
        device_name,
        handle: None,
    };
    profile.save_settings(&settings)?;
    let device = hex::encode(dp_noise::device_id(key.public()).0);
    out.emit(
        &json!({
            "profile": profile.dir.display().to_string(),
            "device": device,
            "public_key": hex::encode(key.public()),
            "server": settings.server,
        }),
        || {
            format!(
                "profile {} ready; this device is {device}\nnext: `commucat client register \
                 HANDLE` (new account) or `commucat client pair claim CODE` (join your account)",
                profile.dir.display()
            )
        },
    );
    Ok(())
}

pub(crate) fn register(mut ctx: Ctx, handle: &str, out: Out) -> Result<()> {
    if let Some(old) = &ctx.settings.handle {
        bail!("this profile is already registered as {old}: use another --profile");
    }
    let mut client = ctx.connect()?;
    let user = match ctx
        .ops(&mut client)
        .register(handle, &ctx.settings.device_name)
    {
        Ok(user) => user,
        Err(error) => match error.status() {
            Some(ErrorCode::CONFLICT) => bail!(
                "cannot register {handle}: {} — choose another handle (or this device is \
                 registered already)",
                reason(&error)
            ),
            Some(ErrorCode::MALFORMED_FRAME) => {
                bail!("{handle} is not a valid handle: {}", reason(&error))
            }
            Some(other) => bail!("registration failed ({other}): {}", reason(&error)),
            None => return Err(op_error(error)),
        },
    };
    ctx.settings.handle = Some(handle.to_string());
    ctx.profile.save_settings(&ctx.settings)?;
    ctx.issue_token(&mut client)?;
    let _ = client.flush();
    super::content::publish(&ctx, commucat_client::e2e::ONE_TIME_KEYS_PER_PUBLISH_MAX)
        .context("registered, but cannot publish end-to-end keys: run `commucat client listen`")?;
    let device = hex::encode(client.device().0);
    out.emit(
        &json!({ "handle": handle, "user": user.0, "device": device }),
        || format!("registered {handle}; this device is {device}"),
    );
    Ok(())
}

pub(crate) fn pair_create(ctx: &Ctx, out: Out) -> Result<()> {
    let code = ctx.api(|api| api.pairing_code())?;
    out.emit(&serde_json::to_value(&code)?, || {
        format!(
            "pairing code: {}\non the new device run: commucat client pair claim {} (valid for \
             5 minutes, once)",
            code.code, code.code
        )
    });
    Ok(())
}

pub(crate) fn pair_claim(mut ctx: Ctx, code: &str, out: Out) -> Result<()> {
    if let Some(old) = &ctx.settings.handle {
        bail!("this profile is already a device of {old}: use another --profile");
    }
    let mut client = ctx.connect()?;
    let claimed = ctx
        .ops(&mut client)
        .claim_pairing_code(code, &ctx.settings.device_name);
    if let Err(error) = claimed {
        match error.status() {
            Some(ErrorCode::FORBIDDEN | ErrorCode::MALFORMED_FRAME) => bail!(
                "the pairing code {code} was refused ({}): it is wrong, used or expired — create \
                 a new one with `commucat client pair create` on a device of the account",
                reason(&error)
            ),
            Some(ErrorCode::CONFLICT) => bail!(
                "this device already belongs to an account ({}): use a new --profile",
                reason(&error)
            ),
            Some(other) => bail!("pairing failed ({other}): {}", reason(&error)),
            None => return Err(op_error(error)),
        }
    }
    let token = ctx.issue_token(&mut client)?;
    let _ = client.flush();
    let mut api = commucat_client::api::Api::new(&ctx.settings.api)?;
    api.set_token(Some(token));
    let me = api
        .me()
        .map_err(|e| anyhow::anyhow!("paired, but cannot read the account: {e}"))?;
    ctx.settings.handle = Some(me.handle.clone());
    ctx.profile.save_settings(&ctx.settings)?;
    super::content::publish(&ctx, commucat_client::e2e::ONE_TIME_KEYS_PER_PUBLISH_MAX)
        .context("paired, but cannot publish end-to-end keys: run `commucat client listen`")?;
    out.emit(
        &json!({ "handle": me.handle, "device": me.device_id }),
        || {
            format!(
                "this device ({}) now belongs to {}",
                me.device_id, me.handle
            )
        },
    );
    Ok(())
}

pub(crate) fn devices_list(ctx: &Ctx, out: Out) -> Result<()> {
    let devices = ctx.api(|api| api.devices())?;
    let this = hex::encode(dp_noise::device_id(ctx.profile.key()?.public()).0);
    for device in &devices {
        let mut value = serde_json::to_value(device)?;
        value["this_device"] = json!(device.id == this);
        out.emit(&value, || {
            let mut line = format!("{}  {}", device.id, device.name);
            if device.id == this {
                line.push_str("  (this device)");
            }
            if device.revoked_at_ms.is_some() {
                line.push_str("  (revoked)");
            }
            line
        });
    }
    if devices.is_empty() && !out.json {
        println!("no devices");
    }
    Ok(())
}

pub(crate) fn devices_revoke(ctx: &Ctx, id: &str, out: Out) -> Result<()> {
    if super::profile::parse_device_id(id).is_none() {
        bail!("{id} is not a device id: use the 32 hex digits that `devices list` shows");
    }
    ctx.api(|api| api.revoke_device(id))?;
    out.emit(&json!({ "revoked": id }), || format!("revoked {id}"));
    Ok(())
}

pub(crate) fn friends(ctx: &Ctx, command: FriendsCommand, out: Out) -> Result<()> {
    match command {
        FriendsCommand::List => {
            let friends = ctx.api(|api| api.friends())?;
            for friend in &friends {
                out.emit(&serde_json::to_value(friend)?, || friend.handle.clone());
            }
            if friends.is_empty() && !out.json {
                println!("no friends yet: `commucat client friends add HANDLE`");
            }
        }
        FriendsCommand::Add { handle } => {
            let outcome = ctx.api(|api| api.request_friend(&handle))?;
            out.emit(
                &json!({ "handle": handle, "outcome": outcome.outcome }),
                || match outcome.outcome.as_str() {
                    "requested" => format!(
                        "asked {handle}; they accept with `commucat client friends accept {}`",
                        ctx.settings.handle.as_deref().unwrap_or("YOU")
                    ),
                    other => format!("{handle}: {other}"),
                },
            );
        }
        FriendsCommand::Accept { handle } => {
            ctx.api(|api| api.accept_friend(&handle))?;
            out.emit(&json!({ "handle": handle, "outcome": "friends" }), || {
                format!("you and {handle} are friends")
            });
        }
        FriendsCommand::Reject { handle } => {
            ctx.api(|api| api.reject_friend(&handle))?;
            out.emit(&json!({ "handle": handle, "outcome": "rejected" }), || {
                format!("rejected {handle}'s request")
            });
        }
        FriendsCommand::Remove { handle } => {
            ctx.api(|api| api.remove_friend(&handle))?;
            out.emit(&json!({ "handle": handle, "outcome": "removed" }), || {
                format!("you and {handle} are no longer friends")
            });
        }
        FriendsCommand::Requests => {
            let requests = ctx.api(|api| api.friend_requests())?;
            for request in &requests.incoming {
                out.emit(
                    &json!({ "direction": "incoming", "handle": request.from.handle,
                             "created_at_ms": request.created_at_ms }),
                    || format!("from {} (accept or reject)", request.from.handle),
                );
            }
            for request in &requests.outgoing {
                out.emit(
                    &json!({ "direction": "outgoing", "handle": request.to.handle,
                             "created_at_ms": request.created_at_ms }),
                    || format!("to {} (waiting)", request.to.handle),
                );
            }
            if requests.incoming.is_empty() && requests.outgoing.is_empty() && !out.json {
                println!("no pending requests");
            }
        }
    }
    Ok(())
}

pub(crate) fn groups(ctx: &Ctx, command: GroupsCommand, out: Out) -> Result<()> {
    match command {
        GroupsCommand::List => {
            let list = ctx.api(|api| api.conversations())?;
            for c in &list {
                out.emit(&serde_json::to_value(c)?, || {
                    format!("{}  {}  {}", c.id, c.kind, c.title.as_deref().unwrap_or(""))
                });
            }
            if list.is_empty() && !out.json {
                println!("no conversations: `commucat client groups create TITLE`");
            }
        }
        GroupsCommand::Create { title } => {
            let id = ctx.api(|api| api.create_group(&title))?;
            out.emit(&json!({ "id": id, "title": title }), || {
                format!("created group {id} ({title}); invite with `groups add {id} HANDLE`")
            });
        }
        GroupsCommand::Add { id, handle } => {
            ctx.api(|api| api.add_member(id, &handle))?;
            out.emit(&json!({ "id": id, "added": handle }), || {
                format!("added {handle} to group {id}")
            });
        }
        GroupsCommand::Remove { id, handle } => {
            ctx.api(|api| api.remove_member(id, &handle))?;
            out.emit(&json!({ "id": id, "removed": handle }), || {
                format!("removed {handle} from group {id}")
            });
        }
        GroupsCommand::Leave { id } => {
            ctx.api(|api| api.leave(id))?;
            out.emit(&json!({ "id": id, "left": true }), || {
                format!("left group {id}")
            });
        }
        GroupsCommand::Show { id } => {
            let detail = ctx.api(|api| api.conversation(id))?;
            out.emit(&serde_json::to_value(&detail)?, || {
                let c = &detail.conversation;
                let mut text = format!("{} {} {}", c.id, c.kind, c.title.as_deref().unwrap_or(""));
                for m in &detail.members {
                    text.push_str(&format!("\n  {} ({})", m.handle, m.role));
                }
                text
            });
        }
    }
    Ok(())
}
