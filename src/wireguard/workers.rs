//! The crypto workers: the core splits each batch's sealing and opening
//! into independent jobs (`wgcore::Workers`), and a pool runs them on `n`
//! cores. Each datapath thread (one per direction) builds its own pool
//! with itself as worker 0 plus `n - 1` helper threads (rayon). A batch
//! is split the way rayon splits a parallel iterator: into about twice as
//! many contiguous pieces as workers (quarters with 2), each cut again
//! when another thread steals it, never below [`MIN_SHARE`] jobs. The
//! datapath thread works through its pieces while the others wait to be
//! stolen: a helper slow to wake (on a VM a park and wake cost about as
//! much as sealing a quarter of a 64 KB batch) finds them taken back, and
//! the datapath thread never waits for work it could have done itself.
//! Each thread works on runs of adjacent jobs, so two threads meet only
//! at the edges of their pieces.
//! Packets keep their order whatever the pool does: the drivers write a
//! batch out in input order once every job is done. `n = 1` runs
//! everything on the datapath thread.

use std::io;

use rayon::iter::{IndexedParallelIterator, IntoParallelRefMutIterator, ParallelIterator};
use wgcore::Workers;

/// No piece of a batch is cut smaller than this (so a batch of fewer than
/// twice as many jobs runs on the calling thread alone): ~0.7 µs per
/// 1420-byte packet's seal against a steal and its join. Paired runs of
/// `benches/core_crypto.rs`, 2 workers against 1 (bench/README.md,
/// session 19): the hand-made shares of 2 this replaced were as fast in
/// good runs and fell to 1.15-1.5x in others; rayon's split, with pieces
/// of at least 2, 4 or 8, never fell below 1.63x at 45 packets in 12 runs.
const MIN_SHARE: usize = 4;

/// `n` crypto workers.
pub struct Pool {
    n: usize,
    pool: Option<rayon::ThreadPool>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("workers", &self.n).finish()
    }
}

/// The default worker count of each direction's pool: half the CPUs this
/// process may run on (at least 1), so that the two directions together
/// have one worker per CPU. One per CPU in each direction oversubscribed
/// the cores: on a 2-core node the two datapath threads are already busy
/// and every helper took its time from the other direction (one stream:
/// 2.89 Gbit/s with 1 worker per direction, 2.34 with 2; bench/README.md).
pub fn default_count() -> usize {
    per_direction(std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Workers per direction for `cpus` CPUs.
fn per_direction(cpus: usize) -> usize {
    (cpus / 2).max(1)
}

impl Pool {
    /// A pool of `n` workers (0: [`default_count`]) of which the calling
    /// thread is one: build it on the thread that hands it batches, and
    /// keep it there.
    pub fn on_this_thread(n: usize) -> io::Result<Self> {
        let n = if n == 0 { default_count() } else { n };
        let pool = if n > 1 {
            let p = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .use_current_thread()
                .thread_name(|i| format!("pg-crypto-{i}"))
                .build()
                .map_err(io::Error::other)?;
            Some(p)
        } else {
            None
        };
        Ok(Self { n, pool })
    }

    /// One worker: the calling thread.
    pub fn single() -> Self {
        Self { n: 1, pool: None }
    }

    /// How many workers run a batch's jobs.
    pub fn count(&self) -> usize {
        self.n
    }
}

impl Workers for Pool {
    fn each<T: Send>(&self, items: &mut [T], f: &(dyn Fn(&mut T) + Sync)) {
        match &self.pool {
            // The calling thread is one of the pool's: `install` runs the
            // iterator on it directly.
            Some(pool) => {
                pool.install(|| items.par_iter_mut().with_min_len(MIN_SHARE).for_each(f));
            }
            None => items.iter_mut().for_each(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_job_runs_once_on_up_to_n_threads() {
        for n in [1, 2, 3] {
            // A thread belongs to one pool at most: each its own.
            std::thread::spawn(move || {
                let pool = Pool::on_this_thread(n).expect("pool");
                let mut items: Vec<(usize, Option<std::thread::ThreadId>)> =
                    (0..100).map(|i| (i, None)).collect();
                // Jobs long enough that an idle helper steals its share (a
                // quick batch may finish on the calling thread alone).
                pool.each(&mut items, &|it| {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    it.0 *= 2;
                    it.1 = Some(std::thread::current().id());
                });
                assert!(items.iter().enumerate().all(|(i, it)| it.0 == 2 * i));
                let threads: std::collections::BTreeSet<_> = items
                    .iter()
                    .filter_map(|it| it.1)
                    .map(|t| format!("{t:?}"))
                    .collect();
                assert!(
                    threads.len() <= n,
                    "{n} workers used {} threads",
                    threads.len()
                );
                if n > 1 {
                    assert!(threads.len() > 1, "{n} workers ran on one thread");
                }
            })
            .join()
            .expect("no panic");
        }
    }

    #[test]
    fn the_two_directions_share_the_cpus() {
        assert_eq!(per_direction(1), 1);
        assert_eq!(per_direction(2), 1);
        assert_eq!(per_direction(3), 1);
        assert_eq!(per_direction(16), 8);
    }

    #[test]
    fn zero_means_the_default_count() {
        assert_eq!(
            Pool::on_this_thread(0).expect("pool").count(),
            default_count()
        );
    }
}
