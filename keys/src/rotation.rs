//! Key rotation as a pure, level-triggered state machine.
//!
//! The state lives on disk, in three files next to the node's key:
//!
//! | files present                  | phase                                  |
//! | ------------------------------ | -------------------------------------- |
//! | `private.key`                  | [`Phase::Idle`]                        |
//! | `private.key` + `.next`        | [`Phase::Staged`]: next key published, peers pre-stage it |
//! | `private.key` + `.old`         | [`Phase::Switched`]: new key current, old one still accepted |
//!
//! [`decide`] looks at what is on disk ([`Disk`]), what was asked
//! ([`Inputs`]) and the time it is given (`now`; there is no clock in
//! here), and answers with the phase, the keys the device must hold, the
//! annotations to publish, and at most one [`Step`] on disk. Every step is
//! one atomic file operation, so an agent killed anywhere resumes from the
//! files alone: it either finishes the rotation or rolls it back, and the
//! node always keeps a valid current key.
//!
//! The sequence of one rotation:
//!
//! 1. `Idle`, a request (or the schedule) is due → [`Step::CreateNext`]:
//!    generate a key and persist it as `.next` (0600) *before* publishing.
//! 2. `Staged`: the device accepts handshakes for both keys; the next key
//!    is published as `podguard.dev/next-public-key`; peers pre-stage it and
//!    handshake with it. Once every peer has a session on the next key
//!    ([`Ack`]) or after `stage_timeout` → [`Step::SaveOld`], then
//!    [`Step::PromoteNext`].
//! 3. `Switched`: the new key is current and published as the public key;
//!    the old key is still accepted. Once every peer uses the new key or
//!    after `retire_timeout` → [`Step::RetireOld`]: back to `Idle`.

use std::collections::BTreeSet;

use crate::PublicKey;

/// One key file as seen on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum File {
    /// No such file.
    Absent,
    /// The file exists but does not hold a valid key (or is unsafe to use).
    Unusable,
    /// A valid key, and when the file was written (unix seconds).
    Key {
        /// Its public half (the private half never enters this module).
        key: PublicKey,
        /// Modification time of the file, unix seconds.
        since: u64,
    },
}

impl File {
    /// The key, if the file holds one.
    pub fn key(&self) -> Option<PublicKey> {
        match self {
            Self::Key { key, .. } => Some(*key),
            _ => None,
        }
    }

    fn since(&self) -> Option<u64> {
        match self {
            Self::Key { since, .. } => Some(*since),
            _ => None,
        }
    }

    fn exists(&self) -> bool {
        !matches!(self, Self::Absent)
    }
}

/// The three key files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disk {
    /// `private.key`.
    pub current: File,
    /// `private.key.next`.
    pub next: File,
    /// `private.key.old`.
    pub old: File,
}

/// Which local keys every current peer has an established session on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ack {
    /// The backend cannot tell: timeouts decide.
    Unknown,
    /// The local public keys every peer has a live session on (with no
    /// peers at all: every key the device holds).
    Keys(BTreeSet<PublicKey>),
}

impl Ack {
    fn has(&self, k: &PublicKey) -> bool {
        match self {
            Self::Unknown => false,
            Self::Keys(s) => s.contains(k),
        }
    }
}

/// Timeouts and the schedule, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Longest wait in `Staged` for every peer to take the next key.
    pub stage_timeout: u64,
    /// Longest wait in `Switched` before the old key is dropped.
    pub retire_timeout: u64,
    /// Rotate when the current key is this old (`None`: never by schedule).
    pub every: Option<u64>,
    /// Added to `every` for this node (see [`jitter`]).
    pub jitter: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            stage_timeout: 60,
            retire_timeout: 180,
            every: None,
            jitter: 0,
        }
    }
}

/// A node-specific delay in `[0, every/5]`, so that nodes with the same
/// `--rotate-every` do not rotate together. Deterministic (FNV-1a of the
/// node name), so a restart does not move a node's slot.
pub fn jitter(node_name: &str, every: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node_name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h % (every / 5 + 1)
}

/// What the machine reads besides the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs {
    /// Now, unix seconds.
    pub now: u64,
    /// `podguard.dev/rotate-requested` on this node (a nonce), if any.
    pub requested: Option<String>,
    /// `podguard.dev/rotate-done` as currently published.
    pub done: Option<String>,
    /// Which local keys the peers have taken.
    pub ack: Ack,
}

/// The rotation phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// One key; nothing in progress.
    Idle,
    /// A next key exists and is published; peers pre-stage it.
    Staged {
        /// The next key.
        next: PublicKey,
        /// When it was created (unix seconds).
        since: u64,
    },
    /// The new key is current; the old one is still accepted.
    Switched {
        /// The previous key.
        old: PublicKey,
        /// When the switch happened (unix seconds).
        since: u64,
    },
}

impl Phase {
    /// `idle`, `staged` or `switched` (the `podguard.dev/rotation-state` value).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Staged { .. } => "staged",
            Self::Switched { .. } => "switched",
        }
    }
}

/// One atomic operation on the key files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// No current key at all: generate one (first start).
    CreateCurrent,
    /// `private.key` is missing but `.next` is valid: rename `.next` to
    /// `private.key` (finishes an interrupted switch or a manual deletion).
    RecoverFromNext,
    /// `private.key` is missing but `.old` is valid: rename `.old` back.
    RecoverFromOld,
    /// Generate a key and write it as `.next` (0600, exclusive create).
    CreateNext,
    /// Copy the current key to `.old` (0600, exclusive create).
    SaveOld,
    /// Rename `.next` over `private.key`.
    PromoteNext,
    /// Delete `.old`.
    RetireOld,
    /// Delete `.next` (unusable, or a leftover of an interrupted switch).
    DropNext,
    /// Delete `.old` (unusable, or a stale copy of the current key).
    DropOld,
}

impl std::fmt::Display for Step {
    /// What the step does to the files, for logs and errors.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::CreateCurrent => "create private.key",
            Self::RecoverFromNext => "recover private.key from private.key.next",
            Self::RecoverFromOld => "recover private.key from private.key.old",
            Self::CreateNext => "create private.key.next",
            Self::SaveOld => "copy private.key to private.key.old",
            Self::PromoteNext => "rename private.key.next over private.key",
            Self::RetireOld => "retire private.key.old",
            Self::DropNext => "delete private.key.next",
            Self::DropOld => "delete private.key.old",
        })
    }
}

/// The annotations rotation owns on the node's own Node object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// `podguard.dev/public-key`.
    pub public_key: Option<PublicKey>,
    /// `podguard.dev/next-public-key` (`None`: the annotation is removed).
    pub next_public_key: Option<PublicKey>,
    /// `podguard.dev/rotation-state`.
    pub state: &'static str,
    /// `podguard.dev/rotate-done` (`None`: leave as is).
    pub done: Option<String>,
    /// `podguard.dev/key-created`: when the current key was written (unix seconds).
    pub key_created: Option<u64>,
}

/// The keys the WireGuard device must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceKeys {
    /// The key it initiates with and that peers know as the public key.
    pub primary: PublicKey,
    /// A second key it accepts handshakes for (the next or the old key).
    pub extra: Option<PublicKey>,
}

/// The answer of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The phase the disk is in.
    pub phase: Phase,
    /// The next step on disk, if any. After carrying it out, decide again.
    pub step: Option<Step>,
    /// The keys the device must hold now (`None` until a current key exists).
    pub device: Option<DeviceKeys>,
    /// What to publish now.
    pub publish: Publish,
    /// Decide again no later than this (unix seconds), if a deadline is pending.
    pub wake_at: Option<u64>,
    /// Why the step was chosen (for logs).
    pub reason: &'static str,
}

/// Decide the next step. Pure: same inputs, same answer.
pub fn decide(disk: &Disk, inputs: &Inputs, policy: &Policy) -> Decision {
    let mut d = Decision {
        phase: Phase::Idle,
        step: None,
        device: None,
        publish: Publish {
            public_key: None,
            next_public_key: None,
            state: Phase::Idle.name(),
            done: None,
            key_created: None,
        },
        wake_at: None,
        reason: "",
    };

    // Recovery: the current key must exist before anything else.
    let Some(cur) = disk.current.key() else {
        (d.step, d.reason) = if disk.current.exists() {
            // An unusable private.key is an operator problem: never replace
            // it silently (the loader reports why it is unusable).
            (None, "private.key is unusable; not touching it")
        } else if disk.next.key().is_some() {
            (
                Some(Step::RecoverFromNext),
                "private.key missing, .next valid",
            )
        } else if disk.old.key().is_some() {
            (
                Some(Step::RecoverFromOld),
                "private.key missing, .old valid",
            )
        } else {
            (Some(Step::CreateCurrent), "no key yet")
        };
        return d;
    };

    // Files no phase can use are removed first, one at a time; an
    // interrupted switch is resumed.
    let next = disk.next.key().filter(|k| *k != cur);
    let old = disk.old.key().filter(|k| *k != cur);
    let cleanup = if disk.next == File::Unusable {
        Some((
            Step::DropNext,
            ".next is unusable: rolling the rotation back",
        ))
    } else if disk.old == File::Unusable {
        Some((Step::DropOld, ".old is unusable"))
    } else if disk.next.exists() && next.is_none() {
        Some((Step::DropNext, ".next equals the current key"))
    } else if disk.old.exists() && old.is_none() && next.is_some() {
        // The middle of a switch: SaveOld ran (`.old` is a copy of the
        // current key), PromoteNext is due. Resume it.
        Some((
            Step::PromoteNext,
            "switching: the current key is saved as .old",
        ))
    } else if disk.old.exists() && old.is_none() {
        Some((Step::DropOld, ".old is a copy of the current key"))
    } else if next.is_some() && old.is_some() {
        // Not a state these steps make: keep what peers may still use (the
        // current and the old key) and drop the staged one.
        Some((
            Step::DropNext,
            ".next and .old both differ from the current key",
        ))
    } else {
        None
    };

    let requested = inputs
        .requested
        .clone()
        .filter(|r| inputs.done.as_ref() != Some(r));
    d.publish.public_key = Some(cur);
    d.publish.key_created = disk.current.since();
    let (phase, extra, deadline, acked) = match (next, old) {
        (_, Some(o)) => {
            let since = disk.old.since().unwrap_or(inputs.now);
            (
                Phase::Switched { old: o, since },
                Some(o),
                since.saturating_add(policy.retire_timeout),
                inputs.ack.has(&cur),
            )
        }
        (Some(n), None) => {
            let since = disk.next.since().unwrap_or(inputs.now);
            (
                Phase::Staged { next: n, since },
                Some(n),
                since.saturating_add(policy.stage_timeout),
                inputs.ack.has(&n),
            )
        }
        (None, None) => (Phase::Idle, None, 0, false),
    };
    d.phase = phase;
    d.device = Some(DeviceKeys {
        primary: cur,
        extra,
    });
    d.publish.state = phase.name();
    if let Phase::Staged { next, .. } = phase {
        d.publish.next_public_key = Some(next);
    }
    if phase != Phase::Idle {
        // The rotation in progress serves the outstanding request.
        d.publish.done = requested.clone();
    }
    if let Some((step, reason)) = cleanup {
        d.step = Some(step);
        d.reason = reason;
        return d;
    }
    match phase {
        Phase::Staged { .. } | Phase::Switched { .. } => {
            let step = if matches!(phase, Phase::Staged { .. }) {
                Step::SaveOld
            } else {
                Step::RetireOld
            };
            if acked {
                d.step = Some(step);
                d.reason = "every peer has a session on the newer key";
            } else if inputs.now >= deadline {
                d.step = Some(step);
                d.reason = "timeout: going on without every peer";
            } else {
                d.wake_at = Some(deadline);
            }
        }
        Phase::Idle => {
            if requested.is_some() {
                d.step = Some(Step::CreateNext);
                d.reason = "rotation requested";
            } else if let (Some(every), Some(since)) = (policy.every, disk.current.since()) {
                let due = since.saturating_add(every).saturating_add(policy.jitter);
                if inputs.now >= due {
                    d.step = Some(Step::CreateNext);
                    d.reason = "scheduled rotation";
                } else {
                    d.wake_at = Some(due);
                }
            }
        }
    }
    d
}

#[cfg(test)]
mod tests;
