//! Serves the UAPI on `/var/run/wireguard/<ifname>.sock` for a [`Device`],
//! so that `wg show` / `wg set` and defguard's `WGApi<Userspace>` work.

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::device::Device;
use super::uapi::{self, format_get, parse_set};

/// Directory of UAPI sockets (wg(8)'s compiled-in default).
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// The socket path for `ifname`.
pub fn socket_path(ifname: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{ifname}.sock"))
}

/// Bind the socket (replacing a stale one) and serve it on a thread.
pub fn serve(device: Arc<Device>) -> io::Result<PathBuf> {
    let path = socket_path(device.ifname());
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(SOCKET_DIR)?;
    let listener = bind_private(&path)?;
    std::thread::Builder::new()
        .name("pg-uapi".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        if let Err(e) = handle(&device, stream) {
                            tracing::debug!(error = %e, "UAPI connection");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "UAPI accept"),
                }
            }
        })?;
    Ok(path)
}

/// Bind a Unix socket at `path` that never exists there with other
/// permissions than 0600: the socket answers `get=1` with the private key,
/// and a socket bound in place is 0777 less the umask until a chmod
/// follows. It is bound inside a private (0700) directory next to `path`,
/// made 0600 there, and renamed into place (replacing a stale socket in
/// one step).
fn bind_private(path: &Path) -> io::Result<UnixListener> {
    let dir = staging_dir(path);
    match fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let inner = dir.join("sock");
    let listener = UnixListener::bind(&inner)?;
    fs::set_permissions(&inner, fs::Permissions::from_mode(0o600))?;
    fs::rename(&inner, path)?;
    // The socket is in place and answers; an empty directory left behind
    // is removed by the next start or by --uninstall.
    let _ = fs::remove_dir(&dir);
    Ok(listener)
}

/// The private directory [`bind_private`] binds `path`'s socket in
/// (`<name>.bind` beside it; empty and gone once the socket is in place).
pub fn staging_dir(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".bind");
    path.with_file_name(name)
}

fn handle(device: &Device, stream: UnixStream) -> io::Result<()> {
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut first = String::new();
        if reader.read_line(&mut first)? == 0 {
            return Ok(());
        }
        let mut lines = Vec::new();
        loop {
            let mut l = String::new();
            if reader.read_line(&mut l)? == 0 {
                break;
            }
            let l = l.trim_end_matches('\n').to_string();
            if l.is_empty() {
                break;
            }
            lines.push(l);
        }
        match first.trim_end() {
            "get=1" => {
                let key = device.private_key();
                let body = format_get(key.as_ref(), device.listen_port(), &device.peer_status());
                out.write_all(body.as_bytes())?;
            }
            "set=1" => {
                let errno = match parse_set(&lines) {
                    Ok(req) => match device.apply(req) {
                        Ok(()) => 0,
                        Err((errno, msg)) => {
                            tracing::warn!(%msg, "UAPI set refused");
                            errno
                        }
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "UAPI set: bad request");
                        uapi::EINVAL
                    }
                };
                write!(out, "errno={}\n\n", -errno)?;
            }
            other => {
                tracing::warn!(request = %uapi::unknown_request(other), "UAPI: unknown request");
                write!(out, "errno={}\n\n", -uapi::EINVAL)?;
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileTypeExt;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// Before the fix the socket was bound in place and chmod'ed after:
    /// a watcher saw it with the umask's 0755 between the two.
    #[test]
    fn the_socket_is_never_seen_with_other_permissions_than_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("podguard0.sock");
        let done = AtomicBool::new(false);
        let seen = std::thread::scope(|s| {
            let watcher = s.spawn(|| {
                let mut modes = std::collections::BTreeSet::new();
                while !done.load(Ordering::Relaxed) {
                    if let Ok(m) = fs::symlink_metadata(&path) {
                        modes.insert(m.permissions().mode() & 0o7777);
                    }
                }
                modes
            });
            for _ in 0..2000 {
                let l = bind_private(&path).unwrap();
                drop(l);
            }
            done.store(true, Ordering::Relaxed);
            watcher.join().unwrap()
        });
        let seen: Vec<String> = seen.into_iter().map(|m| format!("{m:o}")).collect();
        assert_eq!(seen, ["600"], "modes the socket was seen with");
        let m = fs::symlink_metadata(&path).unwrap();
        assert!(m.file_type().is_socket());
        // Nothing left beside it.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("podguard0.sock")]);
    }

    #[test]
    fn the_renamed_socket_answers_and_replaces_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("podguard0.sock");
        fs::write(&path, b"stale").unwrap();
        fs::create_dir(dir.path().join("podguard0.sock.bind")).unwrap();
        let l = bind_private(&path).unwrap();
        let mut c = UnixStream::connect(&path).unwrap();
        let (mut server, _) = l.accept().unwrap();
        c.write_all(b"get=1\n").unwrap();
        let mut got = [0u8; 6];
        std::io::Read::read_exact(&mut server, &mut got).unwrap();
        assert_eq!(&got, b"get=1\n");
    }
}
