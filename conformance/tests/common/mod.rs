//! Shared by the real-server tests: what to do when a server is not installed. In CI
//! (`CI=true`) that is a failure telling how to install it; on a developer's machine the test
//! prints why it skipped, so nobody mistakes a skip for a pass.

use hadal_conformance::servers::StartError;

/// `Some(server)` if it started; `None` (after printing why) if it is not installed outside CI.
/// Panics if it is not installed in CI, or installed but unable to start anywhere.
pub fn started_or_skip<T>(result: Result<T, StartError>, test: &str) -> Option<T> {
    match result {
        Ok(server) => Some(server),
        Err(e @ StartError::NotInstalled { .. }) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{test}: {e} (CI=true, so this fails instead of skipping)");
            }
            eprintln!("SKIPPED {test}: {e}");
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}
