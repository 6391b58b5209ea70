//! The probe pipeline without HTTP: decode a page of devices, build the series, compress —
//! and, in the same run, the floor of each step on the same bytes (`floor/…`): a plain serde
//! parse of the page into the same rows, writing the same text line by line, and deflate level 1
//! of that text. `cargo bench --bench pipeline` — results and how to read them:
//! docs/performance.md.

use std::hint::black_box;

use actix_web::web::Bytes;
use balena_exporter::balena::model::{for_each_device, Device, Envelope, Fleet};
use balena_exporter::balena::stream::{last_row_by_scan, last_row_from_end};
use balena_exporter::balena::{device_query, odata::Query};
use balena_exporter::config::ModuleConfig;
use balena_exporter::exposition::codec::Codec;
use balena_exporter::probe::SeriesBuilder;
use balena_simulator::{parse_request, FleetSpec, OrgSpec, UserSpec, World, WorldSpec};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

#[path = "../examples/support/floor.rs"]
mod floor;

/// The JSON body the API would send for a fleet of `n` devices, and its fleet row.
fn page(n: usize, module: &ModuleConfig) -> (Vec<u8>, Fleet) {
    let spec = WorldSpec {
        seed: 3,
        orgs: vec![OrgSpec {
            handle: "bench".into(),
            fleets: vec![FleetSpec::new("fleet", n)],
        }],
        users: vec![UserSpec {
            username: "b".into(),
            token: "t".into(),
            orgs: vec!["bench".into()],
        }],
    };
    let world = World::generate(&spec);
    let caller = world.caller(Some("t"));
    let (select, expand) = device_query(module);
    let q = Query::new()
        .option("$select", select)
        .option("$expand", expand)
        .option("$filter", "belongs_to__application eq 1")
        .option("$orderby", "id asc");
    let req = parse_request("device", &q.to_wire()).unwrap();
    let rows = world.read("device", None, &req.options, &caller).unwrap();
    let body = serde_json::to_vec(&serde_json::json!({ "d": rows })).unwrap();
    let fleet: Fleet = serde_json::from_value(
        serde_json::json!({"id": 1, "app_name": "fleet", "slug": "bench/fleet"}),
    )
    .unwrap();
    (body, fleet)
}

fn pipeline(c: &mut Criterion) {
    let full = ModuleConfig {
        device_tags: vec!["location".into()],
        ..ModuleConfig::default()
    };
    let summary = ModuleConfig {
        devices: false,
        ..ModuleConfig::default()
    };
    let mut group = c.benchmark_group("pipeline");
    group.sample_size(10);
    for n in [100usize, 1_000, 10_000, 50_000] {
        let (body, fleet) = page(n, &full);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("decode", n), &body, |b, body| {
            b.iter(|| for_each_device(black_box(body), |d| drop(black_box(d))).unwrap())
        });
        // The next page's keyset id, found before the page is decoded: by scanning the page,
        // and read from its end (what a listing does when the page ends with its rows).
        group.bench_with_input(BenchmarkId::new("last_row/scan", n), &body, |b, body| {
            b.iter(|| last_row_by_scan(black_box(body)).unwrap().len())
        });
        group.bench_with_input(
            BenchmarkId::new("last_row/from_end", n),
            &body,
            |b, body| b.iter(|| last_row_from_end(black_box(body)).unwrap().len()),
        );
        // The floors, on the same bytes: a plain parse into the same rows (one UTF-8 check,
        // then serde from a &str, every row kept), ...
        group.bench_with_input(BenchmarkId::new("floor/parse", n), &body, |b, body| {
            b.iter(|| {
                let text = std::str::from_utf8(black_box(body)).unwrap();
                let page: Envelope<Device> = serde_json::from_str(text).unwrap();
                black_box(page.d.len())
            })
        });
        // ... writing the answer's text line by line (labels copied, the value formatted) ...
        let text = {
            let mut builder = SeriesBuilder::new(vec![fleet.clone()], &full);
            for_each_device(&body, |d| builder.add(&d)).unwrap();
            String::from_utf8(builder.finish(&Default::default()).series.text()).unwrap()
        };
        eprintln!(
            "pipeline/{n}: a page of {} bytes, an answer of {} bytes of text",
            body.len(),
            text.len()
        );
        let lines = floor::lines(&text);
        group.bench_with_input(BenchmarkId::new("floor/write", n), &lines, |b, lines| {
            b.iter(|| black_box(floor::write(lines, text.len())))
        });
        // ... and deflate level 1 of that text, in one stream.
        group.bench_with_input(BenchmarkId::new("floor/deflate1", n), &text, |b, text| {
            b.iter(|| black_box(floor::deflate1(text)))
        });
        // zstd level 1 of the same text in one call, the floor of zstd answers.
        group.bench_with_input(BenchmarkId::new("floor/zstd1", n), &text, |b, text| {
            b.iter(|| black_box(floor::zstd1(text)))
        });
        for (name, codec) in [("default", Codec::Deflate), ("default-zstd", Codec::Zstd)] {
            group.bench_with_input(
                BenchmarkId::new(format!("decode+series+compress/{name}"), n),
                &body,
                |b, body| {
                    b.iter(|| {
                        let mut builder =
                            SeriesBuilder::new(vec![fleet.clone()], &full).compressed_as(codec);
                        for_each_device(body, |d| builder.add(&d)).unwrap();
                        black_box(builder.finish(&Default::default()))
                    })
                },
            );
        }
        // compact_cache: what every cached answer costs, rendering and compressing the
        // per-device series from the kept values.
        let compact_module = ModuleConfig {
            compact_cache: true,
            ..full.clone()
        };
        let mut builder = SeriesBuilder::new(vec![fleet.clone()], &compact_module);
        for_each_device(&body, |d| builder.add(&d)).unwrap();
        let data = builder.finish(&Default::default());
        let (fleet_series, compact) = (data.series, data.compact);
        let compact = compact.expect("compact module keeps values");
        group.bench_function(
            BenchmarkId::new("compact answer (render+compress)", n),
            |b| {
                b.iter(|| {
                    let rendered = compact.render(64 * 1024).map(Bytes::from);
                    fleet_series
                        .stream_then(Codec::Deflate, b"probe_success 1\n", rendered)
                        .map(|piece| piece.len())
                        .sum::<usize>()
                })
            },
        );
        let (sbody, sfleet) = page(n, &summary);
        group.bench_with_input(
            BenchmarkId::new("decode+series+compress/summary", n),
            &sbody,
            |b, body| {
                b.iter(|| {
                    let mut builder = SeriesBuilder::new(vec![sfleet.clone()], &summary);
                    for_each_device(body, |d| builder.add(&d)).unwrap();
                    black_box(builder.finish(&Default::default()))
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
