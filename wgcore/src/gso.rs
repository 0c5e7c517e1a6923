//! Assembling sealed datagrams into UDP GSO sends, as a value: a driver
//! seals packets back to back into one buffer, and [`GsoBatch`] says where
//! each goes and when a run must be sent. A run is datagrams to one
//! endpoint, all of one size except possibly a shorter last one, at most
//! [`MAX_GSO_SEGMENTS`] of them and [`MAX_GSO_BYTES`] in all (the kernel's
//! `UDP_SEGMENT` rules).

use std::net::SocketAddr;
use std::ops::Range;

/// Most datagrams one `UDP_SEGMENT` send may carry (kernel limit).
pub const MAX_GSO_SEGMENTS: usize = 64;
/// Largest total payload of one GSO send.
pub const MAX_GSO_BYTES: usize = 65_000;

/// The buffer a batch needs for datagrams of up to `max_datagram` bytes
/// (a run may start after a run that was just sent).
pub const fn buffer_len(max_datagram: usize) -> usize {
    2 * MAX_GSO_BYTES + 2 * max_datagram
}

/// A run to send now: `buf[range]`, segments of `seg` bytes, to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flush {
    /// Where in the buffer.
    pub range: Range<usize>,
    /// Segment size (the last segment may be shorter).
    pub seg: usize,
    /// Destination.
    pub to: SocketAddr,
}

/// The run being assembled.
#[derive(Debug, Default)]
pub struct GsoBatch {
    start: usize,
    pos: usize,
    seg: usize,
    to: Option<SocketAddr>,
    /// Runs never reuse buffer space (a whole batch is laid out before
    /// any of it is sent).
    contiguous: bool,
}

impl GsoBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// A batch whose runs follow one another in the buffer, never reusing
    /// space: every datagram of a batch can be placed before any is
    /// written (for sealing on several workers), at the cost of a buffer
    /// as large as the whole batch.
    pub fn contiguous() -> Self {
        Self {
            contiguous: true,
            ..Self::default()
        }
    }

    fn take(&mut self, reset: bool) -> Option<Flush> {
        let to = self.to?;
        if self.pos == self.start {
            return None;
        }
        let f = Flush {
            range: self.start..self.pos,
            seg: self.seg,
            to,
        };
        if reset {
            if self.contiguous {
                self.start = self.pos;
            } else {
                self.start = 0;
                self.pos = 0;
            }
        }
        Some(f)
    }

    /// Where to write the next datagram, which goes to `to`. A pending run
    /// to another endpoint comes back to be sent first (before writing).
    pub fn next(&mut self, to: SocketAddr) -> (usize, Option<Flush>) {
        let flush = if self.to != Some(to) {
            self.take(true)
        } else {
            None
        };
        self.to = Some(to);
        (self.pos, flush)
    }

    /// The datagram written where [`GsoBatch::next`] said has `len` bytes.
    /// A run that must be sent now comes back.
    pub fn commit(&mut self, len: usize) -> Option<Flush> {
        if len == 0 {
            return None;
        }
        if self.pos == self.start {
            self.seg = len;
            self.pos += len;
        } else if len == self.seg {
            self.pos += len;
        } else if len < self.seg {
            // A shorter datagram ends a run.
            self.pos += len;
            return self.take(true);
        } else {
            // Longer than the run's segments: send the run; this datagram
            // starts the next one where it lies.
            let f = self.take(false);
            self.start = self.pos;
            self.pos += len;
            self.seg = len;
            return f;
        }
        let n = self.pos - self.start;
        if n / self.seg >= MAX_GSO_SEGMENTS || n + self.seg > MAX_GSO_BYTES {
            return self.take(true);
        }
        None
    }

    /// The pending run, if any (end of a batch of packets).
    pub fn finish(&mut self) -> Option<Flush> {
        self.take(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, i], 51820))
    }

    /// Run the batch over datagrams (endpoint, length), writing datagram
    /// `k` as bytes of value `k`, and return what was sent.
    fn drive(dgrams: &[(u8, usize)], max: usize) -> Vec<(Flush, Vec<u8>)> {
        let mut buf = vec![0u8; buffer_len(max)];
        let mut b = GsoBatch::new();
        drive_with(&mut b, &mut buf, dgrams)
    }

    /// The same with a contiguous batch: every datagram is written before
    /// any run is read, into a buffer only as large as the batch.
    fn drive_contiguous(dgrams: &[(u8, usize)]) -> Vec<(Flush, Vec<u8>)> {
        let total: usize = dgrams.iter().map(|d| d.1).sum();
        let mut buf = vec![0u8; total];
        let mut b = GsoBatch::contiguous();
        let mut flushes = Vec::new();
        for (k, &(to, len)) in dgrams.iter().enumerate() {
            let (off, f) = b.next(addr(to));
            flushes.extend(f);
            buf[off..off + len].fill(k as u8);
            flushes.extend(b.commit(len));
        }
        flushes.extend(b.finish());
        flushes
            .into_iter()
            .map(|f| {
                let bytes = buf[f.range.clone()].to_vec();
                (f, bytes)
            })
            .collect()
    }

    fn drive_with(
        b: &mut GsoBatch,
        buf: &mut [u8],
        dgrams: &[(u8, usize)],
    ) -> Vec<(Flush, Vec<u8>)> {
        let mut sent = Vec::new();
        let mut send = |f: Flush, buf: &[u8]| {
            assert!(f.range.end <= buf.len());
            let bytes = buf[f.range.clone()].to_vec();
            sent.push((f, bytes));
        };
        for (k, &(to, len)) in dgrams.iter().enumerate() {
            let (off, f) = b.next(addr(to));
            if let Some(f) = f {
                send(f, buf);
            }
            assert!(off + len <= buf.len(), "no room at {off} for {len}");
            buf[off..off + len].fill(k as u8);
            if let Some(f) = b.commit(len) {
                send(f, buf);
            }
        }
        if let Some(f) = b.finish() {
            send(f, buf);
        }
        sent
    }

    #[test]
    fn equal_datagrams_fill_up_to_the_segment_limit() {
        let d: Vec<(u8, usize)> = (0..130).map(|_| (1, 100)).collect();
        let sent = drive(&d, 200);
        let runs: Vec<usize> = sent.iter().map(|(f, _)| f.range.len() / f.seg).collect();
        assert_eq!(runs, vec![64, 64, 2]);
    }

    #[test]
    fn byte_limit() {
        let d: Vec<(u8, usize)> = (0..60).map(|_| (1, 1452)).collect();
        let sent = drive(&d, 1500);
        assert!(sent.iter().all(|(f, _)| f.range.len() <= MAX_GSO_BYTES));
        assert_eq!(sent[0].0.range.len() / 1452, 44);
    }

    #[test]
    fn shorter_ends_longer_starts_new_endpoint_splits() {
        let d = [
            (1, 100),
            (1, 100),
            (1, 60),
            (1, 100),
            (1, 150),
            (2, 150),
            (2, 150),
        ];
        let sent = drive(&d, 200);
        let shape: Vec<(usize, usize, SocketAddr)> = sent
            .iter()
            .map(|(f, _)| (f.range.len(), f.seg, f.to))
            .collect();
        assert_eq!(
            shape,
            vec![
                (260, 100, addr(1)),
                (100, 100, addr(1)),
                (150, 150, addr(1)),
                (300, 150, addr(2)),
            ]
        );
    }

    proptest! {
        #[test]
        fn every_datagram_once_in_order_in_valid_runs(
            d in proptest::collection::vec((1u8..3, 1usize..1500), 0..300)
        ) {
            let sent = drive(&d, 1500);
            // Reassemble: each run split at its segment size.
            let mut got: Vec<(SocketAddr, usize, u8)> = Vec::new();
            for (f, bytes) in &sent {
                prop_assert!(f.range.len() <= MAX_GSO_BYTES);
                let segs: Vec<&[u8]> = bytes.chunks(f.seg).collect();
                prop_assert!(segs.len() <= MAX_GSO_SEGMENTS);
                for (i, s) in segs.iter().enumerate() {
                    prop_assert!(s.len() == f.seg || i == segs.len() - 1);
                    prop_assert!(s.iter().all(|&x| x == s[0]));
                    got.push((f.to, s.len(), s[0]));
                }
            }
            let want: Vec<(SocketAddr, usize, u8)> = d
                .iter()
                .enumerate()
                .map(|(k, &(to, len))| (addr(to), len, k as u8))
                .collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn a_contiguous_batch_sends_the_same_runs_without_reusing_space(
            d in proptest::collection::vec((1u8..3, 1usize..1500), 0..300)
        ) {
            let reused = drive(&d, 1500);
            let contiguous = drive_contiguous(&d);
            let mut end = 0;
            for (f, _) in &contiguous {
                prop_assert_eq!(f.range.start, end);
                end = f.range.end;
            }
            let shape = |v: &[(Flush, Vec<u8>)]| -> Vec<(usize, usize, SocketAddr, Vec<u8>)> {
                v.iter().map(|(f, b)| (f.range.len(), f.seg, f.to, b.clone())).collect()
            };
            prop_assert_eq!(shape(&reused), shape(&contiguous));
        }
    }
}
