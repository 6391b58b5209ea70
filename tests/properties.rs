//! Property tests (proptest), also standing in for the fuzz targets of fuzz/ in CI (no nightly
//! toolchain here): OData quoting round-trips through the simulator's parser; any label value
//! survives the text format; the config loader and the device decoder never panic on mangled
//! input.

#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;

use balena_exporter::balena::model::for_each_device;
use balena_exporter::balena::odata::{quote_literal, wire_query};
use balena_exporter::config;
use balena_exporter::metrics::{Exposition, DEVICE_INFO};
use balena_exporter::simulator::{parse_filter, Expr, Lit};
use proptest::prelude::*;

const GOOD_CONFIG: &str = "api:\n  url: https://api.example.com\n  timeout: 10s\nauths:\n  a:\n    token: tok-123\nmodules:\n  m:\n    devices: false\n    device_tags: [location]\ntargets:\n  t:\n    fleet: org/app\n    auth: a\n    module: m\n  o:\n    org: acme\n    auth: a\n";

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    /// Whatever the string, the server reads back exactly the value the client quoted.
    #[test]
    fn odata_quoting_round_trips_through_the_simulator_parser(value in any::<String>()) {
        let wire = wire_query(&format!("slug eq {}", quote_literal(&value)));
        let parsed = parse_filter(&wire).expect("a quoted literal always parses");
        match parsed {
            Expr::Cmp(_, _, rhs) => prop_assert_eq!(*rhs, Expr::Lit(Lit::Str(value))),
            other => prop_assert!(false, "unexpected {:?}", other),
        }
    }

    /// Any label value is written so that a text-format parser reads the same value back.
    #[test]
    fn any_label_value_survives_the_text_format(name in any::<String>(), tag in "\\PC*") {
        let mut e = Exposition::new();
        e.gauge(DEVICE_INFO, &[("device_name", &name), ("tag_x", &tag)], 1.0);
        let mut text = String::new();
        e.render_into(&mut text);
        let samples = helpers::parse(&text);
        prop_assert_eq!(samples.0.len(), 1);
        prop_assert_eq!(&samples.0[0].labels["device_name"], &name);
        prop_assert_eq!(&samples.0[0].labels["tag_x"], &tag);
    }

    /// Mangled YAML gives a config or an error, never a panic; errors are one line.
    #[test]
    fn mangled_configs_never_panic_the_loader(
        cut in 0usize..GOOD_CONFIG.len(),
        len in 0usize..20,
        insert in "[ -~\\n\\t:{}\\[\\]'\"#&*!|>%@`-]{0,8}",
    ) {
        let mut text = GOOD_CONFIG.to_string();
        let start = cut.min(text.len());
        let end = (start + len).min(text.len());
        text.replace_range(start..end, &insert);
        if let Err(e) = config::from_yaml_str(&text, "fuzz.yml") {
            let msg = e.to_string();
            prop_assert!(msg.starts_with("fuzz.yml"), "{}", msg);
            prop_assert!(!msg.contains("tok-123"), "token repeated: {}", msg);
        }
    }

    /// Arbitrary bytes and mangled JSON never panic the device decoder.
    #[test]
    fn the_device_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = for_each_device(&bytes, |_| {});
    }

    #[test]
    fn mangled_device_pages_never_panic_the_decoder(cut in 0usize..400, insert in "[ -~]{0,6}") {
        let mut page = String::from(r#"{"d":[{"id":1,"uuid":"ab","device_name":"n\"x","is_online":true,"cpu_usage":12,"is_running__release":[{"id":3,"commit":"c"}],"should_be_running__release":{"__id":3},"device_tag":[{"tag_key":"k","value":null}]}]}"#);
        let at = cut.min(page.len());
        page.insert_str(at, &insert);
        let _ = for_each_device(page.as_bytes(), |d| { let _ = (d.name(), d.on_target_release(), d.tag("k")); });
    }
}
