//! CNI stdin + environment: never panics; an error always maps to a CNI
//! error JSON with a code and a message.
#![no_main]
use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Environment lines (KEY=value) up to a blank line, then stdin.
    let split = data.windows(2).position(|w| w == b"\n\n");
    let (env, stdin) = match split {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (&data[..0], data),
    };
    let mut envs = BTreeMap::new();
    for line in String::from_utf8_lossy(env).lines() {
        if let Some((k, v)) = line.split_once('=') {
            envs.insert(k.to_string(), v.to_string());
        }
    }
    match cnispec::spec::parse(&envs, stdin) {
        Ok(_) => {}
        Err(e) => {
            let j = e.to_json("1.1.0");
            assert!(j["code"].as_u64().is_some());
            assert!(j["msg"].as_str().is_some_and(|m| !m.is_empty()));
        }
    }
});
