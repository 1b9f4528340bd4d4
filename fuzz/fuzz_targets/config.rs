//! The config parser on arbitrary text: a config or an error naming the problem, never a panic;
//! what r1d derives from an accepted config at start (limits, durations, the reload diff) never
//! panics either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use r1d::config::{diff, Config};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new("/etc/r1d/r1d.toml");
    let config = match Config::parse(text, path) {
        Ok(c) => c,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let _ = config.server_limits();
    let _ = r1d::supervisor::seconds(config.watch.queue_deadline_s);
    let _ = r1d::supervisor::seconds(config.watch.gpu_wait_s);
    assert!(
        diff(&config, &config).is_empty(),
        "a config differs from itself"
    );
    let _ = diff(&Config::default(), &config);
});
