//! The node's private key file (`/var/lib/podguard/private.key`).
//!
//! The one module of this crate that does IO. Writes are atomic (a 0600
//! temporary file, fsync, rename, fsync of the directory), so a crash leaves
//! either the old file or the new one. Loading refuses a symlink, anything
//! that is not a regular file, and a file readable by group or other.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::{KeyError, PrivateKey};

/// Default location of the node's private key.
pub const DEFAULT_PATH: &str = "/var/lib/podguard/private.key";

/// Why the key file could not be loaded or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The path is a symbolic link; we never follow one to a key.
    #[error("refusing key file {path}: it is a symlink")]
    Symlink {
        /// The offending path.
        path: PathBuf,
    },
    /// The path exists but is a directory, device, FIFO, ...
    #[error("refusing key file {path}: not a regular file")]
    NotRegularFile {
        /// The offending path.
        path: PathBuf,
    },
    /// The file is readable or writable by group or other.
    #[error(
        "refusing key file {path}: mode {mode:04o} lets group or other access it (want 0600; fix with chmod 600)"
    )]
    TooPermissive {
        /// The offending path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file's content is not a base64 private key.
    #[error("key file {path} does not hold a valid key")]
    InvalidKey {
        /// The offending path.
        path: PathBuf,
        /// What is wrong (never contains key material).
        #[source]
        source: KeyError,
    },
    /// An operating-system error while reading or writing.
    #[error("{op} {path}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Load the key at `path`, or generate one and write it there if no file
/// exists. A second call returns the same key.
pub fn load_or_generate(path: &Path) -> Result<PrivateKey, StoreError> {
    load_or_create(path).map(|(key, _)| key)
}

/// [`load_or_generate`], saying whether this call created the key (a
/// process that lost the race to create it loads the winner's: false).
pub fn load_or_create(path: &Path) -> Result<(PrivateKey, bool), StoreError> {
    match fs::symlink_metadata(path) {
        Ok(_) => load(path).map(|k| (k, false)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let key = PrivateKey::generate();
            match write_new(path, &key) {
                Ok(()) => Ok((key, true)),
                // Another process created the key first: use that one, so
                // two processes never run with different keys.
                Err(StoreError::Io { source, .. })
                    if source.kind() == io::ErrorKind::AlreadyExists =>
                {
                    load(path).map(|k| (k, false))
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(io_err("inspecting", path)(e)),
    }
}

/// Load the key at `path`, checking type and permissions first.
pub fn load(path: &Path) -> Result<PrivateKey, StoreError> {
    let meta = fs::symlink_metadata(path).map_err(io_err("inspecting", path))?;
    if meta.file_type().is_symlink() {
        return Err(StoreError::Symlink {
            path: path.to_path_buf(),
        });
    }
    // O_NOFOLLOW closes the race between the check above and the open.
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                StoreError::Symlink {
                    path: path.to_path_buf(),
                }
            } else {
                io_err("opening", path)(e)
            }
        })?;
    let meta = file.metadata().map_err(io_err("inspecting", path))?;
    if !meta.is_file() {
        return Err(StoreError::NotRegularFile {
            path: path.to_path_buf(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(StoreError::TooPermissive {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(64));
    // A key file is 45 bytes; read a little more so oversized files are caught.
    (&mut file)
        .take(256)
        .read_to_end(&mut buf)
        .map_err(io_err("reading", path))?;
    let text = std::str::from_utf8(&buf).unwrap_or("");
    // `wg genkey > file` leaves one trailing newline; accept exactly that.
    let text = text.strip_suffix('\n').unwrap_or(text);
    PrivateKey::from_base64(text).map_err(|source| StoreError::InvalidKey {
        path: path.to_path_buf(),
        source,
    })
}

/// Write `key` to `path` atomically with mode 0600, creating the parent
/// directory (mode 0700) if needed. Replaces an existing file.
pub fn write(path: &Path, key: &PrivateKey) -> Result<(), StoreError> {
    write_with(path, key, false)
}

/// Like [`write`], but fails with `AlreadyExists` if `path` exists
/// (the new file is `link(2)`ed into place, never renamed over another).
pub fn write_new(path: &Path, key: &PrivateKey) -> Result<(), StoreError> {
    write_with(path, key, true)
}

fn write_with(path: &Path, key: &PrivateKey, exclusive: bool) -> Result<(), StoreError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("creating directory", dir))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "key".into());
    let tmp = dir.join(format!(
        ".{file_name}.tmp.{}.{:016x}",
        std::process::id(),
        rand_core::RngCore::next_u64(&mut rand_core::OsRng)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(io_err("creating", &tmp))?;
        let mut text = key.to_base64();
        text.push('\n');
        f.write_all(text.as_bytes())
            .map_err(io_err("writing", &tmp))?;
        f.sync_all().map_err(io_err("syncing", &tmp))?;
        if exclusive {
            fs::hard_link(&tmp, path).map_err(io_err("linking into place", path))?;
            fs::remove_file(&tmp).map_err(io_err("removing", &tmp))?;
        } else {
            fs::rename(&tmp, path).map_err(io_err("renaming into place", path))?;
        }
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("syncing directory", dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The key files of a rotation, next to the node's key (see
/// [`crate::rotation`]): `<key>`, `<key>.next`, `<key>.old`.
#[derive(Debug, Clone)]
pub struct RotationFiles {
    /// `private.key`.
    pub current: PathBuf,
    /// `private.key.next`.
    pub next: PathBuf,
    /// `private.key.old`.
    pub old: PathBuf,
}

/// The keys found on disk, with the model [`crate::rotation::decide`] reads.
pub struct Loaded {
    /// What the state machine sees.
    pub disk: crate::rotation::Disk,
    /// The current private key, if valid.
    pub current: Option<PrivateKey>,
    /// The staged key, if valid.
    pub next: Option<PrivateKey>,
    /// The previous key, if valid.
    pub old: Option<PrivateKey>,
    /// Why a file that exists is unusable (never contains key material).
    pub problems: Vec<StoreError>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("disk", &self.disk)
            .field("problems", &self.problems)
            .finish_non_exhaustive()
    }
}

impl RotationFiles {
    /// The files for the key at `current`.
    pub fn new(current: &Path) -> Self {
        let with = |suffix: &str| {
            let mut s = current.as_os_str().to_owned();
            s.push(suffix);
            PathBuf::from(s)
        };
        Self {
            current: current.to_path_buf(),
            next: with(".next"),
            old: with(".old"),
        }
    }

    /// Read all three files. A file that exists but cannot be used is
    /// reported in `problems` and seen as [`crate::rotation::File::Unusable`].
    pub fn load(&self) -> Loaded {
        use crate::rotation::{Disk, File};
        let mut problems = Vec::new();
        let mut one = |path: &Path| -> (File, Option<PrivateKey>) {
            match fs::symlink_metadata(path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => (File::Absent, None),
                Err(e) => {
                    problems.push(io_err("inspecting", path)(e));
                    (File::Unusable, None)
                }
                Ok(meta) => match load(path) {
                    Ok(k) => {
                        let since = meta.mtime().max(0) as u64;
                        (
                            File::Key {
                                key: k.public_key(),
                                since,
                            },
                            Some(k),
                        )
                    }
                    Err(e) => {
                        problems.push(e);
                        (File::Unusable, None)
                    }
                },
            }
        };
        let (current, ck) = one(&self.current);
        let (next, nk) = one(&self.next);
        let (old, ok) = one(&self.old);
        Loaded {
            disk: Disk { current, next, old },
            current: ck,
            next: nk,
            old: ok,
            problems,
        }
    }

    /// Carry out one step of the rotation machine. Each step is one atomic
    /// operation (an exclusive link of a fully written 0600 file, a rename,
    /// or an unlink) followed by an fsync of the directory.
    pub fn carry_out(&self, step: crate::rotation::Step) -> Result<(), StoreError> {
        use crate::rotation::Step;
        match step {
            Step::CreateCurrent => write_new(&self.current, &PrivateKey::generate()),
            Step::RecoverFromNext | Step::PromoteNext => self.rename(&self.next, &self.current),
            Step::RecoverFromOld => self.rename(&self.old, &self.current),
            Step::CreateNext => write_new(&self.next, &PrivateKey::generate()),
            Step::SaveOld => write_new(&self.old, &load(&self.current)?),
            Step::RetireOld | Step::DropOld => self.remove(&self.old),
            Step::DropNext => self.remove(&self.next),
        }
    }

    fn dir(&self) -> &Path {
        match self.current.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        }
    }

    fn sync_dir(&self) -> Result<(), StoreError> {
        File::open(self.dir())
            .and_then(|d| d.sync_all())
            .map_err(io_err("syncing directory", self.dir()))
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<(), StoreError> {
        // Check what is renamed into place like any key we load.
        load(from)?;
        fs::rename(from, to).map_err(io_err("renaming into place", to))?;
        self.sync_dir()
    }

    fn remove(&self, path: &Path) -> Result<(), StoreError> {
        match fs::remove_file(path) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("removing", path)(e)),
        }
    }
}

#[cfg(test)]
mod tests;
