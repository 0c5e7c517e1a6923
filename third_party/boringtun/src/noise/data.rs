// Copyright (c) 2019 Cloudflare, Inc. All rights reserved.
// SPDX-License-Identifier: BSD-3-Clause

//! Data packets outside `&mut Tunn` (podguard's patch, meant for upstream):
//! a caller takes a handle on a session while it holds the `Tunn`, seals or
//! opens a batch of data packets with it on as many threads as it likes,
//! and accounts for them afterwards. What `encapsulate` and `decapsulate`
//! do for one data packet is split into those steps; the crypto and the
//! replay window are the session's own, unchanged.

use std::sync::Arc;

use super::errors::WireGuardError;
use super::session::Session;
use super::timers::TimerName;
use super::{parse_decapsulated_packet, Packet, Tunn, TunnResult, DATA_OVERHEAD_SZ, N_SESSIONS};

/// Bytes of a data packet before its ciphertext: type, receiver index,
/// counter.
pub const DATA_HEADER_SZ: usize = 16;

/// Sending counters reserved on an established session: seals packets
/// `0..n` of a batch, from any thread (`Sync`), each counter once.
#[derive(Debug, Clone)]
pub struct DataSender {
    session: Arc<Session>,
    first: u64,
    n: u64,
}

impl DataSender {
    /// How many packets the reservation covers.
    pub fn len(&self) -> u64 {
        self.n
    }

    /// Whether it covers none.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Seal `src` as packet `i` of the batch into `dst` (at least
    /// `src.len() + 32` bytes); returns the datagram. Returns `None` when
    /// `i` is outside the reservation.
    pub fn seal<'a>(&self, i: u64, src: &[u8], dst: &'a mut [u8]) -> Option<&'a mut [u8]> {
        if i >= self.n || dst.len() < src.len() + DATA_OVERHEAD_SZ {
            return None;
        }
        Some(self.session.format_packet_data_at(self.first + i, src, dst))
    }

    /// Seal packet `i` of the batch where it lies: the `len`-byte IP packet
    /// at `buf[16..]` becomes the datagram `buf[..len + 32]` (the header
    /// written before it, the tag after it), without the copy [`seal`]
    /// makes. Returns the datagram's length; `None` when `i` is outside the
    /// reservation or `buf` is shorter than `len + 32`.
    ///
    /// [`seal`]: DataSender::seal
    pub fn seal_in_place(&self, i: u64, buf: &mut [u8], len: usize) -> Option<usize> {
        if i >= self.n || buf.len() < len.checked_add(DATA_OVERHEAD_SZ)? {
            return None;
        }
        Some(self.session.seal_in_place_at(self.first + i, buf, len))
    }
}

/// The session a data packet was sent to: opens data packets from any
/// thread (`Sync`); the replay window is shared with the `Tunn`.
#[derive(Debug, Clone)]
pub struct DataReceiver {
    session: Arc<Session>,
}

impl DataReceiver {
    /// The receiver index this session answers to.
    pub fn index(&self) -> u32 {
        self.session.receiving_index
    }

    /// Open a data packet (authenticate, decrypt, replay check) into `dst`
    /// (at least the datagram's length). `WriteToTunnelV4`/`V6` with the
    /// IP packet and its source, `Done` for a keepalive, or an error.
    pub fn open<'a>(&self, datagram: &[u8], dst: &'a mut [u8]) -> TunnResult<'a> {
        let p = match Tunn::parse_incoming_packet(datagram) {
            Ok(Packet::PacketData(p)) => p,
            Ok(_) => return TunnResult::Err(WireGuardError::InvalidPacket),
            Err(e) => return TunnResult::Err(e),
        };
        if dst.len() < p.encrypted_encapsulated_packet.len() {
            return TunnResult::Err(WireGuardError::DestinationBufferTooSmall);
        }
        match self.session.receive_packet_data(p, dst) {
            Ok(pkt) => parse_decapsulated_packet(pkt),
            Err(e) => TunnResult::Err(e),
        }
    }

    /// [`DataReceiver::open`] without the replay window: check
    /// [`DataReceiver::fresh`] first (cheap: skip the decryption of a
    /// replay), authenticate and decrypt on any thread, then call
    /// [`DataReceiver::mark`] for each authenticated datagram in arrival
    /// order and drop the ones it refuses. Of two copies of one packet the
    /// first to arrive is then the one taken, whichever was decrypted first,
    /// and the decrypting threads never contend for the window's lock.
    pub fn open_unmarked<'a>(&self, datagram: &[u8], dst: &'a mut [u8]) -> TunnResult<'a> {
        let p = match Tunn::parse_incoming_packet(datagram) {
            Ok(Packet::PacketData(p)) => p,
            Ok(_) => return TunnResult::Err(WireGuardError::InvalidPacket),
            Err(e) => return TunnResult::Err(e),
        };
        if dst.len() < p.encrypted_encapsulated_packet.len() {
            return TunnResult::Err(WireGuardError::DestinationBufferTooSmall);
        }
        match self.session.open_packet_data(p, dst) {
            Ok(pkt) => parse_decapsulated_packet(pkt),
            Err(e) => TunnResult::Err(e),
        }
    }

    /// [`DataReceiver::open_unmarked`] in place: `datagram` (a data packet
    /// for this session) is decrypted where it lies, the IP packet starting
    /// 16 bytes in, after the header, which stays as it was (so
    /// [`DataReceiver::mark`] still reads its counter). Saves the copy of
    /// the ciphertext into another buffer.
    pub fn open_unmarked_in_place<'a>(&self, datagram: &'a mut [u8]) -> TunnResult<'a> {
        let (receiver_idx, counter) = match Tunn::parse_incoming_packet(datagram) {
            Ok(Packet::PacketData(p)) => (p.receiver_idx, p.counter),
            Ok(_) => return TunnResult::Err(WireGuardError::InvalidPacket),
            Err(e) => return TunnResult::Err(e),
        };
        if receiver_idx != self.session.receiving_index {
            return TunnResult::Err(WireGuardError::WrongIndex);
        }
        match self
            .session
            .open_in_place(counter, &mut datagram[DATA_HEADER_SZ..])
        {
            Ok(pkt) => parse_decapsulated_packet(pkt),
            Err(e) => TunnResult::Err(e),
        }
    }

    /// Whether the counter of `datagram` (a data packet) may still be
    /// received: false for a replay or a counter older than the window.
    pub fn fresh(&self, datagram: &[u8]) -> bool {
        matches!(Tunn::parse_incoming_packet(datagram),
            Ok(Packet::PacketData(p)) if self.session.may_receive(p.counter).is_ok())
    }

    /// Take the counter of `datagram`, a data packet that
    /// [`DataReceiver::open_unmarked`] authenticated, in the session's
    /// replay window: an error for a replay (a counter already taken, or
    /// older than the window).
    pub fn mark(&self, datagram: &[u8]) -> Result<(), WireGuardError> {
        match Tunn::parse_incoming_packet(datagram) {
            Ok(Packet::PacketData(p)) => self.session.mark_received(p.counter),
            Ok(_) => Err(WireGuardError::InvalidPacket),
            Err(e) => Err(e),
        }
    }
}

impl Tunn {
    /// Reserve `n` sending counters on the current session for a batch of
    /// `bytes` bytes of data packets, and account for them as `n` calls of
    /// `encapsulate` would (timers, tx bytes). `None` without a session:
    /// then `encapsulate` queues the packet and starts a handshake.
    pub fn data_sender(&mut self, n: u64, bytes: usize) -> Option<DataSender> {
        let session = self.sessions[self.current % N_SESSIONS].clone()?;
        let first = session.reserve_counters(n);
        self.timer_tick(TimerName::TimeLastPacketSent);
        if bytes > 0 {
            self.timer_tick(TimerName::TimeLastDataPacketSent);
        }
        self.tx_bytes += bytes;
        Some(DataSender { session, first, n })
    }

    /// The session that data packets with `receiver_idx` are for, if it is
    /// one of this tunnel's.
    pub fn data_receiver(&self, receiver_idx: u32) -> Option<DataReceiver> {
        let session = self.sessions[receiver_idx as usize % N_SESSIONS].clone()?;
        (session.receiving_index == receiver_idx).then_some(DataReceiver { session })
    }

    /// Account for packets `r` opened, as `decapsulate` would have for
    /// each: the session becomes current if it is the newer, the receive
    /// timers move on, and `data_packets` packets (not keepalives) of
    /// `bytes` bytes in all count as data received.
    pub fn data_received(&mut self, r: &DataReceiver, data_packets: usize, bytes: usize) {
        self.set_current_session(r.session.receiving_index as usize);
        self.timer_tick(TimerName::TimeLastPacketReceived);
        if data_packets > 0 {
            self.timer_tick(TimerName::TimeLastDataPacketReceived);
        }
        self.rx_bytes += bytes;
    }
}
