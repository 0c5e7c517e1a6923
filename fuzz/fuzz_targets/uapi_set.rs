//! UAPI `set=1` requests: never panics; errors name a line within the
//! request and never echo a key or a piece of one (nor does the log line
//! of an unknown request).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines: Vec<String> = text.lines().take(512).map(String::from).collect();
    if let Err(e) = wgcore::uapi::parse_set(&lines) {
        // Line 1 is `set=1`; the parsed lines are 2..=len+1.
        assert!(e.line >= 2 && e.line <= lines.len() + 1);
        let err = e.to_string();
        for l in &lines {
            // Any run of 64 or more hex digits (a key, wherever it was
            // pasted): no piece of 12 of its characters in the error, nor
            // in what the server would log for the line as a request.
            let logged = wgcore::uapi::unknown_request(l);
            for run in l
                .split(|c: char| !c.is_ascii_hexdigit())
                .filter(|r| r.len() >= 64)
            {
                for w in run.as_bytes().windows(12) {
                    let w = std::str::from_utf8(w).unwrap_or_default();
                    assert!(!err.contains(w), "error shows part of a key: {err}");
                    assert!(!logged.contains(w), "log shows part of a key: {logged}");
                }
            }
        }
    }
});
