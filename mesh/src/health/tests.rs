//! Per-peer health on hand-built device samples: dead pairs, handshake
//! storms, and what the annotation reports.

use super::*;
use keys::PrivateKey;

fn key() -> PublicKey {
    PrivateKey::generate().public_key()
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn attempts(unanswered: Option<u64>, initiations: u64, answered: u64) -> Evidence {
    Evidence::Attempts {
        unanswered_for: unanswered.map(secs),
        initiations,
        answered,
    }
}

#[test]
fn unanswered_past_the_limit_is_no_handshake() {
    let k = key();
    let mut t = Tracker::new(REKEY_ATTEMPT_TIME);
    let at = |t: &mut Tracker, now, u| {
        t.observe(
            secs(now),
            &[Sample {
                key: k,
                evidence: attempts(u, 3, 0),
            }],
        )[0]
        .clone()
    };
    assert_eq!(at(&mut t, 0, None).problem, None);
    assert_eq!(at(&mut t, 10, Some(90)).problem, None, "at the limit");
    let h = at(&mut t, 20, Some(91));
    assert_eq!(h.problem, Some(Problem::NoHandshake));
    assert_eq!(h.without_handshake_secs, Some(91));
    assert_eq!(at(&mut t, 30, None).problem, None, "answered again");
}

#[test]
fn a_storm_is_a_rate_above_the_paced_maximum() {
    let k = key();
    let mut t = Tracker::new(REKEY_ATTEMPT_TIME);
    let mut last = None;
    // 40 handshakes a minute: sampled every 5 s.
    for i in 0..=24u64 {
        let n = i * 40 / 12;
        last = Some(
            t.observe(
                secs(i * 5),
                &[Sample {
                    key: k,
                    evidence: attempts(None, n, n),
                }],
            )[0]
            .clone(),
        );
        if i * 5 < 30 {
            assert_eq!(
                last.as_ref().unwrap().handshakes_per_minute,
                None,
                "no rate before half a window"
            );
        }
    }
    let h = last.unwrap();
    assert_eq!(h.problem, Some(Problem::Storm));
    let r = h.handshakes_per_minute.unwrap();
    assert!((r - 80.0).abs() < 5.0, "rate {r}");
}

#[test]
fn pacing_at_its_maximum_is_not_a_storm() {
    // One initiation per REKEY_TIMEOUT on each of two links (a rotation),
    // the most pacing allows, for ten minutes.
    let k = key();
    let mut t = Tracker::new(REKEY_ATTEMPT_TIME);
    for i in 0..=120u64 {
        let h = t.observe(
            secs(i * 5),
            &[Sample {
                key: k,
                evidence: attempts(Some(i * 5), 2 * i, 0),
            }],
        );
        if i * 5 <= 90 {
            assert_eq!(h[0].problem, None, "at {} s: {:?}", i * 5, h[0]);
        }
    }
}

#[test]
fn a_dead_pair_wins_over_a_storm() {
    let k = key();
    let mut t = Tracker::new(secs(5));
    t.observe(
        secs(0),
        &[Sample {
            key: k,
            evidence: attempts(None, 0, 0),
        }],
    );
    let h = t.observe(
        secs(40),
        &[Sample {
            key: k,
            evidence: attempts(Some(30), 100, 0),
        }],
    );
    assert_eq!(h[0].problem, Some(Problem::NoHandshake));
}

#[test]
fn kernel_peers_are_judged_by_their_last_handshake_with_keepalive_only() {
    let k = key();
    let lh = |age: Option<u64>, keepalive| Evidence::LastHandshake {
        age: age.map(secs),
        keepalive,
    };
    let mut t = Tracker::new(REKEY_ATTEMPT_TIME);
    let mut at = |now, e| {
        t.observe(
            secs(now),
            &[Sample {
                key: k,
                evidence: e,
            }],
        )[0]
        .problem
    };
    assert_eq!(at(0, lh(None, true)), None, "just appeared");
    assert_eq!(at(90, lh(None, true)), None);
    assert_eq!(
        at(91, lh(None, true)),
        Some(Problem::NoHandshake),
        "never, for longer than the limit"
    );
    assert_eq!(
        at(100, lh(Some(210), true)),
        None,
        "a rekey plus the attempt time"
    );
    assert_eq!(at(100, lh(Some(211), true)), Some(Problem::NoHandshake));
    assert_eq!(
        at(100, lh(Some(5000), false)),
        None,
        "no keepalive: idle is fine"
    );
    assert_eq!(at(5000, lh(None, false)), None);
}

#[test]
fn forgotten_peers_start_over() {
    let k = key();
    let mut t = Tracker::new(secs(10));
    let lh = Evidence::LastHandshake {
        age: None,
        keepalive: true,
    };
    t.observe(
        secs(0),
        &[Sample {
            key: k,
            evidence: lh,
        }],
    );
    t.observe(secs(5), &[]);
    // Seen again at 20 s: "since it appeared" counts from there.
    assert_eq!(
        t.observe(
            secs(20),
            &[Sample {
                key: k,
                evidence: lh
            }]
        )[0]
        .problem,
        None
    );
    assert_eq!(
        t.observe(
            secs(31),
            &[Sample {
                key: k,
                evidence: lh
            }]
        )[0]
        .problem,
        Some(Problem::NoHandshake)
    );
}

fn health(key: PublicKey, problem: Option<Problem>) -> PeerHealth {
    PeerHealth {
        key,
        problem,
        without_handshake_secs: None,
        handshakes_per_minute: None,
    }
}

#[test]
fn the_annotation_names_nodes_sorted_and_caps_the_list() {
    let keys: Vec<PublicKey> = (0..20).map(|_| key()).collect();
    let names: BTreeMap<PublicKey, String> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (*k, format!("node-{i:02}")))
        .collect();
    let mut hs: Vec<PeerHealth> = keys
        .iter()
        .rev()
        .map(|k| health(*k, Some(Problem::NoHandshake)))
        .collect();
    hs[0].problem = Some(Problem::Storm);
    hs[1].problem = None;
    let p = PeerProblems::from_health(&hs, |k| names.get(k).cloned());
    assert_eq!(p.count(), 19);
    assert_eq!(p.no_handshake.len(), 16);
    assert_eq!(p.no_handshake[0], "node-00");
    assert_eq!(p.storm, Vec::<String>::new(), "the storm is past the cap");
    assert_eq!(p.more, 3);
    let v = p.to_annotation().unwrap();
    assert!(v.len() < crate::publish::MAX_VALUE_LEN, "{} bytes", v.len());
    assert_eq!(PeerProblems::parse(&v).unwrap(), p);
}

#[test]
fn healthy_means_no_annotation_and_unknown_keys_get_a_fingerprint() {
    let k = key();
    assert_eq!(
        PeerProblems::from_health(&[health(k, None)], |_| None).to_annotation(),
        None
    );
    let p = PeerProblems::from_health(&[health(k, Some(Problem::Storm))], |_| None);
    assert_eq!(p.storm, vec![k.fingerprint()]);
    assert_eq!(
        p.to_annotation().unwrap(),
        format!("{{\"storm\":[\"{}\"]}}", k.fingerprint())
    );
    assert_eq!(p.to_string(), format!("STORM: {}", k.fingerprint()));
}
