//! Paced test traffic between pods: a 1000 packets/s UDP stream with
//! sequence numbers (loss and the longest gap), carrying a plaintext marker
//! the underlay captures look for.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::enter_netns;

/// The marker every stream packet carries after its sequence number.
pub const MARKER: &[u8] = b"PGROTATE-PLAINTEXT-MARKER";

/// What a UDP receiver saw.
pub struct UdpResult {
    pub sent: u64,
    pub received: BTreeSet<u64>,
    pub longest_gap: Duration,
    /// When the receiver got the packets it got (sequence number, wall
    /// clock), to place a loss in time.
    pub arrivals: Vec<(u64, std::time::SystemTime)>,
}

/// A 1000 packets/s UDP stream from `from` to `to` until `stop`.
pub fn udp(
    from_ns: &str,
    to_ns: &str,
    to_ip: &str,
    port: u16,
    stop: Arc<AtomicBool>,
) -> JoinHandle<UdpResult> {
    let (from_ns, to_ns) = (from_ns.to_string(), to_ns.to_string());
    let dst: SocketAddr = format!("{to_ip}:{port}").parse().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let rx_stop = stop.clone();
    let receiver = std::thread::spawn(move || {
        enter_netns(&to_ns);
        let s = UdpSocket::bind(("0.0.0.0", port)).unwrap();
        // 4 MiB, past rmem_max (root): a receiver held up for a moment (an
        // emulated machine) must not drop what the tunnel delivered.
        let _ =
            nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::RcvBufForce, &(4 << 20));
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut got = BTreeSet::new();
        let mut arrivals = Vec::new();
        let mut last: Option<Instant> = None;
        let mut gap = Duration::ZERO;
        let mut buf = [0u8; 2048];
        let mut idle_since_stop = None;
        loop {
            match s.recv(&mut buf) {
                Ok(n) if n >= 8 => {
                    let now = Instant::now();
                    if let Some(l) = last {
                        gap = gap.max(now - l);
                    }
                    last = Some(now);
                    let seq = u64::from_be_bytes(buf[..8].try_into().unwrap());
                    got.insert(seq);
                    arrivals.push((seq, std::time::SystemTime::now()));
                }
                _ => {}
            }
            if rx_stop.load(Ordering::Relaxed) {
                let t = *idle_since_stop.get_or_insert_with(Instant::now);
                if t.elapsed() > Duration::from_secs(1) {
                    return (got, gap, arrivals);
                }
            }
        }
    });
    ready_rx.recv().unwrap();
    std::thread::spawn(move || {
        enter_netns(&from_ns);
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        let mut seq = 0u64;
        let mut start = Instant::now();
        let mut payload = vec![0u8; 200];
        payload[8..8 + MARKER.len()].copy_from_slice(MARKER);
        while !stop.load(Ordering::Relaxed) {
            payload[..8].copy_from_slice(&seq.to_be_bytes());
            s.send_to(&payload, dst).unwrap();
            seq += 1;
            // Paced on the clock: 1 packet per millisecond on average. A
            // sender that was held up (a loaded or emulated machine) does
            // not catch up in a burst, which would overflow socket buffers
            // and count as loss what is only this sender's stall.
            let due = start + Duration::from_millis(seq);
            let now = Instant::now();
            match due.checked_duration_since(now) {
                Some(d) => std::thread::sleep(d),
                None if now - due > Duration::from_millis(20) => {
                    start = now - Duration::from_millis(seq);
                }
                None => {}
            }
        }
        let (received, longest_gap, arrivals) = receiver.join().unwrap();
        UdpResult {
            sent: seq,
            received,
            longest_gap,
            arrivals,
        }
    })
}

impl UdpResult {
    /// Lost packets as runs `(first sequence number, length)`, longest
    /// first. The stream is paced at 1 packet per ms, so a sequence number
    /// is about the milliseconds since the stream started.
    pub fn loss_runs(&self) -> Vec<(u64, u64)> {
        let mut runs = Vec::new();
        let mut start = None;
        for seq in 0..self.sent {
            match (self.received.contains(&seq), start) {
                (false, None) => start = Some(seq),
                (true, Some(s)) => {
                    runs.push((s, seq - s));
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            runs.push((s, self.sent - s));
        }
        runs.sort_by_key(|r| std::cmp::Reverse(r.1));
        runs
    }

    /// When the packet before sequence number `seq` arrived (to place a
    /// loss run in time).
    pub fn arrived_before(&self, seq: u64) -> Option<std::time::SystemTime> {
        self.arrivals
            .iter()
            .rev()
            .find(|(s, _)| *s < seq)
            .map(|(_, t)| *t)
    }

    /// The receiver's drops for a full socket buffer (`RcvbufErrors` of
    /// `/proc/net/snmp` in the namespace `ns`): loss that is the receiving
    /// process's, not the network's.
    pub fn rcvbuf_errors(ns: &str) -> u64 {
        super::net_counter(ns, "/proc/net/snmp", "Udp", "RcvbufErrors").unwrap_or(0)
    }

    /// Packets lost from the first one that arrived on (the ones before it
    /// were lost to a path still coming up, not to what the test does).
    pub fn lost_since_first(&self) -> u64 {
        let first = self.received.first().copied().unwrap_or(self.sent);
        (self.sent - first) - self.received.len() as u64
    }

    /// Packets lost among sequence numbers `range`.
    pub fn lost_in(&self, range: std::ops::Range<u64>) -> u64 {
        let end = range.end.min(self.sent);
        let start = range.start.min(end);
        (end - start) - self.received.range(start..end).count() as u64
    }
}
