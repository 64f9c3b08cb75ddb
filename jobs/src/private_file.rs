//! Files only their owner may read (the key file, the local secrets file), replaced atomically: a
//! reader sees the old file or the new one, never half of one, and never a wider mode.

use std::io::Write;
use std::path::Path;

use crate::error::{JobError, Result};

/// Replaces `path` with `body`: a private temporary file beside it (mode 0600), synced, renamed.
pub fn replace(path: &Path, body: &[u8]) -> Result<()> {
    let context = |e| JobError::io(format!("writing {}", path.display()), e);
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(context)?;
    // tempfile creates its files readable by their owner only.
    let mut temporary = tempfile::NamedTempFile::new_in(dir).map_err(context)?;
    temporary.write_all(body).map_err(context)?;
    temporary.as_file().sync_all().map_err(context)?;
    temporary.persist(path).map_err(|e| context(e.error))?;
    Ok(())
}
