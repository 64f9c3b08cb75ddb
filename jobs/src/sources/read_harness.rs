//! Test harness for the file readers: runs one read on its own thread, as a run does, and keeps
//! what it sent, so a parallel read can be compared with one pass.

use std::sync::Arc;

use arrow::array::RecordBatch;
use carga_config::MalformedRowPolicy;
use tokio::sync::{mpsc, oneshot};

use super::{SourceOutput, TypeHints};
use crate::error::Result;
use crate::validation::ReadStats;

/// What a read gave: its report or error (as text), and the batches it sent.
pub(crate) struct Read {
    pub outcome: std::result::Result<ReadStats, String>,
    pub batches: Vec<RecordBatch>,
}

/// How a test reads: 7-row batches, `id` as the key, this many parse threads.
pub(crate) struct ReadShape<'a> {
    pub location: &'a str,
    pub threads: usize,
    pub policy: MalformedRowPolicy,
    pub hints: &'a TypeHints,
}

/// Runs `read` with an output to collect from, on its own thread.
pub(crate) fn collect(
    shape: ReadShape<'_>,
    read: impl FnOnce(SourceOutput) -> Result<ReadStats> + Send + 'static,
) -> Read {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (schema_tx, _schema_rx) = oneshot::channel();
    let (batch_tx, mut batch_rx) = mpsc::channel(2);
    let ctx = SourceOutput {
        location: shape.location.into(),
        batch_rows: 7,
        parse_threads: shape.threads,
        policy: shape.policy,
        hints: shape.hints.clone(),
        progress: Arc::default(),
        key: vec!["id".into()],
        schema_tx: Some(schema_tx),
        batch_tx,
        runtime: runtime.handle().clone(),
    };
    let reader = std::thread::spawn(move || read(ctx).map_err(|e| e.to_string()));
    let mut batches = Vec::new();
    while let Some(batch) = batch_rx.blocking_recv() {
        batches.push(batch.unwrap());
    }
    Read {
        outcome: reader.join().unwrap(),
        batches,
    }
}

/// The rows, as one batch (batch sizes differ between two ways of reading).
pub(crate) fn rows(batches: &[RecordBatch]) -> Option<RecordBatch> {
    let first = batches.first()?;
    Some(arrow::compute::concat_batches(&first.schema(), batches).unwrap())
}

/// `got` has the report or error of `expected` and, when it succeeded, its rows.
pub(crate) fn assert_same(got: &Read, expected: &Read, shape: impl std::fmt::Debug) {
    assert_eq!(
        got.outcome, expected.outcome,
        "{shape:?}: the report or the error"
    );
    if expected.outcome.is_ok() {
        assert_eq!(
            rows(&got.batches),
            rows(&expected.batches),
            "{shape:?}: the rows"
        );
    }
}
