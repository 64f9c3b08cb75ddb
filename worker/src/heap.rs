//! How the process's heap is kept: glibc's allocator gives each thread that allocates its own
//! heap ("arena", up to eight per core), and an arena keeps the pages its threads freed. A run's
//! threads (tokio's, the CSV parsers, the Parquet encoders) each hold tens of MiB in turn, so
//! idle arenas kept ~30 MiB nobody used: a 1M-row CSV peaked at 121 MiB, 90 MiB with two arenas
//! and freed memory above 1 MiB handed back, at the same speed (measured, see the README's
//! benchmarks). `MALLOC_ARENA_MAX` / `MALLOC_TRIM_THRESHOLD_` in the environment still win.
//!
//! Setting the trim threshold also fixes glibc's mmap threshold at 128 KiB (it no longer adapts
//! to what is freed), so every larger block is mapped, faulted in and unmapped on its own: the
//! readers reuse their large buffers (CSV chunks, JSON parts) instead of freeing them. A fixed
//! 4 MiB threshold (`MALLOC_MMAP_THRESHOLD_`) was 12% faster on a 4M-row CSV before the chunks
//! were reused, at 99 MiB instead of 86; mimalloc was 3–5% faster at 240–260 MiB (2026-12-06).

/// Caps the arenas at two and returns freed memory above 1 MiB at the top of a heap to the
/// system. Call before any thread starts.
pub fn keep_heap_small() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const ARENAS: i32 = 2;
        const TRIM_THRESHOLD_BYTES: i32 = 1 << 20;
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            // SAFETY: mallopt only sets allocator parameters; it is called before any other
            // thread exists, so no allocation runs concurrently with it.
            #[allow(unsafe_code)]
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, ARENAS);
            }
        }
        if std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_none() {
            // SAFETY: as above.
            #[allow(unsafe_code)]
            unsafe {
                libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES);
            }
        }
    }
}
