//! `mesh::companion` against a model of kernel WireGuard: nodes with one
//! key per interface and a source-address check per peer, agents that
//! reconcile in any order, handshakes that complete only between
//! interfaces that know each other's keys. Every pod-to-pod direction must
//! have a working path after every single action of a whole rotation: the
//! rotation is hitless by construction, not by luck of timing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use keys::{PrivateKey, PublicKey};
use mesh::companion::{self, Companions, Handshakes, NEXT_IFNAME, PEERS_NEXT_IFNAME, Seen, decide};
use mesh::{Local, MeshConfig, NodeInfo, Plan, RouteTarget, WG_IFNAME, plan};

/// One WireGuard interface.
#[derive(Debug, Clone)]
struct Iface {
    key: PublicKey,
    /// Peer key → allowed IPs.
    peers: BTreeMap<PublicKey, BTreeSet<IpNet>>,
    /// Peer key → the interface (node, name) it initiates to, if any.
    initiates: BTreeMap<PublicKey, (usize, &'static str)>,
    /// Peer key → when, and with which interface, a session exists.
    sessions: BTreeMap<PublicKey, (SystemTime, usize, &'static str)>,
    /// Peer key → last handshake, as the kernel reports it: it survives a
    /// change of the interface's own key (the sessions do not).
    last: BTreeMap<PublicKey, SystemTime>,
    /// Peers with a persistent keepalive (they handshake without traffic).
    keepalive: BTreeSet<PublicKey>,
}

impl Iface {
    fn new(key: PublicKey) -> Self {
        Self {
            key,
            peers: BTreeMap::new(),
            initiates: BTreeMap::new(),
            sessions: BTreeMap::new(),
            last: BTreeMap::new(),
            keepalive: BTreeSet::new(),
        }
    }
    fn handshakes(&self) -> Handshakes {
        self.peers
            .keys()
            .map(|k| (*k, self.last.get(k).copied()))
            .collect()
    }
    /// Follow a new peer set: a removed peer takes its state with it.
    fn set_peers(&mut self, peers: BTreeMap<PublicKey, BTreeSet<IpNet>>) {
        self.sessions.retain(|k, _| peers.contains_key(k));
        self.last.retain(|k, _| peers.contains_key(k));
        self.initiates.retain(|k, _| peers.contains_key(k));
        self.peers = peers;
    }
}

#[derive(Debug, Clone)]
struct Node {
    name: String,
    cidr: IpNet,
    current: PublicKey,
    next: Option<PublicKey>,
    old: Option<PublicKey>,
    ifaces: BTreeMap<&'static str, Iface>,
    /// Device routes (longest prefix wins).
    routes: BTreeMap<IpNet, String>,
    before: Option<(PublicKey, Handshakes)>,
    switched_at: SystemTime,
    acks: BTreeSet<PublicKey>,
    /// Rounds spent in `Staged` (the stage times out after 30).
    staged: u32,
}

struct World {
    nodes: Vec<Node>,
    now: SystemTime,
    /// `--keepalive` of every agent (`None`: 0, off).
    keepalive: Option<u16>,
}

fn key() -> PublicKey {
    PrivateKey::generate().public_key()
}

impl World {
    fn new(n: usize) -> Self {
        let nodes = (0..n)
            .map(|i| {
                let current = key();
                let mut ifaces = BTreeMap::new();
                ifaces.insert(WG_IFNAME, Iface::new(current));
                Node {
                    name: format!("n{i}"),
                    cidr: format!("10.244.{i}.0/24").parse().unwrap(),
                    current,
                    next: None,
                    old: None,
                    ifaces,
                    routes: BTreeMap::new(),
                    before: None,
                    switched_at: SystemTime::UNIX_EPOCH,
                    acks: BTreeSet::new(),
                    staged: 0,
                }
            })
            .collect();
        Self {
            nodes,
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
            keepalive: Some(25),
        }
    }

    fn infos(&self) -> Vec<NodeInfo> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| NodeInfo {
                name: n.name.clone(),
                pod_cidrs: vec![n.cidr.to_string()],
                endpoint: Some(format!("192.0.2.{}:51820", i + 1)),
                public_key: Some(n.current.to_base64()),
                next_public_key: n.next.map(|k| k.to_base64()),
                internal_ips: vec![],
                underlay_mtu: None,
            })
            .collect()
    }

    /// One agent's reconcile: plan, decide, apply.
    fn reconcile(&mut self, i: usize) {
        let infos = self.infos();
        let n = &self.nodes[i];
        let cfg = MeshConfig {
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            persistent_keepalive: self.keepalive,
            ..Default::default()
        };
        let local = Local {
            name: n.name.clone(),
            public_key: n.current,
        };
        let mut p: Plan = plan(&local, &infos, &cfg).unwrap();
        let files = companion::Files {
            current: n.current,
            current_since: n.switched_at,
            next: n.next,
            old: n.old,
        };
        let own = companion::own(&files, Some(n.ifaces[WG_IFNAME].key), n.before.clone());
        let seen = Seen {
            main: n.ifaces[WG_IFNAME].handshakes(),
            next: n.ifaces.get(NEXT_IFNAME).map(Iface::handshakes),
            peers_next: n.ifaces.get(PEERS_NEXT_IFNAME).map(Iface::handshakes),
        };
        let d: Companions = decide(&p, n.current, &own, &seen, self.now);
        let acks = companion::acks(&p, &own, &seen, self.now);
        d.apply(&mut p);
        let n = &mut self.nodes[i];
        n.acks = acks;
        // podguard0 follows the plan (a changed key: remove + set).
        let main = n.ifaces.get_mut(WG_IFNAME).unwrap();
        let want: BTreeMap<PublicKey, BTreeSet<IpNet>> = p
            .peers
            .values()
            .map(|q| (q.public_key, q.allowed_ips.clone()))
            .collect();
        main.set_peers(want);
        main.keepalive = p
            .peers
            .values()
            .filter(|q| q.persistent_keepalive.is_some())
            .map(|q| q.public_key)
            .collect();
        main.initiates = p
            .peers
            .values()
            .map(|q| {
                let ip = match q.endpoint.ip() {
                    std::net::IpAddr::V4(v) => v.octets()[3],
                    _ => unreachable!(),
                };
                (q.public_key, (usize::from(ip) - 1, WG_IFNAME))
            })
            .collect();
        for c in [&d.next, &d.peers_next].into_iter().flatten() {
            let f = n
                .ifaces
                .entry(c.ifname)
                .or_insert_with(|| Iface::new(c.key));
            if f.key != c.key {
                *f = Iface::new(c.key);
            }
            f.set_peers(
                c.peers
                    .iter()
                    .map(|(k, q)| (*k, q.allowed_ips.clone()))
                    .collect(),
            );
            f.keepalive = c
                .peers
                .iter()
                .filter(|(_, q)| q.persistent_keepalive.is_some())
                .map(|(k, _)| *k)
                .collect();
            // Configured endpoints; one learned from a handshake stays.
            for (k, q) in &c.peers {
                if let Some(ep) = q.endpoint {
                    let std::net::IpAddr::V4(v) = ep.ip() else {
                        unreachable!()
                    };
                    assert_eq!(ep.port(), 51821, "a node's next key listens on port + 1");
                    f.initiates
                        .insert(*k, (usize::from(v.octets()[3]) - 1, NEXT_IFNAME));
                }
            }
        }
        // Routes move first (one replace each), then companions go.
        n.routes = p
            .routes
            .iter()
            .filter_map(|r| match &r.target {
                RouteTarget::Device { dev, .. } => Some((r.dst, dev.clone())),
                RouteTarget::Unreachable => None,
            })
            .collect();
        if d.next.is_none() {
            n.ifaces.remove(NEXT_IFNAME);
        }
        if d.peers_next.is_none() {
            n.ifaces.remove(PEERS_NEXT_IFNAME);
        }
    }

    /// The interface and peer key node `x` sends node `y`'s pods to.
    fn egress(&self, x: usize, y: usize) -> Option<(&'static str, PublicKey)> {
        let (nx, ny) = (&self.nodes[x], &self.nodes[y]);
        let dev = nx
            .routes
            .iter()
            .filter(|(dst, _)| dst.contains(&ny.cidr.network()))
            .max_by_key(|(dst, _)| dst.prefix_len())?
            .1;
        let (name, f) = nx.ifaces.iter().find(|(n, _)| **n == dev.as_str())?;
        let (k, _) = f.peers.iter().find(|(_, ips)| ips.contains(&ny.cidr))?;
        Some((name, *k))
    }

    /// Handshakes complete between interfaces that know each other, when
    /// the initiator has a reason: a keepalive, or pod traffic (every pod
    /// sends to every other node's pods) routed into it.
    fn network(&mut self) {
        let mut done = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let traffic: BTreeSet<(&str, PublicKey)> = (0..self.nodes.len())
                .filter(|y| *y != i)
                .filter_map(|y| self.egress(i, y))
                .collect();
            for (name, f) in &n.ifaces {
                for (k, (j, target)) in &f.initiates {
                    if !f.keepalive.contains(k) && !traffic.contains(&(*name, *k)) {
                        continue;
                    }
                    let Some(t) = self.nodes[*j].ifaces.get(target) else {
                        continue;
                    };
                    if t.key == *k && t.peers.contains_key(&f.key) {
                        done.push((i, *name, *k, *j, *target, f.key));
                    }
                }
            }
        }
        for (i, a, ka, j, b, kb) in done {
            let now = self.now;
            let fa = self.nodes[i].ifaces.get_mut(a).unwrap();
            if fa.sessions.get(&ka).is_some_and(|s| (s.1, s.2) == (j, b)) {
                continue; // a live session is not renewed every step
            }
            fa.sessions.insert(ka, (now, j, b));
            fa.last.insert(ka, now);
            let fb = self.nodes[j].ifaces.get_mut(b).unwrap();
            fb.sessions.insert(kb, (now, i, a));
            fb.last.insert(kb, now);
            // The responder learns where the initiator is.
            fb.initiates.insert(kb, (i, a));
        }
    }

    /// The rotating node's key files follow its acks or the stage's
    /// timeout (the rotator).
    fn rotate_step(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if n.next.is_some() {
            n.staged += 1;
        }
        match (n.next, n.old) {
            (Some(next), None) if n.acks.contains(&next) || n.staged > 30 => {
                n.staged = 0;
                n.old = Some(n.current);
                n.current = next;
                n.next = None;
                n.switched_at = self.now;
                let main = n.ifaces.get_mut(WG_IFNAME).unwrap();
                n.before = Some((next, main.handshakes()));
                // A new key on podguard0: its sessions are gone (the
                // kernel keeps reporting the last handshakes).
                *main = Iface {
                    key: next,
                    sessions: BTreeMap::new(),
                    ..main.clone()
                };
                n.acks.clear();
            }
            (None, Some(_)) if n.acks.contains(&n.current) => n.old = None,
            _ => {}
        }
    }

    /// Every pod of every node reaches every other node's pods.
    fn assert_all_paths(&self, when: &str) {
        for (x, nx) in self.nodes.iter().enumerate() {
            for (y, ny) in self.nodes.iter().enumerate() {
                if x != y
                    && let Err(why) = self.path(x, y)
                {
                    panic!("{when}: {} -> {}: {why}", nx.name, ny.name);
                }
            }
        }
    }

    fn path(&self, x: usize, y: usize) -> Result<(), String> {
        let (nx, ny) = (&self.nodes[x], &self.nodes[y]);
        let dev = nx
            .routes
            .iter()
            .filter(|(dst, _)| dst.contains(&ny.cidr.network()))
            .max_by_key(|(dst, _)| dst.prefix_len())
            .map(|(_, dev)| dev)
            .ok_or("no route")?;
        let a = nx
            .ifaces
            .get(dev.as_str())
            .ok_or(format!("route into missing {dev}"))?;
        let (k, _) = a
            .peers
            .iter()
            .find(|(_, ips)| ips.contains(&ny.cidr))
            .ok_or(format!("{dev}: no peer for the destination"))?;
        let (_, j, b) = a.sessions.get(k).ok_or(format!("{dev}: no session"))?;
        if *j != y {
            return Err(format!("{dev}: session with another node"));
        }
        let fb = ny
            .ifaces
            .get(b)
            .ok_or(format!("{dev}: peer interface {b} gone"))?;
        if fb.key != *k {
            return Err(format!("{b} holds another key now"));
        }
        match fb.sessions.get(&a.key) {
            Some((_, i, n)) if *i == x && *n == dev.as_str() => {}
            _ => return Err(format!("{b}: no session with {dev}")),
        }
        if !fb
            .peers
            .get(&a.key)
            .is_some_and(|ips| ips.contains(&nx.cidr))
        {
            return Err(format!(
                "{b}: the source is not an allowed IP of {dev}'s key"
            ));
        }
        Ok(())
    }

    fn companions_exist(&self) -> bool {
        self.nodes.iter().any(|n| n.ifaces.len() > 1)
    }
}

/// Rotate `rotating` (in turn) in a world of `n` nodes, the agents acting
/// in the order `order` gives for each round; every path checked after
/// every action. Returns the rounds it took.
fn run(n: usize, rotating: &[usize], order: impl Fn(usize) -> Vec<usize>) -> usize {
    run_with(n, rotating, order, |_, _| {})
}

/// [`run`], with `meddle(world, round)` called at the start of each round.
fn run_with(
    n: usize,
    rotating: &[usize],
    order: impl Fn(usize) -> Vec<usize>,
    meddle: impl Fn(&mut World, usize),
) -> usize {
    let mut w = World::new(n);
    meddle(&mut w, 0);
    for _ in 0..2 {
        for i in 0..n {
            w.reconcile(i);
        }
        w.network();
    }
    w.assert_all_paths("before");
    let mut round = 0;
    for &r in rotating {
        w.nodes[r].next = Some(key());
        loop {
            round += 1;
            assert!(round < 200, "the rotation of n{r} does not end");
            meddle(&mut w, round);
            for i in order(round) {
                w.reconcile(i);
                w.assert_all_paths(&format!("round {round}, n{i} reconciled"));
                w.network();
                w.assert_all_paths(&format!("round {round}, handshakes after n{i}"));
            }
            w.rotate_step(r);
            w.assert_all_paths(&format!("round {round}, n{r}'s rotation step"));
            w.now += Duration::from_secs(1);
            let n = &w.nodes[r];
            if n.next.is_none() && n.old.is_none() && !w.companions_exist() {
                break;
            }
        }
    }
    round
}

#[test]
fn a_rotation_between_two_kernel_nodes_never_loses_a_path() {
    for order in [vec![0, 1], vec![1, 0]] {
        let rounds = run(2, &[0], |_| order.clone());
        assert!(rounds < 30, "{rounds} rounds");
    }
}

#[test]
fn rotate_all_in_three_nodes_in_any_agent_order_never_loses_a_path() {
    let orders = [vec![0, 1, 2], vec![2, 1, 0], vec![1, 0, 2], vec![1, 2, 0]];
    for seed in 0..orders.len() {
        run(3, &[0, 1, 2], |round| {
            orders[(round + seed) % orders.len()].clone()
        });
    }
}

#[test]
fn a_slow_peer_that_reconciles_every_third_round_still_loses_nothing() {
    run(3, &[1], |round| {
        if round % 3 == 0 {
            vec![0, 1, 2]
        } else {
            vec![0, 1]
        }
    });
}

#[test]
fn an_agent_restarted_after_the_switch_finishes_without_its_snapshot() {
    // Every round after the switch, the rotating agent has just restarted:
    // it never has the handshakes of before the switch.
    run_with(
        3,
        &[0],
        |_| vec![0, 1, 2],
        |w, _| {
            w.nodes[0].before = None;
        },
    );
}

#[test]
fn a_rolled_back_stage_removes_every_companion() {
    let mut w = World::new(2);
    for _ in 0..2 {
        for i in 0..2 {
            w.reconcile(i);
        }
        w.network();
    }
    w.nodes[0].next = Some(key());
    for _ in 0..3 {
        for i in 0..2 {
            w.reconcile(i);
            w.network();
        }
        w.now += Duration::from_secs(1);
    }
    assert!(w.companions_exist(), "the stage made no companions");
    // The next key file turned out unusable: the rotation rolls back.
    w.nodes[0].next = None;
    for _ in 0..2 {
        for i in 0..2 {
            w.reconcile(i);
            w.network();
        }
    }
    assert!(!w.companions_exist(), "a companion outlived the rollback");
    w.assert_all_paths("after the rollback");
}

#[test]
fn with_keepalives_off_podguard0_still_settles_on_the_new_key() {
    // `--keepalive 0`: after the switch no traffic is routed into
    // podguard0 at either end, so only the keepalive the companions force
    // makes its handshake happen.
    let rounds = run_with(
        3,
        &[0, 2],
        |_| vec![0, 1, 2],
        |w, round| {
            if round == 0 {
                w.keepalive = None;
            }
        },
    );
    assert!(rounds < 2 * 25, "{rounds} rounds");
}
