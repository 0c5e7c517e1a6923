//! Key base64: never panics; whatever parses prints back identically
//! (strict, canonical), and errors never contain key-like input (a run of
//! 20+ base64 characters; shorter or spaced text may legitimately occur in
//! an error template — the fuzzer found that out).
#![no_main]
use libfuzzer_sys::fuzz_target;

fn key_like(s: &str) -> bool {
    s.len() >= 20
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match keys::PublicKey::from_base64(s) {
        Ok(k) => assert_eq!(k.to_base64(), s),
        Err(e) => {
            if key_like(s) {
                assert!(!e.to_string().contains(s));
            }
        }
    }
    match keys::PrivateKey::from_base64(s) {
        Ok(k) => assert_eq!(k.to_base64().as_str(), s),
        Err(e) => {
            if key_like(s) {
                assert!(
                    !e.to_string().contains(s),
                    "a private key error echoed its input"
                );
            }
        }
    }
});
