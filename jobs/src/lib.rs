//! Carga's dataflow library: file sources -> Arrow record batches -> delta/complete -> encrypted
//! Parquet in the raw zone, committed by a manifest.

pub mod access;
mod aws_error;
pub mod bucket;
mod chunks;
pub mod connections;
pub mod delta;
pub mod destination;
mod dictionary_choice;
pub mod encryption;
pub mod error;
pub mod manifest;
mod pipeline;
pub mod preview;
pub mod private_file;
pub mod query;
pub mod read;
pub mod redact;
pub mod retry;
mod row_groups;
pub mod run;
pub mod schema_drift;
pub mod secrets;
pub mod sink;
pub mod sources;
pub mod storage;
pub mod typing;
pub mod upload;
pub mod validation;

pub use chunks::order::{ChunkDispatch, ChunkGaveUp, ChunkOrder, ChunkReport};
pub use error::{JobError, Result};
pub use run::{Engine, RunFailure, RunOutcome};

/// Cases for a property test: `CARGA_FUZZ_CASES / share` (CI sets it), `default` otherwise, so
/// a slow property runs a share of what a fast one does.
#[cfg(test)]
pub(crate) fn fuzz_cases(default: u32, share: u32) -> u32 {
    std::env::var("CARGA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(default, |n| (n / share).max(1))
}
