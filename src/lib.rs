//! vitalbridge: a FHIR R4 server for remote patient monitoring.
//!
//! Rooms (DESIGN.md): `config`, `http`, `fhir`, `validate`, `search`, `store`. Tests and `main`
//! build the same application through [`Application::build`].

pub mod audit;
pub mod auth;
pub mod bench;
pub mod billing;
pub mod config;
pub mod conformance;
pub mod fhir;
pub mod gateway;
pub mod http;
pub mod ingest;
pub mod progress;
pub mod search;
pub mod store;
pub mod subscriptions;
pub mod validate;

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use config::Settings;
use http::{AppState, Inner};
use store::{ConnectOptions, Store};

/// A built application: the listener is bound and the database migrated.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    store: Store,
    audit: audit::Audit,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Application {
    /// Connects the store, applies migrations and binds the listener (port 0 picks a free one).
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        // Parse the validation tables now rather than on the first write.
        validate::preload();
        search::preload();
        let url = settings.database_url().to_owned();
        let store = Store::connect(
            &url,
            &ConnectOptions {
                max_connections: settings.db_pool,
            },
        )
        .await
        .with_context(|| format!("cannot open the database {}", config::redact_url(&url)))?;
        store
            .migrate()
            .await
            .context("cannot apply the database migrations")?;
        let signing_key = auth::keys::load(settings.signing_key_pem.as_deref(), &store)
            .await
            .context("cannot load the token signing key")?;
        fhir::profiles::install(&store)
            .await
            .context("cannot store the shipped profiles")?;
        if let Some(boot) = &settings.bootstrap_client {
            auth::ensure_bootstrap_client(&store, boot)
                .await
                .context("cannot create the bootstrap admin client")?;
        }
        let tls = settings
            .tls
            .as_ref()
            .map(http::tls::server_config)
            .transpose()?;
        let listener = TcpListener::bind(&settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let federation = auth::federation::Federation::new(settings.oidc_providers.clone())
            .context("cannot set up the external OpenID providers")?;
        let audit = if settings.audit {
            audit::Audit::start(store.clone())
        } else {
            audit::Audit::disabled()
        };
        let mut subscriptions = settings.subscriptions.clone();
        subscriptions.base = match &settings.base_url {
            Some(b) => b.trim_end_matches('/').to_owned(),
            None => format!(
                "{}://{}/fhir",
                if settings.tls.is_some() {
                    "https"
                } else {
                    "http"
                },
                listener.local_addr()?
            ),
        };
        if subscriptions.enabled {
            subscriptions::Engine::start(store.clone(), subscriptions)
                .context("cannot start the subscription engine")?;
        }
        billing::schedule::start(store.clone(), settings.billing.clone());
        tokio::spawn(ingest::purge_raw_messages(
            store.clone(),
            settings.raw_retention_days,
        ));
        let state = AppState(Arc::new(Inner {
            store: store.clone(),
            settings,
            signing_key,
            verified_tokens: Default::default(),
            federation,
            audit: audit.clone(),
            started: store::format_instant(store::now_micros()),
        }));
        if !state.federation.is_empty() {
            // In the background: a provider that is down must not delay or stop the start.
            let s = state.clone();
            tokio::spawn(async move { s.federation.discover_all().await });
        }
        Ok(Application {
            listener,
            router: http::router(state),
            store,
            audit,
            tls,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Serves until `shutdown` completes; requests in flight are finished first.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        // The peer address goes into audit rows (AuditEvent.agent.network).
        let service = self
            .router
            .into_make_service_with_connect_info::<std::net::SocketAddr>();
        match self.tls {
            None => {
                axum::serve(self.listener, service)
                    .with_graceful_shutdown(shutdown)
                    .await?
            }
            Some(config) => {
                let handle = axum_server::Handle::new();
                let on_shutdown = handle.clone();
                tokio::spawn(async move {
                    shutdown.await;
                    // Like axum::serve: stop accepting, finish the requests in flight.
                    on_shutdown.graceful_shutdown(None);
                });
                axum_server::from_tcp_rustls(
                    self.listener.into_std()?,
                    axum_server::tls_rustls::RustlsConfig::from_config(config),
                )?
                .handle(handle)
                .serve(service)
                .await?
            }
        }
        // Audit rows of the last requests are written before the store closes.
        self.audit.flush().await;
        self.store.close().await;
        Ok(())
    }
}

/// Completes on Ctrl-C or SIGTERM.
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
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
