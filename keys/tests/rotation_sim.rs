//! The rotation machine on simulated time: every disk state, crashes at
//! every step, and peers that are fast, slow or absent.

use std::collections::BTreeSet;

use keys::rotation::{Ack, Decision, Disk, File, Inputs, Phase, Policy, Step, decide};
use keys::{PrivateKey, PublicKey};

fn key() -> PublicKey {
    PrivateKey::generate().public_key()
}

/// Carry out `step` on the model disk, as the store does (each one atomic).
fn apply(disk: &mut Disk, step: Step, now: u64, fresh: &mut impl FnMut() -> PublicKey) {
    match step {
        Step::CreateCurrent => {
            disk.current = File::Key {
                key: fresh(),
                since: now,
            }
        }
        Step::RecoverFromNext => {
            assert_eq!(disk.current, File::Absent);
            disk.current = disk.next;
            disk.next = File::Absent;
        }
        Step::RecoverFromOld => {
            assert_eq!(disk.current, File::Absent);
            disk.current = disk.old;
            disk.old = File::Absent;
        }
        Step::CreateNext => {
            assert_eq!(disk.next, File::Absent, "CreateNext over an existing .next");
            disk.next = File::Key {
                key: fresh(),
                since: now,
            }
        }
        Step::SaveOld => {
            assert_eq!(disk.old, File::Absent, "SaveOld over an existing .old");
            let File::Key { key, .. } = disk.current else {
                panic!("SaveOld without a current key")
            };
            disk.old = File::Key { key, since: now };
        }
        Step::PromoteNext => {
            assert!(disk.next.key().is_some(), "PromoteNext without .next");
            disk.current = disk.next;
            disk.next = File::Absent;
        }
        Step::RetireOld | Step::DropOld => disk.old = File::Absent,
        Step::DropNext => disk.next = File::Absent,
    }
}

fn valid_keys(disk: &Disk) -> BTreeSet<PublicKey> {
    [disk.current.key(), disk.next.key(), disk.old.key()]
        .into_iter()
        .flatten()
        .collect()
}

/// Safety of one decision on any disk.
fn check_decision(disk: &Disk, d: &Decision) {
    if let Some(cur) = disk.current.key() {
        let dev = d.device.expect("device keys whenever a current key exists");
        assert_eq!(dev.primary, cur, "device primary must be the current key");
        assert_eq!(d.publish.public_key, Some(cur));
        if let Some(n) = d.publish.next_public_key {
            assert_eq!(dev.extra, Some(n), "a published next key is held");
        }
        // Never delete the current key's only copy.
        assert!(!matches!(
            d.step,
            Some(Step::RecoverFromNext | Step::RecoverFromOld | Step::CreateCurrent)
        ));
    } else {
        assert_eq!(d.publish.public_key, None);
        assert!(
            matches!(
                d.step,
                None | Some(Step::RecoverFromNext | Step::RecoverFromOld | Step::CreateCurrent)
            ),
            "without a current key only recovery is allowed: {d:?}"
        );
        if disk.current == File::Unusable {
            assert_eq!(d.step, None, "an unusable private.key is left alone");
        }
        if d.step == Some(Step::CreateCurrent) {
            assert!(
                valid_keys(disk).is_empty(),
                "never generate over a valid key"
            );
        }
    }
}

#[test]
fn every_disk_state_is_safe_and_converges() {
    let ks = [key(), key(), key()];
    let mut files = vec![File::Absent, File::Unusable];
    for (i, k) in ks.iter().enumerate() {
        files.push(File::Key {
            key: *k,
            since: i as u64 * 10,
        });
    }
    let mut states = 0;
    for &current in &files {
        for &next in &files {
            for &old in &files {
                let start = Disk { current, next, old };
                for ack_all in [false, true] {
                    let mut disk = start;
                    let mut now = 100;
                    let originally_valid = valid_keys(&start);
                    let mut fresh = key;
                    for round in 0.. {
                        assert!(round < 10, "no convergence from {start:?}");
                        let ack = if ack_all {
                            Ack::Keys(valid_keys(&disk))
                        } else {
                            Ack::Unknown
                        };
                        let inputs = Inputs {
                            now,
                            requested: None,
                            done: None,
                            ack,
                        };
                        let d = decide(&disk, &inputs, &Policy::default());
                        check_decision(&disk, &d);
                        let Some(step) = d.step else {
                            match d.wake_at {
                                Some(t) => {
                                    now = t;
                                    continue;
                                }
                                None => break,
                            }
                        };
                        let before = disk.current.key();
                        apply(&mut disk, step, now, &mut fresh);
                        if let Some(b) = before {
                            // The current key only ever moves forward to the staged key.
                            let after = disk.current.key().expect("current key lost");
                            assert!(
                                after == b || Some(after) == start.next.key(),
                                "current changed to an unexpected key"
                            );
                        }
                    }
                    states += 1;
                    if start.current == File::Unusable {
                        assert_eq!(disk, start);
                        continue;
                    }
                    // Converged: Idle, one valid current key, nothing else.
                    assert_eq!(disk.next, File::Absent, "from {start:?}");
                    assert_eq!(disk.old, File::Absent, "from {start:?}");
                    let cur = disk.current.key().expect("a current key at the end");
                    if !originally_valid.is_empty() {
                        assert!(
                            originally_valid.contains(&cur),
                            "a valid key existed; none may be invented: {start:?}"
                        );
                    }
                }
            }
        }
    }
    assert_eq!(states, 2 * 125);
}

/// How a simulated peer follows the node's annotations.
#[derive(Debug, Clone, Copy)]
enum Follow {
    /// Sees every change after `lag` seconds.
    Lag(u64),
    /// Never sees anything (agent down).
    Absent,
}

struct Peer {
    follow: Follow,
    /// The annotations it has applied: (public key, next key).
    view: (Option<PublicKey>, Option<PublicKey>),
}

/// What the API holds for the node: a history of publishes, so that a
/// lagging peer sees an older one.
struct Api {
    history: Vec<(u64, Option<PublicKey>, Option<PublicKey>)>,
    done: Option<String>,
}

impl Api {
    fn as_of(&self, t: u64) -> (Option<PublicKey>, Option<PublicKey>) {
        self.history
            .iter()
            .rev()
            .find(|(at, ..)| *at <= t)
            .map(|(_, k, n)| (*k, *n))
            .unwrap_or((None, None))
    }
}

struct Outcome {
    /// Seconds during which a responsive peer had no key the node accepts.
    responsive_gap: u64,
    final_disk: Disk,
    rotated: bool,
    done: Option<String>,
    crashes: usize,
}

/// Run one rotation second by second. `crash_at`: decision rounds after
/// which the agent dies before publishing or touching the device; it comes
/// back `restart_delay` seconds later with only the disk.
fn simulate(follows: &[Follow], crash_at: &BTreeSet<usize>, restart_delay: u64) -> Outcome {
    let policy = Policy {
        stage_timeout: 60,
        retire_timeout: 180,
        every: None,
        jitter: 0,
    };
    let first = key();
    let mut disk = Disk {
        current: File::Key {
            key: first,
            since: 0,
        },
        next: File::Absent,
        old: File::Absent,
    };
    let mut api = Api {
        history: vec![(0, Some(first), None)],
        done: None,
    };
    let mut peers: Vec<Peer> = follows
        .iter()
        .map(|f| Peer {
            follow: *f,
            view: (Some(first), None),
        })
        .collect();
    // The device starts with the current key only.
    let mut device: BTreeSet<PublicKey> = [first].into();
    let mut round = 0usize;
    let mut down_until: Option<u64> = None;
    let mut responsive_gap = 0;
    let mut crashes = 0;
    let mut fresh = key;
    let requested = Some("nonce-1".to_string());
    for now in 1..2000u64 {
        // Peers catch up with what the API said `lag` seconds ago.
        for p in &mut peers {
            if let Follow::Lag(l) = p.follow {
                p.view = api.as_of(now.saturating_sub(l));
            }
        }
        // A peer has a session on a local key when it knows the key and the
        // device accepts it (it keeps links for both its known keys).
        let sessions: Vec<BTreeSet<PublicKey>> = peers
            .iter()
            .map(|p| {
                [p.view.0, p.view.1]
                    .into_iter()
                    .flatten()
                    .filter(|k| device.contains(k))
                    .collect()
            })
            .collect();
        for (p, s) in peers.iter().zip(&sessions) {
            if matches!(p.follow, Follow::Lag(_)) && s.is_empty() {
                responsive_gap += 1;
            }
        }
        if let Some(t) = down_until {
            if now < t {
                continue;
            }
            down_until = None;
        }
        // The agent: decide, carry out at most one step, publish, set the device.
        let ack = Ack::Keys(
            device
                .iter()
                .filter(|k| sessions.iter().all(|s| s.contains(k)))
                .copied()
                .collect(),
        );
        let inputs = Inputs {
            now,
            requested: requested.clone(),
            done: api.done.clone(),
            ack,
        };
        let d = decide(&disk, &inputs, &policy);
        check_decision(&disk, &d);
        // The device follows the decision for the disk as it is.
        if let Some(dk) = d.device {
            device = [Some(dk.primary), dk.extra].into_iter().flatten().collect();
        }
        let last = api.history.last().map(|(_, k, n)| (*k, *n));
        if last != Some((d.publish.public_key, d.publish.next_public_key)) {
            api.history
                .push((now, d.publish.public_key, d.publish.next_public_key));
        }
        if let Some(done) = d.publish.done.clone() {
            api.done = Some(done);
        }
        if let Some(step) = d.step {
            apply(&mut disk, step, now, &mut fresh);
            // Published keys are held by the device at every instant: the
            // next decision, on the new disk, must still hold them.
            let d2 = decide(&disk, &inputs, &policy);
            let dk = d2.device.expect("device keys");
            let held: BTreeSet<PublicKey> =
                [Some(dk.primary), dk.extra].into_iter().flatten().collect();
            let (pk, nk) = api.as_of(now);
            for k in [pk, nk].into_iter().flatten() {
                assert!(
                    held.contains(&k),
                    "step {step:?} dropped a key that is still published"
                );
            }
            if crash_at.contains(&round) {
                crashes += 1;
                down_until = Some(now + restart_delay);
            }
            round += 1;
        }
        if d.step.is_none()
            && d.phase == Phase::Idle
            && api.done.is_some()
            && disk.current.key() != Some(first)
        {
            break;
        }
    }
    Outcome {
        responsive_gap,
        rotated: disk.current.key() != Some(first),
        final_disk: disk,
        done: api.done,
        crashes,
    }
}

fn converged(o: &Outcome) {
    assert!(o.rotated, "the key was not rotated");
    assert_eq!(o.final_disk.next, File::Absent);
    assert_eq!(o.final_disk.old, File::Absent);
    assert_eq!(o.done.as_deref(), Some("nonce-1"));
}

#[test]
fn fast_peers_never_lose_a_session_even_with_a_crash_at_any_step() {
    let fast = [Follow::Lag(1), Follow::Lag(2), Follow::Lag(0)];
    let clean = simulate(&fast, &BTreeSet::new(), 0);
    converged(&clean);
    assert_eq!(clean.responsive_gap, 0);
    for crash in 0..6 {
        for delay in [0, 1, 5, 90, 400] {
            let o = simulate(&fast, &[crash].into(), delay);
            converged(&o);
            assert!(o.crashes <= 1);
            assert_eq!(
                o.responsive_gap, 0,
                "crash after step {crash}, down {delay}s: a peer lost its session"
            );
        }
    }
    // A crash after every step.
    let o = simulate(&fast, &(0..10).collect(), 3);
    converged(&o);
    assert_eq!(o.responsive_gap, 0);
}

#[test]
fn slow_peers_within_the_timeouts_keep_their_sessions() {
    // 45 s behind: the stage waits for it; switching without it would be
    // fine too, as the old key stays accepted until it catches up.
    let o = simulate(&[Follow::Lag(1), Follow::Lag(45)], &BTreeSet::new(), 0);
    converged(&o);
    assert_eq!(o.responsive_gap, 0);
    // Slower than the stage timeout but within the retire timeout.
    let o = simulate(&[Follow::Lag(1), Follow::Lag(100)], &BTreeSet::new(), 0);
    converged(&o);
    assert_eq!(o.responsive_gap, 0);
}

#[test]
fn an_absent_peer_does_not_block_the_rotation() {
    let o = simulate(&[Follow::Lag(1), Follow::Absent], &BTreeSet::new(), 0);
    converged(&o);
    // The responsive peer never lost its session.
    assert_eq!(o.responsive_gap, 0);
}

#[test]
fn a_request_already_done_starts_nothing_and_a_new_one_does() {
    let a = key();
    let disk = Disk {
        current: File::Key { key: a, since: 0 },
        next: File::Absent,
        old: File::Absent,
    };
    let mut inputs = Inputs {
        now: 10,
        requested: Some("x".into()),
        done: Some("x".into()),
        ack: Ack::Unknown,
    };
    assert_eq!(decide(&disk, &inputs, &Policy::default()).step, None);
    inputs.requested = Some("y".into());
    assert_eq!(
        decide(&disk, &inputs, &Policy::default()).step,
        Some(Step::CreateNext)
    );
}
