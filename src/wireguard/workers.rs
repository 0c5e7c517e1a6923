//! The crypto workers: the core splits each batch's sealing and opening
//! into independent jobs (`wgcore::Workers`), and a pool runs them on `n`
//! cores. Each datapath thread (one per direction) builds its own pool
//! with itself as worker 0 plus `n - 1` helper threads (rayon). A batch
//! is cut into shares that the datapath thread and the helpers claim
//! from one counter: a helper slow to wake (on a VM a park and wake cost
//! about as much as sealing a quarter of a 64 KB batch) finds fewer
//! shares left, and the datapath thread never waits for one it could
//! have done itself. Packets keep their order whatever the pool
//! does: the drivers write a batch out in input order once every job is
//! done. `n = 1` runs everything on the datapath thread.

use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use wgcore::Workers;

/// Fewer jobs than this run on the calling thread: waking a worker costs
/// more than sealing a few packets.
const MIN_PARALLEL: usize = 8;
/// Jobs per share. Claiming a share costs an atomic add and an
/// uncontended lock (tens of ns) against ~1 µs per packet's seal: small
/// shares keep the two threads' ends close together.
const SHARE: usize = 2;

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
        let shares = Shares::new(items, SHARE);
        let shares = &shares;
        pool.in_place_scope(|s| {
            // One job per helper, each taking shares until none are left;
            // the calling thread takes shares meanwhile. A helper slow to
            // wake finds few or none left: the caller never waits on it
            // for a share it could have done itself (and if no helper ever
            // started, the caller runs the helpers' jobs on the way out of
            // the scope, and they find nothing to do).
            for _ in 1..self.n {
                s.spawn(move |_| shares.work(f));
            }
            shares.work(f);
        });
    }
}

/// A batch cut into shares that any thread may claim, each exactly once.
struct Shares<'a, T> {
    next: AtomicUsize,
    shares: Vec<Mutex<Option<&'a mut [T]>>>,
}

impl<'a, T: Send> Shares<'a, T> {
    fn new(items: &'a mut [T], chunk: usize) -> Self {
        Self {
            next: AtomicUsize::new(0),
            shares: items
                .chunks_mut(chunk)
                .map(|c| Mutex::new(Some(c)))
                .collect(),
        }
    }

    /// Claim shares and run `f` on their items until none are left.
    fn work(&self, f: &(dyn Fn(&mut T) + Sync)) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(share) = self.shares.get(i) else {
                return;
            };
            // Each index is claimed once: the lock is never contended.
            let taken = share.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(c) = taken {
                c.iter_mut().for_each(f);
            }
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
