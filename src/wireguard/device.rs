//! podguard's userspace WireGuard device: one boringtun `noise::Tunn` per
//! peer, a TUN interface and a UDP socket, with cryptokey routing both ways.
//!
//! Threads: TUN → UDP (encrypt), UDP → TUN (decrypt), timers, UAPI. Both
//! datapath threads work in batches: TUN super-packets (offloads) split by
//! tun-rs and sent with UDP GSO; `recvmmsg` with UDP GRO, decrypted packets
//! coalesced by tun-rs' GRO into super-packets for the TUN. A batch takes a
//! read lock on the peer table per destination change, and the link's
//! `Tunn` lock per packet; buffers are reused, and our code allocates
//! nothing per packet (tun-rs' GRO copies each candidate into a `Vec`).
//!
//! Key rotation without loss: the device can hold two local keys (the
//! current one and the next or old one) and a peer can carry two remote
//! keys (its current and its next). Each (local key, remote key) pair that
//! is in use is a *link* with its own `Tunn` and receiver index, so a new
//! handshake never disturbs the sessions of the old one. Outbound traffic
//! uses the best established link (newest local key first, then the peer's
//! next key); incoming handshakes are matched against every local key.
//!
//! Cryptokey routing:
//! * outbound: destination → peer by longest-prefix AllowedIPs; no peer →
//!   the packet is dropped and counted (never sent in plaintext);
//! * inbound: a decrypted packet whose source is not in the sending peer's
//!   AllowedIPs is dropped and counted.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519;
use ip_network::IpNetwork;
use ip_network_table::IpNetworkTable;
use ipnet::IpNet;
use keys::{PrivateKey, PublicKey};
use parking_lot::{Mutex, RwLock};

use super::batch;
use super::uapi::{PeerStatus, SetRequest};
use tun_rs::{GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

/// Largest datagram we handle (TUN MTU is at most this minus overhead).
const BUF: usize = 65_536;
/// Largest single packet (after GSO splitting): a jumbo-frame MTU.
const PKT_MAX: usize = 9216;
/// Datagrams per `recvmmsg`.
const RX_BATCH: usize = 64;
/// UDP socket buffers: room for many 64 KB GRO receives while the inbound
/// thread decrypts (the size wireguard-go asks for).
const SOCKET_BUFFER: usize = 7 << 20;
/// Handshakes per second before boringtun answers with cookies.
const HANDSHAKE_RATE_LIMIT: u64 = 100;

/// Packets the device refused, by reason.
#[derive(Debug, Default)]
pub struct DropCounters {
    /// Outbound packets whose destination matches no peer's AllowedIPs.
    pub no_peer: AtomicU64,
    /// Outbound packets for a peer without an endpoint.
    pub no_endpoint: AtomicU64,
    /// Decrypted packets whose source is outside the peer's AllowedIPs.
    pub bad_source: AtomicU64,
    /// Datagrams that are not WireGuard or fail authentication.
    pub invalid: AtomicU64,
    /// Handshake initiations answered with a cookie reply, not processed
    /// (the device is under load and their mac2 was not valid).
    pub under_load: AtomicU64,
}

/// What the cheap checks say of a handshake initiation, before any DH.
enum Screen {
    /// mac1 is valid for this local key (and mac2, if under load).
    Key(x25519::PublicKey),
    /// Under load without a valid mac2: a cookie reply was sent, nothing
    /// else happens.
    Cookie,
    /// mac1 is valid for no local key.
    Invalid,
}

/// The last inbound source check: (peer, source, allowed).
type SourceCheck = Option<(usize, IpAddr, bool)>;

/// One (local key, remote key) pair with its own noise state.
struct Link {
    index: u32,
    /// Generation of the local key it uses (higher = newer).
    generation: u64,
    local: x25519::PublicKey,
    remote: PublicKey,
    tunn: Mutex<Tunn>,
}

impl Link {
    fn established(&self) -> bool {
        self.tunn.lock().time_since_last_handshake().is_some()
    }
}

struct Peer {
    /// The key peers are configured by (UAPI `public_key`).
    public_key: RwLock<PublicKey>,
    /// A second key the peer may use: its announced next key.
    next_key: RwLock<Option<PublicKey>>,
    links: RwLock<Vec<Arc<Link>>>,
    /// The link outbound packets use.
    active: RwLock<Arc<Link>>,
    endpoint: RwLock<Option<SocketAddr>>,
    allowed_ips: RwLock<Vec<IpNet>>,
    keepalive: u16,
    rx_bytes: AtomicU64,
    tx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    tx_packets: AtomicU64,
}

impl Peer {
    fn sent(&self, bytes: usize) {
        self.tx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.tx_packets.fetch_add(1, Ordering::Relaxed);
    }

    fn received(&self, bytes: usize) {
        self.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.rx_packets.fetch_add(1, Ordering::Relaxed);
    }

    fn key(&self) -> PublicKey {
        *self.public_key.read()
    }

    /// Rank of a remote key: the announced next key beats the current one;
    /// any other key (left over from a rename) is draining.
    fn remote_rank(&self, k: &PublicKey) -> i8 {
        if *self.next_key.read() == Some(*k) {
            1
        } else if *self.public_key.read() == *k {
            0
        } else {
            -1
        }
    }

    /// Pick the best established link, if it beats the active one.
    fn reselect(&self) {
        let links = self.links.read();
        let best = links
            .iter()
            .filter(|l| l.established())
            .max_by_key(|l| (l.generation, self.remote_rank(&l.remote)))
            .cloned();
        if let Some(best) = best {
            let mut active = self.active.write();
            if !Arc::ptr_eq(&active, &best) {
                *active = best;
            }
        }
    }
}

struct LocalKey {
    secret: x25519::StaticSecret,
    public: x25519::PublicKey,
    generation: u64,
    rate_limiter: Arc<RateLimiter>,
}

struct State {
    /// Local keys; `keys[0]` is the primary (initiates, is published).
    keys: Vec<LocalKey>,
    next_generation: u64,
    listen_port: u16,
    peers: BTreeMap<PublicKey, Arc<Peer>>,
    /// Next key → the peer's primary key.
    next_keys: HashMap<PublicKey, PublicKey>,
    by_index: HashMap<u32, (Arc<Peer>, Arc<Link>)>,
    table: IpNetworkTable<Arc<Peer>>,
    next_index: u32,
}

impl State {
    fn local_key(&self, public: &x25519::PublicKey) -> Option<&LocalKey> {
        self.keys.iter().find(|k| k.public == *public)
    }

    fn alloc_index(&mut self) -> u32 {
        loop {
            let i = self.next_index;
            self.next_index = (self.next_index + 1) & 0x00ff_ffff;
            if !self.by_index.contains_key(&i) {
                return i;
            }
        }
    }

    /// A new link for `peer` with local key `local` and remote key `remote`.
    fn new_link(
        &mut self,
        peer: &Arc<Peer>,
        local: &x25519::PublicKey,
        remote: PublicKey,
    ) -> Option<Arc<Link>> {
        let lk = self.local_key(local)?;
        let (secret, public, generation, rl) = (
            lk.secret.clone(),
            lk.public,
            lk.generation,
            lk.rate_limiter.clone(),
        );
        let index = self.alloc_index();
        let keepalive = peer.keepalive;
        let link = Arc::new(Link {
            index,
            generation,
            local: public,
            remote,
            tunn: Mutex::new(Tunn::new(
                secret,
                x25519::PublicKey::from(*remote.as_bytes()),
                None,
                (keepalive > 0).then_some(keepalive),
                index,
                Some(rl),
            )),
        });
        self.by_index.insert(index, (peer.clone(), link.clone()));
        peer.links.write().push(link.clone());
        Some(link)
    }

    /// Make the links of `peer` match the local keys and its remote keys:
    /// drop links whose local key is gone, drop draining links that are no
    /// longer needed, make sure the preferred link exists. Returns links
    /// that should start a handshake now.
    fn sync_links(&mut self, peer: &Arc<Peer>) -> Vec<Arc<Link>> {
        let Some(primary) = self.keys.first().map(|k| k.public) else {
            return Vec::new();
        };
        let remote = peer.key();
        let next = *peer.next_key.read();
        // Drop links of retired local keys.
        let gone: Vec<Arc<Link>> = peer
            .links
            .read()
            .iter()
            .filter(|l| self.local_key(&l.local).is_none())
            .cloned()
            .collect();
        for l in &gone {
            self.drop_link(peer, l);
        }
        let mut kick = Vec::new();
        let has = |p: &Peer, local: &x25519::PublicKey, remote: &PublicKey| {
            p.links
                .read()
                .iter()
                .any(|l| l.local == *local && l.remote == *remote)
        };
        if !has(peer, &primary, &remote)
            && let Some(l) = self.new_link(peer, &primary, remote)
        {
            if !peer.active.read().established()
                || gone.iter().any(|g| Arc::ptr_eq(g, &peer.active.read()))
            {
                *peer.active.write() = l.clone();
            }
            kick.push(l);
        }
        if let Some(n) = next
            && !has(peer, &primary, &n)
            && let Some(l) = self.new_link(peer, &primary, n)
        {
            // Probe the announced key; traffic moves over once it answers.
            kick.push(l);
        }
        // The active link must be a live one.
        {
            let active = peer.active.read().clone();
            if !peer.links.read().iter().any(|l| Arc::ptr_eq(l, &active)) {
                let fallback = peer
                    .links
                    .read()
                    .iter()
                    .find(|l| l.local == primary && l.remote == remote)
                    .cloned();
                if let Some(f) = fallback {
                    *peer.active.write() = f;
                }
            }
        }
        peer.reselect();
        // Draining links (a remote key the peer no longer has) go once
        // they are not the active one.
        let active = peer.active.read().clone();
        let draining: Vec<Arc<Link>> = peer
            .links
            .read()
            .iter()
            .filter(|l| peer.remote_rank(&l.remote) < 0 && !Arc::ptr_eq(l, &active))
            .cloned()
            .collect();
        for l in &draining {
            self.drop_link(peer, l);
        }
        kick
    }

    fn drop_link(&mut self, peer: &Peer, link: &Arc<Link>) {
        self.by_index.remove(&link.index);
        peer.links.write().retain(|l| !Arc::ptr_eq(l, link));
    }
}

/// The shared core of a running device.
pub struct Device {
    ifname: String,
    /// The TUN; replaced by [`Device::recreate_tun`] when the interface was
    /// deleted under us.
    tun: RwLock<Arc<tun_rs::SyncDevice>>,
    /// Whether the TUN is made persistent.
    persist: bool,
    udp: UdpSocket,
    /// The socket is dual-stack IPv6: IPv4 peers are sent to as v4-mapped.
    udp_v6: bool,
    /// UDP GSO works (turned off after the first refusal).
    gso: std::sync::atomic::AtomicBool,
    state: RwLock<State>,
    /// What was dropped and why.
    pub drops: DropCounters,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("ifname", &self.ifname)
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

fn to_network(net: &IpNet) -> IpNetwork {
    match net {
        IpNet::V4(n) => IpNetwork::V4(
            ip_network::Ipv4Network::new(n.network(), n.prefix_len())
                .unwrap_or_else(|_| unreachable_net4()),
        ),
        IpNet::V6(n) => IpNetwork::V6(
            ip_network::Ipv6Network::new(n.network(), n.prefix_len())
                .unwrap_or_else(|_| unreachable_net6()),
        ),
    }
}

// IpNet is always truncated before it reaches here, so these never run;
// they keep the conversion total without a panic.
fn unreachable_net4() -> ip_network::Ipv4Network {
    ip_network::Ipv4Network::new(std::net::Ipv4Addr::BROADCAST, 32).unwrap_or_else(|_| {
        ip_network::Ipv4Network::new_truncate(std::net::Ipv4Addr::BROADCAST, 32)
            .unwrap_or_else(|_| unreachable!())
    })
}
fn unreachable_net6() -> ip_network::Ipv6Network {
    ip_network::Ipv6Network::new_truncate(Ipv6Addr::UNSPECIFIED, 128)
        .unwrap_or_else(|_| unreachable!())
}

/// Bind the WireGuard UDP socket: dual-stack `[::]:port` when IPv6 works,
/// else `0.0.0.0:port`.
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

/// v4-mapped IPv6 addresses (from a dual-stack socket) back to IPv4.
fn normalize(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => a,
        },
        _ => a,
    }
}

fn now_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

impl Device {
    /// Create (or re-attach to) the TUN interface `ifname` and bind the UDP
    /// port. With `persist`, the interface outlives this process: routes
    /// into it stay, and packets are dropped until a new process attaches.
    pub fn new(
        ifname: &str,
        listen_port: u16,
        key: Option<&PrivateKey>,
        persist: bool,
    ) -> Result<Arc<Self>, DeviceError> {
        let tun = open_tun(ifname, persist)?;
        let udp = bind_udp(listen_port).map_err(|source| DeviceError::Udp {
            port: listen_port,
            source,
        })?;
        let dev = Arc::new(Self {
            ifname: ifname.to_string(),
            tun: RwLock::new(Arc::new(tun)),
            persist,
            udp_v6: matches!(udp.local_addr(), Ok(SocketAddr::V6(_))),
            gso: std::sync::atomic::AtomicBool::new(true),
            udp,
            state: RwLock::new(State {
                keys: Vec::new(),
                next_generation: 1,
                listen_port,
                peers: BTreeMap::new(),
                next_keys: HashMap::new(),
                by_index: HashMap::new(),
                table: IpNetworkTable::new(),
                next_index: rand_index(),
            }),
            drops: DropCounters::default(),
        });
        if let Some(k) = key {
            dev.set_keys(k, None);
        }
        Ok(dev)
    }

    /// Create the TUN interface again (it was deleted, e.g. `ip link del
    /// podguard0`) and move the datapath onto it. Peers, sessions and keys
    /// stay; the agent puts addresses and routes back.
    pub fn recreate_tun(&self) -> Result<(), DeviceError> {
        let tun = open_tun(&self.ifname, self.persist)?;
        *self.tun.write() = Arc::new(tun);
        Ok(())
    }

    /// The interface name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Start the datapath threads (TUN→UDP, UDP→TUN, timers).
    pub fn spawn(self: &Arc<Self>) -> io::Result<()> {
        let d = self.clone();
        std::thread::Builder::new()
            .name("pg-tun-rx".into())
            .spawn(move || d.run_outbound())?;
        let d = self.clone();
        std::thread::Builder::new()
            .name("pg-udp-rx".into())
            .spawn(move || d.run_inbound())?;
        let d = self.clone();
        std::thread::Builder::new()
            .name("pg-timers".into())
            .spawn(move || d.run_timers())?;
        Ok(())
    }

    fn send_to(&self, buf: &[u8], to: SocketAddr) {
        let to = batch::wire_addr(to, self.udp_v6);
        if let Err(e) = self.udp.send_to(buf, to) {
            tracing::debug!(error = %e, %to, "udp send failed");
        }
    }

    /// Send one encrypted datagram, or a GSO batch of them.
    fn send_batch(&self, buf: &[u8], seg: usize, to: SocketAddr) {
        if buf.len() <= seg || !self.gso.load(Ordering::Relaxed) {
            for chunk in buf.chunks(seg.max(1)) {
                self.send_to(chunk, to);
            }
            return;
        }
        if let Err(e) = batch::send_gso(&self.udp, buf, seg as u16, to, self.udp_v6) {
            if matches!(
                e.raw_os_error(),
                Some(libc::EINVAL | libc::EIO | libc::ENOPROTOOPT)
            ) {
                tracing::info!(error = %e, "UDP GSO unavailable; sending datagrams one by one");
                self.gso.store(false, Ordering::Relaxed);
                for chunk in buf.chunks(seg) {
                    self.send_to(chunk, to);
                }
            } else {
                tracing::debug!(error = %e, %to, "udp gso send failed");
            }
        }
    }

    /// TUN → UDP. With TUN offloads the kernel hands over TCP super-packets
    /// (up to 64 KB); tun-rs splits them into MTU-sized packets, which are
    /// encrypted back to back into one buffer and sent with UDP GSO: one
    /// TUN read and one UDP send per super-packet instead of ~45 each.
    fn run_outbound(&self) {
        let mut orig = vec![0u8; VIRTIO_NET_HDR_LEN + 65_535];
        let mut bufs: Vec<Vec<u8>> = vec![vec![0u8; PKT_MAX]; IDEAL_BATCH_SIZE];
        let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
        let mut out = vec![0u8; batch::MAX_GSO_BYTES + PKT_MAX + 64];
        let mut gone_logged = false;
        loop {
            let tun = self.tun.read().clone();
            let n = match tun.recv_multiple(&mut orig, &mut bufs, &mut sizes, 0) {
                Ok(n) => {
                    gone_logged = false;
                    n
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBADFD) => {
                    // The interface was deleted: wait for the agent to
                    // recreate it (nothing is sent meanwhile: fail closed).
                    if !std::mem::replace(&mut gone_logged, true) {
                        tracing::error!(error = %e, "TUN interface gone; outbound waits for it to be recreated");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "TUN read");
                    continue;
                }
            };
            // The pending GSO batch: `pos` bytes of segments of `seg` bytes
            // (pos / seg of them) to `to`.
            let mut pos = 0usize;
            let mut seg = 0usize;
            let mut to: Option<SocketAddr> = None;
            // Where the last destination goes, valid for this batch only:
            // its peer, that peer's active link and endpoint.
            let mut route: Option<(IpAddr, Arc<Peer>, Arc<Link>, SocketAddr)> = None;
            for i in 0..n {
                let pkt = &bufs[i][..sizes[i]];
                let Some(dst_ip) = Tunn::dst_address(pkt) else {
                    continue;
                };
                if route.as_ref().is_none_or(|r| r.0 != dst_ip) {
                    route = self.route(dst_ip);
                }
                let Some((_, peer, link, endpoint)) = &route else {
                    continue;
                };
                let endpoint = *endpoint;
                // A different endpoint ends the batch.
                if let Some(t) = to
                    && t != endpoint
                    && pos > 0
                {
                    self.send_batch(&out[..pos], seg, t);
                    pos = 0;
                }
                to = Some(endpoint);
                // boringtun wants room for the overhead and at least a
                // handshake message (148 bytes).
                let room = (pkt.len() + 64).max(256);
                let len = match link.tunn.lock().encapsulate(pkt, &mut out[pos..pos + room]) {
                    TunnResult::WriteToNetwork(b) => b.len(),
                    TunnResult::Err(e) => {
                        tracing::debug!(?e, "encapsulate");
                        continue;
                    }
                    // Queued while a handshake is under way; the handshake
                    // initiation (if any) went out through the result below.
                    _ => continue,
                };
                peer.sent(len);
                if pos == 0 || len == seg {
                    if pos == 0 {
                        seg = len;
                    }
                    pos += len;
                } else if len < seg {
                    // A shorter datagram may end a GSO batch.
                    pos += len;
                    self.send_batch(&out[..pos], seg, endpoint);
                    pos = 0;
                    continue;
                } else {
                    // Longer than the batch's segments: send the batch, and
                    // start a new one with this datagram.
                    self.send_batch(&out[..pos], seg, endpoint);
                    out.copy_within(pos..pos + len, 0);
                    seg = len;
                    pos = len;
                }
                if pos / seg >= batch::MAX_GSO_SEGMENTS || pos + seg > batch::MAX_GSO_BYTES {
                    self.send_batch(&out[..pos], seg, endpoint);
                    pos = 0;
                }
            }
            if pos > 0
                && let Some(t) = to
            {
                self.send_batch(&out[..pos], seg, t);
            }
        }
    }

    /// The peer whose AllowedIPs hold `dst`, its active link and endpoint;
    /// none (counted as a drop) without a peer or an endpoint.
    fn route(&self, dst: IpAddr) -> Option<(IpAddr, Arc<Peer>, Arc<Link>, SocketAddr)> {
        let found = {
            let st = self.state.read();
            st.table.longest_match(dst).map(|(_, p)| p.clone())
        };
        let Some(peer) = found else {
            self.drops.no_peer.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let Some(endpoint) = *peer.endpoint.read() else {
            self.drops.no_endpoint.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let link = peer.active.read().clone();
        Some((dst, peer, link, endpoint))
    }

    /// The peer and link a datagram belongs to. A handshake initiation is
    /// tried against every local key; a link for a (local, remote) pair
    /// seen for the first time is created here.
    fn link_for(
        &self,
        packet: &Packet<'_>,
        screened: Option<&x25519::PublicKey>,
    ) -> Option<(Arc<Peer>, Arc<Link>)> {
        let idx = match packet {
            Packet::HandshakeInit(p) => {
                let (local, remote, peer) = {
                    let st = self.state.read();
                    // Only the key whose mac1 matched is worth a DH.
                    st.keys
                        .iter()
                        .filter(|k| screened.is_some_and(|s| *s == k.public))
                        .find_map(|k| {
                            let hh = parse_handshake_anon(&k.secret, &k.public, p).ok()?;
                            let remote = PublicKey::from_bytes(hh.peer_static_public);
                            let primary = st.next_keys.get(&remote).copied().unwrap_or(remote);
                            let peer = st.peers.get(&primary)?.clone();
                            Some((k.public, remote, peer))
                        })?
                };
                let found = peer
                    .links
                    .read()
                    .iter()
                    .find(|l| l.local == local && l.remote == remote)
                    .cloned();
                let link = match found {
                    Some(l) => l,
                    None => {
                        let mut st = self.state.write();
                        st.new_link(&peer, &local, remote)?
                    }
                };
                return Some((peer, link));
            }
            Packet::HandshakeResponse(p) => p.receiver_idx,
            Packet::PacketCookieReply(p) => p.receiver_idx,
            Packet::PacketData(p) => p.receiver_idx,
        };
        self.state.read().by_index.get(&(idx >> 8)).cloned()
    }

    /// Whether `src` lies in `peer`'s AllowedIPs. `last` remembers the
    /// previous answer for the rest of a receive batch (a peer change
    /// takes effect from the next batch on).
    fn source_allowed(&self, peer: &Arc<Peer>, src: IpAddr, last: &mut SourceCheck) -> bool {
        let key = Arc::as_ptr(peer) as usize;
        if let Some((k, ip, ok)) = *last
            && k == key
            && ip == src
        {
            return ok;
        }
        let ok = {
            let st = self.state.read();
            st.table
                .longest_match(src)
                .is_some_and(|(_, p)| Arc::ptr_eq(p, peer))
        };
        *last = Some((key, src, ok));
        ok
    }

    /// Keep a decrypted packet of `len` bytes in `out` if its source lies
    /// in the sending peer's AllowedIPs; otherwise drop and count it.
    fn accept(
        &self,
        peer: &Arc<Peer>,
        len: usize,
        src: IpAddr,
        out: &mut batch::PktBuf,
        last: &mut SourceCheck,
    ) -> bool {
        if self.source_allowed(peer, src, last) {
            out.set_len(VIRTIO_NET_HDR_LEN + len);
            return true;
        }
        self.bad_source(peer, src);
        false
    }

    fn bad_source(&self, peer: &Arc<Peer>, src: IpAddr) {
        let n = self.drops.bad_source.fetch_add(1, Ordering::Relaxed);
        if n.is_power_of_two() || n == 0 {
            tracing::warn!(
                peer = %peer.key().fingerprint(),
                %src,
                dropped_total = n + 1,
                "dropped a packet whose source is outside the sending peer's AllowedIPs"
            );
        }
    }

    /// UDP → TUN: datagrams arrive in batches (`recvmmsg`); decrypted
    /// packets of one batch are coalesced (TCP/UDP GRO in tun-rs) and
    /// written to the TUN as few super-packets.
    fn run_inbound(&self) {
        // With UDP GRO a slot holds a whole GSO send of a peer (up to 64 KB).
        let gro_rx =
            std::env::var_os("PODGUARD_NO_UDP_GRO").is_none() && batch::enable_gro(&self.udp);
        let (slots, slot_size) = if gro_rx {
            (RX_BATCH / 4, 65_536)
        } else {
            (RX_BATCH, PKT_MAX + 64)
        };
        let mut rb = batch::RecvBatch::new(slots, slot_size);
        let mut got: Vec<batch::Received> = Vec::with_capacity(slots);
        let mut outs = batch::tun_write_bufs(IDEAL_BATCH_SIZE, PKT_MAX + 64);
        let mut gro = GROTable::default();
        let mut net = vec![0u8; PKT_MAX + 64];
        loop {
            if let Err(e) = batch::recv_batch(&self.udp, &mut rb, &mut got) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "UDP read failed; inbound path stops");
                return;
            }
            let mut ready = 0usize;
            let mut last: SourceCheck = None;
            for (i, r) in got.iter().enumerate() {
                let from = normalize(r.from);
                let seg = r.seg.unwrap_or(r.len).max(1);
                for datagram in rb.bufs[i][..r.len].chunks(seg) {
                    if ready == outs.len() {
                        self.write_tun(&mut gro, &mut outs[..ready]);
                        ready = 0;
                    }
                    if self.receive_one(datagram, from, &mut outs[ready], &mut net, &mut last) {
                        ready += 1;
                    }
                }
            }
            if ready > 0 {
                self.write_tun(&mut gro, &mut outs[..ready]);
            }
        }
    }

    fn write_tun(&self, gro: &mut GROTable, outs: &mut [batch::PktBuf]) {
        if let Err(e) = self.tun.read().send_multiple(gro, outs, VIRTIO_NET_HDR_LEN) {
            tracing::debug!(error = %e, "TUN write");
        }
    }

    /// The cheap checks on a handshake initiation, in WireGuard's order:
    /// mac1 against each local key (a keyed hash, no DH), then, when that
    /// key's rate limiter is under load, mac2 — without it the answer is a
    /// cookie reply and nothing more. `scratch` holds the cookie reply.
    fn screen_initiation(&self, datagram: &[u8], from: SocketAddr, scratch: &mut [u8]) -> Screen {
        let limiters: Vec<(x25519::PublicKey, Arc<RateLimiter>)> = self
            .state
            .read()
            .keys
            .iter()
            .map(|k| (k.public, k.rate_limiter.clone()))
            .collect();
        for (public, rl) in limiters {
            match rl.verify_packet(Some(from.ip()), datagram, scratch) {
                Ok(_) => return Screen::Key(public),
                Err(TunnResult::WriteToNetwork(cookie)) => {
                    self.drops.under_load.fetch_add(1, Ordering::Relaxed);
                    self.send_to(cookie, from);
                    return Screen::Cookie;
                }
                Err(_) => continue,
            }
        }
        Screen::Invalid
    }

    /// Decrypt one datagram. Returns true when `out` now holds a packet
    /// for the TUN (after `VIRTIO_NET_HDR_LEN` bytes of headroom).
    fn receive_one(
        &self,
        datagram: &[u8],
        from: SocketAddr,
        out: &mut batch::PktBuf,
        net: &mut [u8],
        last: &mut SourceCheck,
    ) -> bool {
        let incoming = Tunn::parse_incoming_packet(datagram);
        let found = match &incoming {
            Ok(p @ Packet::HandshakeInit(_)) => match self.screen_initiation(datagram, from, net) {
                Screen::Key(k) => self.link_for(p, Some(&k)),
                Screen::Cookie => return false,
                Screen::Invalid => None,
            },
            Ok(p) => self.link_for(p, None),
            Err(_) => None,
        };
        // A cookie reply proves nothing about where the peer is, and neither
        // does an initiation: a captured one is accepted again by a fresh
        // session (its replay check starts at zero), so the endpoint moves
        // only on what decrypts on a session (the initiator's first data or
        // keepalive follows at once) or a response to our own initiation.
        let no_roam = matches!(
            incoming,
            Ok(Packet::PacketCookieReply(_) | Packet::HandshakeInit(_))
        );
        let Some((peer, link)) = found else {
            self.drops.invalid.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        let mut t = link.tunn.lock();
        let mut authenticated = true;
        let mut ready = false;
        let res = t.decapsulate(
            Some(from.ip()),
            datagram,
            &mut out.space()[VIRTIO_NET_HDR_LEN..],
        );
        match res {
            // Our own cookie reply (under load): the initiation is not
            // processed and does not authenticate its source.
            TunnResult::WriteToNetwork(b) if b.first() == Some(&3) => {
                authenticated = false;
                self.drops.under_load.fetch_add(1, Ordering::Relaxed);
                self.send_to(b, from);
                drop(t);
            }
            TunnResult::WriteToNetwork(b) => {
                peer.sent(b.len());
                self.send_to(b, from);
                // Flush packets queued while the handshake was pending.
                while let TunnResult::WriteToNetwork(b) = t.decapsulate(None, &[], net) {
                    peer.sent(b.len());
                    self.send_to(b, from);
                }
                drop(t);
            }
            // The link's lock is released before delivery: delivery reads
            // the peer table, and nothing may wait for the table while
            // holding a link.
            TunnResult::WriteToTunnelV4(pkt, src) => {
                drop(t);
                ready = self.accept(&peer, pkt.len(), IpAddr::V4(src), out, last);
            }
            TunnResult::WriteToTunnelV6(pkt, src) => {
                drop(t);
                ready = self.accept(&peer, pkt.len(), IpAddr::V6(src), out, last);
            }
            TunnResult::Done => drop(t),
            TunnResult::Err(e) => {
                drop(t);
                authenticated = false;
                self.drops.invalid.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(?e, %from, "decapsulate");
            }
        }
        if authenticated && !no_roam {
            peer.received(datagram.len());
            // Roaming: the endpoint follows only a packet that authenticated
            // (a data packet that decrypted, or the response to our own
            // initiation), never a cookie exchange or an initiation.
            if *peer.endpoint.read() != Some(from) {
                *peer.endpoint.write() = Some(from);
            }
            // A packet on another link than the active one: a newer
            // handshake may have completed there.
            if !Arc::ptr_eq(&peer.active.read(), &link) {
                peer.reselect();
            }
        }
        ready
    }

    fn run_timers(&self) {
        let mut dst = vec![0u8; BUF];
        loop {
            std::thread::sleep(Duration::from_millis(250));
            // The handshake rate limiters count per second (each resets at
            // most once a second); without this a device is "under load"
            // forever after its first HANDSHAKE_RATE_LIMIT handshakes.
            for k in &self.state.read().keys {
                k.rate_limiter.reset_count();
            }
            let peers: Vec<Arc<Peer>> = self.state.read().peers.values().cloned().collect();
            for peer in peers {
                let links: Vec<Arc<Link>> = peer.links.read().clone();
                for link in links {
                    let mut t = link.tunn.lock();
                    if let TunnResult::WriteToNetwork(b) = t.update_timers(&mut dst)
                        && let Some(ep) = *peer.endpoint.read()
                    {
                        peer.sent(b.len());
                        self.send_to(b, ep);
                    }
                }
                peer.reselect();
                // Only a peer in the middle of a key change has more than
                // one link; the others need no work here.
                if peer.links.read().len() > 1 {
                    let kick = self.state.write().sync_links(&peer);
                    self.kick(&peer, &kick);
                }
            }
        }
    }

    /// Send a handshake initiation on each of `links`.
    fn kick(&self, peer: &Peer, links: &[Arc<Link>]) {
        let Some(ep) = *peer.endpoint.read() else {
            return;
        };
        let mut buf = [0u8; 256];
        for l in links {
            if let TunnResult::WriteToNetwork(b) =
                l.tunn.lock().format_handshake_initiation(&mut buf, false)
            {
                peer.sent(b.len());
                self.send_to(b, ep);
            }
        }
    }

    /// The device's primary private key, for a UAPI `get` (stays on the node).
    pub fn private_key(&self) -> Option<PrivateKey> {
        self.state
            .read()
            .keys
            .first()
            .map(|k| PrivateKey::from_bytes(k.secret.to_bytes()))
    }

    /// Set the local keys: `primary` initiates and is what peers know;
    /// `extra` (the next or the old key) is accepted for handshakes too.
    /// Keys already held keep their links and sessions; links of a key
    /// that is no longer held are dropped.
    pub fn set_keys(&self, primary: &PrivateKey, extra: Option<&PrivateKey>) {
        let mut st = self.state.write();
        let mut keys = Vec::new();
        for k in std::iter::once(primary).chain(extra) {
            let public = x25519::PublicKey::from(*k.public_key().as_bytes());
            if keys.iter().any(|x: &LocalKey| x.public == public) {
                continue;
            }
            let existing = st.keys.iter().position(|x| x.public == public);
            let lk = match existing {
                Some(i) => st.keys.remove(i),
                None => {
                    let generation = st.next_generation;
                    st.next_generation += 1;
                    LocalKey {
                        secret: k.as_static_secret().clone(),
                        public,
                        generation,
                        rate_limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
                    }
                }
            };
            keys.push(lk);
        }
        st.keys = keys;
        self.resync(&mut st);
    }

    /// Remove every local key (UAPI `private_key=` all zeros).
    fn clear_keys(&self) {
        let mut st = self.state.write();
        st.keys.clear();
        for peer in st.peers.values().cloned().collect::<Vec<_>>() {
            for l in peer.links.read().clone() {
                st.by_index.remove(&l.index);
            }
            peer.links.write().clear();
        }
    }

    /// Announced next keys of peers (by their current key). Peers not in
    /// the map have none. The device probes each new next key with a
    /// handshake and moves traffic to it once it answers.
    pub fn set_next_keys(&self, next: &BTreeMap<PublicKey, PublicKey>) {
        let mut st = self.state.write();
        let mut index = HashMap::new();
        for (primary, peer) in &st.peers {
            let want = next.get(primary).copied();
            if *peer.next_key.read() != want {
                *peer.next_key.write() = want;
            }
            if let Some(n) = want {
                index.insert(n, *primary);
            }
        }
        st.next_keys = index;
        self.resync(&mut st);
    }

    /// Rename peers (old key → new key) in place: AllowedIPs, endpoint,
    /// counters and the links of the old key stay, so traffic keeps
    /// flowing while the new key takes over. Pairs whose old key is not a
    /// peer, or whose new key already is one, are skipped.
    pub fn rename_peers(&self, renames: &[(PublicKey, PublicKey)]) -> usize {
        let mut st = self.state.write();
        let mut done = 0;
        for (old, new) in renames {
            if st.peers.contains_key(new) {
                continue;
            }
            let Some(peer) = st.peers.remove(old) else {
                continue;
            };
            *peer.public_key.write() = *new;
            if *peer.next_key.read() == Some(*new) {
                *peer.next_key.write() = None;
                st.next_keys.remove(new);
            }
            st.peers.insert(*new, peer);
            done += 1;
        }
        self.resync(&mut st);
        done
    }

    /// Bring every peer's links in line with keys and next keys, and send
    /// the handshakes that a new link needs.
    fn resync(&self, st: &mut State) {
        let peers: Vec<Arc<Peer>> = st.peers.values().cloned().collect();
        let mut kicks = Vec::new();
        for peer in peers {
            let k = st.sync_links(&peer);
            if !k.is_empty() {
                kicks.push((peer, k));
            }
        }
        for (peer, k) in kicks {
            self.kick(&peer, &k);
        }
    }

    /// The local public keys on which every peer has an established session
    /// (every local key when there are no peers): what the rotation
    /// machine waits for.
    pub fn key_acks(&self) -> std::collections::BTreeSet<PublicKey> {
        let st = self.state.read();
        st.keys
            .iter()
            .filter(|k| {
                st.peers.values().all(|p| {
                    p.links
                        .read()
                        .iter()
                        .any(|l| l.local == k.public && l.established())
                })
            })
            .map(|k| PublicKey::from_bytes(*k.public.as_bytes()))
            .collect()
    }

    /// Local public keys held, primary first.
    pub fn public_keys(&self) -> Vec<PublicKey> {
        self.state
            .read()
            .keys
            .iter()
            .map(|k| PublicKey::from_bytes(*k.public.as_bytes()))
            .collect()
    }

    /// Packets dropped so far, by reason.
    pub fn drop_counts(&self) -> [(&'static str, u64); 5] {
        let d = &self.drops;
        [
            ("no_peer", d.no_peer.load(Ordering::Relaxed)),
            ("no_endpoint", d.no_endpoint.load(Ordering::Relaxed)),
            ("bad_source", d.bad_source.load(Ordering::Relaxed)),
            ("invalid", d.invalid.load(Ordering::Relaxed)),
            ("under_load", d.under_load.load(Ordering::Relaxed)),
        ]
    }

    /// Listen port.
    pub fn listen_port(&self) -> u16 {
        self.state.read().listen_port
    }

    /// Current peers, as `wg show` reports them.
    pub fn peer_status(&self) -> Vec<PeerStatus> {
        let st = self.state.read();
        st.peers
            .values()
            .map(|p| {
                let since = p
                    .links
                    .read()
                    .iter()
                    .filter_map(|l| l.tunn.lock().time_since_last_handshake())
                    .min();
                let last_handshake = since
                    .and_then(|d| now_epoch().checked_sub(d))
                    .map(|t| (t.as_secs(), t.subsec_nanos()))
                    .unwrap_or((0, 0));
                PeerStatus {
                    public_key: p.key(),
                    endpoint: *p.endpoint.read(),
                    allowed_ips: p.allowed_ips.read().clone(),
                    last_handshake,
                    rx_bytes: p.rx_bytes.load(Ordering::Relaxed),
                    tx_bytes: p.tx_bytes.load(Ordering::Relaxed),
                    rx_packets: p.rx_packets.load(Ordering::Relaxed),
                    tx_packets: p.tx_packets.load(Ordering::Relaxed),
                    persistent_keepalive: p.keepalive,
                }
            })
            .collect()
    }

    /// Apply a UAPI `set`. Returns an errno (0 = success) and a message.
    pub fn apply(&self, req: SetRequest) -> Result<(), (i32, String)> {
        {
            let st = self.state.read();
            if let Some(port) = req.listen_port
                && port != st.listen_port
            {
                return Err((
                    super::uapi::EINVAL,
                    format!(
                        "changing listen_port at runtime is not supported (is {})",
                        st.listen_port
                    ),
                ));
            }
        }
        if req.clear_private_key {
            self.clear_keys();
        }
        if let Some(k) = &req.private_key {
            let same =
                self.state.read().keys.first().is_some_and(|x| {
                    x.public == x25519::PublicKey::from(*k.public_key().as_bytes())
                }) && self.state.read().keys.len() == 1;
            if !same {
                self.set_keys(k, None);
            }
        }
        let mut st = self.state.write();
        if req.replace_peers {
            let keys: Vec<PublicKey> = st.peers.keys().copied().collect();
            for k in keys {
                remove_peer(&mut st, &k);
            }
        }
        for upd in req.peers {
            let Some(pk) = upd.public_key else { continue };
            if upd.preshared_key {
                return Err((
                    super::uapi::EINVAL,
                    "preshared keys are not supported".into(),
                ));
            }
            if upd.remove {
                remove_peer(&mut st, &pk);
                continue;
            }
            let existing = st.peers.get(&pk).cloned();
            if existing.is_none() && upd.update_only {
                continue;
            }
            let keepalive_changed = match (&existing, upd.persistent_keepalive) {
                (Some(p), Some(k)) => p.keepalive != k,
                _ => false,
            };
            let peer = match existing {
                Some(p) if !keepalive_changed => p,
                old => {
                    let Some(primary) = st.keys.first().map(|k| k.public) else {
                        return Err((
                            super::uapi::EPROTO,
                            "no private key set on the device".into(),
                        ));
                    };
                    let keepalive = upd
                        .persistent_keepalive
                        .or(old.as_ref().map(|o| o.keepalive))
                        .unwrap_or(0);
                    let keep: Vec<IpNet> = match &old {
                        Some(o) => {
                            let ips = o.allowed_ips.read().clone();
                            remove_peer(&mut st, &pk);
                            ips
                        }
                        None => Vec::new(),
                    };
                    let peer = new_peer(
                        &mut st,
                        pk,
                        &primary,
                        keepalive,
                        old.as_ref().and_then(|o| *o.endpoint.read()),
                    );
                    for net in keep {
                        add_allowed(&mut st, &peer, net);
                    }
                    peer
                }
            };
            if let Some(ep) = upd.endpoint {
                *peer.endpoint.write() = Some(normalize(ep));
            }
            if upd.replace_allowed_ips {
                let old: Vec<IpNet> = std::mem::take(&mut *peer.allowed_ips.write());
                for net in old {
                    st.table.remove(to_network(&net));
                }
            }
            for net in upd.allowed_ips {
                add_allowed(&mut st, &peer, net);
            }
        }
        Ok(())
    }
}

/// A new peer with one link (primary local key, its public key).
fn new_peer(
    st: &mut State,
    pk: PublicKey,
    primary: &x25519::PublicKey,
    keepalive: u16,
    endpoint: Option<SocketAddr>,
) -> Arc<Peer> {
    let (secret, generation, rl) = {
        let lk = st
            .local_key(primary)
            .unwrap_or_else(|| unreachable!("primary key is held"));
        (lk.secret.clone(), lk.generation, lk.rate_limiter.clone())
    };
    let index = st.alloc_index();
    let link = Arc::new(Link {
        index,
        generation,
        local: *primary,
        remote: pk,
        tunn: Mutex::new(Tunn::new(
            secret,
            x25519::PublicKey::from(*pk.as_bytes()),
            None,
            (keepalive > 0).then_some(keepalive),
            index,
            Some(rl),
        )),
    });
    let peer = Arc::new(Peer {
        public_key: RwLock::new(pk),
        next_key: RwLock::new(None),
        links: RwLock::new(vec![link.clone()]),
        active: RwLock::new(link.clone()),
        endpoint: RwLock::new(endpoint),
        allowed_ips: RwLock::new(Vec::new()),
        keepalive,
        rx_bytes: AtomicU64::new(0),
        tx_bytes: AtomicU64::new(0),
        rx_packets: AtomicU64::new(0),
        tx_packets: AtomicU64::new(0),
    });
    st.by_index.insert(index, (peer.clone(), link));
    st.peers.insert(pk, peer.clone());
    peer
}

fn add_allowed(st: &mut State, peer: &Arc<Peer>, net: IpNet) {
    if let Some(prev) = st.table.insert(to_network(&net), peer.clone())
        && !Arc::ptr_eq(&prev, peer)
    {
        prev.allowed_ips.write().retain(|n| *n != net);
    }
    let mut ips = peer.allowed_ips.write();
    if !ips.contains(&net) {
        ips.push(net);
    }
}

fn remove_peer(st: &mut State, pk: &PublicKey) {
    if let Some(p) = st.peers.remove(pk) {
        for l in p.links.read().iter() {
            st.by_index.remove(&l.index);
        }
        if let Some(n) = *p.next_key.read() {
            st.next_keys.remove(&n);
        }
        for net in p.allowed_ips.read().iter() {
            if st
                .table
                .exact_match(to_network(net))
                .is_some_and(|q| Arc::ptr_eq(q, &p))
            {
                st.table.remove(to_network(net));
            }
        }
    }
}

fn rand_index() -> u32 {
    let mut b = [0u8; 4];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    u32::from_le_bytes(b) & 0x00ff_ffff
}
