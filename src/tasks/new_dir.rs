//! Output directories that never replace a user's files: `--out` must be new
//! or empty and must not be or contain an input, and it appears only when
//! complete (written under a temporary name, then renamed into place).

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::unique_suffix;

/// Checks `out_dir` against `inputs` (what, directory), then lets `write`
/// fill a temporary sibling directory and renames it to `out_dir`. A failed
/// `write` leaves nothing behind.
pub(crate) fn write_new_dir(
    out_dir: &Path,
    inputs: &[(&str, &Path)],
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let out = resolve(out_dir)?;
    for (what, dir) in inputs {
        if resolve(dir)?.starts_with(&out) {
            return Err(Error::InvalidArgument(format!(
                "--out {} is or contains the {what} directory {}; choose a new directory",
                out_dir.display(),
                dir.display()
            )));
        }
    }
    if out_dir.exists() {
        let empty = std::fs::read_dir(out_dir).is_ok_and(|mut d| d.next().is_none());
        if !empty {
            return Err(Error::InvalidArgument(format!(
                "--out {} already exists and is not an empty directory; choose a new one",
                out_dir.display()
            )));
        }
    }
    let name = out.file_name().unwrap_or_default().to_string_lossy();
    let temp = out.with_file_name(format!(".{name}.tmp-{}", unique_suffix()));
    let written = std::fs::create_dir_all(&temp)
        .map_err(io_err(&temp))
        .and_then(|()| write(&temp))
        .and_then(|()| {
            // An empty `out_dir` gives way to the finished one (remove_dir only removes empty ones).
            if out.is_dir() {
                std::fs::remove_dir(&out).map_err(io_err(&out))?;
            }
            std::fs::rename(&temp, &out).map_err(io_err(&out))
        });
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    written
}

pub(crate) fn io_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The absolute path `path` names, with symbolic links and `..` resolved, for
/// paths that do not exist yet too: the nearest existing ancestor is
/// canonicalized and the rest appended (textual comparison misses `./m` = `m`).
fn resolve(path: &Path) -> Result<PathBuf> {
    let absolute = std::path::absolute(path).map_err(io_err(path))?;
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        let Some(parent) = existing.parent() else {
            break;
        };
        rest.extend(existing.components().next_back());
        existing = parent;
    }
    let mut resolved = existing.canonicalize().map_err(io_err(existing))?;
    for c in rest.into_iter().rev() {
        match c {
            Component::ParentDir => {
                resolved.pop();
            }
            Component::Normal(n) => resolved.push(n),
            _ => {}
        }
    }
    Ok(resolved)
}
