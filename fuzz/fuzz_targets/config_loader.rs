//! Any text given to the config loader yields a config or a one-line error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = balena_exporter::config::from_yaml_str(text, "fuzz.yml") {
            assert!(!e.to_string().contains('\n') || text.contains('\n'));
        }
    }
});
