//! The floor of an answer's work beyond a summary probe's, step by step, on the answer's own
//! text: writing its lines (each series copied, its value formatted), and deflate or zstd
//! level 1 of the whole text in one call. `benches/pipeline.rs` times them as `floor/…`;
//! `examples/probe_cost.rs` between its rounds of probes.

use std::fmt::Write as _;
use std::io::Write as _;

/// The sample lines of `text` as (series, value), comments with a NaN value.
pub fn lines(text: &str) -> Vec<(&str, f64)> {
    text.lines()
        .map(|l| match l.rsplit_once(' ') {
            Some((series, v)) if !l.starts_with('#') => (series, v.parse().unwrap_or(0.0)),
            _ => (l, f64::NAN),
        })
        .collect()
}

/// Writes `lines` again into a text of `capacity`; its length.
pub fn write(lines: &[(&str, f64)], capacity: usize) -> usize {
    let mut out = String::with_capacity(capacity);
    for (series, value) in lines {
        out.push_str(series);
        if !value.is_nan() {
            write!(out, " {value}").expect("a String takes any text");
        }
        out.push('\n');
    }
    out.len()
}

/// Deflate level 1 of `text`, in one stream; its compressed length.
pub fn deflate1(text: &str) -> usize {
    let mut e = flate2::write::DeflateEncoder::new(
        Vec::with_capacity(text.len() / 4),
        flate2::Compression::fast(),
    );
    e.write_all(text.as_bytes()).expect("in memory");
    e.finish().expect("in memory").len()
}

/// zstd level 1 of `text`, in one call; its compressed length.
pub fn zstd1(text: &str) -> usize {
    zstd::bulk::compress(text.as_bytes(), 1)
        .expect("zstd level 1")
        .len()
}
