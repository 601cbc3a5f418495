//! A server's life: bind the listeners (HTTP and RESP), open the backend (restore or takeover)
//! while already answering probes, serve, and on a shutdown signal stop accepting, finish the requests in
//! flight, close the backend (a writer ships every commit and releases its folder) — all within
//! the configured grace.
//!
//! Invariants:
//! 1. Nothing is served from the database before the backend is open (`Phase::Starting`).
//! 2. On shutdown the backend is closed only after every request in flight was answered, so a
//!    write answered 200 was committed (and, in `strict` mode, durable) before the final ship.
//! 3. A shutdown that outlasts its grace ends the process with an error instead of hanging; the
//!    next start of a writer ships whatever was left (its takeover ships local commits the
//!    bucket lacks).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::database::Options;
use crate::server::backend::{Backend, Error, ReplicaOptions, Result, Role, durability_name};
use crate::server::config::ServerConfig;
use crate::server::http::{self, App, Phase};

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT shuts down");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("Ctrl-C: shutting down");
    }
}

async fn bind(what: &str, addr: std::net::SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        Error::Invalid(format!(
            "cannot listen on {addr} for {what}: {e}; pass another address with --{what}"
        ))
    })
}

async fn open(config: &ServerConfig) -> Result<Backend> {
    match config.role {
        Role::Writer => {
            let mut options = Options::new(&config.data).bucket(&config.bucket);
            options.durability = config.durability;
            options.interval = config.interval;
            options.gc_interval = config.gc_interval;
            Backend::open_writer(options).await
        }
        Role::Replica => {
            let defaults = hadal_replica::FollowOptions::default();
            let follow = hadal_replica::FollowOptions {
                poll_min: defaults.poll_min.min(config.poll),
                poll_max: config.poll,
                ..defaults
            };
            Backend::open_replica(ReplicaOptions {
                data_dir: config.data.clone(),
                bucket_url: config.bucket.clone(),
                follow,
                engine: hadal_engine::Options::default(),
            })
            .await
        }
    }
}

/// Runs the server described by `config` until `shutdown` resolves (normally
/// [`shutdown_signal`]), then shuts down gracefully (module comment). Fails if a listener
/// cannot be bound, the backend cannot be opened, or the shutdown outlasts its grace.
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let config = Arc::new(config);
    let app = App::new(config.clone())?;
    let listener = bind("http", config.http).await?;
    // Bound before the backend opens, as HTTP is: clients get `-LOADING` until it is ready.
    let resp_listener = bind("resp", config.resp).await?;
    tracing::info!(
        role = %config.role,
        http = %config.http,
        resp = %config.resp,
        bucket = %config.bucket,
        data = %config.data.display(),
        durability = durability_name(config.durability),
        auth = if config.auth_enabled() { "on" } else { "off (loopback only)" },
        keys = ?config.key_names(),
        "hadal {} starting",
        env!("CARGO_PKG_VERSION")
    );

    // Shutdown: `stop` turns true once, on the signal or a failed open; `stop_at` is when.
    let (stop, _) = watch::channel(false);
    let stop = Arc::new(stop);
    let stop_at: Arc<parking_lot::Mutex<Option<Instant>>> = Arc::default();
    let trigger = {
        let (stop, stop_at) = (stop.clone(), stop_at.clone());
        move || {
            stop_at.lock().get_or_insert_with(Instant::now);
            stop.send_replace(true);
        }
    };
    {
        let trigger = trigger.clone();
        tokio::spawn(async move {
            shutdown.await;
            trigger();
        });
    }
    let stopped = {
        let stop = stop.clone();
        move || {
            let mut rx = stop.subscribe();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        }
    };

    let opening = {
        let (app, config, trigger) = (app.clone(), config.clone(), trigger.clone());
        tokio::spawn(async move {
            let opened = open(&config).await;
            match &opened {
                Ok(backend) => {
                    *app.phase.write() = Phase::Ready(backend.clone());
                    tracing::info!(
                        role = %config.role,
                        lsn = backend.lsn_applied().get(),
                        "ready: serving http on {} and the Redis protocol on {}",
                        config.http,
                        config.resp
                    );
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot open the {}", config.role);
                    trigger();
                }
            }
            opened
        })
    };

    let resp = tokio::spawn(crate::server::resp::serve(
        resp_listener,
        app.clone(),
        stop.subscribe(),
    ));
    let serving = std::future::IntoFuture::into_future(
        axum::serve(listener, http::router(app.clone())).with_graceful_shutdown(stopped()),
    );
    let grace = config.shutdown_grace;
    let deadline = {
        let (stopped, stop_at) = (stopped(), stop_at.clone());
        async move {
            stopped.await;
            let started = stop_at.lock().unwrap_or_else(Instant::now);
            tokio::time::sleep_until((started + grace).into()).await;
        }
    };
    // Marks the phase as stopping as soon as the signal arrives, so /readyz turns unready while
    // requests in flight finish.
    let marking = {
        let (app, stopped) = (app.clone(), stopped());
        async move {
            stopped.await;
            {
                let mut phase = app.phase.write();
                if let Phase::Ready(b) = &*phase {
                    *phase = Phase::Stopping(b.clone());
                }
            }
            std::future::pending::<()>().await
        }
    };
    let served = tokio::select! {
        served = serving => served.map_err(|e| Error::Internal(format!("serving http: {e}"))),
        () = deadline => Err(Error::Unavailable(format!(
            "requests were still in flight when the shutdown grace of {grace:?} ran out"
        ))),
        () = marking => Ok(()),
    };

    // Invariant 2: RESP connections finish the commands they read, like HTTP requests in flight.
    let started = stop_at.lock().unwrap_or_else(Instant::now);
    let left = (started + grace).saturating_duration_since(Instant::now());
    let served = match tokio::time::timeout(left.max(Duration::from_millis(1)), resp).await {
        Ok(_) => served,
        Err(_) => Err(Error::Unavailable(format!(
            "Redis-protocol commands were still in flight when the shutdown grace of {grace:?} ran out"
        ))),
    };

    // Invariant 2: every request was answered (or the grace ran out); now close the backend.
    let backend = if opening.is_finished() {
        match opening.await {
            Ok(Ok(backend)) => Some(backend),
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(Error::Internal(format!("opening task failed: {e}"))),
        }
    } else {
        opening.abort();
        tracing::warn!("shut down while still starting: the restore or takeover was abandoned");
        None
    };
    let Some(backend) = backend else {
        return served;
    };
    let started = stop_at.lock().unwrap_or_else(Instant::now);
    let left = (started + grace).saturating_duration_since(Instant::now());
    let closed = match tokio::time::timeout(left.max(Duration::from_millis(1)), backend.close())
        .await
    {
        Ok(closed) => closed,
        Err(_) => Err(Error::Unavailable(format!(
            "the shutdown grace of {grace:?} ran out before every commit was shipped; the next `hadal serve` of this folder ships the rest"
        ))),
    };
    served?;
    closed?;
    tracing::info!(role = %config.role, lsn = backend.lsn_applied().get(), "shut down cleanly");
    Ok(())
}
