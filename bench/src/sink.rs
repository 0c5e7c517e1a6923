//! The flood bench's control: a socket on node B that reads datagrams and
//! throws them away, batched with `recvmmsg` as the tunnels read theirs.
//! Aimed at it, the attacker's flood costs the machine what it costs any
//! receiver (the attacker's own sending, the kernel's delivery through veth
//! and bridge, one batched read) and nothing more; the stream's throughput
//! then is the most a contender on the same node could keep under the same
//! flood, which makes "kept of clean" on this shared 2-core machine
//! comparable with what the machine allows.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use podguard::wireguard::batch::{RecvBatch, recv_batch};

/// A discarding reader running on its own thread in a node's namespace.
/// Dropped without [`Sink::stop`] (an error on the way), its thread still
/// ends.
#[derive(Debug)]
pub struct Sink {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<u64>>>,
    started: Instant,
}

impl Sink {
    /// Bind `addr` inside `ns` and read until stopped. Returns once the
    /// socket is bound, so a flood started after it finds a reader.
    pub fn start(ns: &str, addr: SocketAddr) -> anyhow::Result<Sink> {
        Sink::on(podguard::sys::in_netns(ns, move || UdpSocket::bind(addr))??)
    }

    /// Read from `sock` until stopped.
    pub fn on(sock: UdpSocket) -> anyhow::Result<Sink> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let thread = std::thread::spawn(move || -> anyhow::Result<u64> {
            let mut rb = RecvBatch::new(64, 2048);
            let mut got = Vec::new();
            let mut total = 0u64;
            // After the stop flag, what is still queued is read too (the
            // first empty read ends it).
            let mut stopping = false;
            loop {
                match recv_batch(&sock, &mut rb, &mut got) {
                    Ok(n) => total += n as u64,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        if stopping {
                            return Ok(total);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
                if !stopping && flag.load(Ordering::Relaxed) {
                    stopping = true;
                    sock.set_nonblocking(true)?;
                }
            }
        });
        Ok(Sink {
            stop,
            thread: Some(thread),
            started: Instant::now(),
        })
    }

    /// Stop; returns how many datagrams it read, and in how long.
    pub fn stop(mut self) -> anyhow::Result<(u64, Duration)> {
        self.stop.store(true, Ordering::Relaxed);
        let took = self.started.elapsed();
        let read = self
            .thread
            .take()
            .map_or(Ok(Ok(0)), |t| t.join())
            .map_err(|_| anyhow::anyhow!("the sink thread panicked"))??;
        Ok((read, took))
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the host's loopback (no namespace needed): every datagram sent
    /// to the sink is read and counted, those still queued when it is
    /// stopped included, and stopping it ends its thread.
    #[test]
    fn the_sink_reads_and_counts_what_arrives() {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = sock.local_addr().expect("addr");
        let sink = Sink::on(sock).expect("sink");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        for i in 0..100u8 {
            tx.send_to(&[i; 148], to).expect("send");
        }
        assert_eq!(sink.stop().expect("stop").0, 100);
    }
}
