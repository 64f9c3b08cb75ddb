//! Logging for Carga's binaries: to stderr, filtered by `RUST_LOG` (else `default_filter`), and
//! with `CARGA_LOG_FORMAT=json` one JSON object per line carrying the current span (a job's
//! `run_id` and `dataset`). Colours only on a terminal (and never with `NO_COLOR`): a log file or
//! a container's log collector gets plain text, not escape codes.

use std::io::IsTerminal;

pub fn init(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none());
    if std::env::var("CARGA_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().with_current_span(true).init();
    } else {
        builder.init();
    }
}
