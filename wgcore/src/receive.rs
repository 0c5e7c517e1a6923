//! One UDP receive batch, from the kernel's buffers to the TUN writes that
//! carry it: the step between the driver's `recvmmsg` and its `writev`s.
//!
//! Why it lives here and not in the driver: which packets share a TUN
//! write decides how many ACKs the receiving pod's TCP sends back through
//! both tunnels, and that is throughput (bench/README.md, "Session 16").
//! The driver once opened and planned each batch in slices of 128
//! datagrams; a slice boundary fell inside every third super-packet of a
//! single stream and split it into two writes. Here the whole batch is
//! opened and planned at once, and the tests hold that without a socket.
//!
//! Two steps, so the driver can queue handshakes before the data's crypto
//! starts: [`Core::split_received`] cuts each receive slot (with UDP GRO,
//! several datagrams of one sender back to back, each `seg` bytes but the
//! last) into datagrams and sorts them into handshake messages and the
//! rest; [`RxBatch::open`] opens the rest in place and plans the writes
//! (`gro::plan`) over every packet that opened, in arrival order.

use std::net::SocketAddr;
use std::time::Instant;

use crate::Core;
use crate::gro::{self, Write};
use crate::inbound::{Opened, SourceCache, handshake_size_ok, is_handshake};
use crate::open_batch::DATA_HEADER;
use crate::workers::Workers;

/// One receive slot as the kernel filled it.
#[derive(Debug)]
pub struct Slot<'a> {
    /// The bytes received.
    pub bytes: &'a mut [u8],
    /// The segment size with UDP GRO (every datagram but the last is this
    /// long); `None` for one datagram.
    pub seg: Option<usize>,
    /// The sender.
    pub from: SocketAddr,
}

impl Core {
    /// Cut `slots` into datagrams, in arrival order: handshake messages of
    /// their type's size into `handshakes`, data (and anything else the
    /// core sorts out) into `data`, each with its sender. A handshake
    /// message of the wrong size is counted (`invalid`) and dropped here,
    /// before any copy.
    pub fn split_received<'a>(
        &self,
        slots: impl IntoIterator<Item = Slot<'a>>,
        data: &mut Vec<(&'a mut [u8], SocketAddr)>,
        handshakes: &mut Vec<(&'a mut [u8], SocketAddr)>,
    ) {
        for slot in slots {
            let seg = slot.seg.unwrap_or(slot.bytes.len()).max(1);
            for datagram in slot.bytes.chunks_mut(seg) {
                if !is_handshake(datagram) {
                    data.push((datagram, slot.from));
                } else if handshake_size_ok(datagram) {
                    handshakes.push((datagram, slot.from));
                } else {
                    self.drops.count_invalid();
                }
            }
        }
    }
}

/// What the driver keeps from one receive batch to the next, and the
/// writes of the last batch.
#[derive(Debug)]
pub struct RxBatch {
    opened: Vec<Opened>,
    writes: Vec<Write>,
    plan: bool,
}

impl RxBatch {
    /// Room for `datagrams` per batch from the start. With `plan` false
    /// nothing is planned and [`RxBatch::writes`] stays empty (the
    /// driver's mode that copies every packet to tun-rs' GRO, kept for
    /// comparing the two).
    pub fn new(datagrams: usize, plan: bool) -> Self {
        Self {
            opened: Vec::with_capacity(datagrams),
            writes: Vec::new(),
            plan,
        }
    }

    /// Open every datagram of `data` in place (the crypto on `workers`)
    /// and plan the TUN writes of what opened, all at once. Returns the
    /// opened IP packets, in arrival order, where they lie in the receive
    /// buffers; [`RxBatch::writes`] indexes into them.
    pub fn open<'b, W: Workers>(
        &mut self,
        core: &Core,
        data: &'b mut [(&mut [u8], SocketAddr)],
        workers: &W,
        now: Instant,
    ) -> Vec<&'b mut [u8]> {
        let mut cache = SourceCache::default();
        core.open_batch_in_place(data, workers, &mut cache, &mut self.opened, now);
        let pkts: Vec<&mut [u8]> = data
            .iter_mut()
            .zip(&self.opened)
            .filter_map(|((d, _), o)| match *o {
                Opened::Packet(len) => Some(&mut d[DATA_HEADER..DATA_HEADER + len]),
                Opened::Nothing => None,
            })
            .collect();
        self.writes.clear();
        if self.plan && !pkts.is_empty() {
            let views: Vec<&[u8]> = pkts.iter().map(|p| &**p).collect();
            gro::plan(&views, &mut self.writes);
        }
        pkts
    }

    /// The TUN writes of the packets the last [`RxBatch::open`] returned,
    /// in order.
    pub fn writes(&self) -> &[Write] {
        &self.writes
    }
}
