//! CNI requests and results against the spec: IDs, ADD parsing, the
//! error code and message of each bad input, DEL without a netns, and
//! the result shape of each version.

use super::*;

fn envs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const CONF: &str = r#"{"cniVersion":"1.0.0","name":"podguard","type":"podguard-cni"}"#;

fn add_env() -> BTreeMap<String, String> {
    envs(&[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
    ])
}

#[test]
fn ids_follow_the_spec() {
    for ok in ["podguard", "a", "0", "net-1_x.y", "k8s-pod-network"] {
        assert!(valid_id(ok), "{ok}");
    }
    for bad in [
        "", ".", "..", "../x", "a/b", "-a", "_a", ".a", "a b", "a\n", "é",
    ] {
        assert!(!valid_id(bad), "{bad:?}");
    }
}

/// GC's list of valid attachments: `null` is an empty list (what a Go
/// runtime sends when no pod is left: libcni marshals a nil slice so); a
/// configuration without the key is refused, naming it, since collecting
/// everything on a runtime's omission would free running pods' addresses.
#[test]
fn gc_takes_null_as_nothing_valid_and_refuses_a_missing_list() {
    let gc_env = envs(&[("CNI_COMMAND", "GC")]);
    let conf = |extra: &str| {
        format!(r#"{{"cniVersion":"1.1.0","name":"podguard","type":"podguard-cni"{extra}}}"#)
    };
    let r = parse(
        &gc_env,
        conf(r#","cni.dev/valid-attachments":null"#).as_bytes(),
    )
    .unwrap();
    assert_eq!(r.conf.valid_attachments, Some(None));
    let r = parse(
        &gc_env,
        conf(r#","cni.dev/valid-attachments":[]"#).as_bytes(),
    )
    .unwrap();
    assert_eq!(r.conf.valid_attachments, Some(Some(vec![])));
    let r = parse(
        &gc_env,
        conf(r#","cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]"#).as_bytes(),
    )
    .unwrap();
    assert_eq!(r.conf.valid_attachments.unwrap().unwrap().len(), 1);
    let e = parse(&gc_env, conf("").as_bytes()).unwrap_err();
    assert_eq!(e.code, code::INVALID_CONFIG);
    assert!(e.msg.contains("cni.dev/valid-attachments"), "{}", e.msg);
}

#[test]
fn parses_add() {
    let r = parse(&add_env(), CONF.as_bytes()).unwrap();
    assert_eq!(r.command, Command::Add);
    assert_eq!(r.ifname, "eth0");
}

#[test]
fn bad_inputs_get_the_right_codes_and_name_the_problem() {
    let cases: Vec<(BTreeMap<String, String>, &str, u32, &str)> = vec![
        (add_env(), "{nope", code::DECODE, "not valid JSON"),
        (
            add_env(),
            r#"{"cniVersion":"9.9.9","name":"n","type":"podguard-cni"}"#,
            code::INCOMPATIBLE_VERSION,
            "9.9.9",
        ),
        (
            add_env(),
            r#"{"cniVersion":"1.0.0","type":"bridge"}"#,
            code::INVALID_CONFIG,
            "bridge",
        ),
        // The type names the binary: the old "podguard" made runtimes
        // look for a binary that was never installed.
        (
            add_env(),
            r#"{"cniVersion":"1.0.0","name":"n","type":"podguard"}"#,
            code::INVALID_CONFIG,
            "\"podguard-cni\"",
        ),
        // The network name is never a path.
        (
            add_env(),
            r#"{"cniVersion":"1.0.0","name":"../../x","type":"podguard-cni"}"#,
            code::INVALID_CONFIG,
            "network name \"../../x\" is not valid",
        ),
        (
            add_env(),
            r#"{"cniVersion":"1.0.0","type":"podguard-cni"}"#,
            code::INVALID_CONFIG,
            "network name \"\" is not valid",
        ),
        // A field of the wrong type is named.
        (
            add_env(),
            r#"{"cniVersion":"1.0.0","name":"n","type":"podguard-cni","mtu":"1400"}"#,
            code::DECODE,
            "has a bad field: mtu",
        ),
        (
            add_env(),
            r#"{"cniVersion":"1.0.0","name":".hidden","type":"podguard-cni"}"#,
            code::INVALID_CONFIG,
            "must start with a letter or digit",
        ),
        (
            envs(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", ".."),
                ("CNI_NETNS", "/x"),
                ("CNI_IFNAME", "eth0"),
            ]),
            CONF,
            code::INVALID_ENV,
            "CNI_CONTAINERID \"..\" is not valid",
        ),
        (
            add_env(),
            r#"{"cniVersion":"1.0.0","name":"n","type":"podguard-cni","mtu":"x"}"#,
            code::DECODE,
            "bad field",
        ),
        (
            add_env(),
            r#"{"cniVersion":"1.0.0","name":"n","type":"podguard-cni","mtu":70000}"#,
            code::INVALID_CONFIG,
            "70000",
        ),
        (envs(&[]), CONF, code::INVALID_ENV, "CNI_COMMAND"),
        (
            envs(&[("CNI_COMMAND", "ADD")]),
            CONF,
            code::INVALID_ENV,
            "CNI_CONTAINERID, CNI_IFNAME, CNI_NETNS",
        ),
        (
            envs(&[("CNI_COMMAND", "FROB")]),
            CONF,
            code::INVALID_ENV,
            "FROB",
        ),
        (
            envs(&[
                ("CNI_COMMAND", "CHECK"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_NETNS", "/x"),
                ("CNI_IFNAME", "eth0"),
            ]),
            r#"{"cniVersion":"0.3.1","name":"n","type":"podguard-cni"}"#,
            code::INCOMPATIBLE_VERSION,
            "CHECK",
        ),
        (
            envs(&[("CNI_COMMAND", "STATUS")]),
            r#"{"cniVersion":"1.0.0","name":"n","type":"podguard-cni"}"#,
            code::INCOMPATIBLE_VERSION,
            "1.1.0",
        ),
    ];
    for (e, stdin, want, needle) in cases {
        let err = parse(&e, stdin.as_bytes()).unwrap_err();
        assert_eq!(err.code, want, "{stdin}: {err}");
        assert!(
            err.to_string().contains(needle),
            "{err} should mention {needle}"
        );
    }
}

#[test]
fn del_tolerates_missing_netns() {
    let mut e = add_env();
    e.insert("CNI_COMMAND".into(), "DEL".into());
    e.remove("CNI_NETNS");
    assert!(parse(&e, CONF.as_bytes()).unwrap().netns.is_none());
}

#[test]
fn version_answer() {
    let v = version_result("0.4.0");
    assert_eq!(v["cniVersion"], "0.4.0");
    assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 5);
    assert_eq!(version_result("bogus")["cniVersion"], LATEST);
}

#[test]
fn result_shapes_per_version() {
    let r = AddResult {
        interfaces: vec![
            ResultInterface {
                name: "pgabc".into(),
                mac: "aa:bb:cc:dd:ee:ff".into(),
                sandbox: None,
            },
            ResultInterface {
                name: "eth0".into(),
                mac: "aa:bb:cc:dd:ee:01".into(),
                sandbox: Some("/run/netns/x".into()),
            },
        ],
        ips: vec![
            (
                "10.244.1.5/24".parse().unwrap(),
                "10.244.1.1".parse().unwrap(),
            ),
            ("fd00::5/64".parse().unwrap(), "fd00::1".parse().unwrap()),
        ],
        mtu: 1440,
    };
    let old = format_add(&r, "0.3.1");
    assert_eq!(old["ips"][0]["version"], "4");
    assert_eq!(old["ips"][1]["version"], "6");
    let new = format_add(&r, "1.0.0");
    assert!(new["ips"][0].get("version").is_none());
    assert_eq!(new["routes"][1]["dst"], "::/0");
    assert_eq!(new["interfaces"][1]["sandbox"], "/run/netns/x");
    assert_eq!(format_add(&r, "1.1.0")["interfaces"][0]["mtu"], 1440);
    let back = prev_result_ips(&new).unwrap();
    assert_eq!(back[0].0, r.ips[0].0);
}
