//! The text format and its compression: what a probe writes and how it is answered.
//!
//! Probe output is written straight into text format 0.0.4 by [`Exposition`]: one buffer per
//! metric family, so samples of a family stay together whatever order devices arrive in. A
//! probe of a 10,000-device fleet writes ~150,000 samples; building them as `prometheus`
//! `GaugeVec`s would hash every label set and hold it twice (see `docs/performance.md`).
//! [`body`] compresses the families into pieces ([`codec`]: deflate or zstd) as they are
//! written, keeps them as the cached series, and builds the gzip, zstd (or decoded) answers
//! from them.

pub mod body;
pub mod codec;

/// The Content-Type of text format 0.0.4, of `/probe` and `/metrics` answers.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::metrics::MetricDef;
use body::Packed;
use codec::Codec;

/// Text-format output of one probe, grouped by family in first-use order.
///
/// A *packing* exposition (see [`Exposition::packing`]) never holds much text: once a family's
/// pending text reaches the threshold it is compressed into that family's pieces
/// (`crate::exposition::body`), so a 10,000-device probe holds its compressed series (~5.6 MB)
/// and at most ~13 × 64 KiB of text instead of 18 MB of text.
#[derive(Debug, Default)]
pub struct Exposition {
    families: Vec<Family>,
    index: HashMap<&'static str, usize>,
    /// The codec of the pieces, for a packing exposition.
    packing: Option<Codec>,
    pack_at: usize,
}

#[derive(Debug)]
struct Family {
    def: MetricDef,
    /// Text not yet packed (starts with the HELP/TYPE header until the first piece is packed).
    text: String,
    /// Compressed pieces of the text written before `text`, header included.
    packed: Packed,
}

impl Exposition {
    /// An empty output that holds its text.
    pub fn new() -> Self {
        Self {
            pack_at: usize::MAX,
            ..Self::default()
        }
    }

    /// An empty output that compresses each family's text as a `codec` piece whenever
    /// `threshold` bytes of it are pending, on the caller's thread (docs/performance.md,
    /// "Compressing inline", measured it against helper threads).
    pub fn packing(threshold: usize, codec: Codec) -> Self {
        Self {
            packing: Some(codec),
            pack_at: threshold.max(1),
            ..Self::default()
        }
    }

    /// The codec of a packing exposition's pieces.
    pub fn packing_codec(&self) -> Option<Codec> {
        self.packing
    }

    /// Adds one gauge sample.
    pub fn gauge(&mut self, def: MetricDef, labels: &[(&str, &str)], value: f64) {
        self.sample(def, |buf| write_sample(buf, def.name, labels, value));
    }

    /// Adds one gauge sample whose labels start with `prefix`, escaped once for all the
    /// samples that share it ([`label_prefix`]), and go on with `extra`.
    pub fn gauge_after(
        &mut self,
        def: MetricDef,
        prefix: &str,
        extra: &[(&str, &str)],
        value: f64,
    ) {
        self.sample(def, |buf| {
            write_sample_after(buf, def.name, prefix, extra, value)
        });
    }

    /// Writes one sample of family `def` with `write`, then packs the family's text if it is
    /// long enough.
    fn sample(&mut self, def: MetricDef, write: impl FnOnce(&mut String)) {
        // A probe writes ~25 families: a pointer scan beats hashing the name ~150,000 times.
        let i = match self
            .families
            .iter()
            .position(|f| std::ptr::eq(f.def.name, def.name))
        {
            Some(i) => i,
            None => *self.index.entry(def.name).or_insert_with(|| {
                self.families.push(Family {
                    def,
                    text: family_header(&def),
                    packed: Packed::default(),
                });
                self.families.len() - 1
            }),
        };
        let family = &mut self.families[i];
        let buf = &mut family.text;
        write(buf);
        if buf.len() >= self.pack_at {
            if let Some(codec) = self.packing {
                family.packed.add(codec, &[buf.as_bytes()]);
                buf.clear();
            }
        }
    }

    /// Names of the families written so far.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.families.iter().map(|f| f.def.name)
    }

    /// Appends every family, with HELP and TYPE lines, to `out`. For an exposition that is not
    /// packing (a packing one is read through `CompressedSeries::from_expositions`).
    pub fn render_into(&self, out: &mut String) {
        for f in &self.families {
            out.push_str(&f.text);
        }
    }

    /// Compresses every family, in order, onto `out` as `codec` pieces: the pieces packed so
    /// far, then the rest of each family's text.
    pub fn pack_into(self, codec: Codec, out: &mut Packed) {
        // Pieces of two codecs would not make one stream.
        assert!(
            self.packing.is_none_or(|own| own == codec),
            "an exposition packed in another codec"
        );
        // Text not packed yet is compressed in as few pieces as the order allows: one for all
        // the families that have no pieces of their own (each piece costs a compressor reset).
        let mut pending: Vec<String> = Vec::new();
        let flush = |pending: &mut Vec<String>, out: &mut Packed| {
            let parts: Vec<&[u8]> = pending.iter().map(|t| t.as_bytes()).collect();
            out.add(codec, &parts);
            pending.clear();
        };
        for f in self.families {
            if !f.packed.is_empty() {
                flush(&mut pending, out);
                out.append(f.packed);
            }
            if !f.text.is_empty() {
                pending.push(f.text);
            }
        }
        flush(&mut pending, out);
    }

    /// Bytes of text held (not yet packed).
    pub fn len(&self) -> usize {
        self.families.iter().map(|f| f.text.len()).sum()
    }

    /// True when no sample was written.
    pub fn is_empty(&self) -> bool {
        self.families.is_empty()
    }
}

/// One sample line: `name{labels} value`.
pub fn write_sample(buf: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    write_sample_parts(buf, name, labels, &[], value);
}

/// One sample line whose labels are `first` and then `then`: `name{first,then} value`.
pub fn write_sample_parts(
    buf: &mut String,
    name: &str,
    first: &[(&str, &str)],
    then: &[(&str, &str)],
    value: f64,
) {
    buf.push_str(name);
    let mut before = '{';
    for label in first.iter().chain(then) {
        push_label(buf, before, label);
        before = ',';
    }
    if before == ',' {
        buf.push('}');
    }
    buf.push(' ');
    write_value(buf, value);
    buf.push('\n');
}

/// The start of a label set, `{k="v",k2="v2"` (escaped, no closing brace), for samples that
/// share their first labels: a device's ~19 lines all start with its fleet, uuid and name, and
/// escaping them once instead of on every line saves ~5 ms of a 10,000-device probe.
pub fn label_prefix(labels: &[(&str, &str)]) -> String {
    let mut prefix = String::new();
    for (n, label) in labels.iter().enumerate() {
        push_label(&mut prefix, if n == 0 { '{' } else { ',' }, label);
    }
    prefix
}

/// One sample line whose label set starts with `prefix` (from [`label_prefix`], not empty)
/// and goes on with `extra`: `name{prefix,extra} value`.
pub fn write_sample_after(
    buf: &mut String,
    name: &str,
    prefix: &str,
    extra: &[(&str, &str)],
    value: f64,
) {
    buf.push_str(name);
    buf.push_str(prefix);
    for label in extra {
        push_label(buf, ',', label);
    }
    buf.push_str("} ");
    write_value(buf, value);
    buf.push('\n');
}

/// `{k="v"` or `,k="v"`, the value escaped.
fn push_label(buf: &mut String, before: char, (k, v): &(&str, &str)) {
    buf.push(before);
    buf.push_str(k);
    buf.push_str("=\"");
    escape_label_value(buf, v);
    buf.push('"');
}

/// The `# HELP` and `# TYPE` lines of a gauge family.
pub fn family_header(def: &MetricDef) -> String {
    format!(
        "# HELP {} {}\n# TYPE {} gauge\n",
        def.name, def.help, def.name
    )
}

fn escape_label_value(buf: &mut String, v: &str) {
    if !v.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        buf.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => buf.push_str("\\\\"),
            '"' => buf.push_str("\\\""),
            '\n' => buf.push_str("\\n"),
            c => buf.push(c),
        }
    }
}

fn write_value(buf: &mut String, v: f64) {
    if v.is_nan() {
        buf.push_str("NaN");
    } else if v.is_infinite() {
        buf.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        // Counts, bytes and flags are integers: integer formatting is several times faster,
        // and itoa's than `core::fmt`'s (~1-2 ms of a 10,000-device probe).
        buf.push_str(itoa::Buffer::new().format(v as i64));
    } else if let Some(n) = thousandths(v) {
        // Timestamps in milliseconds and percentages as ratios, ~40,000 of a 10,000-device
        // probe: written as integers, the same digits `core::fmt` finds (see `thousandths`).
        if n < 0 {
            buf.push('-');
        }
        let n = n.unsigned_abs();
        buf.push_str(itoa::Buffer::new().format(n / 1000));
        buf.push('.');
        let frac = n % 1000;
        let digits = [
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ];
        let len = if frac % 100 == 0 {
            1
        } else if frac % 10 == 0 {
            2
        } else {
            3
        };
        buf.push_str(std::str::from_utf8(&digits[..len]).expect("ASCII digits"));
    } else {
        // Not ryu: where two shortest forms are equally near (667082108456853.25), ryu takes
        // the even digit and `{}` the other, and the answer must stay what it is.
        let _ = write!(buf, "{v}");
    }
}

/// `v` in thousandths, when `v` is the double nearest to a decimal of at most three places
/// (and not an integer) below 10^12. Then that decimal, trailing zeros dropped, is the shortest
/// one that reads back as `v`, which is what `core::fmt` writes: a double's neighbours there are
/// less than 2^-13 apart, so any decimal with fewer places is more than half a neighbour away.
fn thousandths(v: f64) -> Option<i64> {
    if v.abs() >= 1e12 {
        return None;
    }
    let n = (v * 1000.0).round();
    // Division is correctly rounded: `n / 1000` is the double nearest to the decimal.
    (n / 1000.0 == v).then_some(n as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{DEVICE_CPU, DEVICE_ONLINE};

    /// A value as `core::fmt` writes it (integers through `i64`): what `write_value` must write.
    fn reference(v: f64) -> String {
        if v.is_nan() {
            "NaN".into()
        } else if v.is_infinite() {
            (if v > 0.0 { "+Inf" } else { "-Inf" }).into()
        } else if v.fract() == 0.0 && v.abs() < 1e15 {
            format!("{}", v as i64)
        } else {
            format!("{v}")
        }
    }

    fn written(v: f64) -> String {
        let mut buf = String::new();
        write_value(&mut buf, v);
        buf
    }

    #[test]
    fn values_are_written_as_core_fmt_writes_them() {
        let edges = [
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.1,
            0.25,
            1e-5,
            1e-5 * 0.999,
            9.999_999e-6,
            1e15,
            1e15 - 0.5,
            999_999_999_999_999.9,
            1e16,
            1e21,
            1e-7,
            5e-324,
            f64::MAX,
            f64::MIN_POSITIVE,
            1.0 / 3.0,
            2.0 / 3.0,
            123.456,
            0.1 + 0.2,
            99.99,
            37.5,
            1e14 + 0.5,
            -0.000_012_345,
            1.5e-5,
        ];
        for v in edges.into_iter().chain(edges.map(|v| -v)) {
            assert_eq!(written(v), reference(v), "{v:e}");
        }
        // Every bit pattern class, deterministically: a linear congruential walk of u64s.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..200_000 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let v = f64::from_bits(x);
            assert_eq!(written(v), reference(v), "{v:e} ({x:#x})");
            // ... and values of the sizes a device reports (percent, MiB, degrees, ratios).
            let small = (x >> 11) as f64 / (1u64 << 53) as f64 * 10f64.powi((x % 12) as i32 - 6);
            assert_eq!(written(small), reference(small), "{small:e}");
            // ... and decimals of one to three places, of every size up to and past 10^12:
            // timestamps in milliseconds, ratios of percentages.
            let places = 10f64.powi((x % 3) as i32 + 1);
            let whole = (x >> 20) % 10u64.pow(((x >> 8) % 17) as u32);
            let decimal = whole as f64 / places * if x & 1 == 0 { 1.0 } else { -1.0 };
            assert_eq!(written(decimal), reference(decimal), "{decimal:e}");
        }
        for v in [
            1764940000.123,
            1764940000.1,
            0.37,
            0.05,
            0.001,
            -0.5,
            999_999_999_999.999,
        ] {
            assert!(thousandths(v).is_some(), "{v} takes the fast path");
            assert_eq!(written(v), reference(v), "{v:e}");
        }
        assert!(thousandths(0.0001).is_none() && thousandths(1e12 + 0.5).is_none());
    }

    #[test]
    fn label_values_are_escaped_and_families_grouped() {
        let mut e = Exposition::new();
        e.gauge(DEVICE_ONLINE, &[("device_name", "a\"b\\c\nd")], 1.0);
        e.gauge(DEVICE_CPU, &[], 0.25);
        e.gauge(DEVICE_ONLINE, &[("device_name", "x")], 0.0);
        let mut out = String::new();
        e.render_into(&mut out);
        assert_eq!(
            out,
            format!(
                "# HELP balena_device_online {}\n# TYPE balena_device_online gauge\nbalena_device_online{{device_name=\"a\\\"b\\\\c\\nd\"}} 1\nbalena_device_online{{device_name=\"x\"}} 0\n# HELP balena_device_cpu_usage_ratio {}\n# TYPE balena_device_cpu_usage_ratio gauge\nbalena_device_cpu_usage_ratio 0.25\n",
                DEVICE_ONLINE.help, DEVICE_CPU.help
            )
        );
    }
}
