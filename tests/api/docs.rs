//! `docs/metrics.md` and the code agree: every name the exporter emits is documented, and
//! every documented name is emitted by some probe or by `/metrics`.

use std::collections::BTreeSet;

use balena_exporter::metrics::PROBE_METRICS;

use crate::helpers::*;

fn documented() -> BTreeSet<String> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(String::from)
        .collect()
}

fn type_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(String::from)
        .collect()
}

/// The metric catalogue, docs/metrics.md and the emitted output list the same names.
#[actix_rt::test]
async fn docs_list_exactly_the_emitted_metrics() {
    let app = spawn_with(world(&[("screens", 200)]), |url| {
        format!(
            "{}modules:\n  default:\n    device_tags: [location]\n    locations: true\n  summary:\n    devices: false\n  compat:\n    counts_only: true\n    legacy_devices_online: true\n  services:\n    services: true\n    device_services: true\n",
            default_config(url, &["screens", "held"])
                .replace("  timeout: 5s\n", "  timeout: 5s\n  max_concurrency: 1\n")
                .replace("acme/held", "acme/screens")
        )
    })
    .await;
    let mut emitted = BTreeSet::new();
    {
        // Two probes for one slot of a slow API: the first holds it for 0.6 s, the second
        // (0.2 s to live) never sends.
        use balena_simulator::{Fault, FaultRule};
        app.sim.inject(
            FaultRule::always("/v7/", Fault::Delay(std::time::Duration::from_millis(600))).times(1),
        );
        let (a, b) = futures_util::future::join(
            app.get_with(
                "/probe?target=screens&module=summary",
                &[("X-Prometheus-Scrape-Timeout-Seconds", "2.5")],
            ),
            async {
                actix_rt::time::sleep(std::time::Duration::from_millis(50)).await;
                app.get_with(
                    "/probe?target=screens&module=compat",
                    &[("X-Prometheus-Scrape-Timeout-Seconds", "0.8")],
                )
                .await
            },
        )
        .await;
        assert!(a.body.contains("probe_success 1"), "{}", a.body);
        assert!(b.body.contains("probe_success 0"), "{}", b.body);
    }
    for module in ["default", "summary", "compat", "services"] {
        let a = app
            .get(&format!("/probe?target=screens&module={module}"))
            .await;
        emitted.extend(type_names(&a.body));
    }
    app.get("/probe?target=screens").await; // a cache hit
    app.get("/probe?target=unknown").await; // a request error
    {
        // A Retry-After that holds the auth (balena_exporter_api_hold_seconds), last: it holds
        // every later request of the auth.
        use balena_simulator::{Fault, FaultRule};
        app.sim.inject(FaultRule::always(
            "/v7/",
            Fault::RateLimit(Some("60".into())),
        ));
        let held = app
            .get_with(
                "/probe?target=held&module=summary",
                &[("X-Prometheus-Scrape-Timeout-Seconds", "2")],
            )
            .await;
        assert!(held.body.contains("probe_success 0"), "{}", held.body);
    }
    let own = app.get("/metrics").await.body;
    emitted.extend(
        type_names(&own)
            .into_iter()
            .filter(|n| !n.starts_with("process_")),
    );

    let catalogue: BTreeSet<String> = PROBE_METRICS.iter().map(|m| m.name.to_string()).collect();
    let documented: BTreeSet<String> = documented()
        .into_iter()
        .filter(|n| n != "process_*")
        .collect();
    let undocumented: Vec<_> = emitted.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "emitted but not in docs/metrics.md: {undocumented:?}"
    );
    let never_emitted: Vec<_> = documented.difference(&emitted).collect();
    assert!(
        never_emitted.is_empty(),
        "documented but never emitted: {never_emitted:?}"
    );
    let uncatalogued: Vec<_> = catalogue.difference(&emitted).collect();
    assert!(
        uncatalogued.is_empty(),
        "in the catalogue but never emitted: {uncatalogued:?}"
    );
    app.stop().await;
}

/// The Grafana dashboard is valid JSON and its queries use only metrics the exporter emits.
#[test]
fn dashboard_queries_use_only_documented_metrics() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/balena-fleets.json"
    );
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("valid JSON");
    fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "definition", serde_json::Value::String(s)) => {
                            out.push(s.clone())
                        }
                        _ => exprs(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    exprs(&dash, &mut all);
    assert!(all.len() >= 20, "{} queries", all.len());
    let documented = documented();
    let mut used = BTreeSet::new();
    for e in &all {
        let mut rest = e.as_str();
        while let Some(pos) = rest.find(|c: char| c.is_ascii_lowercase()) {
            let tail = &rest[pos..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            let word = &tail[..end];
            let preceded_by_quote = pos > 0 && rest.as_bytes()[pos - 1] == b'"';
            if !preceded_by_quote && (word.starts_with("balena_") || word.starts_with("probe_")) {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| word.strip_suffix(s))
                    .filter(|b| documented.contains(*b))
                    .unwrap_or(word);
                used.insert(base.to_string());
            }
            rest = &tail[end..];
        }
    }
    let unknown: Vec<_> = used.iter().filter(|n| !documented.contains(*n)).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics the exporter does not emit: {unknown:?}"
    );
    assert!(used.len() >= 20, "{used:?}");
}

/// Every family of the device-family table is documented and written, and the simulator
/// serves every device field the exporter selects (the table's values read those fields).
#[actix_rt::test]
async fn the_device_family_table_is_documented_and_served() {
    use balena_exporter::balena::{DEVICE_FIELDS, SUMMARY_DEVICE_FIELDS};
    use balena_exporter::probe::device::DEVICE_FAMILIES;
    let documented = documented();
    for f in DEVICE_FAMILIES {
        assert!(
            documented.contains(f.def.name),
            "{} is not in docs/metrics.md",
            f.def.name
        );
    }
    let app = spawn_with(world(&[("screens", 20)]), |url| {
        default_config(url, &["screens"]) + "modules:\n  default:\n    locations: true\n"
    })
    .await;
    // One device's host OS update reports progress (the one family the mix may not have).
    app.sim.with_world_mut(|w| {
        let id = w.device_ids("acme/screens")[0];
        let d = w.row_mut("device", id).expect("device");
        d.insert("provisioning_state".into(), "Running OS update".into());
        d.insert("provisioning_progress".into(), 50.into());
    });
    let text = app.get("/probe?target=screens").await.body;
    let written = type_names(&text);
    for f in DEVICE_FAMILIES {
        assert!(written.contains(f.def.name), "{} not written", f.def.name);
    }
    for fields in [DEVICE_FIELDS, SUMMARY_DEVICE_FIELDS] {
        let url = format!("{}/v7/device?$select={}", app.sim.url(), fields.join(","));
        let mut resp = awc::Client::default()
            .get(url)
            .insert_header(("Authorization", format!("Bearer {TOKEN}")))
            .send()
            .await
            .unwrap();
        let body = resp.body().await.unwrap();
        assert_eq!(
            resp.status(),
            200,
            "the simulator refuses a field: {}",
            String::from_utf8_lossy(&body)
        );
    }
    app.stop().await;
}

/// docs/operations.md's default deadline (no scrape-timeout header, as curl) is the one served.
#[actix_rt::test]
async fn the_documented_default_deadline_is_served() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .unwrap();
    let said: f64 = doc
        .split("`probe_timeout_seconds ")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .expect("operations.md shows probe_timeout_seconds")
        .parse()
        .unwrap();
    let app = spawn_app(&[("screens", 1)]).await;
    let m = app.probe("target=screens").await;
    assert_eq!(m.value("probe_timeout_seconds", &[]), said);
    app.stop().await;
}

/// The chart's values schema takes exactly the keys a module has, and every key of `api:` (it
/// refuses unknown keys, so a key missing there cannot be set through the chart; the optional
/// `api:` keys, proxy and TLS, are not serialised when unset, so only inclusion is checked).
#[test]
fn the_charts_schema_takes_every_module_and_api_key() {
    use balena_exporter::config::{ApiConfig, ModuleConfig};
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/helm/balena-exporter/values.schema.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let keys = |v: &serde_json::Value| -> BTreeSet<String> {
        v.as_object().expect("an object").keys().cloned().collect()
    };
    assert_eq!(
        keys(&schema["definitions"]["module"]["properties"]),
        keys(&serde_json::to_value(ModuleConfig::default()).unwrap()),
        "modules"
    );
    let api = keys(&schema["properties"]["config"]["properties"]["api"]["properties"]);
    let ours = keys(&serde_json::to_value(ApiConfig::default()).unwrap());
    assert!(ours.is_subset(&api), "api: {:?}", ours.difference(&api));
}

/// docs/configuration.md has a row for every key of `api:` and of a module.
#[test]
fn the_configuration_doc_has_a_row_for_every_api_and_module_key() {
    use balena_exporter::config::{ApiConfig, ModuleConfig};
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap();
    let keys = |v: serde_json::Value| -> BTreeSet<String> {
        v.as_object().expect("an object").keys().cloned().collect()
    };
    let all = keys(serde_json::to_value(ApiConfig::default()).unwrap())
        .into_iter()
        .chain(keys(serde_json::to_value(ModuleConfig::default()).unwrap()));
    let missing: Vec<String> = all
        .filter(|k| !doc.contains(&format!("| `{k}` |")) && !doc.contains(&format!("| `{k}`, ")))
        .collect();
    assert!(
        missing.is_empty(),
        "no row in docs/configuration.md: {missing:?}"
    );
}

/// docs/operations.md's table of `/sd` labels is what `/sd` serves: every `__meta_balena_*`
/// label of a fleet target and of a fleet found under an org target, no more, no fewer.
#[actix_rt::test]
async fn the_sd_labels_are_documented() {
    use balena_exporter::config::{from_yaml_str, SharedConfig};
    let sim = balena_simulator::Simulator::start(&world(&[("screens", 2)]), "127.0.0.1:0").unwrap();
    let yaml = format!(
        "api:\n  url: {}\nauths:\n  acme:\n    token: {TOKEN}\ntargets:\n  screens: {{fleet: acme/screens, auth: acme}}\n  everything: {{org: acme, auth: acme}}\n",
        sim.url()
    );
    let mut settings = balena_exporter::startup::Settings::new(
        SharedConfig::new(from_yaml_str(&yaml, "sd.yml").unwrap(), None),
        "127.0.0.1:0",
    );
    settings.discovery_interval = Some(std::time::Duration::from_millis(200));
    let app = spawn_settings(sim, settings).await;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let served = loop {
        let body = app.get("/sd").await.body;
        if body.contains("everything/acme/screens") {
            break body;
        }
        assert!(std::time::Instant::now() < until, "no discovery: {body}");
        actix_rt::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let groups: serde_json::Value = serde_json::from_str(&served).unwrap();
    let served: BTreeSet<String> = groups
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["labels"].as_object().unwrap().keys().cloned())
        .filter(|k| k.starts_with("__meta_balena_"))
        .collect();
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .unwrap();
    let documented: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `__meta_balena_"))
        .filter_map(|l| l.split('`').next())
        .map(|n| format!("__meta_balena_{n}"))
        .collect();
    assert_eq!(served, documented);
    app.stop().await;
}

/// Every Markdown table of the README and docs/ is whole: a block of `|` lines starts with a
/// header and its separator, and every row has the header's number of cells (a blank line in
/// a table leaves the rows after it as raw text on GitHub).
#[test]
fn every_markdown_table_is_whole() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut files = vec![
        format!("{root}/README.md"),
        format!("{root}/deploy/README.md"),
        format!("{root}/tests/README.md"),
        format!("{root}/tests/conformance/README.md"),
    ];
    for e in std::fs::read_dir(format!("{root}/docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            files.push(p.display().to_string());
        }
    }
    /// Cells of a row: `|` outside code spans and not escaped.
    fn cells(row: &str) -> usize {
        let (mut n, mut code, mut prev) = (0, false, ' ');
        for c in row
            .trim()
            .trim_start_matches('|')
            .trim_end_matches('|')
            .chars()
        {
            match c {
                '`' => code = !code,
                '|' if !code && prev != '\\' => n += 1,
                _ => {}
            }
            prev = c;
        }
        n + 1
    }
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let mut fenced = false;
        let mut block: Vec<(usize, &str)> = Vec::new();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate().chain([(lines.len(), &"")]) {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
            }
            if !fenced && line.trim_start().starts_with('|') {
                block.push((i + 1, line));
                continue;
            }
            if let Some((first, header)) = block.first() {
                let separator = block.get(1).map(|(_, l)| *l).unwrap_or("");
                let is_sep = separator.trim().trim_matches('|').split('|').all(|c| {
                    let c = c.trim();
                    !c.is_empty() && c.chars().all(|x| x == '-' || x == ':')
                });
                if !is_sep {
                    broken.push(format!(
                        "{file}:{first}: a table row with no header above it"
                    ));
                } else {
                    let width = cells(header);
                    for (n, row) in &block {
                        if cells(row) != width {
                            broken.push(format!(
                                "{file}:{n}: {} cells, the header has {width}",
                                cells(row)
                            ));
                        }
                    }
                }
            }
            block.clear();
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// docs/migration.md's drop-in scrape config is deploy/prometheus/prometheus-migration.yml's,
/// which CI checks with promtool and runs the shipped rules on (rules/migration.test.yml).
#[test]
fn the_migration_doc_shows_the_tested_setup() {
    let root = env!("CARGO_MANIFEST_DIR");
    let doc = std::fs::read_to_string(format!("{root}/docs/migration.md")).unwrap();
    let file =
        std::fs::read_to_string(format!("{root}/deploy/prometheus/prometheus-migration.yml"))
            .unwrap();
    let section = doc.split("## Drop-in scrape").nth(1).unwrap();
    let block = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .unwrap();
    assert!(block.contains("job_name: balena-exporter"), "{block}");
    assert!(
        file.contains(block),
        "docs/migration.md's block is not in prometheus-migration.yml:\n{block}"
    );
}
