//! podguard's WireGuard core, sans IO: it does no IO, starts no thread and
//! reads no clock. Drivers hand it packets from the TUN, datagrams from
//! the UDP socket and the current time; it hands back what to write where
//! (data in the caller's buffers, control messages as [`Transmit`]s).
//!
//! On boringtun's `noise::Tunn` it keeps peers and sessions, key rotation
//! with two local × two remote keys (`select`), cryptokey routing both
//! ways (`outbound`, `inbound`), the handshake path in WireGuard's order
//! (mac1 before any DH, cookies only under load, a per-source limit under
//! load, the endpoint roams only on authenticated packets, initiations
//! paced at REKEY_TIMEOUT per link), timers on `handle_timeout(now)`,
//! the UDP GSO batch assembly as a value (`gso`), and each UDP receive
//! batch opened whole and planned into TUN writes (`receive`, `gro`).
//! The same core runs in the agent's device and, on simulated time, in
//! the tests' in-memory pair.
//!
//! The core is `Sync`: several driver threads may use one core at once
//! (one per direction, one for handshakes). Batches (`seal_batch`,
//! `seal_batch_in_place`, `open_batch`, `open_batch_in_place`) split
//! their crypto into independent jobs for the driver's [`Workers`], on as
//! many cores as it has, one peer's packets kept in order.

mod clock;
mod config;
pub mod gro;
pub mod gso;
mod inbound;
mod open_batch;
mod outbound;
mod peer;
mod ratelimit;
mod receive;
mod seal_batch;
mod seal_slots;
pub mod select;
mod state;
mod status;
mod timers;
pub mod uapi;
mod workers;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

pub use inbound::{Opened, SourceCache, handshake_size_ok, is_handshake};
pub use open_batch::DATA_HEADER;
pub use outbound::{Route, Sealed, dst_address};
pub use peer::{PENDING_MAX, REKEY_TIMEOUT};
pub use receive::{RxBatch, Slot};
pub use seal_batch::batch_buffer_len;
pub use seal_slots::{SLOT_HEADROOM, SlotRun, slot_len};
pub use state::HANDSHAKE_RATE_LIMIT;
pub use timers::TICK;
pub use workers::{Inline, Workers};

use clock::Clock;
use ratelimit::SourceLimiter;
use state::State;

/// Buffer room `seal` needs beyond the packet (WireGuard's overhead, and a
/// handshake initiation may be written instead of a short packet).
pub const SEAL_OVERHEAD: usize = 64;
/// Smallest output buffer `seal` accepts.
pub const SEAL_MIN: usize = 256;
/// Smallest opened packet that is one: an IPv4 header.
const IPV4_MIN: usize = 20;
/// Smallest opened packet that is one: an IPv6 header.
const IPV6_MIN: usize = 40;

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub to: SocketAddr,
    /// The datagram.
    pub bytes: Vec<u8>,
}

/// Packets the core refused, by reason.
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
    /// Handshake messages answered with a cookie reply, not processed
    /// (under load, without a valid mac2).
    pub under_load: AtomicU64,
    /// Handshake messages over the per-source limit while under load.
    pub source_limited: AtomicU64,
    /// Handshake messages the driver had no room to queue.
    pub queue_full: AtomicU64,
    /// Packets held for a paced handshake that had to make room.
    pub pending_overflow: AtomicU64,
}

impl DropCounters {
    /// Every counter with its name, for metrics.
    pub fn snapshot(&self) -> [(&'static str, u64); 8] {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("no_peer", l(&self.no_peer)),
            ("no_endpoint", l(&self.no_endpoint)),
            ("bad_source", l(&self.bad_source)),
            ("invalid", l(&self.invalid)),
            ("under_load", l(&self.under_load)),
            ("source_limited", l(&self.source_limited)),
            ("queue_full", l(&self.queue_full)),
            ("pending_overflow", l(&self.pending_overflow)),
        ]
    }

    /// A handshake message the driver had no room to queue.
    pub fn count_queue_full(&self) {
        Self::count(&self.queue_full);
    }

    /// A datagram the driver refused before the core saw it (a handshake
    /// message of the wrong size).
    pub fn count_invalid(&self) {
        Self::count(&self.invalid);
    }

    pub(crate) fn count(a: &AtomicU64) -> u64 {
        a.fetch_add(1, Ordering::Relaxed)
    }
}

/// The WireGuard core of one device.
pub struct Core {
    clock: Clock,
    state: RwLock<State>,
    transmits: Mutex<VecDeque<Transmit>>,
    /// Clock time of the last rate-limiter reset.
    last_reset: Mutex<Duration>,
    sources: Mutex<SourceLimiter>,
    /// Handshake messages screened since the last reset (the load).
    handshakes: AtomicU64,
    /// Handshake initiations read: past the cheap checks (mac1, the load
    /// and the source's limit), each cost the handshake's X25519 work
    /// (two computations or more).
    initiations_read: AtomicU64,
    /// What was dropped and why.
    pub drops: DropCounters,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.state.read();
        f.debug_struct("Core")
            .field("listen_port", &st.listen_port)
            .field("keys", &st.keys.len())
            .field("peers", &st.peers.len())
            .finish_non_exhaustive()
    }
}

impl Core {
    /// An empty core (no key, no peers) created at `now`.
    pub fn new(listen_port: u16, now: Instant) -> Self {
        let mut b = [0u8; 4];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
        Self {
            clock: Clock::new(now),
            state: RwLock::new(State::new(listen_port, u32::from_le_bytes(b))),
            transmits: Mutex::new(VecDeque::new()),
            last_reset: Mutex::new(Duration::ZERO),
            sources: Mutex::new(SourceLimiter::default()),
            handshakes: AtomicU64::new(0),
            initiations_read: AtomicU64::new(0),
            drops: DropCounters::default(),
        }
    }

    /// Handshake initiations read so far: each passed mac1 (and, under
    /// load, mac2 and its source's limit) before any X25519 computation.
    /// What a flood of initiations costs is this count, not the flood's.
    pub fn initiations_read(&self) -> u64 {
        self.initiations_read.load(Ordering::Relaxed)
    }

    /// The next control datagram to send, if any.
    pub fn poll_transmit(&self) -> Option<Transmit> {
        self.transmits.lock().pop_front()
    }

    /// Move every pending control datagram into `out`.
    pub fn drain_transmits(&self, out: &mut Vec<Transmit>) {
        out.extend(self.transmits.lock().drain(..));
    }

    fn queue(&self, to: SocketAddr, bytes: &[u8]) {
        self.transmits.lock().push_back(Transmit {
            to,
            bytes: bytes.to_vec(),
        });
    }

    /// Listen port.
    pub fn listen_port(&self) -> u16 {
        self.state.read().listen_port
    }
}
