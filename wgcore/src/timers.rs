//! Time passing: once a second the handshake load counters start over
//! (without that a device is "under load" forever after its first hundred
//! handshakes and answers every initiation with a cookie); each link's
//! WireGuard timers (retransmits, rekeys, keepalives, expiry); and links
//! in a key change are brought in line.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use boringtun::noise::TunnResult;

use crate::Core;
use crate::peer::{Link, Peer, has_session};

/// How often a driver should call [`Core::handle_timeout`].
pub const TICK: Duration = Duration::from_millis(250);
/// The load counters' period.
const LOAD_PERIOD: Duration = Duration::from_secs(1);

impl Core {
    /// When the core next wants `handle_timeout`, from `now`: a tick
    /// later, or sooner when a deferred initiation is due.
    pub fn poll_timeout(&self, now: Instant) -> Instant {
        let current = self.clock.advance(now);
        let due = {
            let st = self.state.read();
            st.peers
                .values()
                .flat_map(|p| {
                    p.links
                        .read()
                        .iter()
                        .filter_map(|l| l.init_due_at())
                        .collect::<Vec<_>>()
                })
                .min()
        };
        match due {
            Some(d) => now + d.saturating_sub(current).min(TICK),
            None => now + TICK,
        }
    }

    /// Run what is due at `now`; datagrams to send are queued as
    /// transmits.
    pub fn handle_timeout(&self, now: Instant) {
        let now = self.clock.advance(now);
        {
            let mut last = self.last_reset.lock();
            if now.saturating_sub(*last) >= LOAD_PERIOD {
                *last = now;
                self.handshakes.store(0, Ordering::Relaxed);
                for k in &self.state.read().keys {
                    self.clock.enter();
                    k.screen.reset_count();
                    k.tunn_limiter.reset_count();
                }
            }
        }
        let peers: Vec<Arc<Peer>> = self.state.read().peers.values().cloned().collect();
        let mut dst = vec![0u8; 65_536 + crate::SEAL_OVERHEAD];
        for peer in peers {
            let links: Vec<Arc<Link>> = peer.links.read().clone();
            let mut newest: Option<Duration> = None;
            for link in &links {
                let mut t = link.tunn(&self.clock);
                if let Some(age) = t.time_since_last_handshake() {
                    let at = now.saturating_sub(age);
                    newest = Some(newest.map_or(at, |n| n.max(at)));
                }
                if let TunnResult::WriteToNetwork(b) = t.update_timers(&mut dst) {
                    if b.first() == Some(&1) {
                        link.defer_init(b, now);
                    } else if let Some(ep) = *peer.endpoint.read() {
                        peer.sent(b.len());
                        self.queue(ep, b);
                    }
                }
                // Packets the Tunn queued before it had a session (a
                // responder's session starts with the peer's first data).
                if has_session(&t) {
                    while let TunnResult::WriteToNetwork(b) = t.decapsulate(None, &[], &mut dst) {
                        if let Some(ep) = *peer.endpoint.read() {
                            peer.sent(b.len());
                            self.queue(ep, b);
                        }
                    }
                }
                drop(t);
                if let Some(init) = link.due_init(now)
                    && let Some(ep) = *peer.endpoint.read()
                {
                    peer.init_sent(link, now);
                    peer.sent(init.len());
                    self.queue(ep, &init);
                }
                self.flush_pending(&peer, link);
            }
            if let Some(n) = newest {
                peer.handshake_seen(n);
            }
            peer.reselect(&self.clock);
            // Only a peer in the middle of a key change has more than one
            // link; the others need no work here.
            if links.len() > 1 {
                let kick = self.state.write().sync_links(&peer, &self.clock);
                self.kick(&peer, &kick);
            }
        }
    }
}
