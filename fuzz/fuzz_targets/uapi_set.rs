//! UAPI `set=1` requests: never panics; errors name a line within the
//! request and never echo a private key.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines: Vec<String> = text.lines().take(512).map(String::from).collect();
    if let Err(e) = wgcore::uapi::parse_set(&lines) {
        // Line 1 is `set=1`; the parsed lines are 2..=len+1.
        assert!(e.line >= 2 && e.line <= lines.len() + 1);
        for l in &lines {
            // Whole keys only (64 hex digits): other text may occur in an
            // error template or a cut value by construction (the fuzzer
            // finds such inputs).
            if let Some(v) = l.strip_prefix("private_key=")
                && v.len() == 64
                && v.bytes().all(|b| b.is_ascii_hexdigit())
            {
                assert!(!e.to_string().contains(v), "error echoed a private key");
            }
        }
    }
});
