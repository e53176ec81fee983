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

use crate::config::Config;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot reach the database at {url}: {reason}")]
    Database { url: String, reason: String },
    #[error("cannot migrate the database at {url}: {reason}")]
    Migrate { url: String, reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

fn db_options(config: &Config) -> DbOptions {
    DbOptions {
        url: config.database_url.clone(),
        max_connections: config.database_max_connections,
        acquire_timeout: std::time::Duration::from_secs(5),
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

/// A built, not yet running, service.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    ctx: Ctx,
    workers: WorkerConfig,
    shutdown_timeout: std::time::Duration,
}

impl Application {
    /// Migrates the database, opens the pool and binds the listener.
    pub async fn build(config: &Config, clock: Clock) -> Result<Self, StartError> {
        migrate(config).await?;
        let opts = db_options(config);
        let db = Db::connect(&opts)
            .await
            .map_err(|e| StartError::Database { url: opts.redacted_url(), reason: reason(&e) })?;
        let ctx = Ctx::new(db, clock);
        let router = azotte_api::router(ctx.clone(), &ApiConfig { body_limit: config.body_limit_bytes });
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Listen { addr: config.listen, source })?;
        Ok(Self {
            listener,
            router,
            ctx,
            workers: WorkerConfig { housekeeping_every: config.housekeeping_interval },
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
