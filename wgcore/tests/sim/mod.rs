//! An in-memory WireGuard network on simulated time: cores wired together
//! by a queue of datagrams, no sockets, no threads, no root. Time moves
//! only when a test says so, so two hours of device life take
//! milliseconds. Models: quinn-proto's `Pair::drive`, wireguard-go's
//! `genTestPair`.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use keys::{PrivateKey, PublicKey};
use wgcore::uapi::{PeerUpdate, SetRequest};
use wgcore::{Core, Opened, Sealed, SourceCache, Transmit};

/// One simulated node: a core, its underlay address and pod network.
pub struct Node {
    pub core: Core,
    pub key: PrivateKey,
    pub addr: SocketAddr,
    /// The node's pods: 10.<i>.0.0/24.
    pub pods: IpNet,
    /// IP packets the core delivered to its TUN.
    pub delivered: Vec<Vec<u8>>,
}

/// A datagram on the simulated underlay.
#[derive(Debug, Clone)]
pub struct Wire {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
}

pub struct Net {
    pub nodes: Vec<Node>,
    pub now: Instant,
    pub start: Instant,
    queue: VecDeque<Wire>,
    /// Every datagram ever sent, in order.
    pub log: Vec<Wire>,
    /// When each datagram of `log` was sent (since the start).
    pub times: Vec<Duration>,
    /// Datagrams to an address no node has (an attacker's, say).
    pub unclaimed: Vec<Wire>,
    /// When false, datagrams are dropped instead of delivered.
    pub link_up: bool,
    /// When set, `send` seals through `seal_batch_in_place` and `drive` opens what
    /// each node receives through `open_batch`, on this many threads: the
    /// device's parallel path instead of the one-by-one one.
    pub batch_threads: Option<usize>,
    /// The persistent keepalive every node gives its peers (0 = off),
    /// from the next configuration ([`Net::restart`]) on.
    pub keepalive: u16,
}

/// One GSO run of a sealed batch: one `sendmsg` of the device.
#[derive(Debug, Clone)]
pub struct Run {
    /// Where to.
    pub to: SocketAddr,
    /// Segment size.
    pub seg: usize,
    /// The datagrams.
    pub dgrams: Vec<Vec<u8>>,
}

/// A buffer of `stride`-byte slots holding packet `k` at `k * stride +
/// SLOT_HEADROOM`, as the device reads them; a packet longer than its
/// slot is cut at the slot's end (its length still says more).
pub fn slotted<P: AsRef<[u8]>>(pkts: &[P], stride: usize) -> Vec<u8> {
    let mut buf = vec![0u8; stride * pkts.len()];
    for (k, p) in pkts.iter().enumerate() {
        let p = p.as_ref();
        let room = &mut buf[k * stride + wgcore::SLOT_HEADROOM..(k + 1) * stride];
        let n = p.len().min(room.len());
        room[..n].copy_from_slice(&p[..n]);
    }
    buf
}

/// The datagrams of `runs` in sending order, with where each goes.
pub fn flatten(runs: Vec<Run>) -> Vec<(SocketAddr, Vec<u8>)> {
    runs.into_iter()
        .flat_map(|r| r.dgrams.into_iter().map(move |d| (r.to, d)))
        .collect()
}

/// Jobs split over scoped threads (the device's pool does the same on
/// persistent ones).
pub struct Threads(pub usize);

impl wgcore::Workers for Threads {
    fn each<T: Send>(&self, items: &mut [T], f: &(dyn Fn(&mut T) + Sync)) {
        let chunk = items.len().div_ceil(self.0).max(1);
        std::thread::scope(|s| {
            for c in items.chunks_mut(chunk) {
                s.spawn(move || c.iter_mut().for_each(f));
            }
        });
    }
}

/// Every job on the calling thread, last first: the latest arrival of a
/// batch is decrypted before the earliest, deterministically (the race
/// [`Threads`] only makes likely).
#[derive(Debug)]
pub struct Reversed;

impl wgcore::Workers for Reversed {
    fn each<T: Send>(&self, items: &mut [T], f: &(dyn Fn(&mut T) + Sync)) {
        items.iter_mut().rev().for_each(f);
    }
}

pub fn underlay(i: usize) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 10 + i as u8], 51820))
}

pub fn pod(i: usize, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, i as u8, 0, host)
}

/// A minimal IPv4/UDP packet from `src` to `dst` carrying `payload`.
pub fn ip_packet(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let mut sum: u32 = 0;
    for c in p[..20].chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p[20..22].copy_from_slice(&4000u16.to_be_bytes());
    p[22..24].copy_from_slice(&4000u16.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

pub fn peer_update(pk: PublicKey, endpoint: SocketAddr, pods: IpNet) -> PeerUpdate {
    PeerUpdate {
        public_key: Some(pk),
        endpoint: Some(endpoint),
        allowed_ips: vec![pods],
        ..PeerUpdate::default()
    }
}

/// Two nodes with a session: node 0's first packet handshakes and arrives.
pub fn handshaken() -> Net {
    let mut net = Net::mesh(2);
    assert_eq!(net.send_pod(0, 1, b"hello"), Sealed::Datagram(148));
    net.drive();
    assert_eq!(net.got(1, b"hello"), 1);
    net
}

impl Net {
    /// `n` nodes in a full mesh, no handshakes yet.
    pub fn mesh(n: usize) -> Self {
        let start = Instant::now();
        let nodes: Vec<Node> = (0..n)
            .map(|i| {
                let key = PrivateKey::generate();
                let core = Core::new(51820, start);
                core.set_keys(&key, None, start);
                Node {
                    core,
                    key,
                    addr: underlay(i),
                    pods: IpNet::new(IpAddr::V4(pod(i, 0)), 24).expect("prefix"),
                    delivered: Vec::new(),
                }
            })
            .collect();
        let mut net = Self {
            nodes,
            now: start,
            start,
            queue: VecDeque::new(),
            log: Vec::new(),
            times: Vec::new(),
            unclaimed: Vec::new(),
            link_up: true,
            batch_threads: None,
            keepalive: 0,
        };
        for i in 0..n {
            let core = &net.nodes[i].core;
            core.apply(net.peers_of(i), start).expect("configure peers");
        }
        net.collect_all();
        net
    }

    /// Node `i` restarts: a fresh core holding `keys` (primary first),
    /// configured with every other node as a peer. Its datagrams in flight
    /// are lost.
    pub fn restart(&mut self, i: usize, keys: &[&PrivateKey]) {
        let core = Core::new(51820, self.now);
        core.set_keys(keys[0], keys.get(1).copied(), self.now);
        core.apply(self.peers_of(i), self.now)
            .expect("configure peers");
        self.nodes[i].core = core;
        self.collect(i);
    }

    /// Every other node as a peer of node `i`.
    fn peers_of(&self, i: usize) -> SetRequest {
        let peers = (0..self.nodes.len())
            .filter(|&j| j != i)
            .map(|j| {
                let o = &self.nodes[j];
                PeerUpdate {
                    persistent_keepalive: Some(self.keepalive),
                    ..peer_update(o.key.public_key(), o.addr, o.pods)
                }
            })
            .collect();
        SetRequest {
            peers,
            ..SetRequest::default()
        }
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    fn collect(&mut self, i: usize) {
        let from = self.nodes[i].addr;
        let mut out = Vec::new();
        self.nodes[i].core.drain_transmits(&mut out);
        for Transmit { to, bytes } in out {
            self.push(Wire { from, to, bytes });
        }
    }

    fn collect_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.collect(i);
        }
    }

    /// Put a datagram on the wire (as an attacker may, with any source).
    pub fn push(&mut self, w: Wire) {
        self.log.push(w.clone());
        self.times.push(self.now - self.start);
        if self.link_up {
            self.queue.push_back(w);
        }
    }

    /// Node `i` sends an IP packet out of its TUN.
    pub fn send(&mut self, i: usize, pkt: &[u8]) -> Sealed {
        if let Some(n) = self.batch_threads {
            return self.send_batch(i, &[pkt], &Threads(n));
        }
        let dst = wgcore::dst_address(pkt).expect("an IP packet");
        let Some(route) = self.nodes[i].core.route(dst) else {
            return Sealed::Dropped;
        };
        let mut out = vec![0u8; pkt.len() + wgcore::SEAL_OVERHEAD + wgcore::SEAL_MIN];
        let r = self.nodes[i].core.seal(&route, pkt, &mut out, self.now);
        if let Sealed::Datagram(n) = r {
            let w = Wire {
                from: self.nodes[i].addr,
                to: route.endpoint(),
                bytes: out[..n].to_vec(),
            };
            self.push(w);
        }
        self.collect(i);
        r
    }

    /// Node `i` seals `pkts` as one batch (`seal_batch`) and puts the
    /// datagrams on the wire. Returns what became of the first packet:
    /// a datagram when any left, else held (a handshake pending) or
    /// dropped (no route).
    pub fn send_batch<W: wgcore::Workers>(&mut self, i: usize, pkts: &[&[u8]], w: &W) -> Sealed {
        let routed = pkts
            .first()
            .and_then(|p| wgcore::dst_address(p))
            .and_then(|d| self.nodes[i].core.route(d))
            .is_some();
        let from = self.nodes[i].addr;
        let sealed = self.seal_batch(i, pkts, w);
        let first = sealed.first().map(|(_, d)| d.len());
        for (to, bytes) in sealed {
            self.push(Wire { from, to, bytes });
        }
        self.collect(i);
        match (first, routed) {
            (Some(n), _) => Sealed::Datagram(n),
            (None, true) => Sealed::Held,
            (None, false) => Sealed::Dropped,
        }
    }

    /// Node `i` seals `pkts` as one batch on `w` the device's way
    /// (`seal_batch_in_place`, each packet in its own slot): the
    /// datagrams, in the order the GSO runs send them, with where they go.
    /// Nothing is put on the wire.
    pub fn seal_batch<W: wgcore::Workers>(
        &self,
        i: usize,
        pkts: &[&[u8]],
        w: &W,
    ) -> Vec<(SocketAddr, Vec<u8>)> {
        flatten(self.seal_runs(i, pkts, w, true))
    }

    /// The same through the copying `seal_batch`.
    pub fn seal_batch_copying<W: wgcore::Workers>(
        &self,
        i: usize,
        pkts: &[&[u8]],
        w: &W,
    ) -> Vec<(SocketAddr, Vec<u8>)> {
        flatten(self.seal_runs(i, pkts, w, false))
    }

    /// Node `i` seals `pkts` as one batch on `w`, in place or by copy: the
    /// GSO runs in sending order, each checked against the kernel's
    /// `UDP_SEGMENT` rules (one destination; all datagrams of the segment
    /// size but a shorter last one; at most 64 of them and 65,000 bytes).
    pub fn seal_runs<W: wgcore::Workers>(
        &self,
        i: usize,
        pkts: &[&[u8]],
        w: &W,
        in_place: bool,
    ) -> Vec<Run> {
        let runs = if in_place {
            self.seal_in_place(i, pkts, w)
        } else {
            self.seal_copying(i, pkts, w)
        };
        for r in &runs {
            assert!(!r.dgrams.is_empty() && r.dgrams.len() <= wgcore::gso::MAX_GSO_SEGMENTS);
            let bytes: usize = r.dgrams.iter().map(|d| d.len()).sum();
            assert!(bytes <= wgcore::gso::MAX_GSO_BYTES);
            let (last, full) = r.dgrams.split_last().expect("not empty");
            assert!(full.iter().all(|d| d.len() == r.seg) && last.len() <= r.seg);
        }
        runs
    }

    /// Node `i` seals the packets of `lens` lying in `buf`'s slots (as
    /// [`slotted`] lays them out) with `seal_batch_in_place`: each
    /// datagram's range in `buf`, and the runs over them.
    pub fn seal_slots<W: wgcore::Workers>(
        &self,
        i: usize,
        buf: &mut [u8],
        stride: usize,
        lens: &[usize],
        w: &W,
    ) -> (Vec<Range<usize>>, Vec<wgcore::SlotRun>) {
        let (mut dgrams, mut runs) = (Vec::new(), Vec::new());
        self.nodes[i].core.seal_batch_in_place(
            buf,
            stride,
            lens,
            w,
            &mut dgrams,
            &mut runs,
            self.now,
        );
        (dgrams, runs)
    }

    fn seal_in_place<W: wgcore::Workers>(&self, i: usize, pkts: &[&[u8]], w: &W) -> Vec<Run> {
        let max = pkts.iter().map(|p| p.len()).max().unwrap_or(0);
        let stride = wgcore::slot_len(max);
        let mut buf = slotted(pkts, stride);
        let lens: Vec<usize> = pkts.iter().map(|p| p.len()).collect();
        let (dgrams, runs) = self.seal_slots(i, &mut buf, stride, &lens, w);
        let mut next = 0;
        let mut out = Vec::new();
        for r in runs {
            assert_eq!(r.range.start, next, "runs cover the datagrams in order");
            next = r.range.end;
            let run = &dgrams[r.range.clone()];
            assert!(
                run.iter().all(|d| d.start % stride == 0),
                "a datagram starts its slot"
            );
            out.push(Run {
                to: r.to,
                seg: r.seg,
                dgrams: run.iter().map(|d| buf[d.clone()].to_vec()).collect(),
            });
        }
        assert_eq!(next, dgrams.len(), "every datagram is in a run");
        out
    }

    fn seal_copying<W: wgcore::Workers>(&self, i: usize, pkts: &[&[u8]], w: &W) -> Vec<Run> {
        let mut out = vec![0u8; wgcore::batch_buffer_len(pkts.iter().map(|p| p.len()))];
        let mut runs = Vec::new();
        self.nodes[i]
            .core
            .seal_batch(pkts, &mut out, w, &mut runs, self.now);
        let mut end = 0;
        let mut sent = Vec::new();
        for f in runs {
            assert!(f.range.start >= end, "runs overlap");
            end = f.range.end;
            sent.push(Run {
                to: f.to,
                seg: f.seg,
                dgrams: out[f.range].chunks(f.seg).map(|d| d.to_vec()).collect(),
            });
        }
        sent
    }

    /// Node `j` opens `input` (datagrams with where each came from) as one
    /// `open_batch_in_place` on `w` (the device's path); what opened is
    /// delivered to its TUN.
    pub fn open_batch<W: wgcore::Workers>(
        &mut self,
        j: usize,
        input: &[(&[u8], SocketAddr)],
        w: &W,
    ) -> Vec<Opened> {
        let mut bufs: Vec<Vec<u8>> = input.iter().map(|(d, _)| d.to_vec()).collect();
        let mut dgrams: Vec<(&mut [u8], SocketAddr)> = bufs
            .iter_mut()
            .zip(input)
            .map(|(b, (_, from))| (b.as_mut_slice(), *from))
            .collect();
        let mut opened = Vec::new();
        self.nodes[j].core.open_batch_in_place(
            &mut dgrams,
            w,
            &mut SourceCache::default(),
            &mut opened,
            self.now,
        );
        for (k, o) in opened.iter().enumerate() {
            if let Opened::Packet(n) = o {
                let at = wgcore::DATA_HEADER;
                self.nodes[j].delivered.push(bufs[k][at..at + n].to_vec());
            }
        }
        opened
    }

    /// `open_batch` into separate buffers on `w`: the packets that opened.
    pub fn open_batch_copying<W: wgcore::Workers>(
        &mut self,
        j: usize,
        input: &[(&[u8], SocketAddr)],
        w: &W,
    ) -> Vec<Vec<u8>> {
        let mut bufs = vec![vec![0u8; 65_536]; input.len()];
        let mut outs: Vec<&mut [u8]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
        let mut opened = Vec::new();
        self.nodes[j].core.open_batch(
            input,
            &mut outs,
            w,
            &mut SourceCache::default(),
            &mut opened,
            self.now,
        );
        opened
            .iter()
            .zip(&bufs)
            .filter_map(|(o, b)| match o {
                Opened::Packet(n) => Some(b[..*n].to_vec()),
                Opened::Nothing => None,
            })
            .collect()
    }

    /// A pod of node `i` sends `payload` to a pod of node `j`.
    pub fn send_pod(&mut self, i: usize, j: usize, payload: &[u8]) -> Sealed {
        let pkt = ip_packet(pod(i, 2), pod(j, 2), payload);
        self.send(i, &pkt)
    }

    /// Deliver datagrams until the wire is quiet.
    pub fn drive(&mut self) {
        if let Some(n) = self.batch_threads {
            return self.drive_batches(&Threads(n));
        }
        let mut cache = SourceCache::default();
        let mut out = vec![0u8; 65_536];
        let mut steps = 0;
        while let Some(w) = self.queue.pop_front() {
            steps += 1;
            assert!(steps < 1_000_000, "the wire never went quiet");
            let Some(i) = self.nodes.iter().position(|n| n.addr == w.to) else {
                self.unclaimed.push(w);
                continue;
            };
            if let Opened::Packet(n) = self.nodes[i]
                .core
                .open(&w.bytes, w.from, &mut out, &mut cache, self.now)
            {
                self.nodes[i].delivered.push(out[..n].to_vec());
            }
            self.collect(i);
        }
    }

    /// Deliver datagrams until the wire is quiet, each node opening all
    /// that reached it in one `open_batch` per round.
    fn drive_batches<W: wgcore::Workers>(&mut self, w: &W) {
        let mut rounds = 0;
        while !self.queue.is_empty() {
            rounds += 1;
            assert!(rounds < 100_000, "the wire never went quiet");
            let wires: Vec<Wire> = self.queue.drain(..).collect();
            for i in 0..self.nodes.len() {
                let addr = self.nodes[i].addr;
                let input: Vec<(&[u8], SocketAddr)> = wires
                    .iter()
                    .filter(|x| x.to == addr)
                    .map(|x| (x.bytes.as_slice(), x.from))
                    .collect();
                if input.is_empty() {
                    continue;
                }
                self.open_batch(i, &input, w);
                self.collect(i);
            }
            self.unclaimed.extend(
                wires
                    .into_iter()
                    .filter(|x| !self.nodes.iter().any(|n| n.addr == x.to)),
            );
        }
    }

    /// Let `d` of simulated time pass in timer ticks, delivering as it goes.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            let next = self
                .nodes
                .iter()
                .map(|n| n.core.poll_timeout(self.now))
                .min()
                .unwrap_or(end);
            self.now = next.min(end).max(self.now + Duration::from_millis(1));
            for i in 0..self.nodes.len() {
                self.nodes[i].core.handle_timeout(self.now);
                self.collect(i);
            }
            self.drive();
        }
    }

    /// How many datagrams of WireGuard message type `t` node `i` sent.
    pub fn sent_of_type(&self, i: usize, t: u8) -> usize {
        let a = self.nodes[i].addr;
        self.log
            .iter()
            .filter(|w| w.from == a && w.bytes.first() == Some(&t))
            .count()
    }

    /// When node `i` sent datagrams of type `t` (since the start).
    pub fn times_of_type(&self, i: usize, t: u8) -> Vec<Duration> {
        let a = self.nodes[i].addr;
        self.log
            .iter()
            .zip(&self.times)
            .filter(|(w, _)| w.from == a && w.bytes.first() == Some(&t))
            .map(|(_, d)| *d)
            .collect()
    }

    /// Packets node `j` got whose payload is `payload`.
    pub fn got(&self, j: usize, payload: &[u8]) -> usize {
        self.nodes[j]
            .delivered
            .iter()
            .filter(|p| p.len() >= 28 && &p[28..] == payload)
            .count()
    }

    /// Whether any datagram on the wire contains `needle` in the clear.
    pub fn plaintext_seen(&self, needle: &[u8]) -> bool {
        self.log
            .iter()
            .any(|w| w.bytes.windows(needle.len()).any(|x| x == needle))
    }

    /// The endpoint node `i` has for node `j`.
    pub fn endpoint(&self, i: usize, j: usize) -> Option<SocketAddr> {
        let pk = self.nodes[j].key.public_key();
        self.nodes[i]
            .core
            .peer_status(std::time::SystemTime::now())
            .into_iter()
            .find(|p| p.public_key == pk)
            .and_then(|p| p.endpoint)
    }

    /// What node `i` reports of its peer node `j`.
    pub fn status(&self, i: usize, j: usize) -> wgcore::uapi::PeerStatus {
        let pk = self.nodes[j].key.public_key();
        self.nodes[i]
            .core
            .peer_status(std::time::SystemTime::now())
            .into_iter()
            .find(|p| p.public_key == pk)
            .expect("a peer")
    }

    pub fn drop_count(&self, i: usize, name: &str) -> u64 {
        self.nodes[i]
            .core
            .drops
            .snapshot()
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .unwrap_or(0)
    }
}
