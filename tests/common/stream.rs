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
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut got = BTreeSet::new();
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
                    got.insert(u64::from_be_bytes(buf[..8].try_into().unwrap()));
                }
                _ => {}
            }
            if rx_stop.load(Ordering::Relaxed) {
                let t = *idle_since_stop.get_or_insert_with(Instant::now);
                if t.elapsed() > Duration::from_secs(1) {
                    return (got, gap);
                }
            }
        }
    });
    ready_rx.recv().unwrap();
    std::thread::spawn(move || {
        enter_netns(&from_ns);
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        let mut seq = 0u64;
        let start = Instant::now();
        let mut payload = vec![0u8; 200];
        payload[8..8 + MARKER.len()].copy_from_slice(MARKER);
        while !stop.load(Ordering::Relaxed) {
            payload[..8].copy_from_slice(&seq.to_be_bytes());
            s.send_to(&payload, dst).unwrap();
            seq += 1;
            // Paced on the clock: 1 packet per millisecond on average.
            let due = start + Duration::from_millis(seq);
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
        let (received, longest_gap) = receiver.join().unwrap();
        UdpResult {
            sent: seq,
            received,
            longest_gap,
        }
    })
}
