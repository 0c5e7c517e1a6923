//! Key rotation with two local × two remote keys on simulated time, as
//! the agent drives it (keys::rotation): stage the next key, switch,
//! retire — with traffic both ways all along, and with a restart in the
//! middle. Each scenario runs twice: one packet at a time (`seal`/`open`)
//! and through the device's parallel path (`seal_batch`/`open_batch` on
//! three threads), which picks the link for a whole run of packets.

mod sim;

use std::collections::BTreeMap;
use std::time::Duration;

use keys::PrivateKey;
use sim::Net;

/// Traffic both ways every 100 ms for `d`; returns the messages that did
/// not arrive, per direction.
fn traffic(net: &mut Net, tag: &str, d: Duration) -> (Vec<String>, Vec<String>) {
    let mut sent = Vec::new();
    let steps = d.as_millis() / 100;
    for s in 0..steps {
        let m = format!("{tag}-{s}");
        net.send_pod(0, 1, m.as_bytes());
        net.send_pod(1, 0, m.as_bytes());
        sent.push(m);
        net.advance(Duration::from_millis(100));
    }
    let lost = |net: &Net, j: usize| {
        sent.iter()
            .filter(|m| net.got(j, m.as_bytes()) != 1)
            .cloned()
            .collect::<Vec<_>>()
    };
    (lost(net, 1), lost(net, 0))
}

fn assert_no_loss(net: &mut Net, tag: &str, d: Duration) {
    let (to1, to0) = traffic(net, tag, d);
    assert!(
        to1.is_empty() && to0.is_empty(),
        "{tag}: lost 0→1 {to1:?}, 1→0 {to0:?}"
    );
}

/// The three phases of node 0's rotation, as the agent applies them.
fn stage(net: &mut Net, old: &PrivateKey, next: &PrivateKey) {
    let now = net.now;
    net.nodes[0].core.set_keys(old, Some(next), now);
    let announced = BTreeMap::from([(old.public_key(), next.public_key())]);
    net.nodes[1].core.set_next_keys(&announced, now);
}

fn switch(net: &mut Net, old: &PrivateKey, next: &PrivateKey) {
    let now = net.now;
    net.nodes[0].core.set_keys(next, Some(old), now);
    net.nodes[1]
        .core
        .rename_peers(&[(old.public_key(), next.public_key())], now);
    net.nodes[1].core.set_next_keys(&BTreeMap::new(), now);
}

fn retire(net: &mut Net, next: &PrivateKey) {
    let now = net.now;
    net.nodes[0].core.set_keys(next, None, now);
}

#[test]
fn a_rotation_loses_nothing() {
    rotation_loses_nothing(None);
}

#[test]
fn a_rotation_through_parallel_batches_loses_nothing() {
    rotation_loses_nothing(Some(3));
}

#[test]
fn a_restart_while_staged_recovers_and_the_rotation_completes() {
    restart_while_staged_recovers(None);
}

#[test]
fn a_restart_while_staged_recovers_through_parallel_batches() {
    restart_while_staged_recovers(Some(3));
}

fn rotation_loses_nothing(batch_threads: Option<usize>) {
    let mut net = Net::mesh(2);
    net.batch_threads = batch_threads;
    assert_no_loss(&mut net, "before", Duration::from_secs(5));
    let old = net.nodes[0].key.clone();
    let next = PrivateKey::generate();

    stage(&mut net, &old, &next);
    assert_no_loss(&mut net, "staged", Duration::from_secs(5));
    // Node 1 has a session on the next key: what rotation waits for.
    let acks = net.nodes[0].core.key_acks();
    assert!(
        acks.contains(&next.public_key()),
        "next key not acknowledged"
    );

    switch(&mut net, &old, &next);
    net.nodes[0].key = next.clone();
    assert_no_loss(&mut net, "switched", Duration::from_secs(5));

    retire(&mut net, &next);
    assert_no_loss(&mut net, "retired", Duration::from_secs(5));
    assert_eq!(net.nodes[0].core.public_keys(), vec![next.public_key()]);
    // Past a rekey interval the new key alone carries the traffic.
    assert_no_loss(&mut net, "later", Duration::from_secs(150));
}

fn restart_while_staged_recovers(batch_threads: Option<usize>) {
    let mut net = Net::mesh(2);
    net.batch_threads = batch_threads;
    assert_no_loss(&mut net, "before", Duration::from_secs(2));
    let old = net.nodes[0].key.clone();
    let next = PrivateKey::generate();
    stage(&mut net, &old, &next);
    assert_no_loss(&mut net, "staged", Duration::from_secs(2));

    // Node 0 crashes and comes back from its files: both keys, no sessions.
    net.restart(0, &[&old, &next]);
    // The restarted node's handshake timestamps are wall-clock ones, which
    // the simulated time has run ahead of, so here recovery comes from
    // node 1's side (its timers re-handshake after KEEPALIVE + REKEY
    // timeouts): the slow path. It must still come back by itself.
    let (to1, to0) = traffic(&mut net, "restart", Duration::from_secs(40));
    for lost in [&to1, &to0] {
        let last = lost
            .last()
            .map(|m| m.trim_start_matches("restart-").parse::<u32>());
        if let Some(Ok(n)) = last {
            assert!(
                n < 300,
                "still losing traffic 30 s after the restart: {lost:?}"
            );
        }
    }
    assert_no_loss(&mut net, "recovered", Duration::from_secs(5));

    switch(&mut net, &old, &next);
    net.nodes[0].key = next.clone();
    assert_no_loss(&mut net, "switched", Duration::from_secs(5));
    retire(&mut net, &next);
    assert_no_loss(&mut net, "retired", Duration::from_secs(5));
}
