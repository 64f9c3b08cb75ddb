//! Recovery drills: a worker told to (by an environment variable the tests set) stops at a
//! chosen point of a run so a test can kill it there with SIGKILL, as a crash would.

use std::ffi::OsStr;
use std::time::Duration;

/// A file path: once a run has committed its data, and before its end and messages are recorded
/// in the catalog, the worker writes the run id there and waits to be killed.
pub const HOLD_AFTER_COMMIT: &str = "CARGA_DRILL_HOLD_AFTER_COMMIT";

pub async fn hold_after_commit(marker: &OsStr, run_id: &str) {
    tracing::warn!(
        run_id,
        "drill: committed; holding here until this process is killed"
    );
    if let Err(e) = std::fs::write(marker, run_id) {
        tracing::error!(error = %e, "drill: marker not written");
    }
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}
