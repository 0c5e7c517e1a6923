//! Test harness for network-namespace tests: namespaces, node agents,
//! pods, captures and transfers, all removed on drop (also on panic).
//!
//! Every address used lives inside namespaces the harness creates.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod cni;
pub mod kubelab;
pub mod kubelet;
pub mod lab;
pub mod netpol;
pub mod pcap;
pub mod rbac;
pub mod runtime;
pub mod stream;
pub mod twonode;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Whether this test can run; under CI=true a test that cannot run fails.
pub fn require_root(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    let ip_ok = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let tools = ["tcpdump", "wg"].iter().all(|t| {
        Command::new("which")
            .arg(t)
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if root && ip_ok && tools {
        return true;
    }
    let why = format!(
        "{test}: needs root, iproute2, tcpdump and wireguard-tools (root={root}, ip netns={ip_ok}, tools={tools})"
    );
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{why}; under CI=true this is a failure, not a skip");
    }
    eprintln!("SKIPPED: {why}");
    false
}

/// Run a command, return its output (never panics on non-zero exit).
pub fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("spawning {args:?}: {e}"))
}

/// Run a command that must succeed; returns stdout.
pub fn ok(args: &[&str]) -> String {
    stdout_of_success(&format!("{args:?}"), run(args))
}

/// The stdout of a command that must have succeeded (`what` names it).
pub fn stdout_of_success(what: &str, o: Output) -> String {
    assert!(
        o.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Run `f` on a thread that has entered network namespace `ns`.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    podguard::sys::in_netns(ns, f).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Move the calling thread into network namespace `ns`.
pub fn enter_netns(ns: &str) {
    let f = File::open(format!("/run/netns/{ns}")).unwrap();
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
}

/// IPv4 forwarding off in `ns`: a new namespace copies the host's setting.
pub fn forwarding_off(ns: &str) {
    ok(&[
        "ip",
        "netns",
        "exec",
        ns,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=0",
    ]);
}

/// Poll `cond` until true or `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}

/// A set of namespaces and processes that vanish on drop.
pub struct Netns {
    pub prefix: String,
    names: Vec<String>,
    children: Vec<(String, Child)>,
    pub dir: tempfile::TempDir,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let prefix = format!("pgt{}{tag}", std::process::id() % 100_000);
        Self {
            prefix,
            names: Vec::new(),
            children: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Full namespace name for `short`.
    pub fn ns(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    pub fn add(&mut self, short: &str) -> String {
        let name = self.ns(short);
        let _ = run(&["ip", "netns", "del", &name]);
        ok(&["ip", "netns", "add", &name]);
        ok(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        self.names.push(name.clone());
        name
    }

    /// The underlay: namespace `ul` with bridge `br0` (at `addr`, if given).
    pub fn underlay(&mut self, addr: Option<&str>) -> String {
        let ul = self.add("ul");
        ok(&["ip", "-n", &ul, "link", "add", "br0", "type", "bridge"]);
        if let Some(a) = addr {
            ok(&["ip", "-n", &ul, "addr", "add", a, "dev", "br0"]);
        }
        ok(&["ip", "-n", &ul, "link", "set", "br0", "up"]);
        ul
    }

    /// Node namespace `name` on underlay `ul`: its `eth0` on `br0`, at
    /// 192.0.2.`idx`/24. Returns the namespace.
    pub fn underlay_node(&mut self, ul: &str, name: &str, idx: u8) -> String {
        let ns = self.add(name);
        let ulif = format!("ul-{name}");
        ok(&[
            "ip", "-n", ul, "link", "add", &ulif, "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ]);
        ok(&["ip", "-n", ul, "link", "set", &ulif, "master", "br0", "up"]);
        let addr = format!("192.0.2.{idx}/24");
        ok(&["ip", "-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
        ok(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        ns
    }

    /// Spawn `cmd` with stderr appended to `log` (stdout discarded),
    /// tracked under `label`.
    pub fn spawn_logged(&mut self, label: &str, cmd: &mut Command, log: &Path) {
        let file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", log.display()));
        cmd.stdout(Stdio::null()).stderr(file);
        self.spawn(label, cmd);
    }

    /// Spawn a long-running process, tracked under `label`.
    pub fn spawn(&mut self, label: &str, cmd: &mut Command) {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {label}: {e}"));
        self.children.push((label.to_string(), child));
    }

    /// SIGKILL and reap the process tracked under `label`.
    pub fn kill(&mut self, label: &str) {
        if let Some(i) = self.children.iter().position(|(l, _)| l == label) {
            let (_, mut c) = self.children.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Send `sig` to the process tracked under `label` (which must run).
    pub fn signal(&self, label: &str, sig: nix::sys::signal::Signal) {
        let (_, c) = self
            .children
            .iter()
            .find(|(l, _)| l == label)
            .unwrap_or_else(|| panic!("no process {label}"));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig)
            .unwrap_or_else(|e| panic!("{sig} to {label}: {e}"));
    }

    /// SIGINT a process and wait for it (for tcpdump to flush).
    pub fn interrupt(&mut self, label: &str) {
        if let Some(i) = self.children.iter().position(|(l, _)| l == label) {
            let (_, mut c) = self.children.remove(i);
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let _ = c.wait();
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.names {
            // Kill anything still running inside (e.g. iperf3 -D).
            let _ = Command::new("ip")
                .args(["netns", "pids", n])
                .output()
                .map(|o| {
                    for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                        let _ = Command::new("kill").args(["-9", pid]).status();
                    }
                });
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Whether `name` is on PATH.
pub fn tool(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Print each (name, log file) while a test is panicking.
pub fn dump_logs_on_panic<'a>(logs: impl IntoIterator<Item = (&'a str, &'a Path)>) {
    if std::thread::panicking() {
        for (name, path) in logs {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            // The last 300 lines (kube-apiserver's log is long).
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(300)..].join("\n");
            eprintln!("---- {name} log ({}) ----\n{tail}", path.display());
        }
    }
}

/// A packet capture running in a namespace.
pub struct Capture {
    pub label: String,
    pub file: PathBuf,
    pub err: PathBuf,
}

/// Start tcpdump on `iface` in `ns`; returns once it is listening.
pub fn start_capture(n: &mut Netns, ns: &str, iface: &str, name: &str) -> Capture {
    start_capture_with(n, ns, iface, name, &[])
}

/// Start tcpdump on `iface` in `ns`, keeping only what `filter` (a tcpdump
/// expression, word by word) matches.
pub fn start_capture_with(
    n: &mut Netns,
    ns: &str,
    iface: &str,
    name: &str,
    filter: &[&str],
) -> Capture {
    let file = n.path(&format!("{name}.pcap"));
    let err = n.path(&format!("{name}.err"));
    let label = format!("tcpdump-{name}");
    n.spawn(
        &label,
        Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "tcpdump",
                "--immediate-mode",
                "-B",
                "65536",
                "-i",
                iface,
                "-s",
                "400",
                "-U",
                "-n",
                "-w",
            ])
            .arg(&file)
            .args(filter)
            .stdout(Stdio::null())
            .stderr(File::create(&err).unwrap()),
    );
    wait_for("tcpdump to listen", Duration::from_secs(10), || {
        std::fs::read_to_string(&err).is_ok_and(|s| s.contains("listening on"))
    });
    Capture { label, file, err }
}

/// A counter of the network namespace `ns` from one of its
/// `/proc/net/{snmp,netstat}` tables (`file`; `table`: `Udp`, `Tcp`,
/// `TcpExt`, ...), or `None` if the file has no such table or counter.
pub fn net_counter(ns: &str, file: &str, table: &str, name: &str) -> Option<u64> {
    let out = run(&["ip", "netns", "exec", ns, "cat", file]);
    let text = String::from_utf8_lossy(&out.stdout);
    let prefix = format!("{table}: ");
    let mut rows = text.lines().filter(|l| l.starts_with(&prefix));
    let (names, values) = (rows.next()?, rows.next()?);
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
}

/// `ifname`'s receive counters in `ns`: (packets, bytes). On a TUN these
/// count what the device wrote into it.
pub fn link_rx(ns: &str, ifname: &str) -> (u64, u64) {
    let out = run(&["ip", "-n", ns, "-j", "-s", "link", "show", "dev", ifname]);
    assert!(out.status.success(), "ip -s link show {ifname} in {ns}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rx = &v[0]["stats64"]["rx"];
    (
        rx["packets"].as_u64().unwrap(),
        rx["bytes"].as_u64().unwrap(),
    )
}

fn stat(text: &str, what: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.ends_with(what))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

impl Capture {
    pub fn stop(&self, n: &mut Netns) -> Vec<u8> {
        std::thread::sleep(Duration::from_millis(300));
        n.interrupt(&self.label);
        // A capture that did not write everything it received would make
        // "no plaintext seen" meaningless: refuse it.
        let text = std::fs::read_to_string(&self.err).unwrap();
        let captured = stat(&text, "packets captured");
        let received = stat(&text, "packets received by filter");
        assert!(
            captured.is_some() && captured == received,
            "incomplete capture: {text}"
        );
        std::fs::read(&self.file).unwrap()
    }

    /// Packets in the capture matching a tcpdump filter, one line each.
    pub fn matching(&self, filter: &str) -> Vec<String> {
        let o = run(&["tcpdump", "-r", self.file.to_str().unwrap(), "-n", filter]);
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(String::from)
            .collect()
    }
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A random marker that will be carried in plaintext inside a transfer.
pub fn marker(kind: &str) -> Vec<u8> {
    let mut b = [0u8; 8];
    File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("PODGUARD-{kind}-MARKER-{hex}").into_bytes()
}

fn fnv(h: &mut u64, data: &[u8]) {
    for b in data {
        *h ^= *b as u64;
        *h = h.wrapping_mul(0x100000001b3);
    }
}

/// Result of one TCP transfer.
#[derive(Debug)]
pub struct Transfer {
    pub bytes: usize,
    pub sent_hash: u64,
    pub received_hash: u64,
    /// The source address the server saw.
    pub seen_source: IpAddr,
}

/// Send `total` bytes containing `marker` from namespace `from_ns` to
/// `to_ip` served in namespace `to_ns`; the server records the source it
/// sees and a checksum of what it received.
pub fn tcp_transfer(
    from_ns: &str,
    to_ns: &str,
    to_ip: IpAddr,
    marker: &[u8],
    total: usize,
) -> Transfer {
    let listener = in_netns(to_ns, || {
        TcpListener::bind(SocketAddr::new(to_ip, 0)).unwrap()
    });
    let port = listener.local_addr().unwrap().port();
    let mut chunk = Vec::with_capacity(64 * 1024);
    while chunk.len() < 64 * 1024 {
        chunk.extend_from_slice(marker);
        chunk.extend_from_slice(b" filler 0123456789 ");
    }
    std::thread::scope(|s| {
        let server = s.spawn(move || {
            let (mut c, peer) = listener.accept().unwrap();
            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut h = 0xcbf29ce484222325u64;
            let mut buf = vec![0u8; 64 * 1024];
            let mut n = 0;
            loop {
                // A read with a timeout returns EINTR when this process is
                // stopped and continued (a CI sandbox frozen and thawed).
                let k = match c.read(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    r => r.unwrap(),
                };
                if k == 0 {
                    break;
                }
                fnv(&mut h, &buf[..k]);
                n += k;
            }
            c.write_all(b"ok").unwrap();
            (n, h, peer.ip())
        });
        let client = s.spawn(|| {
            enter_netns(from_ns);
            let mut c =
                TcpStream::connect_timeout(&SocketAddr::new(to_ip, port), Duration::from_secs(10))
                    .unwrap();
            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut h = 0xcbf29ce484222325u64;
            let mut sent = 0;
            while sent < total {
                let k = chunk.len().min(total - sent);
                c.write_all(&chunk[..k]).unwrap();
                fnv(&mut h, &chunk[..k]);
                sent += k;
            }
            c.shutdown(std::net::Shutdown::Write).unwrap();
            let mut ack = [0u8; 2];
            c.read_exact(&mut ack).unwrap();
            h
        });
        let sent_hash = client.join().unwrap();
        let (bytes, received_hash, seen_source) = server.join().unwrap();
        Transfer {
            bytes,
            sent_hash,
            received_hash,
            seen_source,
        }
    })
}

/// Whether `ns` can ping `ip` (one echo, 1 s timeout).
pub fn pings(ns: &str, ip: &str) -> bool {
    run(&["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", ip])
        .status
        .success()
}

/// Send a few UDP datagrams carrying `marker` from `ns` to `to`.
pub fn udp_spray(ns: &str, to: SocketAddr, marker: &[u8]) {
    in_netns(ns, || {
        let bind: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
            .parse()
            .unwrap();
        let s = std::net::UdpSocket::bind(bind).unwrap();
        for _ in 0..5 {
            let _ = s.send_to(marker, to);
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

pub fn write_file(p: &Path, s: &str) {
    // Write-then-rename so a watcher never reads half a file.
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, s).unwrap();
    std::fs::rename(&tmp, p).unwrap();
}

/// The whole HTTP/1.0 response for `GET path` from inside namespace `ns`
/// to `addr` (`host:port`); empty when nothing answers.
pub fn http_get_in(ns: &str, addr: &str, path: &str) -> String {
    let (host, port) = addr.split_once(':').unwrap();
    let o = run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "bash",
        "-c",
        &format!(
            "exec 3<>/dev/tcp/{host}/{port} || exit 7; printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3"
        ),
    ]);
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// Scrape an agent's /metrics inside namespace `ns`.
pub fn scrape(ns: &str) -> String {
    http_get_in(ns, "127.0.0.1:9721", "/metrics")
}

/// The value of one sample line (`name{labels} value`) in a scrape.
pub fn sample(scrape: &str, prefix: &str) -> Option<f64> {
    scrape
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub use podguard::sys::node_command;

/// A child process killed when the test ends, also on failure.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether a TCP connection from namespace `from_ns` to `to_ip:port`
/// (served in `to_ns`) carries `payload` through within 3 s.
pub fn tcp_passes(from_ns: &str, to_ns: &str, to_ip: IpAddr, port: u16, payload: &[u8]) -> bool {
    let listener = in_netns(to_ns, || {
        TcpListener::bind(SocketAddr::new(to_ip, port)).unwrap()
    });
    listener.set_nonblocking(true).unwrap();
    let payload = payload.to_vec();
    std::thread::scope(|s| {
        let server = s.spawn(|| {
            let end = Instant::now() + Duration::from_secs(4);
            while Instant::now() < end {
                if let Ok((mut c, _)) = listener.accept() {
                    c.set_nonblocking(false).unwrap();
                    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                    let mut got = Vec::new();
                    let _ = c.read_to_end(&mut got);
                    return got;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Vec::new()
        });
        let sent = s
            .spawn(|| {
                enter_netns(from_ns);
                let Ok(mut c) = TcpStream::connect_timeout(
                    &SocketAddr::new(to_ip, port),
                    Duration::from_secs(3),
                ) else {
                    return false;
                };
                c.write_all(&payload).is_ok() && c.shutdown(std::net::Shutdown::Write).is_ok()
            })
            .join()
            .unwrap();
        let got = server.join().unwrap();
        sent && got == payload
    })
}
