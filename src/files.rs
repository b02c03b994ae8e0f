//! Files written so that a reader, or a crash, never sees half of one: a
//! temporary beside the target, synced, then renamed over it. Below every
//! other layer, so the GPU context (its matmul tile cache) and the file
//! formats in `io` share one writer.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A suffix no other temporary of this or any other process has: the pid,
/// a per-process counter and the clock (pids are reused across reboots and
/// containers; two writes in one process must not share a name).
pub fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{n}-{nanos:x}", std::process::id())
}

/// Writes `bytes` to `path` through a temporary file in the same folder,
/// synced and then renamed over the target: readers see the old file or the
/// new one, never a partial one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically_with(path, |out| {
        out.write_all(bytes)
            .map_err(|source| io_error(path, source))
    })
}

/// [`write_atomically`] for contents produced piece by piece by `write`; on
/// any error the temporary file is removed and the target left as it was.
pub(crate) fn write_atomically_with(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<()>,
) -> Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::Format {
            path: path.display().to_string(),
            message: "not a file path".into(),
        })?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", unique_suffix()));
    let result = (|| -> Result<()> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|source| io_error(path, source))?;
        let mut out = std::io::BufWriter::new(file);
        write(&mut out)?;
        let file = out
            .into_inner()
            .map_err(|e| io_error(path, e.into_error()))?;
        file.sync_all().map_err(|source| io_error(path, source))?;
        std::fs::rename(&tmp, path).map_err(|source| io_error(path, source))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
