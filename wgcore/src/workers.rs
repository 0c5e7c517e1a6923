//! Where the crypto of a batch runs: the core splits a batch's sealing and
//! opening into independent jobs (each on its own packet and its own slice
//! of the output) and hands them to a [`Workers`], which the driver owns.
//! The core itself starts no thread: [`Inline`] runs everything on the
//! calling thread; the device's pool runs the jobs on several cores.
//! Whatever runs them, packets keep their order: the driver writes a
//! batch's output in the order of its input, after every job is done.

/// Runs independent jobs, possibly on several threads at once.
pub trait Workers: Sync {
    /// Call `f` on every item (in any order, on any thread) and return
    /// once all calls are done.
    fn each<T: Send>(&self, items: &mut [T], f: &(dyn Fn(&mut T) + Sync));
}

/// Every job on the calling thread, one after another.
#[derive(Debug, Clone, Copy, Default)]
pub struct Inline;

impl Workers for Inline {
    fn each<T: Send>(&self, items: &mut [T], f: &(dyn Fn(&mut T) + Sync)) {
        items.iter_mut().for_each(f);
    }
}
