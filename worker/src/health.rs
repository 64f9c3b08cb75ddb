//! The worker's liveness as a file: its heartbeat loop writes the time on every round (the
//! queue answering or not), and `carga health` fails when that time is older than allowed.
//! A wedged runtime or a dead loop stops the writes, so Kubernetes restarts that worker; an
//! outage of the queue does not (restarting would not bring Redis back).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

/// Where this worker says it is alive; nothing is written without a file.
#[derive(Debug, Clone, Default)]
pub struct Liveness {
    file: Option<PathBuf>,
}

impl Liveness {
    pub fn new(file: Option<PathBuf>) -> Self {
        Self { file }
    }

    /// Records that the worker's loop ran now. Written beside and renamed, so a reader never
    /// sees half a timestamp; a failure is logged, never fatal (the probe will say so).
    pub fn beat(&self) {
        let Some(file) = &self.file else {
            return;
        };
        let written = write_time(file, SystemTime::now());
        if let Err(e) = written {
            tracing::warn!(file = %file.display(), error = %e, "could not write the liveness file");
        }
    }
}

fn write_time(file: &Path, at: SystemTime) -> std::io::Result<()> {
    let seconds = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let partial = file.with_extension("partial");
    std::fs::write(&partial, format!("{seconds}\n"))?;
    std::fs::rename(&partial, file)
}

/// `carga health`: fine when the worker wrote `file` within `max_age`.
pub fn check(file: &Path, max_age: Duration) -> Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| {
        format!(
            "no liveness file at {} (is the worker running with --health-file?)",
            file.display()
        )
    })?;
    let seconds: u64 = text
        .trim()
        .parse()
        .with_context(|| format!("{} does not hold a time", file.display()))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let age = now.saturating_sub(seconds);
    if age > max_age.as_secs() {
        bail!(
            "the worker last reported {age} s ago (allowed {} s): its loop is stuck",
            max_age.as_secs()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_beat_passes_and_a_stale_or_missing_one_fails() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("alive");
        let max_age = Duration::from_secs(60);
        let missing = check(&file, max_age).unwrap_err().to_string();
        assert!(missing.contains("no liveness file"), "{missing}");

        Liveness::new(Some(file.clone())).beat();
        check(&file, max_age).unwrap();

        write_time(&file, SystemTime::now() - Duration::from_secs(300)).unwrap();
        let stale = check(&file, max_age).unwrap_err().to_string();
        assert!(
            stale.contains("stuck") && stale.contains("allowed 60 s"),
            "{stale}"
        );

        std::fs::write(&file, "soon").unwrap();
        assert!(check(&file, max_age).is_err());
        Liveness::default().beat();
    }
}
