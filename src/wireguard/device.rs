//! podguard's userspace WireGuard device: the sockets and threads around
//! the sans-IO core (`wgcore`). It owns the TUN interface and the UDP
//! socket and runs four threads, each a thin driver feeding the core:
//! TUN → UDP (`tun_rx`), UDP → TUN (`udp_rx`), handshakes (`handshakes`,
//! from a bounded queue, so that a flood of initiations never holds up
//! data), and timers; the crypto of each batch runs on the `workers`
//! pool of its direction (by default half the CPUs each, so both
//! directions together have one worker per CPU). Every decision —
//! routing, sessions, key links, screening, roaming, pacing, GSO runs —
//! is the core's.
//!
//! The agent and the UAPI socket configure the same core through the
//! methods here; control datagrams the core queues (handshakes, cookie
//! replies, keepalives) are sent by whichever thread made them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, IoSlice};
use std::net::{Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime};

use keys::{PrivateKey, PublicKey};
use parking_lot::RwLock;
use wgcore::Core;
use wgcore::gso::GsoBatch;
use wgcore::uapi::{PeerStatus, SetRequest};

use super::workers;
use super::{batch, handshakes};

/// UDP socket buffers: room for many 64 KB GRO receives while the inbound
/// thread decrypts (the size wireguard-go asks for).
const SOCKET_BUFFER: usize = 7 << 20;

/// The running device.
pub struct Device {
    ifname: String,
    /// The TUN; replaced by [`Device::recreate_tun`] when the interface was
    /// deleted under us.
    pub(super) tun: RwLock<Arc<tun_rs::SyncDevice>>,
    persist: bool,
    pub(super) udp: UdpSocket,
    /// The socket is dual-stack IPv6: IPv4 peers are sent to as v4-mapped.
    udp_v6: bool,
    /// UDP GSO works (turned off after the first refusal).
    gso: AtomicBool,
    /// The WireGuard core.
    pub(super) core: Core,
    /// Handshake datagrams on their way to the handshake thread.
    pub(super) handshakes: handshakes::Queue,
    /// Crypto workers per direction (`workers::Pool`).
    pub(super) crypto_workers: usize,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("ifname", &self.ifname)
            .field("core", &self.core)
            .finish_non_exhaustive()
    }
}

/// Errors while bringing the device up.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The TUN interface could not be created or attached.
    #[error("creating or attaching TUN interface {ifname}")]
    Tun {
        /// Interface name.
        ifname: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The UDP socket could not be bound.
    #[error("binding UDP port {port}")]
    Udp {
        /// Port.
        port: u16,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

fn open_tun(ifname: &str, persist: bool) -> Result<tun_rs::SyncDevice, DeviceError> {
    let tun_err = |source| DeviceError::Tun {
        ifname: ifname.to_string(),
        source,
    };
    let tun = tun_rs::DeviceBuilder::new()
        .name(ifname)
        .layer(tun_rs::Layer::L3)
        .offload(true)
        .build_sync()
        .map_err(tun_err)?;
    if persist {
        tun.persist().map_err(tun_err)?;
    }
    Ok(tun)
}

/// Bind the WireGuard UDP socket: dual-stack `[::]:port` when IPv6 works,
/// else `0.0.0.0:port`.
fn bind_udp(port: u16) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let v6 = (|| {
        let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_only_v6(false)?;
        s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
        Ok::<_, io::Error>(s)
    })();
    let s = match v6 {
        Ok(s) => s,
        Err(_) => {
            let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
            s.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())?;
            s
        }
    };
    let s: UdpSocket = s.into();
    batch::grow_buffers(&s, SOCKET_BUFFER);
    Ok(s)
}

impl Device {
    /// Create (or re-attach to) the TUN interface `ifname` and bind the UDP
    /// port. With `persist`, the interface outlives this process: routes
    /// into it stay, and packets are dropped until a new process attaches.
    /// `workers` crypto workers (0: one per CPU).
    pub fn new(
        ifname: &str,
        listen_port: u16,
        key: Option<&PrivateKey>,
        persist: bool,
        workers: usize,
    ) -> Result<Arc<Self>, DeviceError> {
        let tun = open_tun(ifname, persist)?;
        let udp = bind_udp(listen_port).map_err(|source| DeviceError::Udp {
            port: listen_port,
            source,
        })?;
        let core = Core::new(listen_port, Instant::now());
        if let Some(k) = key {
            core.set_keys(k, None, Instant::now());
        }
        Ok(Arc::new(Self {
            ifname: ifname.to_string(),
            tun: RwLock::new(Arc::new(tun)),
            persist,
            udp_v6: matches!(udp.local_addr(), Ok(SocketAddr::V6(_))),
            gso: AtomicBool::new(true),
            udp,
            core,
            handshakes: handshakes::Queue::new(),
            crypto_workers: if workers == 0 {
                workers::default_count()
            } else {
                workers
            },
        }))
    }

    /// Create the TUN interface again (it was deleted, e.g. `ip link del
    /// podguard0`) and move the datapath onto it. Peers, sessions and keys
    /// stay; the agent puts addresses and routes back.
    pub fn recreate_tun(&self) -> Result<(), DeviceError> {
        let tun = open_tun(&self.ifname, self.persist)?;
        *self.tun.write() = Arc::new(tun);
        Ok(())
    }

    /// How many crypto workers run the batches.
    pub fn crypto_workers(&self) -> usize {
        self.crypto_workers
    }

    /// The crypto pool of the calling datapath thread (one worker, the
    /// thread itself, if the helpers cannot start).
    pub(super) fn crypto_pool(&self) -> workers::Pool {
        workers::Pool::on_this_thread(self.crypto_workers).unwrap_or_else(|e| {
            tracing::error!(error = %e, workers = self.crypto_workers, "crypto workers did not start; this direction runs its crypto on one thread");
            workers::Pool::single()
        })
    }

    /// The interface name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Start the datapath threads.
    pub fn spawn(self: &Arc<Self>) -> io::Result<()> {
        let spawn = |name: &str, f: fn(&Device)| {
            let d = self.clone();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || f(&d))
                .map(|_| ())
        };
        spawn("pg-tun-rx", super::tun_rx::run)?;
        spawn("pg-udp-rx", super::udp_rx::run)?;
        spawn("pg-handshake", handshakes::run)?;
        spawn("pg-timers", run_timers)?;
        Ok(())
    }

    pub(super) fn send_to(&self, buf: &[u8], to: SocketAddr) {
        let to = batch::wire_addr(to, self.udp_v6);
        if let Err(e) = self.udp.send_to(buf, to) {
            tracing::debug!(error = %e, %to, "udp send failed");
        }
    }

    /// Send the control datagrams the core has queued.
    ///
    /// Runs of equal-size datagrams to one endpoint leave in one GSO send
    /// (assembled by the core's [`GsoBatch`]): under a flood of spoofed
    /// initiations from one address, the cookie replies to a whole receive
    /// batch cost one `sendmsg`, not one each.
    pub(super) fn flush(&self) {
        let mut buf = Vec::new();
        let mut batch = GsoBatch::contiguous();
        let mut runs = Vec::new();
        while let Some(t) = self.core.poll_transmit() {
            // Contiguous: every datagram goes at the end of the buffer.
            let (_, f) = batch.next(t.to);
            runs.extend(f);
            buf.extend_from_slice(&t.bytes);
            runs.extend(batch.commit(t.bytes.len()));
        }
        runs.extend(batch.finish());
        for f in runs {
            let dgrams: Vec<IoSlice> = buf[f.range].chunks(f.seg).map(IoSlice::new).collect();
            self.send_run(&dgrams, f.seg, f.to);
        }
    }

    /// Send a GSO run: `dgrams`, one iovec per datagram (all of `seg`
    /// bytes but a possibly shorter last one), to `to`, in one `sendmsg`
    /// while UDP GSO works, else one by one.
    pub(super) fn send_run(&self, dgrams: &[IoSlice<'_>], seg: usize, to: SocketAddr) {
        debug_assert!(
            dgrams.iter().all(|d| d.len() <= seg),
            "one iovec per datagram"
        );
        if dgrams.len() <= 1 || !self.gso.load(Ordering::Relaxed) {
            for d in dgrams {
                self.send_to(d, to);
            }
            return;
        }
        if let Err(e) = batch::send_gso(&self.udp, dgrams, seg as u16, to, self.udp_v6) {
            if matches!(
                e.raw_os_error(),
                Some(libc::EINVAL | libc::EIO | libc::ENOPROTOOPT)
            ) {
                tracing::info!(error = %e, "UDP GSO unavailable; sending datagrams one by one");
                self.gso.store(false, Ordering::Relaxed);
                for d in dgrams {
                    self.send_to(d, to);
                }
            } else {
                tracing::debug!(error = %e, %to, "udp gso send failed");
            }
        }
    }

    /// The device's primary private key, for a UAPI `get` (stays on the node).
    pub fn private_key(&self) -> Option<PrivateKey> {
        self.core.private_key()
    }

    /// Set the local keys: `primary` initiates and is what peers know;
    /// `extra` (the next or the old key) is accepted for handshakes too.
    pub fn set_keys(&self, primary: &PrivateKey, extra: Option<&PrivateKey>) {
        self.core.set_keys(primary, extra, Instant::now());
        self.flush();
    }

    /// Announced next keys of peers (by their current key).
    pub fn set_next_keys(&self, next: &BTreeMap<PublicKey, PublicKey>) {
        self.core.set_next_keys(next, Instant::now());
        self.flush();
    }

    /// Rename peers (old key → new key) in place.
    pub fn rename_peers(&self, renames: &[(PublicKey, PublicKey)]) -> usize {
        let n = self.core.rename_peers(renames, Instant::now());
        self.flush();
        n
    }

    /// The local public keys on which every peer has an established session.
    pub fn key_acks(&self) -> BTreeSet<PublicKey> {
        self.core.key_acks()
    }

    /// Local public keys held, primary first.
    pub fn public_keys(&self) -> Vec<PublicKey> {
        self.core.public_keys()
    }

    /// Packets dropped so far, by reason.
    pub fn drop_counts(&self) -> [(&'static str, u64); 8] {
        self.core.drops.snapshot()
    }

    /// Handshake initiations read (past the cheap checks; each costs the
    /// handshake's X25519 work).
    pub fn initiations_read(&self) -> u64 {
        self.core.initiations_read()
    }

    /// Listen port.
    pub fn listen_port(&self) -> u16 {
        self.core.listen_port()
    }

    /// Current peers, as `wg show` reports them.
    pub fn peer_status(&self) -> Vec<PeerStatus> {
        self.core.peer_status(SystemTime::now())
    }

    /// Apply a UAPI `set`. Returns an errno and a message on failure.
    pub fn apply(&self, req: SetRequest) -> Result<(), (i32, String)> {
        let r = self.core.apply(req, Instant::now());
        self.flush();
        r
    }
}

/// Timers: whenever the core asks (a tick, or a deferred initiation).
fn run_timers(dev: &Device) {
    loop {
        let now = Instant::now();
        let next = dev.core.poll_timeout(now);
        std::thread::sleep(next.saturating_duration_since(now));
        dev.core.handle_timeout(Instant::now());
        dev.flush();
    }
}
