//! What the core reports of a peer's health, on simulated time: how long
//! its initiations have gone unanswered (a dead pair) and how many it
//! sent and answered (a storm), the figures behind `podguard status`'s
//! peer problems and the per-peer series on /metrics.

mod sim;

use std::time::Duration;

use sim::Net;

#[test]
fn a_dead_peer_shows_as_unanswered_and_recovers() {
    let mut net = Net::mesh(2);
    net.send_pod(0, 1, b"hello");
    net.drive();
    assert_eq!(net.got(1, b"hello"), 1);
    let s = net.status(0, 1);
    assert_eq!(s.unanswered_for, None, "answered at once");
    assert_eq!(s.handshake_initiations, 1);
    assert_eq!(net.status(1, 0).handshakes_answered, 1);

    // Node 1 goes away; node 0 keeps sending once a second.
    net.link_up = false;
    let mut worst = Duration::ZERO;
    for s in 0..150u32 {
        net.send_pod(0, 1, format!("lost {s}").as_bytes());
        net.advance(Duration::from_secs(1));
        worst = worst.max(net.status(0, 1).unanswered_for.unwrap_or_default());
    }
    // No reply for 15 s starts a handshake (KEEPALIVE + REKEY_TIMEOUT);
    // from then on it is unanswered, well past REKEY_ATTEMPT_TIME (90 s).
    assert!(
        worst > Duration::from_secs(100) && worst <= Duration::from_secs(140),
        "unanswered for {worst:?}"
    );
    let tries = net.status(0, 1).handshake_initiations;
    eprintln!("unanswered for {worst:?} with {tries} initiations");
    // Paced at REKEY_TIMEOUT (5 s): at most one per 5 s for 150 s.
    assert!((10..=32).contains(&tries), "{tries} initiations");

    // Back: the next handshake clears it.
    net.link_up = true;
    for s in 0..10u32 {
        net.send_pod(0, 1, format!("back {s}").as_bytes());
        net.advance(Duration::from_secs(1));
    }
    assert!(net.got(1, b"back 9") == 1, "traffic resumed");
    assert_eq!(net.status(0, 1).unanswered_for, None);
}

#[test]
fn rekeys_of_a_healthy_pair_never_look_unanswered() {
    let mut net = Net::mesh(2);
    let mut worst = Duration::ZERO;
    for s in 0..900u32 {
        net.send_pod(0, 1, format!("a{s}").as_bytes());
        net.send_pod(1, 0, format!("b{s}").as_bytes());
        net.advance(Duration::from_secs(1));
        for (i, j) in [(0, 1), (1, 0)] {
            worst = worst.max(net.status(i, j).unanswered_for.unwrap_or_default());
        }
    }
    // A rekey is answered within a round trip; the sampling is per second.
    assert!(worst <= Duration::from_secs(1), "unanswered for {worst:?}");
    let sent = net.status(0, 1).handshake_initiations + net.status(1, 0).handshake_initiations;
    let answered = net.status(0, 1).handshakes_answered + net.status(1, 0).handshakes_answered;
    eprintln!("15 min: {sent} initiations, worst unanswered {worst:?}");
    // 15 minutes at one rekey per ~2 minutes, every one answered.
    assert!((6..=16).contains(&sent), "{sent} initiations");
    assert_eq!(sent, answered, "every initiation was answered");
}
