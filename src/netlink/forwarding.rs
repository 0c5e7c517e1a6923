//! Forwarding on for the pod network's address families: the one thing
//! the agent writes under `/proc/sys`. Its own file because where
//! `/proc/sys/net` is writable differs between a host (`/proc/sys/net`)
//! and the DaemonSet's container (the host's, mounted at
//! `/host/proc/sys/net`), and because what is written decides what a host
//! keeps: IPv6 forwarding also turns off Router Advertisements.

use super::NetlinkError;

/// Turn on forwarding in this network namespace for the address families
/// of the pod network (`cluster_cidrs`), through `proc_sys_net` (this
/// namespace's `/proc/sys/net`, wherever it is mounted writable). Only
/// those: IPv6 forwarding on makes the kernel ignore Router Advertisements
/// (with `accept_ra=1`), which would cost an IPv4-only cluster's hosts
/// their SLAAC default route.
///
/// The files are opened, never created: a `proc_sys_net` that is not a
/// `/proc/sys/net` fails here even where forwarding is already on.
pub fn enable_forwarding(
    proc_sys_net: &std::path::Path,
    cluster_cidrs: &[ipnet::IpNet],
) -> Result<(), NetlinkError> {
    let has = |v4: bool| cluster_cidrs.iter().any(|c| c.addr().is_ipv4() == v4);
    let wanted = [
        ("ipv4/ip_forward", has(true)),
        ("ipv6/conf/all/forwarding", has(false)),
    ];
    for (rel, _) in wanted.iter().filter(|(_, on)| *on) {
        let path = proc_sys_net.join(rel);
        let sysctl = |source| NetlinkError::Sysctl {
            path: path.display().to_string(),
            source,
        };
        let mut current = String::new();
        std::fs::File::open(&path)
            .and_then(|mut f| std::io::Read::read_to_string(&mut f, &mut current))
            .map_err(sysctl)?;
        if current.trim() == "1" {
            continue;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"1"))
            .map_err(sysctl)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(v4: &str, v6: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("ipv4")).unwrap();
        std::fs::create_dir_all(d.path().join("ipv6/conf/all")).unwrap();
        std::fs::write(d.path().join("ipv4/ip_forward"), v4).unwrap();
        std::fs::write(d.path().join("ipv6/conf/all/forwarding"), v6).unwrap();
        d
    }

    /// The value (a stand-in file is written over, not truncated, as a
    /// sysctl is).
    fn read(d: &tempfile::TempDir, rel: &str) -> String {
        std::fs::read_to_string(d.path().join(rel))
            .unwrap()
            .trim()
            .to_string()
    }

    #[test]
    fn only_the_cluster_families_are_turned_on() {
        let nets =
            |s: &[&str]| -> Vec<ipnet::IpNet> { s.iter().map(|n| n.parse().unwrap()).collect() };
        let d = dir_with("0\n", "0\n");
        enable_forwarding(d.path(), &nets(&["10.244.0.0/16"])).unwrap();
        assert_eq!(read(&d, "ipv4/ip_forward"), "1");
        assert_eq!(read(&d, "ipv6/conf/all/forwarding"), "0");
        let d = dir_with("0\n", "0\n");
        enable_forwarding(d.path(), &nets(&["fd00:10:244::/56"])).unwrap();
        assert_eq!(read(&d, "ipv4/ip_forward"), "0");
        assert_eq!(read(&d, "ipv6/conf/all/forwarding"), "1");
        let d = dir_with("0\n", "0\n");
        enable_forwarding(d.path(), &nets(&["10.244.0.0/16", "fd00:10:244::/56"])).unwrap();
        assert_eq!(read(&d, "ipv4/ip_forward"), "1");
        assert_eq!(read(&d, "ipv6/conf/all/forwarding"), "1");
    }

    #[test]
    fn a_wrong_directory_is_named_and_nothing_is_created() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("ipv4")).unwrap();
        let e = enable_forwarding(d.path(), &["10.244.0.0/16".parse().unwrap()]).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("ipv4/ip_forward"), "{text}");
        assert!(text.contains("--proc-sys-net"), "{text}");
        assert!(
            !d.path().join("ipv4/ip_forward").exists(),
            "a file was created"
        );
    }
}
