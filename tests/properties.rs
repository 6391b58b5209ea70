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
use balena_exporter::exposition::body::CompressedSeries;
use balena_exporter::exposition::codec::Codec;
use balena_exporter::exposition::Exposition;
use balena_exporter::metrics::{DEVICE_INFO, DEVICE_ONLINE, FLEET_DEVICES};
use balena_simulator::{parse_filter, Expr, Lit};
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

    /// Packing (compressing each family's text in pieces as it grows) changes nothing in the
    /// text: whatever the threshold and the order samples arrive in, the series read back are
    /// the series written, grouped by family, and the answer is one valid gzip member or zstd
    /// stream.
    #[test]
    fn packing_families_in_pieces_keeps_the_text(
        threshold in 1usize..4096,
        samples in proptest::collection::vec((0u8..3, "[a-z\"\\\\ ]{0,40}", 0u32..1000), 0..300),
        zstd in any::<bool>(),
    ) {
        let codec = if zstd { Codec::Zstd } else { Codec::Deflate };
        let mut plain = Exposition::new();
        let mut packing = Exposition::packing(threshold, codec);
        let mut prefix = Exposition::new();
        prefix.gauge(FLEET_DEVICES, &[("fleet", "o/f")], samples.len() as f64);
        for (family, name, value) in &samples {
            let def = [DEVICE_INFO, DEVICE_ONLINE, FLEET_DEVICES][*family as usize];
            for e in [&mut plain, &mut packing] {
                e.gauge(def, &[("device_name", name)], f64::from(*value));
            }
        }
        let mut want = String::new();
        prefix.render_into(&mut want);
        plain.render_into(&mut want);
        let mut plain_text = String::new();
        plain.render_into(&mut plain_text);
        prop_assert_eq!(
            String::from_utf8(CompressedSeries::from_expositions(codec, [plain]).text()).unwrap(),
            plain_text
        );
        let mut prefix2 = Exposition::new();
        prefix2.gauge(FLEET_DEVICES, &[("fleet", "o/f")], samples.len() as f64);
        let series = CompressedSeries::from_expositions(codec, [prefix2, packing]);
        prop_assert_eq!(series.len(), want.len());
        prop_assert_eq!(String::from_utf8(series.text()).unwrap(), want.clone());
        let head = "probe_success 1\n";
        let answer = series.answer_after(head.as_bytes()).to_vec();
        let mut read = Vec::new();
        match codec {
            Codec::Deflate => {
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&answer[..]), &mut read)
                    .unwrap();
            }
            Codec::Zstd => read = zstd::stream::decode_all(&answer[..]).unwrap(),
        }
        prop_assert_eq!(String::from_utf8(read).unwrap(), format!("{head}{want}"));
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

    /// A canary token planted in every position an operator's slip or an adversary's config can
    /// put one (flow mappings, wrong types, unknown and duplicate keys under `auths`, malformed
    /// `${`, a variable used as a token or a path, URL userinfo; the configured token again as
    /// a fleet, auth or module name, a target's value, a top-level or `api` key, by value, by
    /// YAML alias or by environment override) never reaches an error (its text or Debug form:
    /// what stderr, the log and `/-/reload` show) or `/config`.
    #[test]
    fn a_planted_canary_never_reaches_an_error_or_config_output(
        canary in "cnry[a-z0-9]{6,12}",
        position in 0usize..24,
    ) {
        std::env::set_var("BEX_CANARY_TOKEN", &canary);
        std::env::set_var("BEX_CANARY_PATH", format!("/nonexistent/{canary}"));
        let auths = match position {
            0 => format!("auths:\n  a: {{token:{canary}}}\n"),
            1 => format!("auths:\n  a:\n    token: [{canary}]\n"),
            2 => format!("auths:\n  a:\n    tokn: {canary}\n"),
            3 => format!("auths:\n  a:\n    token: x\n    token: {canary}\n"),
            4 => format!("auths:\n  a: {{token: x, {canary}: y}}\n"),
            5 => format!("auths:\n  a:\n    token: ${{{canary}\n"),
            6 => "auths:\n  a:\n    token: \"${BEX_CANARY_TOKEN}x${\"\n".to_string(),
            7 => "auths:\n  a:\n    token_file: ${BEX_CANARY_PATH}\n".to_string(),
            8 => format!("auths:\n  a:\n    token: {canary}\n    token_file: /x\n"),
            9 => format!("auths:\n  a:\n    token: \"{canary} with a space\"\n"),
            10 => format!("auths:\n  a:\n    token: {{nested: {{deeper: {canary}}}}}\n"),
            11 => format!("auths:\n  a:\n    token: ${{9{canary}}}\n"),
            _ => "auths:\n  a:\n    token: ${BEX_CANARY_TOKEN}\n".to_string(),
        };
        let api = match position {
            12 => format!("api:\n  url: https://ops:{canary}@api.example.com\n"),
            13 => format!("api:\n  url: \"https://ops:{canary}@\"\n"),
            _ => String::new(),
        };
        let good_auth = format!("auths:\n  a:\n    token: &t {canary}\n");
        let target = |body: &str| format!("{good_auth}targets:\n  t:\n{body}");
        // Slips that put the configured token where a name belongs, by value or by alias.
        let text = match position {
            14 => target("    fleet: *t\n    auth: a\n"),
            15 => target("    fleet: org/app\n    auth: *t\n"),
            16 => target("    fleet: org/app\n    auth: a\n    module: *t\n"),
            17 => target(&format!("    fleet: org/app\n    auth: {canary}\n")),
            18 => target(&format!("    fleet: org/app\n    auth: a\n    module: {canary}\n")),
            19 => target(&format!("    fleet: {canary}\n    auth: a\n")),
            20 => format!("{good_auth}targets:\n  t: {canary}\n"),
            21 => format!("{good_auth}{canary}: 1\ntargets:\n  t:\n    fleet: org/app\n    auth: a\n"),
            22 => format!("api:\n  {canary}: 1\n{good_auth}targets:\n  t:\n    fleet: org/app\n    auth: a\n"),
            23 => {
                std::env::set_var("BALENA_EXPORTER_TARGETS__T__AUTH", &canary);
                target("    fleet: org/app\n    auth: a\n")
            }
            _ => format!("{api}{auths}targets:\n  t:\n    fleet: org/app\n    auth: a\n"),
        };
        let dir = std::env::temp_dir().join(format!("balena-canary-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("c{position}.yml"));
        std::fs::write(&file, &text).unwrap();
        let opts = config::LoadOptions { files: vec![file], expand_env: true };
        let loaded = config::load(&opts);
        std::env::remove_var("BALENA_EXPORTER_TARGETS__T__AUTH");
        match loaded {
            Err(e) => {
                prop_assert!(!e.to_string().contains(&canary), "position {}: {}", position, e);
                prop_assert!(!format!("{e:?}").contains(&canary), "position {}: {:?}", position, e);
            }
            Ok(c) => {
                let shown = c.to_redacted_yaml();
                prop_assert!(!shown.contains(&canary), "position {}: {}", position, shown);
                prop_assert!(!format!("{c:?}").contains(&canary), "position {}: Debug", position);
            }
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

/// A duration as a config file may write it: bare seconds (any u64), `Ns`, `Nms`, `Nd`.
fn duration_text() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => any::<u64>().prop_map(|n| n.to_string()),
        3 => (1u64..120).prop_map(|n| format!("{n}s")),
        3 => (500u64..5_000).prop_map(|n| format!("{n}ms")),
        3 => (1u64..=30).prop_map(|n| format!("{n}d")),
        3 => Just("2592000".to_string()),
        1 => any::<u64>().prop_map(|n| format!("{n}s")),
    ]
}

/// A number for a size or count key: small, large, or any.
fn count_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (1u64..20).prop_map(|n| n.to_string()),
        3 => (1_024u64..u64::from(u32::MAX)).prop_map(|n| n.to_string()),
        3 => Just(u32::MAX.to_string()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => Just(u64::MAX.to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Whatever the duration and size keys hold, a config that loads (what `--config.check`
    /// accepts) runs: a probe succeeds and discovery lists the org's fleets (the arithmetic
    /// of deadlines, TTLs and caps never overflows, in a handler or a background task).
    #[test]
    fn no_accepted_duration_or_size_panics(
        timeout in duration_text(),
        cache_ttl in duration_text(),
        fleet_cache_ttl in duration_text(),
        page_size in count_text(),
        max_concurrency in count_text(),
        max_response_bytes in count_text(),
    ) {
        let yaml = format!(
            "api:\n  url: http://{}\n  timeout: {timeout}\n  cache_ttl: {cache_ttl}\n  fleet_cache_ttl: {fleet_cache_ttl}\n  page_size: {page_size}\n  max_concurrency: {max_concurrency}\n  max_response_bytes: {max_response_bytes}\nauths:\n  a:\n    token: {}\ntargets:\n  shop:\n    fleet: acme/shop\n    auth: a\n  org:\n    org: acme\n    auth: a\n",
            "SIM_URL", helpers::TOKEN
        );
        if config::from_yaml_str(&yaml, "p.yml").is_err() {
            return Ok(());
        }
        actix_rt::System::new().block_on(async move {
            let sim = balena_simulator::Simulator::start(&helpers::world(&[("shop", 3)]), "127.0.0.1:0").unwrap();
            let yaml = yaml.replace("http://SIM_URL", &sim.url());
            let loaded = config::from_yaml_str(&yaml, "p.yml").expect("accepted with a placeholder URL");
            let mut settings = balena_exporter::startup::Settings::new(
                config::SharedConfig::new(loaded, None),
                "127.0.0.1:0",
            );
            settings.discovery_interval = Some(std::time::Duration::from_secs(1));
            let app = helpers::spawn_settings(sim, settings).await;
            let probe = app.probe("target=shop").await;
            assert_eq!(probe.value("probe_success", &[]), 1.0, "{yaml}");
            let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !app.get("/sd").await.body.contains("acme/shop") {
                assert!(std::time::Instant::now() < until, "no discovery with {yaml}");
                actix_rt::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            app.stop().await;
        });
    }
}

/// Whatever the devices, every answer form of a probe's data — gzip, zstd, identity, the debug
/// page, from pieces of either codec — carries the same series, and a module keeping
/// per-device series as compact values (`compact_cache`) answers the same series as one keeping
/// them compressed.
mod answer_forms {
    use balena_exporter::balena::model::{decode_device, Fleet};
    use balena_exporter::config::ModuleConfig;
    use balena_exporter::exposition::codec::Codec;
    use balena_exporter::probe::answer::{decoded, metrics_body, series_text, Encoding};
    use balena_exporter::probe::{ProbeData, SeriesBuilder};
    use proptest::prelude::*;

    fn data(rows: &[String], compact: bool, codec: Codec) -> ProbeData {
        let fleet: Fleet = serde_json::from_str(
            r#"{"id":1,"app_name":"App","slug":"o/app","organization":[{"handle":"o"}],"is_for__device_type":[{"slug":"rpi"}],"should_be_running__release":[{"commit":"c1"}]}"#,
        )
        .unwrap();
        let module = ModuleConfig {
            compact_cache: compact,
            device_tags: vec!["location".into()],
            ..ModuleConfig::default()
        };
        let mut builder = SeriesBuilder::new(vec![fleet], &module).compressed_as(codec);
        for row in rows {
            builder.add(&decode_device(row.as_bytes()).unwrap());
        }
        builder.finish(&Default::default())
    }

    fn sorted(text: &[u8]) -> Vec<String> {
        let mut v: Vec<String> = String::from_utf8_lossy(text)
            .lines()
            .map(String::from)
            .collect();
        v.sort();
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

        #[test]
        fn every_answer_form_carries_the_same_series(
            devices in proptest::collection::vec(
                ("[a-z0-9 \"\\\\]{0,12}", any::<bool>(), proptest::option::of(0u8..100), "[a-z]{0,6}"),
                0..60,
            ),
        ) {
            let rows: Vec<String> = devices
                .iter()
                .enumerate()
                .map(|(i, (name, online, cpu, location))| {
                    serde_json::json!({
                        "id": i + 1,
                        "uuid": format!("{:032x}", i + 1),
                        "device_name": name,
                        "belongs_to__application": {"__id": 1},
                        "is_online": online,
                        "api_heartbeat_state": if *online { "online" } else { "offline" },
                        "overall_status": "operational",
                        "cpu_usage": cpu,
                        "is_running__release": [{"id": 3, "commit": "c1"}],
                        "device_tag": [{"tag_key": "location", "value": location}],
                    })
                    .to_string()
                })
                .collect();
            let head = "probe_success 1\n";
            let mut forms = Vec::new();
            for (compact, codec) in [false, true].into_iter().flat_map(|c| [(c, Codec::Deflate), (c, Codec::Zstd)]) {
                let data = data(&rows, compact, codec);
                prop_assert_eq!(data.series.codec(), codec);
                for encoding in [Encoding::Gzip, Encoding::Zstd, Encoding::Identity] {
                    let body = metrics_body(head.to_string(), Some(&data), encoding);
                    prop_assert_eq!(body.encoding, encoding);
                    let bytes = actix_rt::System::new().block_on(decoded(body));
                    prop_assert!(bytes.starts_with(head.as_bytes()));
                    let form = format!("compact={compact} {codec:?} pieces, {encoding:?}");
                    forms.push((form, sorted(&bytes[head.len()..])));
                }
                forms.push((format!("compact={compact} {codec:?} debug"), sorted(series_text(&data).as_bytes())));
            }
            let (_, reference) = &forms[0];
            prop_assert!(!reference.is_empty());
            for (form, series) in &forms {
                prop_assert_eq!(series, reference, "{}", form);
            }
        }
    }
}

const GOOD_WEB_CONFIG: &str = "basic_auth_users:\n  prom: $2y$10$abcdefghijklmnopqrstuu5fW9x8r1QF0Bx1V2y3z4A5b6C7d8E9f\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n    Content-Security-Policy: \"default-src 'self'\"\n";

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    /// A web config file, mangled anywhere (escapes, control characters, non-ASCII), is refused
    /// with one line naming the file, or loads into a server that builds its response headers
    /// without a panic (the middleware every worker makes at start).
    #[test]
    fn a_web_config_that_loads_never_panics_a_worker(
        cut in 0usize..GOOD_WEB_CONFIG.len(),
        len in 0usize..12,
        insert in prop_oneof![
            "[ -~\\n\\t:{}\\[\\]'\"#&*!|>%@`-]{0,8}",
            "\"[\\\\a-z0-9\\x00-\\x1f\\u{80}-\\u{10ffff}]{0,6}\"",
            Just("\"deny\\r\\nX-Injected: 1\"".to_string()),
            Just("\"a\\0b\"".to_string()),
        ],
    ) {
        let mut text = GOOD_WEB_CONFIG.to_string();
        let start = (0..=cut).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        let end = (start + len).min(text.len());
        let end = (end..=text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
        text.replace_range(start..end, &insert);
        let dir = std::env::temp_dir().join(format!("balena-webcfg-prop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("web.yml");
        std::fs::write(&file, &text).unwrap();
        match balena_exporter::web_config::load(&file) {
            Ok((web, _)) => {
                let _headers = web.response_headers();
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.starts_with(&file.display().to_string()), "{}", msg);
                prop_assert!(!msg.contains('\n'), "one line: {}", msg);
            }
        }
    }
}
