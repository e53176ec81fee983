//! Building and running the service: database, HTTP server and workers in one process.

use std::future::Future;
use std::net::SocketAddr;

use azotte_api::ApiConfig;
use azotte_domain::{Clock, Secret};
use azotte_service::Ctx;
use azotte_store::{Db, DbOptions, StoreError};
use azotte_worker::WorkerConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;

use std::sync::Arc;

use azotte_crypto::aead::Key;
use azotte_service::mail::{ConsoleMailer, Mailer};
use azotte_service::vault::MasterKeys;

use crate::config::{Config, RunMode};

/// The installation's root secret: configured, or (outside production) generated once into
/// `data_dir/secret.key` with owner-only permissions.
fn root_key(config: &Config) -> Result<Key, StartError> {
    if let Some(hex) = &config.secret_key {
        return Key::from_hex(hex.expose()).map_err(|e| StartError::SecretKey(format!("{e:?}")));
    }
    if config.mode == RunMode::Production {
        return Err(StartError::SecretKey(
            "required in production mode: set AZOTTE_SECRET_KEY or AZOTTE_SECRET_KEY_FILE (64 hex characters)".into(),
        ));
    }
    let path = config.data_dir.join("secret.key");
    let (key, generated) = key_file(&config.data_dir, &path).map_err(StartError::SecretKey)?;
    if generated {
        tracing::warn!(path = %path.display(), "generated the installation secret key; back it up (losing it invalidates passwords and API keys)");
    }
    Ok(key)
}

/// The platform master keys: configured (`master_key`, `previous_master_keys`), or (outside
/// production) the active one generated once into `data_dir/master.key`, owner-only.
pub fn master_keys(config: &Config) -> Result<MasterKeys, StartError> {
    let bad = |what: &str, e: azotte_crypto::aead::KeyHexError| StartError::MasterKey(format!("{what}: {e}"));
    let previous = config
        .previous_master_keys
        .iter()
        .map(|k| Key::from_hex(k.expose()).map_err(|e| bad("previous_master_keys", e)))
        .collect::<Result<Vec<_>, _>>()?;
    let path = config.data_dir.join("master.key");
    let active = match &config.master_key {
        Some(hex) => {
            let key = Key::from_hex(hex.expose()).map_err(|e| bad("master_key", e))?;
            // A key generated earlier and since replaced by configuration must not be forgotten
            // while tenant keys are still wrapped under it.
            if let Ok(text) = std::fs::read_to_string(&path) {
                if let Ok(file_key) = Key::from_hex(text.trim()) {
                    let id = azotte_service::vault::master_key_id(&file_key);
                    let configured = std::iter::once(&key)
                        .chain(&previous)
                        .any(|k| azotte_service::vault::master_key_id(k) == id);
                    if !configured {
                        tracing::warn!(path = %path.display(), master_kid = %id, "a generated master key file exists but is not configured; tenant keys wrapped under it cannot be read until it is added to previous_master_keys");
                    }
                }
            }
            key
        }
        None if config.mode == RunMode::Production => {
            return Err(StartError::MasterKey(
                "required in production mode: set AZOTTE_MASTER_KEY or AZOTTE_MASTER_KEY_FILE (64 hex characters)"
                    .into(),
            ))
        }
        None => {
            let (key, generated) = key_file(&config.data_dir, &path)
                .map_err(|e| StartError::MasterKey(format!("master_key: {e}")))?;
            if generated {
                tracing::warn!(path = %path.display(), master_kid = %azotte_service::vault::master_key_id(&key), "generated the platform master key; back it up (losing it makes every tenant's encrypted credentials unreadable), and configure master_key in production");
            }
            key
        }
    };
    Ok(MasterKeys::new(&active, &previous))
}

/// A key kept in a file under `dir`: read, or generated and written with owner-only
/// permissions. The flag says whether it was generated now.
fn key_file(dir: &std::path::Path, path: &std::path::Path) -> Result<(Key, bool), String> {
    if let Ok(text) = std::fs::read_to_string(path) {
        return Key::from_hex(text.trim())
            .map(|k| (k, false))
            .map_err(|e| format!("{}: {e:?}", path.display()));
    }
    let key = Key::generate();
    let io = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).map_err(io)?;
    std::io::Write::write_all(&mut f, format!("{}\n", hex_encode(key.expose())).as_bytes()).map_err(io)?;
    Ok((key, true))
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot reach the database at {url}: {reason}")]
    Database { url: String, reason: String },
    #[error("cannot migrate the database at {url}: {reason}")]
    Migrate { url: String, reason: String },
    #[error("secret_key: {0}")]
    SecretKey(String),
    #[error("master key: {0}")]
    MasterKey(String),
    #[error("cannot load the JWT signing keys: {0}")]
    Keys(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

fn db_options(config: &Config) -> DbOptions {
    DbOptions {
        url: config.database_url.clone(),
        max_connections: config.database_max_connections,
        acquire_timeout: std::time::Duration::from_secs(5),
        cache: azotte_store::CacheOptions {
            max_age: config.read_cache_max_age,
            capacity: config.read_cache_entries,
        },
    }
}

fn reason(e: &StoreError) -> String {
    let mut s = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Runs the migrations of the configured database.
pub async fn migrate(config: &Config) -> Result<(), StartError> {
    let opts = db_options(config);
    Db::migrate(&opts).await.map_err(|e| match e {
        StoreError::Unavailable(_) => StartError::Database { url: opts.redacted_url(), reason: reason(&e) },
        other => StartError::Migrate { url: opts.redacted_url(), reason: reason(&other) },
    })
}

/// Migrates the database and builds the services' context (keys loaded), without serving.
pub async fn context(config: &Config, clock: Clock, mailer: Arc<dyn Mailer>) -> Result<Ctx, StartError> {
    let root = root_key(config)?;
    let master = master_keys(config)?;
    migrate(config).await?;
    let opts = db_options(config);
    let db = Db::connect(&opts)
        .await
        .map_err(|e| StartError::Database { url: opts.redacted_url(), reason: reason(&e) })?;
    let mut ctx = Ctx::new(db, clock, &root, master, mailer, config.issuer.clone());
    ctx.psp = connectors(config);
    ctx.init().await.map_err(|e| StartError::Keys(e.to_string()))?;
    Ok(ctx)
}

/// The PSP connectors as configured.
fn connectors(config: &Config) -> azotte_service::payments::Connectors {
    azotte_service::payments::Connectors::configured(&config.stripe_base_url, config.reconcile_grace)
}

/// A built, not yet running, service.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    ctx: Ctx,
    workers: WorkerConfig,
    shutdown_timeout: std::time::Duration,
}

impl Application {
    /// Migrates the database, opens the pool and binds the listener; messages go to stdout.
    pub async fn build(config: &Config, clock: Clock) -> Result<Self, StartError> {
        Self::build_with(config, clock, Arc::new(ConsoleMailer)).await
    }

    /// As [`Application::build`], with another mailer (tests keep messages in memory).
    pub async fn build_with(
        config: &Config,
        clock: Clock,
        mailer: Arc<dyn Mailer>,
    ) -> Result<Self, StartError> {
        let root = root_key(config)?;
        let master = master_keys(config)?;
        migrate(config).await?;
        let opts = db_options(config);
        let db = Db::connect(&opts)
            .await
            .map_err(|e| StartError::Database { url: opts.redacted_url(), reason: reason(&e) })?;
        let mut ctx = Ctx::new(db, clock, &root, master, mailer, config.issuer.clone());
        ctx.psp = connectors(config);
        ctx.numbering = config.invoice_numbering;
        ctx.init().await.map_err(|e| StartError::Keys(e.to_string()))?;
        let router = azotte_api::router(
            ctx.clone(),
            &ApiConfig {
                body_limit: config.body_limit_bytes,
                idempotency_retention: config.idempotency_retention,
            },
        );
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Listen { addr: config.listen, source })?;
        Ok(Self {
            listener,
            router,
            ctx,
            workers: WorkerConfig {
                housekeeping_every: config.housekeeping_interval,
                number_every: config.invoice_numbering_interval,
                ..WorkerConfig::default()
            },
            shutdown_timeout: config.shutdown_timeout,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The services' context, for tests and the CLI.
    pub fn ctx(&self) -> &Ctx {
        &self.ctx
    }

    /// Creates the first platform administrator if there is none; returns the one-time secret.
    pub async fn bootstrap(&self) -> Result<Option<Secret<String>>, azotte_service::ServiceError> {
        azotte_service::auth::bootstrap(&self.ctx).await
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests finish
    /// (up to the shutdown timeout), stops the workers and closes the pool.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let workers = azotte_worker::spawn(self.ctx.clone(), self.workers.clone(), stop_rx);
        tracing::info!(addr = %self.local_addr(), backend = ?self.ctx.db.backend(), "azotte listening");
        let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutdown requested: finishing in-flight requests");
            let _ = drained_tx.send(());
        };
        let server =
            axum::serve(self.listener, self.router.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(signal);
        let timeout = self.shutdown_timeout;
        let served = tokio::select! {
            r = server => r,
            _ = async { let _ = drained_rx.await; tokio::time::sleep(timeout).await } => {
                tracing::warn!("in-flight requests did not finish in time; stopping anyway");
                Ok(())
            }
        };
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(timeout, workers).await;
        self.ctx.db.close().await;
        tracing::info!("azotte stopped");
        served
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
