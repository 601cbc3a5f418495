//! The output gate as write handles see it: a watch of "everything up to this LSN is durable in
//! the bucket, or the shipper stopped for this reason".
//!
//! Why a relay task instead of handles calling `Shipper::wait_durable`: the shipper can only be
//! shut down (ship the rest, then stop) by its sole owner, and a handle must stay usable after
//! the database is closed. Handles therefore never hold the shipper; one relay task does, and
//! `Database::close` stops it, shuts the shipper down and publishes the final state.
//!
//! Invariants:
//! 1. `lsn` only moves forward, and only to values the shipper reported durable.
//! 2. Once `stopped` is set it is never cleared; the LSN published with it is final.

use std::sync::Arc;

use hadal_engine::Lsn;
use hadal_shipper::Shipper;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// What write handles see of the bucket.
#[derive(Debug, Clone)]
pub(crate) struct GateState {
    /// Every commit up to here is durable in the bucket.
    pub lsn: Lsn,
    /// Set once nothing more will become durable: why.
    pub stopped: Option<hadal_shipper::Error>,
}

/// A handle's view of the gate.
pub(crate) type GateWatch = watch::Receiver<GateState>;

/// The running relay; [`Relay::stop`] gives back the sender to publish the final state with.
#[derive(Debug)]
pub(crate) struct Relay {
    watch: GateWatch,
    stop: watch::Sender<bool>,
    task: JoinHandle<watch::Sender<GateState>>,
}

impl Relay {
    /// Starts relaying `shipper`'s progress, beginning at `lsn_durable`.
    pub fn start(shipper: Arc<Shipper>) -> Relay {
        let (tx, watch) = watch::channel(GateState {
            lsn: shipper.lsn_durable(),
            stopped: None,
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(relay(shipper, tx, stop_rx));
        Relay { watch, stop, task }
    }

    pub fn watch(&self) -> GateWatch {
        self.watch.clone()
    }

    /// Stops the relay (dropping its reference to the shipper) and returns the sender.
    pub async fn stop(self) -> Option<watch::Sender<GateState>> {
        let _ = self.stop.send(true);
        self.task.await.ok()
    }
}

async fn relay(
    shipper: Arc<Shipper>,
    tx: watch::Sender<GateState>,
    mut stop: watch::Receiver<bool>,
) -> watch::Sender<GateState> {
    loop {
        let next = tx.borrow().lsn.next();
        tokio::select! {
            outcome = shipper.wait_durable(next) => {
                let lsn = shipper.lsn_durable();
                match outcome {
                    Ok(()) => tx.send_modify(|s| s.lsn = s.lsn.max(lsn)),
                    Err(e) => {
                        tx.send_modify(|s| {
                            s.lsn = s.lsn.max(lsn);
                            s.stopped = Some(e);
                        });
                        return tx;
                    }
                }
            }
            _ = stop.changed() => return tx,
        }
    }
}

/// Waits until `lsn` is durable according to `watch`.
pub(crate) async fn wait(watch: &GateWatch, lsn: Lsn) -> Result<()> {
    let mut rx = watch.clone();
    loop {
        {
            let state = rx.borrow_and_update();
            if state.lsn >= lsn {
                return Ok(());
            }
            if let Some(e) = &state.stopped {
                return Err(Error::Shipper(e.clone()));
            }
        }
        if rx.changed().await.is_err() {
            let state = rx.borrow();
            return if state.lsn >= lsn {
                Ok(())
            } else {
                Err(Error::Closed(format!(
                    "the database was closed before lsn {} became durable",
                    lsn.get()
                )))
            };
        }
    }
}
