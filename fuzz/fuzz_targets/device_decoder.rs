//! Any bytes given to the device-page decoder yield devices or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = balena_exporter::balena::model::for_each_device(data, |d| {
        let _ = (d.name(), d.device_type(), d.release(), d.on_target_release());
    });
});
