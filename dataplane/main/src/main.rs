//! `commucat`: the CommuCat server (`serve`), its command-line tool (`keygen`, `pubkey`, ...)
//! and the command-line client (`client ...`).

/// `println!` for a long-running server: a closed stdout (a supervisor or a script that
/// stopped reading) must not panic it, so write errors are ignored.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that ignores a closed stderr, as [`say!`] does for stdout.
macro_rules! esay {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod client;
mod control_side;
mod serve;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use dp_io::OsRng;
use dp_noise::{StaticKeypair, device_id};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// CommuCat: a secure messaging and real-time media router.
#[derive(Debug, Parser)]
#[command(name = "commucat", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server. With no arguments it uses ./commucat-data (created on first start, with
    /// the server's key) and listens on 0.0.0.0:7443. Stop it with Ctrl-C or SIGTERM: it stops
    /// accepting, tells clients to reconnect, and drains within the deadline.
    Serve(serve::ServeArgs),
    /// Generate a Noise static key pair (X25519). The private key goes to a file readable only
    /// by its owner (mode 0600); the public key is printed.
    Keygen {
        /// Where to write the private key (64 hex digits and a newline).
        #[arg(long, short, default_value = "commucat.key")]
        out: PathBuf,
        /// Replace an existing key file.
        #[arg(long)]
        force: bool,
    },
    /// Apply pending database migrations (serve also applies them at start) and print the
    /// schema version before and after.
    Migrate {
        /// The database: a postgres:// URL, or sqlite:PATH; default DATA_DIR/commucat.sqlite3.
        #[arg(long, value_name = "URL")]
        store: Option<String>,
        /// The data directory holding the default SQLite database.
        #[arg(long, default_value = "commucat-data")]
        data_dir: PathBuf,
    },
    /// Replace the server's key: the current one moves to KEY.previous and stays accepted for
    /// the grace period (serve's `key_grace_secs`, default 7 days) so clients can update; with
    /// --admin, also replace the REST API's admin credential.
    RotateKeys {
        /// The data directory.
        #[arg(long, default_value = "commucat-data")]
        data_dir: PathBuf,
        /// The server key file; default DATA_DIR/server.key.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Also replace DATA_DIR/admin.credential (the old one stops working at once).
        #[arg(long)]
        admin: bool,
    },
    /// Print the public key and device id of a private key file.
    Pubkey {
        /// The private key file written by `keygen`.
        #[arg(long, short, default_value = "commucat.key")]
        key: PathBuf,
    },
    /// The command-line client: set up a device (`init`, `register`, `pair`), manage devices,
    /// friends and groups, and `send`, `listen` or `chat`. `--json` for scripts.
    Client(client::ClientArgs),
}

fn main() -> Result<ExitCode> {
    let command = match Cli::parse().command {
        Command::Client(args) => return Ok(client::run(args)),
        other => other,
    };
    run(command).map(|()| ExitCode::SUCCESS)
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Client(_) => Ok(()),
        Command::Serve(args) => serve::run(args),
        Command::Keygen { out, force } => keygen(&out, force),
        Command::Pubkey { key } => pubkey(&key),
        Command::Migrate { store, data_dir } => migrate(store.as_deref(), &data_dir),
        Command::RotateKeys {
            data_dir,
            key,
            admin,
        } => rotate_keys(&data_dir, key, admin),
    }
}

/// Where `rotate-keys` keeps the key it replaced.
fn previous_key_path(key: &Path) -> PathBuf {
    let mut name = key.file_name().unwrap_or_default().to_os_string();
    name.push(".previous");
    key.with_file_name(name)
}

fn rotate_keys(data_dir: &Path, key: Option<PathBuf>, admin: bool) -> Result<()> {
    let key = key.unwrap_or_else(|| data_dir.join("server.key"));
    let current = read_key(&key)?;
    let previous = previous_key_path(&key);
    // A new file, so its modification time marks when the key was retired.
    let _ = std::fs::remove_file(&previous);
    write_key(&previous, &current)?;
    let pair = write_new_key(&key)?;
    println!(
        "new server key: {} (mode 0600); the previous one is in {}",
        key.display(),
        previous.display()
    );
    print_public(&pair);
    println!("restart serve to use it; clients have the grace period to learn the new key");
    if admin {
        let path = data_dir.join("admin.credential");
        let _ = std::fs::remove_file(&path);
        control_api::generate_admin_credential(&path).context("admin credential")?;
        println!("new admin credential: {} (mode 0600)", path.display());
    }
    Ok(())
}

fn migrate(store: Option<&str>, data_dir: &Path) -> Result<()> {
    let config = control_store::StoreConfig::from_location(store, data_dir);
    if let control_store::Backend::Sqlite { path } = &config.backend
        && let Some(parent) = path.parent()
    {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let migrated = control_store::migrate_blocking(&config).context("migration failed")?;
    println!("schema version {} -> {}", migrated.from, migrated.to);
    Ok(())
}

fn keygen(out: &Path, force: bool) -> Result<()> {
    if out.exists() && !force {
        bail!(
            "{} already exists; pass --force to replace it (the old key is lost), or choose \
             another path with --out",
            out.display()
        );
    }
    let pair = write_new_key(out)?;
    println!("private key: {} (mode 0600)", out.display());
    print_public(&pair);
    Ok(())
}

/// Generates a key pair and writes its private half to `out` with mode 0600.
fn write_new_key(out: &Path) -> Result<StaticKeypair> {
    let pair = StaticKeypair::generate(&mut OsRng);
    write_key(out, &pair)?;
    Ok(pair)
}

/// Writes the private half of `pair` to `out` with mode 0600.
fn write_key(out: &Path, pair: &StaticKeypair) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("cannot create {}", out.display()))?;
    // `mode` applies only to new files; tighten an existing one too.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict the permissions of {}", out.display()))?;
    writeln!(file, "{}", hex::encode(pair.private()))
        .with_context(|| format!("cannot write {}", out.display()))?;
    file.sync_all()
        .with_context(|| format!("cannot sync {}", out.display()))?;
    Ok(())
}

fn pubkey(path: &Path) -> Result<()> {
    let pair = read_key(path)?;
    print_public(&pair);
    Ok(())
}

fn read_key(path: &Path) -> Result<StaticKeypair> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the key file {}", path.display()))?;
    let bytes = hex::decode(text.trim()).with_context(|| {
        format!(
            "{} is not a key file: expected 64 hex digits",
            path.display()
        )
    })?;
    let private: [u8; 32] = bytes.try_into().map_err(|bytes: Vec<u8>| {
        anyhow::anyhow!(
            "{} holds {} bytes; a key file holds 32 (64 hex digits)",
            path.display(),
            bytes.len()
        )
    })?;
    Ok(StaticKeypair::from_private(private))
}

fn print_public(pair: &StaticKeypair) {
    println!("public key:  {}", hex::encode(pair.public()));
    println!("device id:   {}", hex::encode(device_id(pair.public()).0));
}
