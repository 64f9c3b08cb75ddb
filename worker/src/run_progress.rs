//! `carga run`'s live progress while a run reads: a bar on a terminal (rows so far, rows/s, the
//! percentage and time left where the source's size is known), and a plain line every few
//! seconds when stderr is not a terminal (a pipe, a CI log) or logs are JSON, so a long run is
//! never silent. The result itself still goes to stdout when the run ends.

use std::io::IsTerminal;
use std::time::Duration;

use carga_config::DatasetSpec;
use carga_jobs::validation::ProgressSnapshot;
use carga_jobs::{Engine, RunFailure, RunOutcome};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the bar is redrawn on a terminal.
const BAR_REFRESH: Duration = Duration::from_millis(250);

/// Runs `spec` and shows how far it has got; plain lines come every `every`.
pub async fn run(
    engine: &Engine,
    spec: &DatasetSpec,
    every: Duration,
) -> Result<RunOutcome, RunFailure> {
    let run_id = uuid::Uuid::now_v7().to_string();
    let on_terminal = std::io::stderr().is_terminal()
        && std::env::var("CARGA_LOG_FORMAT").map_or(true, |f| f != "json");
    let bar = on_terminal.then(|| bar(&spec.id));
    let every = if on_terminal { BAR_REFRESH } else { every };
    let outcome = engine
        .run_watched(spec, &run_id, None, every, |snapshot, elapsed| {
            match &bar {
                Some(bar) => draw(bar, &snapshot, elapsed),
                None => eprintln!("{}", line(&spec.id, &snapshot, elapsed)),
            }
            std::future::ready(())
        })
        .await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    outcome
}

fn bar(dataset: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(1000), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(dataset.to_owned());
    bar
}

fn draw(bar: &ProgressBar, snapshot: &ProgressSnapshot, elapsed: Duration) {
    if let Some(fraction) = snapshot.fraction {
        bar.set_position((fraction * 1000.0) as u64);
    }
    bar.set_message(describe(snapshot, elapsed));
}

/// `ventas: 120000 rows read, 55000 rows/s, 34%, about 4 s left`.
pub fn line(dataset: &str, snapshot: &ProgressSnapshot, elapsed: Duration) -> String {
    format!("{dataset}: {}", describe(snapshot, elapsed))
}

fn describe(snapshot: &ProgressSnapshot, elapsed: Duration) -> String {
    let mut text = format!(
        "{} rows read, {:.0} rows/s",
        snapshot.rows_read,
        snapshot.rows_per_second(elapsed)
    );
    if snapshot.rows_rejected > 0 {
        text.push_str(&format!(", {} rejected", snapshot.rows_rejected));
    }
    if let Some(fraction) = snapshot.fraction {
        text.push_str(&format!(", {:.0}%", fraction * 100.0));
    }
    if let Some(left) = snapshot.eta(elapsed) {
        text.push_str(&format!(", about {} s left", left.as_secs().max(1)));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_says_rows_rate_percentage_and_time_left_where_known() {
        let snapshot = ProgressSnapshot {
            rows_read: 50_000,
            rows_rejected: 0,
            bytes_read: 1 << 20,
            fraction: Some(0.25),
        };
        assert_eq!(
            line("ventas", &snapshot, Duration::from_secs(2)),
            "ventas: 50000 rows read, 25000 rows/s, 25%, about 6 s left"
        );
        let unknown_size = ProgressSnapshot {
            fraction: None,
            rows_rejected: 3,
            ..snapshot
        };
        assert_eq!(
            line("ventas", &unknown_size, Duration::from_secs(5)),
            "ventas: 50000 rows read, 10000 rows/s, 3 rejected"
        );
    }
}
