//! podguard's userspace WireGuard device: one boringtun `noise::Tunn` per
//! peer, a TUN interface and a UDP socket, with cryptokey routing both ways.
//!
//! Threads: TUN → UDP (encrypt), UDP → TUN (decrypt), timers, UAPI. The
//! per-packet path takes a read lock on the peer table and the peer's own
//! `Tunn` lock; no allocation per packet.
//!
//! Cryptokey routing:
//! * outbound: destination → peer by longest-prefix AllowedIPs; no peer →
//!   the packet is dropped and counted (never sent in plaintext);
//! * inbound: a decrypted packet whose source is not in the sending peer's
//!   AllowedIPs is dropped and counted.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
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

use super::uapi::{PeerStatus, SetRequest};

/// Largest datagram we handle (TUN MTU is at most this minus overhead).
const BUF: usize = 65_536;
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
}

struct Peer {
    public_key: PublicKey,
    index: u32,
    tunn: Mutex<Tunn>,
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
}

struct State {
    key: Option<(x25519::StaticSecret, x25519::PublicKey)>,
    listen_port: u16,
    peers: BTreeMap<PublicKey, Arc<Peer>>,
    by_index: HashMap<u32, Arc<Peer>>,
    table: IpNetworkTable<Arc<Peer>>,
    next_index: u32,
    rate_limiter: Arc<RateLimiter>,
}

/// The shared core of a running device.
pub struct Device {
    ifname: String,
    tun: tun_rs::SyncDevice,
    udp: UdpSocket,
    /// The socket is dual-stack IPv6: IPv4 peers are sent to as v4-mapped.
    udp_v6: bool,
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
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    Ok(s.into())
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
        let tun_err = |source| DeviceError::Tun {
            ifname: ifname.to_string(),
            source,
        };
        let tun = tun_rs::DeviceBuilder::new()
            .name(ifname)
            .layer(tun_rs::Layer::L3)
            .build_sync()
            .map_err(tun_err)?;
        if persist {
            tun.persist().map_err(tun_err)?;
        }
        let udp = bind_udp(listen_port).map_err(|source| DeviceError::Udp {
            port: listen_port,
            source,
        })?;
        let key = key.map(|k| {
            let s = k.as_static_secret().clone();
            let p = x25519::PublicKey::from(&s);
            (s, p)
        });
        let rate_limiter = Arc::new(RateLimiter::new(
            &key.as_ref()
                .map(|k| k.1)
                .unwrap_or_else(|| x25519::PublicKey::from([0u8; 32])),
            HANDSHAKE_RATE_LIMIT,
        ));
        Ok(Arc::new(Self {
            ifname: ifname.to_string(),
            tun,
            udp_v6: matches!(udp.local_addr(), Ok(SocketAddr::V6(_))),
            udp,
            state: RwLock::new(State {
                key,
                listen_port,
                peers: BTreeMap::new(),
                by_index: HashMap::new(),
                table: IpNetworkTable::new(),
                next_index: rand_index(),
                rate_limiter,
            }),
            drops: DropCounters::default(),
        }))
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
        let to = match to {
            SocketAddr::V4(v4) if self.udp_v6 => {
                SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
            }
            _ => to,
        };
        if let Err(e) = self.udp.send_to(buf, to) {
            tracing::debug!(error = %e, %to, "udp send failed");
        }
    }

    fn run_outbound(&self) {
        let mut src = vec![0u8; BUF];
        let mut dst = vec![0u8; BUF + 32];
        loop {
            let n = match self.tun.recv(&mut src) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(error = %e, "TUN read failed; outbound path stops");
                    return;
                }
            };
            let pkt = &src[..n];
            let Some(dst_ip) = Tunn::dst_address(pkt) else {
                continue;
            };
            let peer = {
                let st = self.state.read();
                st.table.longest_match(dst_ip).map(|(_, p)| p.clone())
            };
            let Some(peer) = peer else {
                self.drops.no_peer.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let Some(endpoint) = *peer.endpoint.read() else {
                self.drops.no_endpoint.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let mut t = peer.tunn.lock();
            match t.encapsulate(pkt, &mut dst) {
                TunnResult::WriteToNetwork(b) => {
                    peer.sent(b.len());
                    self.send_to(b, endpoint);
                }
                TunnResult::Err(e) => tracing::debug!(?e, "encapsulate"),
                _ => {}
            }
        }
    }

    fn peer_for(&self, packet: &Packet<'_>) -> Option<Arc<Peer>> {
        let st = self.state.read();
        match packet {
            Packet::HandshakeInit(p) => {
                let (sk, pk) = st.key.as_ref()?;
                let hh = parse_handshake_anon(sk, pk, p).ok()?;
                st.peers
                    .get(&PublicKey::from_bytes(hh.peer_static_public))
                    .cloned()
            }
            Packet::HandshakeResponse(p) => st.by_index.get(&(p.receiver_idx >> 8)).cloned(),
            Packet::PacketCookieReply(p) => st.by_index.get(&(p.receiver_idx >> 8)).cloned(),
            Packet::PacketData(p) => st.by_index.get(&(p.receiver_idx >> 8)).cloned(),
        }
    }

    fn source_allowed(&self, peer: &Arc<Peer>, src: IpAddr) -> bool {
        let st = self.state.read();
        st.table
            .longest_match(src)
            .is_some_and(|(_, p)| Arc::ptr_eq(p, peer))
    }

    /// Write a decrypted packet to the TUN if its source lies in the
    /// sending peer's AllowedIPs; otherwise drop and count it.
    fn deliver(&self, peer: &Arc<Peer>, pkt: &[u8], src: IpAddr) {
        if self.source_allowed(peer, src) {
            let _ = self.tun.send(pkt);
            return;
        }
        let n = self.drops.bad_source.fetch_add(1, Ordering::Relaxed);
        if n.is_power_of_two() || n == 0 {
            tracing::warn!(
                peer = %peer.public_key.fingerprint(),
                %src,
                dropped_total = n + 1,
                "dropped a packet whose source is outside the sending peer's AllowedIPs"
            );
        }
    }

    fn run_inbound(&self) {
        let mut buf = vec![0u8; BUF];
        let mut out = vec![0u8; BUF];
        loop {
            let (n, from) = match self.udp.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(error = %e, "UDP read failed; inbound path stops");
                    return;
                }
            };
            let from = normalize(from);
            let datagram = &buf[..n];
            let peer = match Tunn::parse_incoming_packet(datagram) {
                Ok(p) => self.peer_for(&p),
                Err(_) => None,
            };
            let Some(peer) = peer else {
                self.drops.invalid.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let mut t = peer.tunn.lock();
            let mut authenticated = true;
            match t.decapsulate(Some(from.ip()), datagram, &mut out) {
                TunnResult::WriteToNetwork(b) => {
                    peer.sent(b.len());
                    self.send_to(b, from);
                    // Flush packets queued while the handshake was pending.
                    while let TunnResult::WriteToNetwork(b) = t.decapsulate(None, &[], &mut out) {
                        peer.sent(b.len());
                        self.send_to(b, from);
                    }
                }
                TunnResult::WriteToTunnelV4(pkt, src) => {
                    self.deliver(&peer, pkt, IpAddr::V4(src));
                }
                TunnResult::WriteToTunnelV6(pkt, src) => {
                    self.deliver(&peer, pkt, IpAddr::V6(src));
                }
                TunnResult::Done => {}
                TunnResult::Err(e) => {
                    authenticated = false;
                    self.drops.invalid.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(?e, %from, "decapsulate");
                }
            }
            drop(t);
            if authenticated {
                peer.received(n);
                // Roaming: the peer's endpoint follows its last authenticated packet.
                let mut ep = peer.endpoint.write();
                if *ep != Some(from) {
                    *ep = Some(from);
                }
            }
        }
    }

    fn run_timers(&self) {
        let mut dst = vec![0u8; BUF];
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let peers: Vec<Arc<Peer>> = self.state.read().peers.values().cloned().collect();
            for peer in peers {
                let mut t = peer.tunn.lock();
                if let TunnResult::WriteToNetwork(b) = t.update_timers(&mut dst)
                    && let Some(ep) = *peer.endpoint.read()
                {
                    peer.sent(b.len());
                    self.send_to(b, ep);
                }
            }
        }
    }

    /// The device's private key, for a UAPI `get` (stays on the node).
    pub fn private_key(&self) -> Option<PrivateKey> {
        self.state
            .read()
            .key
            .as_ref()
            .map(|(s, _)| PrivateKey::from_bytes(s.to_bytes()))
    }

    /// Packets dropped so far, by reason.
    pub fn drop_counts(&self) -> [(&'static str, u64); 4] {
        let d = &self.drops;
        [
            ("no_peer", d.no_peer.load(Ordering::Relaxed)),
            ("no_endpoint", d.no_endpoint.load(Ordering::Relaxed)),
            ("bad_source", d.bad_source.load(Ordering::Relaxed)),
            ("invalid", d.invalid.load(Ordering::Relaxed)),
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
                let since = p.tunn.lock().time_since_last_handshake();
                let last_handshake = since
                    .and_then(|d| now_epoch().checked_sub(d))
                    .map(|t| (t.as_secs(), t.subsec_nanos()))
                    .unwrap_or((0, 0));
                PeerStatus {
                    public_key: p.public_key,
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
        let mut st = self.state.write();
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
        if req.clear_private_key {
            st.key = None;
        }
        if let Some(k) = req.private_key {
            let s = k.as_static_secret().clone();
            let p = x25519::PublicKey::from(&s);
            st.rate_limiter = Arc::new(RateLimiter::new(&p, HANDSHAKE_RATE_LIMIT));
            for peer in st.peers.values() {
                peer.tunn
                    .lock()
                    .set_static_private(s.clone(), p, Some(st.rate_limiter.clone()));
            }
            st.key = Some((s, p));
        }
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
                    let Some((sk, _)) = st.key.clone() else {
                        return Err((
                            super::uapi::EPROTO,
                            "no private key set on the device".into(),
                        ));
                    };
                    let keepalive = upd
                        .persistent_keepalive
                        .or(old.as_ref().map(|o| o.keepalive))
                        .unwrap_or(0);
                    let index = st.next_index;
                    st.next_index = (st.next_index + 1) & 0x00ff_ffff;
                    let peer = Arc::new(Peer {
                        public_key: pk,
                        index,
                        tunn: Mutex::new(Tunn::new(
                            sk,
                            x25519::PublicKey::from(*pk.as_bytes()),
                            None,
                            (keepalive > 0).then_some(keepalive),
                            index,
                            Some(st.rate_limiter.clone()),
                        )),
                        endpoint: RwLock::new(old.as_ref().and_then(|o| *o.endpoint.read())),
                        allowed_ips: RwLock::new(Vec::new()),
                        keepalive,
                        rx_bytes: AtomicU64::new(0),
                        tx_bytes: AtomicU64::new(0),
                        rx_packets: AtomicU64::new(0),
                        tx_packets: AtomicU64::new(0),
                    });
                    let keep: Vec<IpNet> = match &old {
                        Some(o) => {
                            let ips = o.allowed_ips.read().clone();
                            remove_peer(&mut st, &pk);
                            ips
                        }
                        None => Vec::new(),
                    };
                    st.peers.insert(pk, peer.clone());
                    st.by_index.insert(index, peer.clone());
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
        st.by_index.remove(&p.index);
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
