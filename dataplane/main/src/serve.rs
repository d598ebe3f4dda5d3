//! `commucat serve`: configuration (TOML file, then command-line overrides), the data directory
//! and server key, start, and shutdown on SIGINT or SIGTERM.

use crate::control_side::ControlSide;
use crate::{read_key, write_new_key};
use anyhow::{Context, Result};
use clap::Args;
use control_store::{Backend as StoreBackend, StoreConfig};
use dp_io::{Backend, Server, ServerConfig, StartError};
use serde::Deserialize;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Command-line settings; each overrides the config file.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// A TOML config file (keys: listen, quic_listen, shards, backend, data_dir, key,
    /// key_grace_secs, store, api_listen,
    /// idle_timeout_secs, outbound_bytes_max, inflight_max, conns_per_source_max, drain_deadline_secs,
    /// metrics_listen).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on (TCP), e.g. 0.0.0.0:7443; port 0 picks a free port.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Also serve the QUIC carrier on this UDP address, e.g. 0.0.0.0:7443 (the same sessions
    /// and frames over QUIC); port 0 picks a free port. Off unless given.
    #[arg(long, value_name = "ADDR")]
    quic_listen: Option<SocketAddr>,
    /// Shards (threads); default one per core.
    #[arg(long)]
    shards: Option<u16>,
    /// IO backend: auto (io_uring where it works, else epoll), uring (refuse to start without
    /// it) or epoll.
    #[arg(long, value_name = "auto|uring|epoll")]
    backend: Option<Backend>,
    /// Data directory; created on first start.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The server's private key file; default DATA_DIR/server.key, created if missing.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9464. No credential
    /// is asked: bind it to a private address. Off unless given.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Where offline envelopes and accounts are stored: a postgres:// URL, or sqlite:PATH;
    /// default DATA_DIR/commucat.sqlite3. Migrations are applied at start.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Where the REST API listens; default 127.0.0.1:7080 (port 0 picks a free port).
    #[arg(long)]
    api_listen: Option<SocketAddr>,
    /// Run without the REST API.
    #[arg(long, conflicts_with = "api_listen")]
    no_api: bool,
}

/// The config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    quic_listen: Option<SocketAddr>,
    shards: Option<u16>,
    backend: Option<String>,
    data_dir: Option<PathBuf>,
    key: Option<PathBuf>,
    idle_timeout_secs: Option<u64>,
    outbound_bytes_max: Option<usize>,
    inflight_max: Option<usize>,
    conns_per_source_max: Option<u32>,
    drain_deadline_secs: Option<u64>,
    metrics_listen: Option<SocketAddr>,
    store: Option<String>,
    api_listen: Option<SocketAddr>,
    key_grace_secs: Option<u64>,
}

const LISTEN_DEFAULT: &str = "0.0.0.0:7443";
const DATA_DIR_DEFAULT: &str = "commucat-data";
/// How long clients may still reach the server under its previous key after
/// `commucat rotate-keys` (config key `key_grace_secs`).
const KEY_GRACE_DEFAULT_SECS: u64 = 7 * 24 * 3600;
const API_LISTEN_DEFAULT: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    7080,
));

pub(crate) fn run(args: ServeArgs) -> Result<()> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the config file {}", path.display()))?;
            toml::from_str(&text)
                .with_context(|| format!("{} is not a valid config file", path.display()))?
        }
        None => FileConfig::default(),
    };
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| DATA_DIR_DEFAULT.into());
    prepare_data_dir(&data_dir)?;
    let key_path = args
        .key
        .or(file.key)
        .unwrap_or_else(|| data_dir.join("server.key"));
    let key = if key_path.exists() {
        read_key(&key_path)?
    } else {
        let key = write_new_key(&key_path)?;
        say!("created the server key {} (mode 0600)", key_path.display());
        key
    };
    let listen = match args.listen.or(file.listen) {
        Some(listen) => listen,
        None => LISTEN_DEFAULT.parse().context("default listen address")?,
    };
    let mut config = ServerConfig::new(listen, key.clone());
    let grace = Duration::from_secs(file.key_grace_secs.unwrap_or(KEY_GRACE_DEFAULT_SECS));
    config.previous_key = previous_key(&key_path, grace)?;
    if let Some(shards) = args.shards.or(file.shards) {
        anyhow::ensure!(shards > 0, "--shards must be at least 1");
        config.shards = shards;
    }
    if let Some(backend) = args.backend {
        config.backend = backend;
    } else if let Some(name) = &file.backend {
        config.backend = name
            .parse()
            .map_err(|error: String| anyhow::anyhow!("config file: {error}"))?;
    }
    if let Some(secs) = file.idle_timeout_secs {
        config.idle_timeout = Duration::from_secs(secs);
    }
    if let Some(envelopes) = file.inflight_max {
        anyhow::ensure!(envelopes > 0, "inflight_max must be at least 1");
        config.inflight_max = envelopes;
    }
    if let Some(bytes) = file.outbound_bytes_max {
        config.outbound_bytes_max = bytes;
    }
    if let Some(max) = file.conns_per_source_max {
        config.conns_per_source_max = max;
    }
    if let Some(secs) = file.drain_deadline_secs {
        config.drain_deadline = Duration::from_secs(secs);
    }
    config.metrics_listen = args.metrics_listen.or(file.metrics_listen);
    config.quic_listen = args.quic_listen.or(file.quic_listen);
    // Before the server starts and says where it listens, so a signal sent as soon as it has
    // said so stops it gracefully rather than killing it.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("cannot install signal handlers")?;
    let store = args.store.or(file.store);
    let store_config = StoreConfig::from_location(store.as_deref(), &data_dir);
    let api_listen = if args.no_api {
        None
    } else {
        Some(
            args.api_listen
                .or(file.api_listen)
                .unwrap_or(API_LISTEN_DEFAULT),
        )
    };
    let (mut control, revoked) = ControlSide::start(&store_config, &data_dir, api_listen)?;
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let shards = config.shards;
    let server = match Server::start_with_control(config, move |port| {
        let _ = port_tx.send(port);
    }) {
        Ok(server) => server,
        Err(StartError::Uring(reason)) => anyhow::bail!("--backend uring: {reason}"),
        Err(error) => Err(error).with_context(|| {
            format!("cannot listen on {listen} (or the metrics address): is it free and ours?")
        })?,
    };
    say!(
        "CommuCat listening on {} with {shards} shards ({} backend)",
        server.local_addr(),
        server.backend()
    );
    if let Some(addr) = server.quic_addr() {
        println!("QUIC on udp {addr}");
    }
    if let Some(reason) = server.fallback_reason() {
        say!("io_uring is unavailable, so epoll runs: {reason}");
    }
    if let Some(addr) = server.metrics_addr() {
        say!("metrics at http://{addr}/metrics");
    }
    say!(
        "server public key (give it to clients): {}",
        hex::encode(key.public())
    );
    // Before the lines that tests and scripts wait for (the REST API's is the last), so a
    // reader that stops there has read it.
    say!(
        "invite (run on a client device): {}",
        invite(server.local_addr(), key.public(), control.api_addr())
    );
    let port = port_rx
        .recv()
        .context("the server started without a control port")?;
    control.attach(port, revoked);
    match &store_config.backend {
        StoreBackend::Sqlite { path } => {
            say!("offline envelopes and accounts: {}", path.display())
        }
        StoreBackend::Postgres { .. } => say!("offline envelopes and accounts: PostgreSQL"),
    }
    if let Some(addr) = control.api_addr() {
        say!("REST API at http://{addr}/v1 (OpenAPI at /openapi.json)");
    }

    let signal = signals.forever().next();
    say!("signal {signal:?}: stopping; clients are told to reconnect");
    server.shutdown();
    control.shutdown();
    say!("stopped");
    Ok(())
}

/// The `commucat client init` line a user pastes to set up a device. An unspecified listen
/// address (0.0.0.0 or ::) becomes loopback: the operator replaces it with the host's name.
fn invite(listen: SocketAddr, public: &[u8; 32], api: Option<SocketAddr>) -> String {
    let reachable = |mut addr: SocketAddr| {
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        addr
    };
    let mut line = format!(
        "commucat client init --server {} --server-key {}",
        reachable(listen),
        hex::encode(public)
    );
    if let Some(api) = api {
        line.push_str(&format!(" --api http://{}/v1", reachable(api)));
    }
    line
}

/// The previous key (`KEY.previous`, written by `commucat rotate-keys`) with what is left of its
/// grace period, counted from when it was retired (the file's modification time).
fn previous_key(
    key_path: &Path,
    grace: Duration,
) -> Result<Option<(dp_noise::StaticKeypair, Duration)>> {
    let path = crate::previous_key_path(key_path);
    if !path.exists() {
        return Ok(None);
    }
    let retired = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .with_context(|| format!("cannot read the time of {}", path.display()))?;
    let age = retired.elapsed().unwrap_or(Duration::ZERO);
    match grace.checked_sub(age) {
        Some(left) if !left.is_zero() => {
            say!(
                "previous key {} still accepted for {} s",
                path.display(),
                left.as_secs()
            );
            Ok(Some((read_key(&path)?, left)))
        }
        _ => Ok(None),
    }
}

fn prepare_data_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict the permissions of {}", dir.display()))?;
    Ok(())
}
