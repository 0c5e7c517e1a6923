//! The attacker on the underlay, for the throughput-under-attack bench: a
//! namespace on the bench's underlay bridge that sends handshake
//! initiations' shapes to a node's WireGuard port at a fixed rate while
//! iperf3 runs. Two kinds, both of which anyone on the underlay can send
//! with nothing but the node's public key:
//!
//! - `random`: 148-byte type-1 datagrams of random bytes (mac1 fails; a
//!   correct implementation drops them after one BLAKE2s);
//! - `mac1`: the same with a *valid* mac1 for the target's public key, so
//!   each one passes the cheap check and, unless the target is "under
//!   load" and demands a cookie, costs it an X25519 before the encrypted
//!   static key fails to open.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use blake2::digest::{Digest, Mac};

/// Size of a handshake initiation.
pub const INITIATION_LEN: usize = 148;
/// Where mac1 starts (it covers the bytes before it).
const MAC1_AT: usize = 116;
/// Distinct datagrams the attacker cycles through.
const POOL: usize = 4096;
/// The attacker's underlay address.
pub const ATTACKER_IP: &str = "192.0.2.66";

/// What the attacker sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Random type-1 datagrams (invalid mac1).
    Random,
    /// Type-1 datagrams with a valid mac1 for the target's key.
    Mac1([u8; 32]),
}

impl Kind {
    /// Label in the report.
    pub fn label(self) -> &'static str {
        match self {
            Self::Random => "random type-1",
            Self::Mac1(_) => "valid-mac1 type-1",
        }
    }
}

/// xorshift64: random-looking bytes without a dependency.
fn noise(seed: u64, out: &mut [u8]) {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for b in out {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

/// The `i`th datagram of a flood of `kind`.
pub fn datagram(kind: Kind, i: u64) -> [u8; INITIATION_LEN] {
    let mut m = [0u8; INITIATION_LEN];
    noise(i + 1, &mut m);
    m[..4].copy_from_slice(&1u32.to_le_bytes());
    if let Kind::Mac1(responder) = kind {
        // WireGuard: mac1 = MAC(HASH("mac1----" || S_pub_responder), msg[..116]),
        // MAC being keyed BLAKE2s with a 16-byte output; mac2 stays zero
        // (no cookie).
        let key = blake2::Blake2s256::new()
            .chain_update(b"mac1----")
            .chain_update(responder)
            .finalize();
        let mut mac = blake2::Blake2sMac::<blake2::digest::consts::U16>::new_from_slice(&key)
            .unwrap_or_else(|_| unreachable!("a 32-byte key fits BLAKE2s"));
        mac.update(&m[..MAC1_AT]);
        m[MAC1_AT..MAC1_AT + 16].copy_from_slice(&mac.finalize().into_bytes());
        m[MAC1_AT + 16..].fill(0);
    }
    m
}

/// A flood running on its own thread inside the attacker's namespace.
#[derive(Debug)]
pub struct Flood {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<anyhow::Result<(u64, Duration, f64)>>,
}

/// What a flood did.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    /// Datagrams per second.
    pub rate: f64,
    /// CPU the attacker's thread used, in cores (its share of the
    /// machine, which the contender did not get).
    pub attacker_cores: f64,
}

/// CPU seconds of the calling thread so far.
fn thread_cpu_seconds() -> f64 {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|s| crate::parse::proc_cpu_seconds(&s, ticks))
        .unwrap_or(0.0)
}

impl Flood {
    /// Start sending `kind` from `ns` (which holds [`ATTACKER_IP`]) to
    /// `target` at `rate` datagrams per second.
    pub fn start(ns: &str, target: SocketAddr, kind: Kind, rate: u64) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let ns = ns.to_string();
        let pool: Vec<[u8; INITIATION_LEN]> = (0..POOL as u64).map(|i| datagram(kind, i)).collect();
        let thread = std::thread::spawn(move || {
            podguard::sys::in_netns(&ns, move || -> anyhow::Result<(u64, Duration, f64)> {
                let s = UdpSocket::bind((ATTACKER_IP, 0))?;
                let cpu0 = thread_cpu_seconds();
                let start = Instant::now();
                let (mut sent, mut tried) = (0u64, 0u64);
                while !flag.load(Ordering::Relaxed) {
                    let due = start.elapsed().as_micros() as u64 * rate / 1_000_000;
                    while tried < due {
                        // A full socket buffer is the attacker's problem:
                        // only what left counts.
                        if s.send_to(&pool[tried as usize % POOL], target).is_ok() {
                            sent += 1;
                        }
                        tried += 1;
                    }
                    std::thread::sleep(Duration::from_micros(500));
                }
                Ok((sent, start.elapsed(), thread_cpu_seconds() - cpu0))
            })?
        });
        Flood { stop, thread }
    }

    /// Stop; returns what was sent.
    pub fn stop(self) -> anyhow::Result<Sent> {
        self.stop.store(true, Ordering::Relaxed);
        let (sent, took, cpu) = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("the flood thread panicked"))??;
        let secs = took.as_secs_f64().max(1e-9);
        Ok(Sent {
            rate: sent as f64 / secs,
            attacker_cores: cpu / secs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use boringtun::noise::rate_limiter::RateLimiter;
    use boringtun::x25519;

    fn responder() -> (x25519::PublicKey, [u8; 32]) {
        let secret = x25519::StaticSecret::from([7u8; 32]);
        let public = x25519::PublicKey::from(&secret);
        (public, public.to_bytes())
    }

    /// boringtun's own mac1 check (the one podguard's device runs first)
    /// accepts the mac1 flood and rejects the random one: the bench's two
    /// floods are what they say.
    #[test]
    fn mac1_flood_passes_a_real_mac1_check_and_random_does_not() {
        let (public, bytes) = responder();
        let limiter = RateLimiter::new(&public, 1_000_000);
        let src = "192.0.2.66".parse().unwrap_or_else(|_| unreachable!());
        let mut dst = [0u8; 256];
        for i in [0, 1, 4095] {
            let good = datagram(Kind::Mac1(bytes), i);
            assert!(
                limiter.verify_packet(Some(src), &good, &mut dst).is_ok(),
                "valid mac1 #{i} rejected"
            );
            let bad = datagram(Kind::Random, i);
            assert!(
                limiter.verify_packet(Some(src), &bad, &mut dst).is_err(),
                "random #{i} accepted"
            );
            assert_eq!(&good[..4], &[1, 0, 0, 0]);
            assert_eq!(&bad[..4], &[1, 0, 0, 0]);
        }
        assert_ne!(
            datagram(Kind::Mac1(bytes), 1),
            datagram(Kind::Mac1(bytes), 2)
        );
    }
}
