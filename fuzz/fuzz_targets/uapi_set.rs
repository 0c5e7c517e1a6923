//! UAPI `set=1` requests: never panics; errors name a line within the
//! request and never echo a key or a piece of one; nor does the log line
//! of an unknown request, for any line, parsed or not.
#![no_main]
use libfuzzer_sys::fuzz_target;

/// Runs of 64 or more hex digits in `l` (a key, wherever it was pasted).
fn key_runs(l: &str) -> impl Iterator<Item = &str> {
    l.split(|c: char| !c.is_ascii_hexdigit())
        .filter(|r| r.len() >= 64)
}

/// No piece of 12 characters of any key run of `l` appears in `shown`.
fn shows_no_key(l: &str, shown: &str) -> bool {
    key_runs(l).all(|run| {
        run.as_bytes()
            .windows(12)
            .all(|w| !shown.contains(std::str::from_utf8(w).unwrap_or_default()))
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines: Vec<String> = text.lines().take(512).map(String::from).collect();
    for l in &lines {
        let logged = wgcore::uapi::unknown_request(l);
        assert!(
            shows_no_key(l, &logged),
            "log shows part of a key: {logged}"
        );
    }
    if let Err(e) = wgcore::uapi::parse_set(&lines) {
        // Line 1 is `set=1`; the parsed lines are 2..=len+1.
        assert!(e.line >= 2 && e.line <= lines.len() + 1);
        let err = e.to_string();
        for l in &lines {
            assert!(shows_no_key(l, &err), "error shows part of a key: {err}");
        }
    }
});
