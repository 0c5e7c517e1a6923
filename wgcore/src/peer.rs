//! A peer and its links: one `Tunn` per (local key, remote key) pair in
//! use, the active one, the endpoint, AllowedIPs and counters. Shared by
//! the threads that drive the core, so everything is behind a lock or an
//! atomic; the decisions are in `select` and `state`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use boringtun::noise::Tunn;
use boringtun::x25519;
use ipnet::IpNet;
use keys::PublicKey;
use parking_lot::{Mutex, MutexGuard, RwLock};

use crate::clock::Clock;
use crate::select::{self, Candidate, RemoteRank};

/// At most one handshake initiation per link in this time (WireGuard's
/// REKEY_TIMEOUT), whatever the other side sends: a storm of initiations
/// between two peers is impossible by construction.
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// Packets held per link while a handshake is paced (beyond: oldest go).
pub const PENDING_MAX: usize = 128;

/// One (local key, remote key) pair with its own noise state.
pub(crate) struct Link {
    pub index: u32,
    /// Generation of the local key it uses (higher = newer).
    pub generation: u64,
    pub local: x25519::PublicKey,
    pub remote: PublicKey,
    tunn: Mutex<Tunn>,
    /// Clock time (ns) before which no initiation may go out; 0 = any time.
    next_init: AtomicU64,
    /// Packets waiting for a session while an initiation is paced.
    pub pending: Mutex<VecDeque<Vec<u8>>>,
    /// A timer's initiation waiting for its pacing and jitter: (due, bytes).
    deferred: Mutex<Option<(Duration, Vec<u8>)>>,
}

impl Link {
    pub fn new(
        index: u32,
        generation: u64,
        local: x25519::PublicKey,
        remote: PublicKey,
        tunn: Tunn,
    ) -> Self {
        Self {
            index,
            generation,
            local,
            remote,
            tunn: Mutex::new(tunn),
            next_init: AtomicU64::new(0),
            pending: Mutex::new(VecDeque::new()),
            deferred: Mutex::new(None),
        }
    }

    /// The link's noise state, with boringtun's clock set.
    pub fn tunn<'a>(&'a self, clock: &Clock) -> MutexGuard<'a, Tunn> {
        let g = self.tunn.lock();
        clock.enter();
        g
    }

    pub fn established(&self, clock: &Clock) -> bool {
        has_session(&self.tunn(clock))
    }

    /// Whether an initiation went out less than REKEY_TIMEOUT ago.
    pub fn init_paced(&self, now: Duration) -> bool {
        (now.as_nanos() as u64) < self.next_init.load(Ordering::Relaxed)
    }

    /// An initiation goes out at `now`: the next may follow REKEY_TIMEOUT
    /// later.
    pub fn init_sent(&self, now: Duration) {
        let next = now + REKEY_TIMEOUT;
        self.next_init
            .store(next.as_nanos() as u64, Ordering::Relaxed);
    }

    /// A retransmitted initiation from the timers: it goes out once the
    /// pacing allows, after a random jitter of up to a third of a second
    /// (WireGuard's REKEY_TIMEOUT + jitter), so that two peers whose
    /// initiations crossed do not cross again. A newer one replaces one
    /// still waiting (it is the one the noise state expects an answer to).
    pub fn defer_init(&self, init: &[u8], now: Duration) {
        let mut b = [0u8; 4];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
        let jitter = Duration::from_micros(u64::from(u32::from_le_bytes(b)) % 333_334);
        let earliest = Duration::from_nanos(self.next_init.load(Ordering::Relaxed)).max(now);
        *self.deferred.lock() = Some((earliest + jitter, init.to_vec()));
    }

    /// The deferred initiation, if it is due at `now`.
    pub fn due_init(&self, now: Duration) -> Option<Vec<u8>> {
        let mut d = self.deferred.lock();
        match &*d {
            Some((due, _)) if *due <= now => d.take().map(|(_, b)| b),
            _ => None,
        }
    }

    /// When the deferred initiation is due, if there is one.
    pub fn init_due_at(&self) -> Option<Duration> {
        self.deferred.lock().as_ref().map(|(due, _)| *due)
    }

    /// Hold `pkt` until a session exists; false when the oldest held
    /// packet had to go to make room.
    pub fn hold(&self, pkt: &[u8]) -> bool {
        let mut q = self.pending.lock();
        let overflow = q.len() >= PENDING_MAX;
        if overflow {
            q.pop_front();
        }
        q.push_back(pkt.to_vec());
        !overflow
    }
}

/// Whether `t` has a session to send on.
/// How far a handshake's recorded time may lag the initiation it
/// answered. boringtun stamps a completed handshake with its timer clock,
/// which moves only on each `update_timers` tick (250 ms), while an
/// initiation's time here is exact: an initiation sent between two ticks
/// and answered before the next one was recorded as answered *before* it
/// was sent, and the peer showed as unanswered until its next rekey. Seen
/// as false NO HANDSHAKE at 100 nodes, with every pair reachable.
pub(crate) const HANDSHAKE_CLOCK_SLACK: Duration = Duration::from_secs(1);

/// A session lives this long after its handshake (WireGuard's
/// REJECT_AFTER_TIME): while the newest handshake is younger, the pair has
/// a usable session, whatever became of this side's own initiations.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);

/// Whether a handshake completed at `newest` answers an initiation sent at
/// `since` (both clock time).
pub(crate) fn answers(newest: Duration, since: Duration) -> bool {
    newest + HANDSHAKE_CLOCK_SLACK >= since
}

pub(crate) fn has_session(t: &Tunn) -> bool {
    t.time_since_last_handshake().is_some()
}

pub(crate) struct Peer {
    /// The key peers are configured by (UAPI `public_key`).
    pub public_key: RwLock<PublicKey>,
    /// A second key the peer may use: its announced next key.
    pub next_key: RwLock<Option<PublicKey>>,
    pub links: RwLock<Vec<Arc<Link>>>,
    /// The link outbound packets use.
    pub active: RwLock<Arc<Link>>,
    pub endpoint: RwLock<Option<SocketAddr>>,
    pub allowed_ips: RwLock<Vec<IpNet>>,
    pub keepalive: u16,
    /// Handshake initiations sent, retransmits included.
    initiations: AtomicU64,
    /// The peer's initiations this device answered.
    answered: AtomicU64,
    /// Clock time (ns) of the first initiation not followed by a completed
    /// handshake on any link; 0 = none outstanding.
    unanswered_since: AtomicU64,
    rx_bytes: AtomicU64,
    tx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    tx_packets: AtomicU64,
}

impl Peer {
    pub fn new(
        pk: PublicKey,
        link: Arc<Link>,
        keepalive: u16,
        endpoint: Option<SocketAddr>,
    ) -> Self {
        Self {
            public_key: RwLock::new(pk),
            next_key: RwLock::new(None),
            links: RwLock::new(vec![link.clone()]),
            active: RwLock::new(link),
            endpoint: RwLock::new(endpoint),
            allowed_ips: RwLock::new(Vec::new()),
            keepalive,
            initiations: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            unanswered_since: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            rx_packets: AtomicU64::new(0),
            tx_packets: AtomicU64::new(0),
        }
    }

    pub fn sent(&self, bytes: usize) {
        self.sent_n(bytes, 1);
    }

    /// `packets` datagrams of `bytes` bytes in all went out.
    pub fn sent_n(&self, bytes: usize, packets: u64) {
        self.tx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.tx_packets.fetch_add(packets, Ordering::Relaxed);
    }

    /// An initiation goes out on `link` at `now`: paced from here, counted,
    /// and, if none was outstanding, the start of an unanswered stretch.
    pub fn init_sent(&self, link: &Link, now: Duration) {
        link.init_sent(now);
        self.initiations.fetch_add(1, Ordering::Relaxed);
        let _ = self.unanswered_since.compare_exchange(
            0,
            now.as_nanos() as u64,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// This device answered one of the peer's initiations.
    pub fn answered(&self) {
        self.answered.fetch_add(1, Ordering::Relaxed);
    }

    /// (initiations sent, initiations answered).
    pub fn handshake_counts(&self) -> (u64, u64) {
        (
            self.initiations.load(Ordering::Relaxed),
            self.answered.load(Ordering::Relaxed),
        )
    }

    /// The newest handshake on any link completed at `newest` (clock
    /// time): an unanswered stretch that began no later ends.
    pub fn handshake_seen(&self, newest: Duration) {
        let since = self.unanswered_since.load(Ordering::Relaxed);
        if since != 0 && answers(newest, Duration::from_nanos(since)) {
            let _ = self.unanswered_since.compare_exchange(
                since,
                0,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// How long initiations have gone unanswered at `now`, given the
    /// newest completed handshake (`None`: none outstanding, or the pair
    /// still has a usable session). An initiation of this side can go
    /// unanswered while the pair is fine: it crossed the peer's, which
    /// this side answered just before (one session, the peer's), or the
    /// peer was under load; counting those made a 100-node lab report
    /// NO HANDSHAKE for pairs that were all reachable.
    pub fn unanswered_for(&self, now: Duration, newest: Option<Duration>) -> Option<Duration> {
        let since = Duration::from_nanos(self.unanswered_since.load(Ordering::Relaxed));
        if since.is_zero()
            || newest
                .is_some_and(|h| answers(h, since) || now.saturating_sub(h) < REJECT_AFTER_TIME)
        {
            return None;
        }
        Some(now.saturating_sub(since))
    }

    pub fn received(&self, bytes: usize) {
        self.received_n(bytes, 1);
    }

    /// `packets` authenticated datagrams of `bytes` bytes in all came in.
    pub fn received_n(&self, bytes: usize, packets: u64) {
        self.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.rx_packets.fetch_add(packets, Ordering::Relaxed);
    }

    /// (rx bytes, tx bytes, rx packets, tx packets).
    pub fn counters(&self) -> (u64, u64, u64, u64) {
        (
            self.rx_bytes.load(Ordering::Relaxed),
            self.tx_bytes.load(Ordering::Relaxed),
            self.rx_packets.load(Ordering::Relaxed),
            self.tx_packets.load(Ordering::Relaxed),
        )
    }

    pub fn key(&self) -> PublicKey {
        *self.public_key.read()
    }

    pub fn remote_rank(&self, k: &PublicKey) -> RemoteRank {
        select::remote_rank(k, &self.public_key.read(), self.next_key.read().as_ref())
    }

    /// Make the best established link the active one (see `select`).
    pub fn reselect(&self, clock: &Clock) {
        let links = self.links.read();
        let cands: Vec<Candidate> = links
            .iter()
            .map(|l| Candidate {
                generation: l.generation,
                rank: self.remote_rank(&l.remote),
                established: l.established(clock),
            })
            .collect();
        if let Some(i) = select::best(&cands) {
            let mut active = self.active.write();
            if !Arc::ptr_eq(&active, &links[i]) {
                *active = links[i].clone();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::answers;
    use std::time::Duration;

    #[test]
    fn a_handshake_stamped_on_the_tick_before_still_answers() {
        let ms = Duration::from_millis;
        // Initiation at 10.1 s, answered at 10.12 s, stamped 10.0 s.
        assert!(answers(ms(10_000), ms(10_100)));
        assert!(answers(ms(10_300), ms(10_100)));
        // A handshake long before the initiation does not.
        assert!(!answers(ms(5_000), ms(10_100)));
    }
}
