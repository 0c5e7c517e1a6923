//! The rotation state machine on hand-set disks and clocks: requests,
//! the schedule and its jitter, and a current key that is never replaced.
use super::*;
use crate::PrivateKey;

fn k() -> PublicKey {
    PrivateKey::generate().public_key()
}

fn key(key: PublicKey, since: u64) -> File {
    File::Key { key, since }
}

fn inputs(now: u64) -> Inputs {
    Inputs {
        now,
        requested: None,
        done: None,
        ack: Ack::Keys(BTreeSet::new()),
    }
}

#[test]
fn idle_without_request_does_nothing() {
    let a = k();
    let disk = Disk {
        current: key(a, 0),
        next: File::Absent,
        old: File::Absent,
    };
    let d = decide(&disk, &inputs(100), &Policy::default());
    assert_eq!(d.phase, Phase::Idle);
    assert_eq!(d.step, None);
    assert_eq!(
        d.device,
        Some(DeviceKeys {
            primary: a,
            extra: None
        })
    );
    assert_eq!(d.publish.public_key, Some(a));
    assert_eq!(d.publish.next_public_key, None);
}

#[test]
fn request_starts_and_done_is_published_once_staged() {
    let (a, b) = (k(), k());
    let mut inp = inputs(10);
    inp.requested = Some("n1".into());
    let mut disk = Disk {
        current: key(a, 0),
        next: File::Absent,
        old: File::Absent,
    };
    assert_eq!(
        decide(&disk, &inp, &Policy::default()).step,
        Some(Step::CreateNext)
    );
    disk.next = key(b, 10);
    let d = decide(&disk, &inp, &Policy::default());
    assert_eq!(d.phase, Phase::Staged { next: b, since: 10 });
    assert_eq!(d.publish.done.as_deref(), Some("n1"));
    assert_eq!(d.publish.next_public_key, Some(b));
    assert_eq!(d.step, None);
    assert_eq!(d.wake_at, Some(70));
    // The same nonce, once done, does not start another rotation.
    inp.done = Some("n1".into());
    disk.next = File::Absent;
    assert_eq!(decide(&disk, &inp, &Policy::default()).step, None);
}

#[test]
fn schedule_with_jitter() {
    let a = k();
    let disk = Disk {
        current: key(a, 1000),
        next: File::Absent,
        old: File::Absent,
    };
    let p = Policy {
        every: Some(3600),
        jitter: 100,
        ..Policy::default()
    };
    let d = decide(&disk, &inputs(4699), &p);
    assert_eq!(d.step, None);
    assert_eq!(d.wake_at, Some(4700));
    assert_eq!(
        decide(&disk, &inputs(4700), &p).step,
        Some(Step::CreateNext)
    );
}

#[test]
fn jitter_is_bounded_stable_and_spreads_nodes() {
    let every = 86_400;
    let js: BTreeSet<u64> = (0..50)
        .map(|i| jitter(&format!("node-{i}"), every))
        .collect();
    assert!(js.iter().all(|j| *j <= every / 5));
    assert!(js.len() > 45, "nodes should not share slots: {js:?}");
    assert_eq!(jitter("a", every), jitter("a", every));
    assert_eq!(jitter("a", 0), 0);
}

#[test]
fn unusable_current_key_is_never_replaced() {
    let disk = Disk {
        current: File::Unusable,
        next: File::Absent,
        old: File::Absent,
    };
    let d = decide(&disk, &inputs(0), &Policy::default());
    assert_eq!(d.step, None);
    assert_eq!(d.device, None);
}
