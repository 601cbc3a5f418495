//! A writer for integration tests: the engine opened with what a shipper needs
//! (`retain_unshipped`, the commit hook, optionally a manual clock) and a shipper taking over
//! `bucket` with `options`.

use std::path::Path;
use std::sync::Arc;

use hadal_engine::{Database, ManualClock, Options};
use hadal_shipper::{Shipper, ShipperOptions, commit_hook};
use hadal_transports::DynBucket;
use tokio::sync::Notify;

pub async fn start(
    dir: &Path,
    bucket: DynBucket,
    clock: Option<&ManualClock>,
    options: ShipperOptions,
) -> (Database, Shipper) {
    let wake = Arc::new(Notify::new());
    let mut engine = Options {
        retain_unshipped: true,
        on_commit: Some(commit_hook(&wake)),
        ..Options::default()
    };
    if let Some(clock) = clock {
        engine.clock = Arc::new(clock.clone());
    }
    let db = Database::open(dir, engine).expect("open the writer's folder");
    let shipper = Shipper::start(db.clone(), bucket, options, wake)
        .await
        .expect("take over");
    (db, shipper)
}
