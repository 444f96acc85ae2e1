//! Atomic file writes, shared by every crate that writes outputs: the bytes go to a temporary file
//! in the target's folder, which is synced and then renamed over the target. Readers see the old
//! file or the new one, never part of either, and a killed writer leaves no partial file under the
//! target's name.
//!
//! The temporary file is created with the permissions `File::create` would give the target
//! (`0o666` less the process umask), not the owner-only `0o600` that temporary files get by
//! default: the rename keeps the temporary file's permissions, and reports, metrics and checkpoints
//! are meant to be read by whoever may read the run folder.
//!
//! These functions return `std::io::Error`; each crate wraps it in its own error type, with the
//! path.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// A new temporary file in `path`'s folder (the current folder for a bare file name), with the
/// permissions a new file at `path` would get. Fill it, then [`persist`] it to `path`.
pub fn temp_file_for(path: &Path) -> std::io::Result<NamedTempFile> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".tmp-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Asked for at creation, so the kernel applies the umask as it does for `File::create`.
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    builder.tempfile_in(dir)
}

/// Syncs a finished temporary file (from [`temp_file_for`]) to disk and renames it to `path`,
/// replacing any file there. The file is synced by path, not through the handle: a writer that
/// wrote its own file at the temporary path (safetensors does) left the handle on the old one.
pub fn persist(temp: NamedTempFile, path: &Path) -> std::io::Result<()> {
    // Opened for writing (nothing is written): Windows flushes only handles with write access.
    std::fs::OpenOptions::new()
        .write(true)
        .open(temp.path())?
        .sync_all()?;
    temp.persist(path).map(drop).map_err(|err| err.error)
}

/// Writes `path` atomically with what `fill` writes (through a buffer); see [`persist`]. An error
/// from `fill` leaves the old file, or no file, in place.
pub fn write_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut out = BufWriter::new(temp_file_for(path)?);
    fill(&mut out)?;
    let temp = out.into_inner().map_err(|err| err.into_error())?;
    persist(temp, path)
}

/// Writes `bytes` to `path` atomically; see [`write_with`].
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_with(path, |out| out.write_all(bytes))
}

/// Removes the folders directly inside `parent` whose names start with `prefix`: the temporary
/// folders that writers building a folder before renaming it into place (a checkpoint, a fetched
/// model) leave when they are killed. Call it only where no such writer can be running. On failure,
/// the error comes with the path it is about.
pub fn remove_abandoned_folders(
    parent: &Path,
    prefix: &str,
) -> Result<(), (PathBuf, std::io::Error)> {
    let entries = std::fs::read_dir(parent).map_err(|err| (parent.to_path_buf(), err))?;
    for entry in entries {
        let entry = entry.map_err(|err| (parent.to_path_buf(), err))?;
        let abandoned = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with(prefix));
        let path = entry.path();
        if abandoned && path.is_dir() {
            std::fs::remove_dir_all(&path).map_err(|err| (path, err))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries of `dir` other than `keep`.
    fn other_entries(dir: &Path, keep: &str) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name != keep)
            .collect()
    }

    #[test]
    fn a_write_replaces_the_file_and_leaves_nothing_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        write(&path, b"first").unwrap();
        write(&path, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second, longer");
        assert_eq!(other_entries(dir.path(), "out.txt"), Vec::<String>::new());
    }

    #[test]
    fn a_failing_fill_keeps_the_old_file_and_removes_the_temporary_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        write(&path, b"kept").unwrap();
        let err = write_with(&path, |out| {
            out.write_all(b"half of it")?;
            Err(std::io::Error::other("disk full"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        assert_eq!(std::fs::read(&path).unwrap(), b"kept");
        assert_eq!(other_entries(dir.path(), "out.txt"), Vec::<String>::new());
    }

    #[test]
    fn a_missing_folder_is_a_not_found_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent").join("out.txt");
        let err = write(&path, b"x").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        assert!(!path.exists());
    }

    #[test]
    fn only_folders_with_the_prefix_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        for folder in [".tmp-killed/inner", ".tmp-other", "kept/.tmp-nested"] {
            std::fs::create_dir_all(dir.path().join(folder)).unwrap();
        }
        std::fs::write(dir.path().join(".tmp-file"), b"a file, not a folder").unwrap();
        remove_abandoned_folders(dir.path(), ".tmp-").unwrap();
        let mut left = other_entries(dir.path(), "");
        left.sort();
        assert_eq!(left, [".tmp-file", "kept"]);
        assert!(dir.path().join("kept/.tmp-nested").is_dir());
        let (path, err) =
            remove_abandoned_folders(&dir.path().join("absent"), ".tmp-").unwrap_err();
        assert_eq!(path, dir.path().join("absent"));
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }

    /// The written file has the permissions of a file made by `File::create` in the same folder
    /// (whatever the umask), not a temporary file's owner-only ones.
    #[cfg(unix)]
    #[test]
    fn written_files_get_the_permissions_of_a_newly_created_file() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let created = dir.path().join("created.txt");
        std::fs::File::create(&created).unwrap();
        let written = dir.path().join("written.txt");
        write(&written, b"x").unwrap();
        // Under the usual umask 022 that is 0o644; an owner-only 0o600 would differ.
        assert_eq!(
            format!("{:o}", mode(&written)),
            format!("{:o}", mode(&created))
        );
    }
}
