//! The handshake thread: handshake messages (initiations, responses,
//! cookie replies) wait in a bounded queue and are opened here, off the
//! data path, so that a flood of them costs at most this one thread and
//! never delays decryption. When the queue is full, new ones are dropped
//! and counted (`queue_full`): the peer retransmits.

use std::net::SocketAddr;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Instant;

use parking_lot::Mutex;
use wgcore::{Opened, SourceCache};

use super::device::Device;

/// Handshake messages waiting at most.
pub const QUEUE_LEN: usize = 4096;

/// A handshake message and where it came from.
type Item = (Vec<u8>, SocketAddr);

/// The bounded queue between the receive thread and the handshake thread.
pub struct Queue {
    tx: SyncSender<Item>,
    rx: Mutex<Option<Receiver<Item>>>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").finish_non_exhaustive()
    }
}

impl Queue {
    pub fn new() -> Self {
        let (tx, rx) = sync_channel(QUEUE_LEN);
        Self {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    /// Queue a handshake message; false when the queue is full.
    pub fn offer(&self, datagram: &[u8], from: SocketAddr) -> bool {
        match self.tx.try_send((datagram.to_vec(), from)) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

pub fn run(dev: &Device) {
    let Some(rx) = dev.handshakes.rx.lock().take() else {
        tracing::error!("handshake thread started twice");
        return;
    };
    let mut out = vec![0u8; 65_536];
    let mut cache = SourceCache::default();
    while let Ok((datagram, from)) = rx.recv() {
        // Handshake messages never carry a packet for the TUN.
        if let Opened::Packet(_) =
            dev.core
                .open(&datagram, from, &mut out, &mut cache, Instant::now())
        {
            tracing::debug!(%from, "handshake message yielded a packet; dropped");
        }
        dev.flush();
    }
}
