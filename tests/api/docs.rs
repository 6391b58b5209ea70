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
            "{}modules:\n  default:\n    device_tags: [location]\n  summary:\n    devices: false\n  compat:\n    counts_only: true\n    legacy_devices_online: true\n",
            default_config(url, &["screens"])
        )
    })
    .await;
    let mut emitted = BTreeSet::new();
    for module in ["default", "summary", "compat"] {
        let a = app
            .get(&format!("/probe?target=screens&module={module}"))
            .await;
        emitted.extend(type_names(&a.body));
    }
    app.get("/probe?target=screens").await; // a cache hit
    app.get("/probe?target=unknown").await; // a request error
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
