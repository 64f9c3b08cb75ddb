//! carga-jobs' integration tests against real files and servers: one test binary (one link of
//! DataFusion and the drivers instead of one per file), one module per concern.

mod common;
mod file_sources;
mod fuzz_readers;
mod interop_pyarrow;
mod key_management;
mod malformed_inputs;
mod messy_inputs;
mod mongodb;
mod mssql;
mod mysql;
mod outbound;
mod partitioned;
mod postgres;
mod query;
mod rest;
mod runs;
mod s3;
mod sealed_metadata;
mod secrets_manager;
mod source_conformance;
mod spread;
