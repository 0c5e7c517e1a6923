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
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&path)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
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
