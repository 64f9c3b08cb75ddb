//! What the worker's test files share.
// Each test file uses part of it.
#![allow(dead_code)]

use arrow::array::{Int64Array, RecordBatch};

/// The `id` column of every batch, sorted: compared with the expected ids, it shows a row lost
/// or written twice.
pub fn ids_of(batches: &[RecordBatch]) -> Vec<i64> {
    let mut ids: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            b.column_by_name("id")
                .expect("an id column")
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("id is Int64")
                .values()
                .to_vec()
        })
        .collect();
    ids.sort();
    ids
}

/// Every file under `dir`, at any depth (none when it does not exist).
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}
