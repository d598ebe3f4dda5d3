//! `commucat client ...`: the command-line client (a subcommand of the one `commucat` binary,
//! see docs/design/0015-cli-client.md). One profile directory per device
//! ([`profile`]); the REST API through `commucat_client::api`; messages over the Noise session;
//! every body end-to-end encrypted through [`content`] (Olm per device, Megolm per group).
//!
//! Output: human-readable lines by default; with `--json` one JSON object per result or
//! message on stdout. Errors: one line on stderr saying what went wrong and what to do (and
//! with `--json` also `{"error": ...}` on stdout), exit status 1.

mod account;
mod content;
mod messages;
mod profile;
mod session;

use anyhow::Result;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Global options of `commucat client`.
#[derive(Debug, Args)]
pub(crate) struct ClientArgs {
    /// The profile directory (device key, server, token, seen messages); default
    /// $COMMUCAT_PROFILE, else $XDG_CONFIG_HOME/commucat, else ~/.config/commucat.
    #[arg(long, global = true, value_name = "DIR")]
    profile: Option<PathBuf>,
    /// Print one JSON object per result or message, for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: ClientCommand,
}

#[derive(Debug, Subcommand)]
enum ClientCommand {
    /// Set up this profile: the server to use (the line `commucat serve` prints) and this
    /// device's key (created here, mode 0600).
    Init {
        /// The server's address, HOST:PORT.
        #[arg(long)]
        server: String,
        /// The server's public key (64 hex digits).
        #[arg(long)]
        server_key: String,
        /// The REST API.
        #[arg(long, default_value = "http://127.0.0.1:7080/v1")]
        api: String,
        /// This device's name, as the account's device list shows it.
        #[arg(long, default_value = "cli")]
        device_name: String,
    },
    /// Create an account with this device as its first device.
    Register {
        /// The account's handle.
        handle: String,
    },
    /// Add devices to an account with pairing codes.
    #[command(subcommand)]
    Pair(PairCommand),
    /// The account's devices.
    #[command(subcommand)]
    Devices(DevicesCommand),
    /// Friends and friend requests.
    #[command(subcommand)]
    Friends(FriendsCommand),
    /// Group conversations.
    #[command(subcommand)]
    Groups(GroupsCommand),
    /// Send a message to a friend (every device of theirs and this account's other devices),
    /// or with --group to a group.
    Send {
        /// The friend's handle (omit with --group).
        #[arg(required_unless_present = "group")]
        handle: Option<String>,
        /// The text (with --group, the only positional argument).
        text: Option<String>,
        /// Send to this group conversation instead.
        #[arg(long, value_name = "ID")]
        group: Option<u64>,
    },
    /// Print received messages and acknowledge them; each message is shown once, across runs.
    Listen {
        /// Stop after this many messages (and whatever else has already arrived).
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
    },
    /// Chat with a friend: lines typed are sent, received ones printed. End with Ctrl-D.
    Chat {
        /// The friend's handle.
        handle: String,
    },
}

#[derive(Debug, Subcommand)]
enum PairCommand {
    /// Create a pairing code on this (registered) device.
    Create,
    /// Join the account of the device that created CODE with this device.
    Claim {
        /// The code, XXXXX-XXXXX.
        code: String,
    },
}

#[derive(Debug, Subcommand)]
enum DevicesCommand {
    /// List the account's devices.
    List,
    /// Revoke a device: its sessions end and it can no longer sign in.
    Revoke {
        /// The device id (32 hex digits, from `devices list`).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum FriendsCommand {
    /// List friends.
    List,
    /// Ask HANDLE to be friends.
    Add { handle: String },
    /// Accept HANDLE's request.
    Accept { handle: String },
    /// Reject HANDLE's request.
    Reject { handle: String },
    /// End the friendship with HANDLE.
    Remove { handle: String },
    /// Pending requests, incoming and outgoing.
    Requests,
}

#[derive(Debug, Subcommand)]
enum GroupsCommand {
    /// List this account's conversations.
    List,
    /// Create a group (this account is its owner).
    Create { title: String },
    /// Invite a friend to group ID.
    Add { id: u64, handle: String },
    /// Remove HANDLE from group ID.
    Remove { id: u64, handle: String },
    /// Leave group ID.
    Leave { id: u64 },
    /// Show group ID and its members.
    Show { id: u64 },
}

/// Where results go: human lines or JSON objects.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Out {
    pub(crate) json: bool,
}

impl Out {
    /// Prints one result: `value` with --json, else the line(s) `human` makes.
    pub(crate) fn emit(self, value: &serde_json::Value, human: impl FnOnce() -> String) {
        if self.json {
            println!("{value}");
        } else {
            let text = human();
            if !text.is_empty() {
                println!("{text}");
            }
        }
    }
}

/// Runs a client command; errors are printed as one line, exit status 1.
pub(crate) fn run(args: ClientArgs) -> ExitCode {
    let out = Out { json: args.json };
    match dispatch(args.profile, args.command, out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let message = format!("{error:#}");
            if out.json {
                println!("{}", serde_json::json!({ "error": message }));
            }
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(profile: Option<PathBuf>, command: ClientCommand, out: Out) -> Result<()> {
    let dir = match profile {
        Some(dir) => dir,
        None => profile::default_dir()?,
    };
    let profile = profile::Profile::new(dir);
    if let ClientCommand::Init {
        server,
        server_key,
        api,
        device_name,
    } = command
    {
        return account::init(&profile, server, &server_key, api, device_name, out);
    }
    let ctx = session::Ctx::load(profile)?;
    match command {
        ClientCommand::Init { .. } => Ok(()),
        ClientCommand::Register { handle } => account::register(ctx, &handle, out),
        ClientCommand::Pair(PairCommand::Create) => account::pair_create(&ctx, out),
        ClientCommand::Pair(PairCommand::Claim { code }) => account::pair_claim(ctx, &code, out),
        ClientCommand::Devices(DevicesCommand::List) => account::devices_list(&ctx, out),
        ClientCommand::Devices(DevicesCommand::Revoke { id }) => {
            account::devices_revoke(&ctx, &id, out)
        }
        ClientCommand::Friends(command) => account::friends(&ctx, command, out),
        ClientCommand::Groups(command) => account::groups(&ctx, command, out),
        ClientCommand::Send {
            handle,
            text,
            group,
        } => match (group, handle, text) {
            (Some(group), Some(text), None) | (Some(group), None, Some(text)) => {
                messages::send_group(&ctx, group, &text, out)
            }
            (None, Some(handle), Some(text)) => messages::send(&ctx, &handle, &text, out),
            _ => anyhow::bail!(
                "usage: `commucat client send HANDLE TEXT` or `commucat client send --group ID TEXT`"
            ),
        },
        ClientCommand::Listen { count, timeout } => messages::listen(&ctx, count, timeout, out),
        ClientCommand::Chat { handle } => messages::chat(&ctx, &handle, out),
    }
}
