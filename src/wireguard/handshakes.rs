//! The handshake thread: handshake messages (initiations, responses,
//! cookie replies) wait in a bounded queue and are opened here, off the
//! data path, so that a flood of them costs at most this one thread and
//! never delays decryption. When the queue is full, new ones are dropped
//! and counted (`queue_full`): the peer retransmits.
//!
//! The receive thread hands over all the handshake messages of one
//! receive batch at once (one wake-up per batch, not per datagram: under a
//! flood of 100k datagrams a second a wake-up each cost the data path more
//! than the messages themselves), and this thread sends what they caused
//! (responses, cookie replies) once per batch.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Instant;

use parking_lot::Mutex;
use wgcore::{Opened, SourceCache};

use super::device::Device;

/// Handshake messages waiting at most.
pub const QUEUE_LEN: usize = 4096;

/// Handshake messages of one receive batch, back to back, with where each
/// came from.
#[derive(Debug, Default)]
pub struct Batch {
    bytes: Vec<u8>,
    items: Vec<(usize, usize, SocketAddr)>,
}

impl Batch {
    /// The messages, in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> {
        self.items
            .iter()
            .map(|&(at, len, from)| (&self.bytes[at..at + len], from))
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// None.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// The bounded queue between the receive thread and the handshake thread
/// (bounded in messages, whatever the batches).
pub struct Queue {
    tx: SyncSender<Batch>,
    rx: Mutex<Option<Receiver<Batch>>>,
    queued: AtomicUsize,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("queued", &self.queued.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Queue {
    pub fn new() -> Self {
        // Every batch holds at least one message: QUEUE_LEN batches always fit.
        let (tx, rx) = sync_channel(QUEUE_LEN);
        Self {
            tx,
            rx: Mutex::new(Some(rx)),
            queued: AtomicUsize::new(0),
        }
    }

    /// Add a handshake message to `batch` if the queue has room for it;
    /// false when it is full (the message is dropped).
    pub fn offer(&self, batch: &mut Batch, datagram: &[u8], from: SocketAddr) -> bool {
        let taken = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q < QUEUE_LEN).then_some(q + 1)
            });
        if taken.is_err() {
            return false;
        }
        batch.items.push((batch.bytes.len(), datagram.len(), from));
        batch.bytes.extend_from_slice(datagram);
        true
    }

    /// Hand `batch` to the handshake thread (one wake-up); it is left empty.
    pub fn send(&self, batch: &mut Batch) {
        if batch.is_empty() {
            return;
        }
        let b = std::mem::take(batch);
        let n = b.len();
        if self.tx.try_send(b).is_err() {
            // Only when the thread is gone: give the room back.
            self.queued.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// The next batch (blocking), and room for its messages given back.
    fn take(&self, rx: &Receiver<Batch>) -> Option<Batch> {
        let b = rx.recv().ok()?;
        self.queued.fetch_sub(b.len(), Ordering::AcqRel);
        Some(b)
    }
}

pub fn run(dev: &Device) {
    let Some(rx) = dev.handshakes.rx.lock().take() else {
        tracing::error!("handshake thread started twice");
        return;
    };
    let mut out = vec![0u8; 65_536];
    let mut cache = SourceCache::default();
    while let Some(batch) = dev.handshakes.take(&rx) {
        for (datagram, from) in batch.iter() {
            // Handshake messages never carry a packet for the TUN.
            if let Opened::Packet(_) =
                dev.core
                    .open(datagram, from, &mut out, &mut cache, Instant::now())
            {
                tracing::debug!(%from, "handshake message yielded a packet; dropped");
            }
        }
        dev.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_arrives_whole_in_order_and_the_queue_stays_bounded() {
        let q = Queue::new();
        let rx = q.rx.lock().take().expect("receiver");
        let from: SocketAddr = "192.0.2.66:4000".parse().expect("address");
        let mut b = Batch::default();
        for i in 0..QUEUE_LEN {
            assert!(q.offer(&mut b, &[1, i as u8, 0], from), "message {i}");
        }
        // Full: the next one is refused, batched or not.
        assert!(!q.offer(&mut b, &[1, 9, 9], from));
        q.send(&mut b);
        assert!(b.is_empty());
        let mut other = Batch::default();
        assert!(!q.offer(&mut other, &[1], from));
        let got = q.take(&rx).expect("a batch");
        assert_eq!(got.len(), QUEUE_LEN);
        for (i, (d, f)) in got.iter().enumerate() {
            assert_eq!(d, &[1, i as u8, 0][..]);
            assert_eq!(f, from);
        }
        // Taken: there is room again.
        assert!(q.offer(&mut other, &[2, 0], from));
    }
}
