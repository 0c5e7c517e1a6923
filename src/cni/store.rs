//! The IPAM store on the node: one file per allocated address under
//! `/var/lib/podguard/ipam/`, named by the address and holding its owner
//! (network name, container ID, interface).
//!
//! The addresses belong to the node's podCIDRs, not to a network: every
//! network configuration that uses podguard on a node shares this one store,
//! so two networks never hand out the same address. (Earlier versions kept
//! a store per network name in `<dir>/<name>/`; `open` moves such
//! allocations into the shared store.)
//!
//! Every operation holds an exclusive `flock` on `<dir>/lock`, so parallel
//! plugin invocations never hand out the same address. A file is created
//! complete or not at all (written to a temp file, then `link(2)`ed into
//! place, which fails if the name exists), so a crash at any point leaves a
//! store that parses; stray temp files are removed under the lock.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use mesh::ipam::{IpamError, Pool};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// Default store directory.
pub const DEFAULT_DIR: &str = "/var/lib/podguard/ipam";

/// Who holds an address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    /// The network (conflist `name`) the attachment belongs to.
    #[serde(default)]
    pub network: String,
    /// Container ID.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Interface name in the container.
    pub ifname: String,
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Filesystem error.
    #[error("IPAM store {path}: {op}")]
    Io {
        /// What we did.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Allocation failed (e.g. exhausted).
    #[error(transparent)]
    Ipam(#[from] IpamError),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// An open, locked store. The lock is released on drop.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl Store {
    /// Open (creating if needed) and lock the store at `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("creating directory", dir))?;
        let lock_path = dir.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err("opening lock", &lock_path))?;
        let lock = Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| StoreError::Io {
            op: "locking",
            path: lock_path.clone(),
            source: io::Error::from(e),
        })?;
        let store = Self {
            dir: dir.to_path_buf(),
            _lock: lock,
        };
        store.remove_temp_files();
        store.migrate_per_network_dirs();
        Ok(store)
    }

    /// Move allocations of the old per-network layout (`<dir>/<name>/<ip>`)
    /// into the shared store, owned by network `<name>`. Only a directory
    /// that is an old podguard store is touched (nothing but `lock`, the
    /// cursors, temp files and address files holding a podguard owner):
    /// a `dataDir` shared with other plugins keeps their files. An address
    /// already held in the shared store stays where it is (the old
    /// directory is then kept).
    fn migrate_per_network_dirs(&self) {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return;
        };
        for sub in rd.flatten() {
            let name = sub.file_name().to_string_lossy().to_string();
            if !sub.file_type().is_ok_and(|t| t.is_dir()) || !super::spec::valid_id(&name) {
                continue;
            }
            let Some(entries) = old_store_entries(&sub.path()) else {
                continue;
            };
            let mut kept = false;
            for (path, ip, owner) in entries {
                let Some((ip, mut owner)) = ip.zip(owner) else {
                    let _ = fs::remove_file(&path); // lock, cursor, temp file
                    continue;
                };
                if self.dir.join(ip.to_string()).exists() {
                    kept = true;
                    continue;
                }
                owner.network = name.clone();
                if self.write_owner(ip, &owner).is_ok() {
                    let _ = fs::remove_file(&path);
                } else {
                    kept = true;
                }
            }
            if !kept {
                let _ = fs::remove_dir(sub.path());
            }
        }
    }

    fn remove_temp_files(&self) {
        if let Ok(rd) = fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(".tmp.") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }

    /// Every allocation. Files whose name is not an address (lock, cursor)
    /// are skipped; an allocation file with unreadable content is reported
    /// with no owner, so GC can release it.
    pub fn allocations(&self) -> Result<Vec<(IpAddr, Option<Owner>)>, StoreError> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir).map_err(io_err("listing", &self.dir))? {
            let e = e.map_err(io_err("listing", &self.dir))?;
            let Ok(ip) = e.file_name().to_string_lossy().parse::<IpAddr>() else {
                continue;
            };
            let owner = fs::read(e.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<Owner>(&b).ok());
            out.push((ip, owner));
        }
        out.sort();
        Ok(out)
    }

    /// Addresses held by `owner`.
    pub fn held_by(&self, owner: &Owner) -> Result<Vec<IpAddr>, StoreError> {
        Ok(self
            .allocations()?
            .into_iter()
            .filter(|(_, o)| o.as_ref() == Some(owner))
            .map(|(ip, _)| ip)
            .collect())
    }

    fn cursor_path(&self, cidr: &IpNet) -> PathBuf {
        let fam = if cidr.addr().is_ipv4() { "v4" } else { "v6" };
        self.dir.join(format!("last-{fam}"))
    }

    /// Allocate one address of `cidr` to `owner`.
    pub fn allocate(&self, cidr: IpNet, owner: &Owner) -> Result<IpAddr, StoreError> {
        let mut pool = Pool::new(cidr)?;
        for (ip, _) in self.allocations()? {
            let _ = pool.reserve(ip);
        }
        if let Some(last) = fs::read_to_string(self.cursor_path(&cidr))
            .ok()
            .and_then(|s| s.trim().parse::<IpAddr>().ok())
        {
            pool.resume_after(last);
        }
        let ip = pool.allocate()?;
        self.write_owner(ip, owner)?;
        let cursor = self.cursor_path(&cidr);
        let _ = write_atomic(&self.dir, &cursor, ip.to_string().as_bytes());
        Ok(ip)
    }

    fn write_owner(&self, ip: IpAddr, owner: &Owner) -> Result<(), StoreError> {
        let path = self.dir.join(ip.to_string());
        let tmp = self.dir.join(format!(".tmp.{}.{ip}", std::process::id()));
        let body = serde_json::to_vec(owner).map_err(|e| StoreError::Io {
            op: "encoding",
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("creating", &tmp))?;
        f.write_all(&body).map_err(io_err("writing", &tmp))?;
        f.sync_all().map_err(io_err("syncing", &tmp))?;
        let r = fs::hard_link(&tmp, &path).map_err(io_err("linking into place", &path));
        let _ = fs::remove_file(&tmp);
        r?;
        sync_dir(&self.dir);
        Ok(())
    }

    /// Release every address held by `owner`; returns them.
    pub fn release_owner(&self, owner: &Owner) -> Result<Vec<IpAddr>, StoreError> {
        let ips = self.held_by(owner)?;
        for ip in &ips {
            self.release(*ip)?;
        }
        Ok(ips)
    }

    /// Release one address (absent is fine).
    pub fn release(&self, ip: IpAddr) -> Result<(), StoreError> {
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(&self.dir);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("removing", &path)(e)),
        }
    }

    /// Release every allocation of `network` whose owner is not in `valid`
    /// (and any with an unreadable owner). Allocations of other networks
    /// are not touched. Returns what was released.
    pub fn gc(
        &self,
        network: &str,
        valid: &BTreeSet<Owner>,
    ) -> Result<Vec<(IpAddr, Option<Owner>)>, StoreError> {
        let mut released = Vec::new();
        for (ip, owner) in self.allocations()? {
            let stale = match &owner {
                None => true,
                Some(o) => o.network == network && !valid.contains(o),
            };
            if stale {
                self.release(ip)?;
                released.push((ip, owner));
            }
        }
        Ok(released)
    }
}

/// The entries of `dir` if it is an old podguard store: each with its
/// address and owner when it is an allocation (None for lock, cursors and
/// temp files). None when anything else is in it.
#[allow(clippy::type_complexity)]
fn old_store_entries(dir: &Path) -> Option<Vec<(PathBuf, Option<IpAddr>, Option<Owner>)>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).ok()?.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Ok(ip) = name.parse::<IpAddr>() {
            let owner = serde_json::from_slice::<Owner>(&fs::read(e.path()).ok()?).ok()?;
            out.push((e.path(), Some(ip), Some(owner)));
        } else if matches!(name.as_str(), "lock" | "last-v4" | "last-v6")
            || name.starts_with(".tmp.")
        {
            out.push((e.path(), None, None));
        } else {
            return None;
        }
    }
    Some(out)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn write_atomic(dir: &Path, path: &Path, body: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".tmp.{}.cursor", std::process::id()));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(c: &str) -> Owner {
        owner_in("net", c)
    }

    fn owner_in(net: &str, c: &str) -> Owner {
        Owner {
            network: net.into(),
            container_id: c.into(),
            ifname: "eth0".into(),
        }
    }

    #[test]
    fn allocate_release_gc_and_round_robin() {
        let d = tempfile::tempdir().unwrap();
        let cidr: IpNet = "10.0.0.0/29".parse().unwrap();
        let s = Store::open(d.path()).unwrap();
        let a = s.allocate(cidr, &owner("a")).unwrap();
        let b = s.allocate(cidr, &owner("b")).unwrap();
        assert_eq!(a.to_string(), "10.0.0.2");
        assert_eq!(b.to_string(), "10.0.0.3");
        assert_eq!(s.release_owner(&owner("a")).unwrap(), vec![a]);
        // Not reused at once.
        assert_eq!(
            s.allocate(cidr, &owner("c")).unwrap().to_string(),
            "10.0.0.4"
        );
        let released = s.gc("net", &[owner("c")].into()).unwrap();
        assert_eq!(released, vec![(b, Some(owner("b")))]);
        assert_eq!(s.allocations().unwrap().len(), 1);
    }

    #[test]
    fn exhaustion_is_an_error_naming_the_cidr() {
        let d = tempfile::tempdir().unwrap();
        let cidr: IpNet = "10.0.0.0/30".parse().unwrap();
        let s = Store::open(d.path()).unwrap();
        s.allocate(cidr, &owner("a")).unwrap();
        let e = s.allocate(cidr, &owner("b")).unwrap_err();
        assert!(e.to_string().contains("10.0.0.0/30 is exhausted"), "{e}");
    }

    #[test]
    fn garbage_and_temp_files_do_not_break_the_store() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("10.0.0.2"), "{trunc").unwrap();
        fs::write(d.path().join(".tmp.999.10.0.0.3"), "x").unwrap();
        let s = Store::open(d.path()).unwrap();
        assert!(!d.path().join(".tmp.999.10.0.0.3").exists());
        assert_eq!(
            s.allocations().unwrap(),
            vec![("10.0.0.2".parse().unwrap(), None)]
        );
        // The garbage file still blocks its address until GC releases it.
        let ip = s
            .allocate("10.0.0.0/29".parse().unwrap(), &owner("a"))
            .unwrap();
        assert_eq!(ip.to_string(), "10.0.0.3");
        assert_eq!(s.gc("net", &[owner("a")].into()).unwrap().len(), 1);
    }

    #[test]
    fn gc_touches_only_its_own_network() {
        let d = tempfile::tempdir().unwrap();
        let cidr: IpNet = "10.0.0.0/28".parse().unwrap();
        let s = Store::open(d.path()).unwrap();
        let a = s.allocate(cidr, &owner_in("one", "a")).unwrap();
        let b = s.allocate(cidr, &owner_in("two", "b")).unwrap();
        // Two networks share the node's range: never the same address.
        assert_ne!(a, b);
        // GC of network "two" with nothing valid: only b goes.
        assert_eq!(
            s.gc("two", &BTreeSet::new()).unwrap(),
            vec![(b, Some(owner_in("two", "b")))]
        );
        assert_eq!(s.held_by(&owner_in("one", "a")).unwrap(), vec![a]);
        // GC of "three" (a name nobody uses) releases nothing.
        assert!(s.gc("three", &BTreeSet::new()).unwrap().is_empty());
        assert_eq!(s.allocations().unwrap().len(), 1);
    }

    #[test]
    fn per_network_dirs_of_earlier_versions_move_into_the_shared_store() {
        let d = tempfile::tempdir().unwrap();
        let old = d.path().join("podguard");
        fs::create_dir(&old).unwrap();
        fs::write(
            old.join("10.0.0.2"),
            r#"{"containerID":"a","ifname":"eth0"}"#,
        )
        .unwrap();
        fs::write(old.join("lock"), "").unwrap();
        fs::write(old.join("last-v4"), "10.0.0.2").unwrap();
        let s = Store::open(d.path()).unwrap();
        assert!(!old.exists());
        assert_eq!(
            s.held_by(&owner_in("podguard", "a")).unwrap(),
            vec!["10.0.0.2".parse::<IpAddr>().unwrap()]
        );
        // The migrated address stays taken.
        let next = s
            .allocate("10.0.0.0/29".parse().unwrap(), &owner_in("other", "b"))
            .unwrap();
        assert_ne!(next.to_string(), "10.0.0.2");
    }

    #[test]
    fn directories_of_other_plugins_are_never_touched() {
        // A dataDir shared with host-local: its per-network dirs hold
        // other files and other content; they stay as they are.
        let d = tempfile::tempdir().unwrap();
        let hl = d.path().join("other-net");
        fs::create_dir(&hl).unwrap();
        fs::write(hl.join("10.0.0.5"), "containerid\neth0").unwrap();
        fs::write(hl.join("last_reserved_ip.0"), "10.0.0.5").unwrap();
        fs::write(hl.join("lock"), "").unwrap();
        let _s = Store::open(d.path()).unwrap();
        assert_eq!(
            fs::read_to_string(hl.join("10.0.0.5")).unwrap(),
            "containerid\neth0"
        );
        assert!(hl.join("last_reserved_ip.0").exists() && hl.join("lock").exists());
        // An address held twice in old dirs: the second stays in its dir.
        let d = tempfile::tempdir().unwrap();
        for net in ["a", "b"] {
            fs::create_dir(d.path().join(net)).unwrap();
            fs::write(
                d.path().join(net).join("10.0.0.2"),
                format!(r#"{{"containerID":"{net}","ifname":"eth0"}}"#),
            )
            .unwrap();
        }
        let s = Store::open(d.path()).unwrap();
        assert_eq!(s.allocations().unwrap().len(), 1);
        assert!(
            d.path().join("a/10.0.0.2").exists() || d.path().join("b/10.0.0.2").exists(),
            "the second holder's record must not be deleted"
        );
    }
}
