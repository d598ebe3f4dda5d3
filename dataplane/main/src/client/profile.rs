//! The profile directory: everything one device of the CLI keeps between runs.
//!
//! ```text
//! PROFILE/            mode 0700
//!   profile.json      server address, server key, API URL, device name, account handle
//!   device.key        the device's private key (mode 0600; the device *is* this key)
//!   token             the REST token (mode 0600), fetched over the Noise session
//!   seen              ids of messages already shown, one hex id a line (last SEEN_MAX)
//!   inbox.jsonl       messages received by a command other than listen/chat, not shown yet
//!   e2e.key           32 random bytes (mode 0600): the key e2e.pickle is encrypted under
//!   e2e.pickle        the end-to-end state (mode 0600): Olm account and sessions, Megolm
//!                     sessions, group messages waiting for their key (XChaCha20-Poly1305)
//!   e2e.lock          held while a command reads and writes e2e.pickle
//! ```

use anyhow::{Context, Result, bail};
use commucat_client::e2e::E2e;
use commucat_client::{Dedup, Delivery, DeviceId, MessageId, OsRng, StaticKeypair, keyfile};
use serde::{Deserialize, Serialize};
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Message ids remembered as shown, across runs (the server redelivers only what was not
/// acknowledged, so this covers the window between an acknowledgement and its processing).
pub(crate) const SEEN_MAX: usize = 4096;
/// Messages held in the inbox for the next `listen`.
pub(crate) const INBOX_MAX: usize = 10_000;

/// `profile.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    pub(crate) server: String,
    pub(crate) server_key: String,
    pub(crate) api: String,
    pub(crate) device_name: String,
    #[serde(default)]
    pub(crate) handle: Option<String>,
}

/// A message received but not yet shown (`inbox.jsonl`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Received {
    pub(crate) id: String,
    pub(crate) device: String,
    pub(crate) conversation: u64,
    pub(crate) seq: u64,
    pub(crate) sent_at_ms: u64,
    pub(crate) body: String,
}

impl From<&Delivery> for Received {
    fn from(delivery: &Delivery) -> Self {
        Self {
            id: hex::encode(delivery.message.0),
            device: hex::encode(delivery.sender.0),
            conversation: delivery.conversation.0,
            seq: delivery.seq,
            sent_at_ms: delivery.sent_at_ms,
            body: hex::encode(&delivery.body),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Profile {
    pub(crate) dir: PathBuf,
}

/// The default profile: `$COMMUCAT_PROFILE`, else `$XDG_CONFIG_HOME/commucat`, else
/// `~/.config/commucat`.
#[allow(clippy::disallowed_methods)] // the binary reads its environment once, here
pub(crate) fn default_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("COMMUCAT_PROFILE").filter(|d| !d.is_empty()) {
        return Ok(dir.into());
    }
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("commucat"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".config").join("commucat")),
        None => bail!("no profile directory: pass --profile DIR or set COMMUCAT_PROFILE"),
    }
}

impl Profile {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Creates the directory (mode 0700).
    pub(crate) fn create_dir(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create the profile {}", self.dir.display()))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {}", self.dir.display()))
    }

    pub(crate) fn exists(&self) -> bool {
        self.path("profile.json").exists()
    }

    pub(crate) fn settings(&self) -> Result<Settings> {
        let path = self.path("profile.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => bail!(
                "no profile in {}: run `commucat client init --server HOST:PORT --server-key HEX` \
                 (the line `commucat serve` prints), or pass --profile DIR",
                self.dir.display()
            ),
            Err(error) => {
                return Err(error).with_context(|| format!("cannot read {}", path.display()));
            }
        };
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is damaged: fix it or run `commucat client init` in a new profile",
                path.display()
            )
        })
    }

    pub(crate) fn save_settings(&self, settings: &Settings) -> Result<()> {
        let text = serde_json::to_string_pretty(settings)?;
        write_private(&self.path("profile.json"), text.as_bytes())
    }

    /// The device key, created on first use.
    pub(crate) fn key(&self) -> Result<StaticKeypair> {
        let path = self.path("device.key");
        keyfile::load_or_create(&path, &mut OsRng)
            .with_context(|| format!("device key {}", path.display()))
    }

    pub(crate) fn token(&self) -> Option<String> {
        std::fs::read_to_string(self.path("token"))
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    }

    pub(crate) fn save_token(&self, token: &str) -> Result<()> {
        write_private(&self.path("token"), format!("{token}\n").as_bytes())
    }

    /// The ids already shown, oldest first (at most [`SEEN_MAX`]).
    pub(crate) fn seen(&self) -> Vec<MessageId> {
        let text = std::fs::read_to_string(self.path("seen")).unwrap_or_default();
        let ids: Vec<MessageId> = text.lines().filter_map(parse_message_id).collect();
        let skip = ids.len().saturating_sub(SEEN_MAX);
        ids[skip..].to_vec()
    }

    /// A dedup window holding the ids already shown.
    pub(crate) fn dedup(&self) -> Dedup {
        let mut dedup = Dedup::new(commucat_client::DEDUP_WINDOW_DEFAULT);
        for id in self.seen() {
            dedup.insert(id);
        }
        dedup
    }

    /// Records `id` as shown; rewrites the file to its last [`SEEN_MAX`] ids when it grows
    /// past twice that.
    pub(crate) fn mark_seen(&self, id: MessageId) -> Result<()> {
        let path = self.path("seen");
        append_private(&path, format!("{}\n", hex::encode(id.0)).as_bytes())?;
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len > u64::try_from(2 * SEEN_MAX * 33).unwrap_or(u64::MAX) {
            let kept: String = self
                .seen()
                .iter()
                .map(|id| format!("{}\n", hex::encode(id.0)))
                .collect();
            write_private(&path, kept.as_bytes())?;
        }
        Ok(())
    }

    pub(crate) fn inbox(&self) -> Vec<Received> {
        let text = std::fs::read_to_string(self.path("inbox.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Keeps a received message for the next `listen`; false when the inbox is full.
    pub(crate) fn keep(&self, received: &Received) -> Result<bool> {
        if self.inbox().len() >= INBOX_MAX {
            return Ok(false);
        }
        let mut line = serde_json::to_string(received)?;
        line.push('\n');
        append_private(&self.path("inbox.jsonl"), line.as_bytes())?;
        Ok(true)
    }

    pub(crate) fn clear_inbox(&self) -> Result<()> {
        match std::fs::remove_file(self.path("inbox.jsonl")) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                Err(error).context("cannot clear the inbox")
            }
            _ => Ok(()),
        }
    }
}

impl Profile {
    /// The key `e2e.pickle` is encrypted under, created (32 random bytes, mode 0600) on first
    /// use.
    fn e2e_key(&self) -> Result<zeroize::Zeroizing<[u8; 32]>> {
        let path = self.path("e2e.key");
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        match std::fs::File::open(&path) {
            Ok(mut file) => {
                let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(33));
                Read::by_ref(&mut file)
                    .take(33)
                    .read_to_end(&mut bytes)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                if bytes.len() != 32 {
                    bail!(
                        "{} is damaged (not 32 bytes): the end-to-end state cannot be read",
                        path.display()
                    );
                }
                key.copy_from_slice(&bytes);
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                getrandom::getrandom(key.as_mut())
                    .map_err(|e| anyhow::anyhow!("the random source failed: {e}"))?;
                write_private(&path, key.as_ref())?;
            }
            Err(error) => {
                return Err(error).with_context(|| format!("cannot read {}", path.display()));
            }
        }
        Ok(key)
    }

    /// Runs `change` on the end-to-end state and saves it (atomically, mode 0600) whatever
    /// `change` returns, holding `e2e.lock` meanwhile so that another command of this profile
    /// (a `send` while `listen` runs) never overwrites this one's ratchet steps. A missing
    /// state is a new device identity.
    pub(crate) fn with_e2e<T>(&self, change: impl FnOnce(&mut E2e) -> Result<T>) -> Result<T> {
        let lock = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(self.path("e2e.lock"))
            .context("cannot open the end-to-end state's lock")?;
        lock.lock().context("cannot lock the end-to-end state")?;
        let key = self.e2e_key()?;
        let path = self.path("e2e.pickle");
        let mut e2e = match std::fs::read_to_string(&path) {
            Ok(text) => E2e::from_pickle(text.trim(), &key).map_err(|e| {
                anyhow::anyhow!(
                    "{} cannot be read ({e}): it does not match e2e.key; restore both files",
                    path.display()
                )
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => E2e::new(),
            Err(error) => {
                return Err(error).with_context(|| format!("cannot read {}", path.display()));
            }
        };
        let result = change(&mut e2e);
        let pickled = e2e
            .try_pickle(&key)
            .map_err(|e| anyhow::anyhow!("cannot save the end-to-end state: {e}"))?;
        write_private(&path, pickled.as_bytes())?;
        drop(lock);
        result
    }
}

pub(crate) fn parse_message_id(text: &str) -> Option<MessageId> {
    let bytes: [u8; 16] = hex::decode(text.trim()).ok()?.try_into().ok()?;
    Some(MessageId(bytes))
}

pub(crate) fn parse_device_id(text: &str) -> Option<DeviceId> {
    let bytes: [u8; 16] = hex::decode(text.trim()).ok()?.try_into().ok()?;
    Some(DeviceId(bytes))
}

/// Writes `bytes` to `path` (mode 0600) through a temporary file and a rename.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

fn append_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_data()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_ids_persist_bounded_and_feed_the_dedup_window() {
        let dir = std::env::temp_dir().join(format!("commucat-profile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let profile = Profile::new(dir.clone());
        profile.create_dir().unwrap();
        for n in 0..(2 * SEEN_MAX + 10) {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(n as u64).to_le_bytes());
            profile.mark_seen(MessageId(id)).unwrap();
        }
        let seen = profile.seen();
        assert_eq!(seen.len(), SEEN_MAX);
        let last = *seen.last().unwrap();
        assert!(profile.dedup().contains(last));
        let mut first = [0u8; 16];
        first[..8].copy_from_slice(&0u64.to_le_bytes());
        assert!(
            !profile.dedup().contains(MessageId(first)),
            "the oldest were forgotten"
        );
        let mode = std::fs::metadata(dir.join("seen"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_e2e_state_is_kept_private_and_survives_between_commands() {
        let dir = std::env::temp_dir().join(format!("commucat-profile-e2e-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let profile = Profile::new(dir.clone());
        profile.create_dir().unwrap();
        let first = profile.with_e2e(|e2e| Ok(e2e.identity())).unwrap();
        let again = profile.with_e2e(|e2e| Ok(e2e.identity())).unwrap();
        assert_eq!(first, again, "the same identity on the next load");
        for name in ["e2e.key", "e2e.pickle"] {
            let meta = std::fs::metadata(dir.join(name)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
        }
        assert_eq!(std::fs::read(dir.join("e2e.key")).unwrap().len(), 32);
        // A failing change is still saved (a ratchet step must never be lost) and reported.
        let failed: Result<()> = profile.with_e2e(|e2e| {
            e2e.groups().prepare(9, &[DeviceId([1; 16])]).unwrap();
            bail!("later failure")
        });
        assert!(failed.is_err());
        let kept = profile
            .with_e2e(|e2e| Ok(e2e.groups().outbound_session_id(9)))
            .unwrap();
        assert!(kept.is_some());
        // A pickle that does not match the key is an error, not a new identity.
        std::fs::write(dir.join("e2e.key"), [0u8; 32]).unwrap();
        assert!(profile.with_e2e(|_| Ok(())).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
