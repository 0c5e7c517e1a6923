//! The key store on real files in temporary directories: modes, symlinks,
//! garbage, concurrent first starts, and rotation surviving a crash after
//! every step.
use super::*;
use std::os::unix::fs::PermissionsExt;

#[test]
fn generates_once_then_loads_same_key_with_0600() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/private.key");
    let a = load_or_generate(&path).unwrap();
    let b = load_or_generate(&path).unwrap();
    assert_eq!(a.public_key(), b.public_key());
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // The directory it created is the owner's alone.
    let dir_meta = fs::metadata(path.parent().unwrap()).unwrap();
    assert_eq!(dir_meta.permissions().mode() & 0o777, 0o700);
    let content = fs::read_to_string(&path).unwrap();
    assert_eq!(content, format!("{}\n", a.to_base64().as_str()));
    // No temp file left behind.
    let names: Vec<_> = fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn concurrent_generation_agrees_on_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("private.key");
    let keys: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|_| s.spawn(|| load_or_generate(&path).unwrap().public_key()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        keys.iter().all(|k| *k == keys[0]),
        "processes ended up with different keys"
    );
    assert_eq!(load(&path).unwrap().public_key(), keys[0]);
}

#[test]
fn loads_wg_genkey_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    let k = PrivateKey::generate();
    write(&path, &k).unwrap();
    assert_eq!(load(&path).unwrap().public_key(), k.public_key());
}

#[test]
fn refuses_group_readable_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    write(&path, &PrivateKey::generate()).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    let e = load_or_generate(&path).unwrap_err();
    assert!(matches!(e, StoreError::TooPermissive { mode: 0o640, .. }));
    assert!(e.to_string().contains("0640"), "{e}");
    // The file is untouched: nothing lost on bad input.
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o640
    );
}

#[test]
fn refuses_symlink_even_to_good_key() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    write(&real, &PrivateKey::generate()).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let e = load_or_generate(&link).unwrap_err();
    assert!(matches!(e, StoreError::Symlink { .. }), "{e}");
    assert!(e.to_string().contains("symlink"));
}

#[test]
fn refuses_directory() {
    let dir = tempfile::tempdir().unwrap();
    let e = load_or_generate(dir.path()).unwrap_err();
    assert!(matches!(e, StoreError::NotRegularFile { .. }), "{e}");
}

#[test]
fn garbage_file_is_an_error_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    fs::write(&path, "not a key\n").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    let e = load_or_generate(&path).unwrap_err();
    assert!(matches!(e, StoreError::InvalidKey { .. }), "{e}");
    assert_eq!(fs::read_to_string(&path).unwrap(), "not a key\n");
}

#[test]
fn error_for_corrupt_key_does_not_leak_content() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    let k = PrivateKey::generate();
    let mut s = k.to_base64().to_string();
    s.push_str("AAAA\n");
    fs::write(&path, &s).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    let e = load(&path).unwrap_err();
    let msg = format!("{e} {e:?}");
    assert!(!msg.contains(&s[..20]), "{msg}");
}

/// Real files, a crash (a fresh load) after every step: the machine
/// always finds a current key and ends with the staged one, alone, 0600.
#[test]
fn rotation_on_real_files_survives_a_crash_after_every_step() {
    use crate::rotation::{Ack, Inputs, Phase, Policy, decide};
    let dir = tempfile::tempdir().unwrap();
    let files = RotationFiles::new(&dir.path().join("private.key"));
    let first = load_or_generate(&files.current).unwrap().public_key();
    let mut inputs = Inputs {
        now: u64::MAX / 2,
        requested: Some("n".into()),
        done: None,
        ack: Ack::Unknown,
    };
    let mut steps = Vec::new();
    let mut staged = None;
    for _ in 0..20 {
        // A fresh process every round: nothing but the files.
        let loaded = files.load();
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        assert!(loaded.current.is_some(), "the current key went missing");
        let d = decide(&loaded.disk, &inputs, &Policy::default());
        if let Phase::Staged { next, .. } = d.phase {
            staged = Some(next);
        }
        if let Some(done) = d.publish.done {
            inputs.done = Some(done);
        }
        let Some(step) = d.step else { break };
        files.carry_out(step).unwrap();
        steps.push(step);
    }
    use crate::rotation::Step::*;
    assert_eq!(steps, [CreateNext, SaveOld, PromoteNext, RetireOld]);
    let now = load(&files.current).unwrap().public_key();
    assert_ne!(now, first);
    assert_eq!(Some(now), staged);
    assert!(!files.next.exists() && !files.old.exists());
    let mode = fs::metadata(&files.current).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["private.key"], "leftovers: {names:?}");
    // The old private key is gone from the disk.
    assert!(!fs::read_to_string(&files.current).unwrap().is_empty());
}

#[test]
fn unusable_rotation_files_are_reported_and_rolled_back() {
    use crate::rotation::{Ack, File as F, Inputs, Policy, Step, decide};
    let dir = tempfile::tempdir().unwrap();
    let files = RotationFiles::new(&dir.path().join("private.key"));
    let first = load_or_generate(&files.current).unwrap().public_key();
    fs::write(&files.next, "garbage\n").unwrap();
    fs::set_permissions(&files.next, fs::Permissions::from_mode(0o600)).unwrap();
    let loaded = files.load();
    assert_eq!(loaded.disk.next, F::Unusable);
    assert_eq!(loaded.problems.len(), 1);
    let inputs = Inputs {
        now: 0,
        requested: None,
        done: None,
        ack: Ack::Unknown,
    };
    let d = decide(&loaded.disk, &inputs, &Policy::default());
    assert_eq!(d.step, Some(Step::DropNext));
    files.carry_out(Step::DropNext).unwrap();
    assert!(!files.next.exists());
    assert_eq!(load(&files.current).unwrap().public_key(), first);
}
