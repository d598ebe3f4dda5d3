//! The control side of `commucat serve`: one tokio runtime with the store (SQLite by default,
//! PostgreSQL by URL), its group committer, durable offline delivery on the shards' links,
//! and the REST API. It starts before the shards (a database that cannot be opened stops the
//! server before it listens) and stops after them (what the shards stored on the way out is
//! committed).

use anyhow::{Context, Result};
use control_store::{CommitConfig, GroupCommitter, Store, StoreConfig};
use dp_io::ControlPort;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// Commands (revocations, membership changes) waiting to reach the shards, at most.
const COMMANDS_QUEUED_MAX: usize = 1024;

/// A running control side.
pub(crate) struct ControlSide {
    runtime: tokio::runtime::Runtime,
    store: Store,
    /// The control domain, shared by the REST API and the sessions' operations.
    control: Arc<control_core::Control>,
    committer: Option<GroupCommitter>,
    stop: watch::Sender<bool>,
    delivery: Option<tokio::task::JoinHandle<()>>,
    api_addr: Option<SocketAddr>,
}

impl ControlSide {
    /// Opens the store (applying migrations) and starts the committer and, if `api_listen`
    /// is set, the REST API with the admin credential in `data_dir/admin.credential`.
    pub(crate) fn start(
        store_config: &StoreConfig,
        data_dir: &Path,
        api_listen: Option<SocketAddr>,
    ) -> Result<(Self, mpsc::Receiver<control_core::ControlCommand>)> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("commucat-control")
            .enable_all()
            .build()
            .context("cannot start the control runtime")?;
        let store = runtime
            .block_on(Store::open(store_config))
            .context("cannot open the store")?;
        let committer = GroupCommitter::start(&store, CommitConfig::default())
            .context("cannot start the store's committer")?;
        let (stop, _) = watch::channel(false);
        let (revoke_tx, revoke_rx) = mpsc::channel(COMMANDS_QUEUED_MAX);
        let control = Arc::new(control_core::Control::new(
            store.clone(),
            Box::new(control_core::SystemClock),
            control_core::Limits::default(),
        ));
        let mut side = Self {
            runtime,
            store,
            control,
            committer: Some(committer),
            stop,
            delivery: None,
            api_addr: None,
        };
        if let Some(listen) = api_listen {
            side.api_addr = Some(side.start_api(listen, data_dir, revoke_tx)?);
        }
        Ok((side, revoke_rx))
    }

    fn start_api(
        &mut self,
        listen: SocketAddr,
        data_dir: &Path,
        revocations: mpsc::Sender<control_core::ControlCommand>,
    ) -> Result<SocketAddr> {
        let credential_path = data_dir.join("admin.credential");
        let admin = if credential_path.exists() {
            control_api::load_admin_credential(&credential_path)
        } else {
            let credential = control_api::generate_admin_credential(&credential_path);
            if credential.is_ok() {
                say!(
                    "created the admin credential {} (mode 0600)",
                    credential_path.display()
                );
            }
            credential
        }
        .context("admin credential")?;
        let control = Arc::clone(&self.control);
        let (commands, mut command_rx) = mpsc::channel(COMMANDS_QUEUED_MAX);
        let config = control_api::ApiConfig {
            bind: listen,
            ..control_api::ApiConfig::default()
        };
        let listener = self
            .runtime
            .block_on(control_api::bind(&config))
            .with_context(|| format!("cannot listen on {listen} for the REST API"))?;
        let addr = listener.local_addr()?;
        let state = control_api::AppState::new(control, Some(admin), commands, config);
        let mut stop = self.stop.subscribe();
        self.runtime.spawn(async move {
            let shutdown = async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            };
            if let Err(error) = control_api::serve_with_shutdown(listener, state, shutdown).await {
                esay!("REST API stopped: {error}");
            }
        });
        // Revocations and membership changes from the API reach the shards through the
        // delivery loop.
        self.runtime.spawn(async move {
            while let Some(command) = command_rx.recv().await {
                if revocations.send(command).await.is_err() {
                    return;
                }
            }
        });
        Ok(addr)
    }

    /// Where the REST API listens, if it does.
    pub(crate) fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    /// Serves the shards' links from now on.
    pub(crate) fn attach(
        &mut self,
        port: ControlPort,
        commands: mpsc::Receiver<control_core::ControlCommand>,
    ) {
        let Some(committer) = self.committer.take() else {
            return;
        };
        let store = self.store.clone();
        let control = Arc::clone(&self.control);
        let stop = self.stop.subscribe();
        self.delivery = Some(self.runtime.spawn(async move {
            let config = control_delivery::DeliveryConfig::default();
            control_delivery::run(port, store, control, &committer, config, stop, commands).await;
            // Commits what is still queued, off the runtime's workers.
            let _ = tokio::task::spawn_blocking(move || committer.close()).await;
        }));
    }

    /// Stops: takes and commits what the shards sent, then stops the API and the runtime.
    /// Call after the shards have stopped.
    pub(crate) fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(delivery) = self.delivery.take() {
            let _ = self.runtime.block_on(delivery);
        }
        if let Some(committer) = self.committer.take() {
            committer.close();
        }
        self.runtime
            .shutdown_timeout(core::time::Duration::from_secs(5));
    }
}
