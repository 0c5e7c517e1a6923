//! What `status`, `may_rotate` and `progress` conclude from hand-built
//! Node views.
use super::*;
use keys::PrivateKey;

fn view(name: &str, i: u8, key: &PublicKey, extra: &[(&str, &str)]) -> NodeView {
    let mut annotations: BTreeMap<String, String> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    annotations.insert(ANN_PUBLIC_KEY.into(), key.to_base64());
    NodeView {
        info: NodeInfo {
            name: name.into(),
            pod_cidrs: vec![format!("10.244.{i}.0/24")],
            public_key: Some(key.to_base64()),
            next_public_key: annotations.get(ANN_NEXT_PUBLIC_KEY).cloned(),
            ..Default::default()
        },
        annotations,
        heartbeat: Heartbeat::Unknown,
    }
}

fn with_digests(mut nodes: Vec<NodeView>) -> Vec<NodeView> {
    let infos: Vec<NodeInfo> = nodes.iter().map(|n| n.info.clone()).collect();
    let d = crate::digest::expected(&infos);
    for n in &mut nodes {
        n.annotations.insert(ANN_MESH_DIGEST.into(), d.clone());
    }
    nodes
}

#[test]
fn refusals_name_the_problem() {
    let k = PrivateKey::generate().public_key();
    let nodes = vec![
        view("a", 1, &k, &[(ANN_ROTATION_STATE, "idle")]),
        view(
            "b",
            2,
            &PrivateKey::generate().public_key(),
            &[(ANN_ROTATION_STATE, "staged")],
        ),
        view(
            "c",
            3,
            &PrivateKey::generate().public_key(),
            &[(ANN_ROTATE_REQUESTED, "x")],
        ),
    ];
    assert_eq!(may_rotate(&nodes, "a"), Ok(()));
    let e = may_rotate(&nodes, "zz").unwrap_err().to_string();
    assert!(
        e.contains("\"zz\" not found") && e.contains("a, b, c"),
        "{e}"
    );
    let e = may_rotate(&nodes, "b").unwrap_err().to_string();
    assert!(
        e.contains("already rotating") && e.contains("staged"),
        "{e}"
    );
    let e = may_rotate(&nodes, "c").unwrap_err().to_string();
    assert!(e.contains("request is pending"), "{e}");
    let mut no_key = nodes.clone();
    no_key[0].annotations.remove(ANN_PUBLIC_KEY);
    assert!(matches!(may_rotate(&no_key, "a"), Err(Refused::NoAgent(_))));
}

#[test]
fn a_node_whose_agent_is_down_is_refused_and_unknown_heartbeats_are_not() {
    let k = PrivateKey::generate().public_key();
    let mut nodes = vec![view("a", 1, &k, &[])];
    // Leases not read (or none at all): not judged.
    assert_eq!(may_rotate(&nodes, "a"), Ok(()));
    nodes[0].heartbeat = Heartbeat::Renewed {
        age_secs: 5,
        duration_secs: 40,
    };
    assert_eq!(may_rotate(&nodes, "a"), Ok(()));
    nodes[0].heartbeat = Heartbeat::Renewed {
        age_secs: 95,
        duration_secs: 40,
    };
    let e = may_rotate(&nodes, "a").unwrap_err().to_string();
    assert!(
        e.contains("\"a\"'s agent is not alive")
            && e.contains("last heartbeat 95s ago")
            && e.contains("podguard status"),
        "{e}"
    );
    // An hour reads as `podguard status` reads it.
    nodes[0].heartbeat = Heartbeat::Renewed {
        age_secs: 3600,
        duration_secs: 40,
    };
    let e = may_rotate(&nodes, "a").unwrap_err().to_string();
    assert!(e.contains("last heartbeat 60m ago"), "{e}");
    nodes[0].heartbeat = Heartbeat::Missing;
    let e = may_rotate(&nodes, "a").unwrap_err().to_string();
    assert!(e.contains("no heartbeat Lease"), "{e}");
}

#[test]
fn progress_until_every_node_agrees() {
    let (old, new) = (
        PrivateKey::generate().public_key(),
        PrivateKey::generate().public_key(),
    );
    let kb = PrivateKey::generate().public_key();
    let nodes = vec![
        view("a", 1, &old, &[(ANN_ROTATE_REQUESTED, "n")]),
        view("b", 2, &kb, &[]),
    ];
    assert!(
        matches!(progress(&nodes, "a", "n", &old), Progress::Pending { waiting_for } if waiting_for.contains("take the request"))
    );
    let staged = vec![
        view(
            "a",
            1,
            &old,
            &[
                (ANN_ROTATE_DONE, "n"),
                (ANN_ROTATION_STATE, "staged"),
                (ANN_NEXT_PUBLIC_KEY, &new.to_base64()),
            ],
        ),
        view("b", 2, &kb, &[]),
    ];
    assert!(
        matches!(progress(&staged, "a", "n", &old), Progress::Pending { waiting_for } if waiting_for.contains("switch"))
    );
    let switched = vec![
        view(
            "a",
            1,
            &new,
            &[(ANN_ROTATE_DONE, "n"), (ANN_ROTATION_STATE, "idle")],
        ),
        view("b", 2, &kb, &[]),
    ];
    assert!(
        matches!(progress(&switched, "a", "n", &old), Progress::Pending { waiting_for } if waiting_for.contains("a, b"))
    );
    let done = with_digests(switched);
    assert_eq!(
        progress(&done, "a", "n", &old),
        Progress::Done {
            new_key: new.fingerprint(),
            agents_down: vec![],
        }
    );
    let r = rows(&done, 0);
    assert!(r.iter().all(|r| r.digest == Agreement::Agrees));
    assert_eq!(r[0].rotation, "idle");
}

#[test]
fn a_node_whose_agent_is_down_is_not_waited_for_but_named() {
    let (old, new) = (
        PrivateKey::generate().public_key(),
        PrivateKey::generate().public_key(),
    );
    let switched = |hb_c: Heartbeat| {
        let mut nodes = with_digests(vec![
            view(
                "a",
                1,
                &new,
                &[(ANN_ROTATE_DONE, "n"), (ANN_ROTATION_STATE, "idle")],
            ),
            view("b", 2, &PrivateKey::generate().public_key(), &[]),
            view("c", 3, &PrivateKey::generate().public_key(), &[]),
        ]);
        // c never applied the new key.
        nodes[2]
            .annotations
            .insert(ANN_MESH_DIGEST.into(), "stale".into());
        nodes[2].heartbeat = hb_c;
        nodes
    };
    // Alive, or heartbeats not read: waited for.
    for hb in [
        Heartbeat::Unknown,
        Heartbeat::Renewed {
            age_secs: 3,
            duration_secs: 40,
        },
    ] {
        assert!(
            matches!(progress(&switched(hb), "a", "n", &old), Progress::Pending { waiting_for } if waiting_for == "node(s) c to apply the new key"),
            "{hb:?}"
        );
    }
    // Down (Lease run out, or none): done, and c named.
    for hb in [
        Heartbeat::Missing,
        Heartbeat::Renewed {
            age_secs: 95,
            duration_secs: 40,
        },
    ] {
        assert_eq!(
            progress(&switched(hb), "a", "n", &old),
            Progress::Done {
                new_key: new.fingerprint(),
                agents_down: vec!["c".into()],
            },
            "{hb:?}"
        );
    }
    // A down node that did apply it is not named.
    let mut nodes = switched(Heartbeat::Missing);
    let d = nodes[0].annotations[ANN_MESH_DIGEST].clone();
    nodes[2].annotations.insert(ANN_MESH_DIGEST.into(), d);
    assert!(
        matches!(progress(&nodes, "a", "n", &old), Progress::Done { agents_down, .. } if agents_down.is_empty())
    );
}

#[test]
fn only_a_request_no_agent_took_on_may_be_cancelled() {
    let k = PrivateKey::generate().public_key();
    let nodes = vec![
        view("pending", 1, &k, &[(ANN_ROTATE_REQUESTED, "x")]),
        view(
            "taken",
            2,
            &PrivateKey::generate().public_key(),
            &[
                (ANN_ROTATE_REQUESTED, "y"),
                (ANN_ROTATE_DONE, "y"),
                (ANN_ROTATION_STATE, "staged"),
            ],
        ),
        view("idle", 3, &PrivateKey::generate().public_key(), &[]),
    ];
    assert_eq!(may_cancel(&nodes, "pending"), Ok(()));
    let e = may_cancel(&nodes, "taken").unwrap_err().to_string();
    assert!(
        e.contains("no pending rotation request") && e.contains("under way (state staged)"),
        "{e}"
    );
    let e = may_cancel(&nodes, "idle").unwrap_err().to_string();
    assert_eq!(e, "node \"idle\" has no pending rotation request");
    assert!(matches!(
        may_cancel(&nodes, "zz"),
        Err(NotCancelled::UnknownNode(_))
    ));
    // The refusal to request again names the way out.
    let e = may_rotate(&nodes, "pending").unwrap_err().to_string();
    assert!(e.contains("podguard rotate --cancel --node pending"), "{e}");
}

#[test]
fn ages_read_as_kubectl_prints_them() {
    use crate::status::age;
    let cases = [
        (0, "0s"),
        (119, "119s"),
        (120, "2m"),
        (3600, "60m"),
        (7199, "119m"),
        (7200, "2h"),
        (172_799, "47h"),
        (172_800, "2d"),
    ];
    for (secs, want) in cases {
        assert_eq!(age(secs), want, "{secs}");
    }
}
