//! Per-device series kept as values, for modules with `compact_cache: true`: each device's
//! labels and values are stored once (~0.2 KB per device instead of ~0.56 KB of compressed
//! text), and every answer renders the per-device families from them, family by family, a
//! piece at a time. The cache of 100,000 devices then takes ~20 MB instead of ~56 MB, and an
//! answer in flight holds one piece; the price is rendering and compressing the per-device
//! series again for every answer (~60–100 ms of CPU per 10,000 devices), where a normal
//! cached answer costs nothing.
//!
//! Rendering goes through [`DeviceSeries::sample`], the code that writes a fetched device, so
//! both paths write the same samples.

use std::collections::HashMap;
use std::sync::Arc;

use crate::balena::model::Device;
use crate::exposition::{family_header, write_sample_parts};

use super::device::{DeviceSeries, Extra, DEVICE_FAMILIES, N_FAMILIES};

/// The devices of one fetch.
#[derive(Debug, Default)]
pub struct CompactDevices {
    /// Fleet slugs (`fleet` label values).
    fleets: Vec<String>,
    /// Every device's uuid then name.
    arena: String,
    /// Label values that repeat (device type, OS, release, enums, tags), each stored once.
    strings: Vec<Box<str>>,
    index: HashMap<Box<str>, u32>,
    /// Tag values of every device, `tags.len()` per device, as string numbers.
    tag_values: Vec<u32>,
    /// The module's tag labels.
    tags: Vec<(String, String)>,
    rows: Vec<Row>,
}

#[derive(Debug, Clone, Copy)]
struct Row {
    fleet: u32,
    text: u32,
    uuid_len: u16,
    name_len: u16,
    info: [u32; 5],
    status: u32,
    heartbeat: u32,
    update: u32,
    /// The device's host combination in its fleet (`FleetStats::hosts`).
    host: u32,
    /// `status` of `balena_device_os_update` once joined with the host snapshot (a string
    /// number; [`NO_OS_UPDATE`]: no series).
    os_update: u32,
    /// Values of the [`STORED`] families (NaN: absent).
    values: [f64; N_STORED],
}

/// Families whose value is always 1 (info, status, heartbeat: they carry a label) are not
/// stored; these are the others, by number.
const STORED: [usize; N_STORED] = stored();
const N_STORED: usize = {
    let mut n = 0;
    let mut i = 0;
    while i < N_FAMILIES {
        if matches!(DEVICE_FAMILIES[i].extra, Extra::Value) {
            n += 1;
        }
        i += 1;
    }
    n
};

/// `Row::os_update` of a device with no `balena_device_os_update` series.
const NO_OS_UPDATE: u32 = u32::MAX;

const fn stored() -> [usize; N_STORED] {
    let mut out = [0; N_STORED];
    let (mut i, mut n) = (0, 0);
    while i < N_FAMILIES {
        if matches!(DEVICE_FAMILIES[i].extra, Extra::Value) {
            out[n] = i;
            n += 1;
        }
        i += 1;
    }
    out
}

impl CompactDevices {
    /// An empty store for fleets with these slugs and the module's tag labels.
    pub fn new(fleets: Vec<String>, tags: Vec<(String, String)>) -> Self {
        Self {
            fleets,
            tags,
            ..Self::default()
        }
    }

    /// Devices held.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when no device is held.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Bytes held, roughly (for `balena_exporter_cache_bytes`).
    pub fn bytes(&self) -> usize {
        self.rows.capacity() * std::mem::size_of::<Row>()
            + self.arena.capacity()
            + self.tag_values.capacity() * 4
            + self.strings.iter().map(|s| s.len() * 2 + 32).sum::<usize>()
    }

    fn intern(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.strings.len() as u32;
        self.strings.push(s.into());
        self.index.insert(s.into(), i);
        i
    }

    /// Stores device `d` of fleet number `fleet`, whose host combination there is `host`.
    pub fn push(&mut self, fleet: usize, d: &Device<'_>, host: usize) {
        // The fleet label is stored as the fleet number; the series borrow only from `d`.
        let series = DeviceSeries::of("", d, &self.tags);
        let uuid = clip(series.uuid, u16::MAX as usize);
        let name = clip(series.name, u16::MAX as usize);
        let mut values = [f64::NAN; N_STORED];
        for (slot, family) in values.iter_mut().zip(STORED) {
            *slot = series.values[family].unwrap_or(f64::NAN);
        }
        let text = self.arena.len() as u32;
        self.arena.push_str(uuid);
        self.arena.push_str(name);
        let row = Row {
            fleet: fleet as u32,
            text,
            uuid_len: uuid.len() as u16,
            name_len: name.len() as u16,
            info: series.info.map(|s| self.intern(s)),
            status: self.intern(&series.status),
            heartbeat: self.intern(&series.heartbeat),
            update: self.intern(&series.update),
            host: host as u32,
            os_update: NO_OS_UPDATE,
            values,
        };
        for t in &series.tags {
            let i = self.intern(t);
            self.tag_values.push(i);
        }
        self.rows.push(row);
    }

    /// Sets each device's `balena_device_os_update` status from its (row number, fleet, host
    /// combination).
    pub fn set_os_updates<'s>(&mut self, mut status: impl FnMut(usize, usize, usize) -> &'s str) {
        for i in 0..self.rows.len() {
            let r = self.rows[i];
            let label = status(i, r.fleet as usize, r.host as usize);
            self.rows[i].os_update = self.intern(label);
        }
    }

    /// Drops spare capacity before the store is cached.
    pub fn shrink(&mut self) {
        self.rows.shrink_to_fit();
        self.arena.shrink_to_fit();
        self.tag_values.shrink_to_fit();
        self.index = HashMap::new();
    }

    fn series(&self, i: usize) -> DeviceSeries<'_> {
        let r = &self.rows[i];
        let text = r.text as usize;
        let uuid_end = text + r.uuid_len as usize;
        let name_end = uuid_end + r.name_len as usize;
        let s = |n: u32| -> &str { &self.strings[n as usize] };
        let n_tags = self.tags.len();
        let mut values = [Some(1.0); N_FAMILIES];
        for (v, family) in r.values.iter().zip(STORED) {
            values[family] = (!v.is_nan()).then_some(*v);
        }
        DeviceSeries {
            fleet: &self.fleets[r.fleet as usize],
            uuid: &self.arena[text..uuid_end],
            name: &self.arena[uuid_end..name_end],
            info: r.info.map(s),
            tags: self.tag_values[i * n_tags..(i + 1) * n_tags]
                .iter()
                .map(|&t| s(t))
                .collect(),
            status: s(r.status).into(),
            heartbeat: s(r.heartbeat).into(),
            update: s(r.update).into(),
            values,
        }
    }

    /// Device `i`'s `balena_device_os_update` status, once set.
    fn os_update(&self, i: usize) -> Option<&str> {
        let n = self.rows[i].os_update;
        (n != NO_OS_UPDATE).then(|| &*self.strings[n as usize])
    }

    /// The per-device text, family by family, in chunks of about `chunk` bytes.
    pub fn render(self: &Arc<Self>, chunk: usize) -> Render {
        Render {
            store: self.clone(),
            family: 0,
            row: 0,
            started: false,
            chunk: chunk.max(1),
        }
    }
}

/// `s` cut to at most `max` bytes on a character boundary (names are far shorter).
fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Text chunks of the per-device series (see [`CompactDevices::render`]).
pub struct Render {
    store: Arc<CompactDevices>,
    family: usize,
    row: usize,
    /// Whether the current family's header was written.
    started: bool,
    chunk: usize,
}

impl Iterator for Render {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        let store = &self.store;
        let mut out = String::with_capacity(self.chunk + 4096);
        // The table's families, then `balena_device_os_update` (joined with the host
        // snapshot, as the text path writes it once the fetch is done).
        while self.family <= DEVICE_FAMILIES.len() && out.len() < self.chunk {
            if self.row >= store.rows.len() {
                self.family += 1;
                self.row = 0;
                self.started = false;
                continue;
            }
            let series = store.series(self.row);
            let started = &mut self.started;
            let base = series.base();
            let mut write = |def: crate::metrics::MetricDef, extra: &[(&str, &str)], value| {
                if !*started {
                    out.push_str(&family_header(&def));
                    *started = true;
                }
                write_sample_parts(&mut out, def.name, &base, extra, value);
            };
            if self.family < DEVICE_FAMILIES.len() {
                series.sample(self.family, &store.tags, write);
            } else if let Some(status) = store.os_update(self.row) {
                write(crate::metrics::DEVICE_OS_UPDATE, &[("status", status)], 1.0);
            }
            self.row += 1;
        }
        (!out.is_empty()).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exposition::Exposition;
    use crate::probe::device::write_device;

    fn devices() -> Vec<serde_json::Value> {
        (0..300)
            .map(|i| {
                let status = ["operational", "Frozen Solid", "updating"][i % 3];
                serde_json::json!({
                    "id": i, "uuid": format!("{i:032x}"), "device_name": format!("dev \"{i}\""),
                    "is_online": if i % 3 == 0 { serde_json::Value::Null } else { (i % 2 == 0).into() },
                    "overall_status": status,
                    "api_heartbeat_state": if i % 5 == 0 { serde_json::Value::Null } else { "online".into() },
                    "cpu_usage": i % 100, "cpu_temp": if i % 7 == 0 { serde_json::Value::Null } else { (40 + i % 20).into() },
                    "memory_usage": 512.5, "memory_total": 1024, "storage_usage": i, "storage_total": 30000,
                    "is_undervolted": i % 11 == 0, "overall_progress": if i % 4 == 0 { serde_json::Value::from(50) } else { serde_json::Value::Null },
                    "last_connectivity_event": "2026-01-02T03:04:05.678Z",
                    "os_version": "balenaOS 5.1.20", "os_variant": "prod", "supervisor_version": "16.1.0",
                    "is_of__device_type": [{"slug": "raspberrypi4-64"}],
                    "is_running__release": [{"id": 7, "commit": format!("c{}", i % 4)}],
                    "should_be_running__release": {"__id": 7},
                    "device_tag": [{"tag_key": "location", "value": format!("room {}", i % 9)}],
                })
            })
            .collect()
    }

    fn sorted_lines(text: &str) -> Vec<String> {
        let mut v: Vec<String> = text.lines().map(str::to_string).collect();
        v.sort();
        v
    }

    #[test]
    fn rendered_series_are_the_fetched_series() {
        let tags = vec![("tag_location".to_string(), "location".to_string())];
        let fleets = vec!["o/a".to_string(), "o/b".to_string()];
        let mut direct = Exposition::new();
        let mut store = CompactDevices::new(fleets.clone(), tags.clone());
        let rows: Vec<String> = devices().iter().map(|d| d.to_string()).collect();
        for (i, row) in rows.iter().enumerate() {
            let d: Device = serde_json::from_str(row).unwrap();
            write_device(&mut direct, &fleets[i % 2], &d, &tags);
            store.push(i % 2, &d, 0);
        }
        store.shrink();
        let store = Arc::new(store);
        let mut want = String::new();
        direct.render_into(&mut want);
        let chunks: Vec<String> = store.render(1000).collect();
        assert!(chunks.len() > 10);
        assert!(chunks.iter().all(|c| c.len() < 1000 + 4096));
        let got = chunks.concat();
        assert_eq!(sorted_lines(&got), sorted_lines(&want));
        // Grouped by family: one header per family, every sample after its header.
        assert_eq!(got.matches("# TYPE balena_device_info gauge").count(), 1);
        assert!(
            store.bytes() < want.len() / 4,
            "{} bytes held",
            store.bytes()
        );
        assert_eq!(Arc::new(CompactDevices::default()).render(10).count(), 0);
    }
}
