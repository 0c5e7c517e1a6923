//! The crypto workers: the core splits each batch's sealing and opening
//! into independent jobs (`wgcore::Workers`), and a pool runs them on `n`
//! cores. Each datapath thread (one per direction) builds its own pool
//! with itself as worker 0 plus `n - 1` helper threads (rayon): the
//! datapath thread takes a share of every batch and waits for the rest
//! the way rayon's workers do (stealing, spinning briefly), not parked on
//! a lock — on a VM a park and wake cost about as much as sealing a
//! quarter of a 64 KB batch. Packets keep their order whatever the pool
//! does: the drivers write a batch out in input order once every job is
//! done. `n = 1` runs everything on the datapath thread.

use std::io;

use wgcore::Workers;

/// Fewer jobs than this run on the calling thread: waking a worker costs
/// more than sealing a few packets.
const MIN_PARALLEL: usize = 8;
/// Shares per worker: a batch is cut finer than one share per worker, so
/// that while a helper is still waking up the calling thread takes more
/// of the shares instead of waiting for a fixed half (halves gave 1.5x on
/// 2 workers; the slow wake-up was the rest).
const SHARES_PER_WORKER: usize = 4;
/// A share is at least this many jobs (a spawned share costs an
/// allocation and a deque push; one packet's seal is ~1 µs).
const MIN_SHARE: usize = 3;

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
        let Some(pool) = &self.pool else {
            items.iter_mut().for_each(f);
            return;
        };
        if items.len() < MIN_PARALLEL {
            items.iter_mut().for_each(f);
            return;
        }
        let chunk = items
            .len()
            .div_ceil(self.n * SHARES_PER_WORKER)
            .max(MIN_SHARE);
        let mut chunks = items.chunks_mut(chunk);
        let mine = chunks.next();
        pool.in_place_scope(|s| {
            for c in chunks {
                s.spawn(move |_| c.iter_mut().for_each(f));
            }
            // The calling thread takes the first share itself.
            if let Some(c) = mine {
                c.iter_mut().for_each(f);
            }
        });
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
