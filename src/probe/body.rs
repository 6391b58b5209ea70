//! The `/probe` answer body: a per-request head (`probe_*` metrics) followed by the target's
//! series, which are compressed once per fetch and shared by every answer served from it.
//!
//! For clients that accept gzip (Prometheus always does), the answer is one gzip member built
//! without recompressing the series: the head is deflated and sync-flushed (byte-aligned,
//! non-final), the stored deflate stream of the series follows (it never refers back before its
//! own start, so the head's history is irrelevant to it), and the trailer carries the CRC32 of
//! both parts combined. Other clients get the series inflated on the fly. Keeping only the
//! compressed form also makes a cached 10,000-device answer ~10× smaller in memory.

use std::io::{Read, Write};

use actix_web::web::Bytes;
use flate2::write::DeflateEncoder;
use flate2::{Compression, Crc};

use crate::metrics::Exposition;

/// A target's series in compressed form.
#[derive(Debug, Default)]
pub struct CompressedSeries {
    deflate: Bytes,
    crc: Crc,
}

impl CompressedSeries {
    /// Compresses `text` (raw deflate, fast level, final block).
    pub fn new(text: &[u8]) -> Self {
        Self::build(text.len(), |w| w.write_all(text))
    }

    /// Compresses an exposition family by family, never joining it into one buffer.
    pub fn from_exposition(e: &Exposition) -> Self {
        Self::build(e.len(), |w| e.write_to(w))
    }

    fn build(size_hint: usize, write: impl FnOnce(&mut CrcWriter) -> std::io::Result<()>) -> Self {
        let enc = DeflateEncoder::new(Vec::with_capacity(size_hint / 8 + 64), Compression::fast());
        let mut w = CrcWriter {
            enc,
            crc: Crc::new(),
        };
        write(&mut w).expect("writing to a Vec cannot fail");
        let deflate = w.enc.finish().expect("finishing into a Vec cannot fail");
        Self {
            deflate: deflate.into(),
            crc: w.crc,
        }
    }

    /// Length of the uncompressed text.
    pub fn len(&self) -> usize {
        self.crc.amount() as usize
    }

    /// True when there is no text.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held in memory.
    pub fn compressed_len(&self) -> usize {
        self.deflate.len()
    }

    /// The uncompressed text.
    pub fn text(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        if !self.deflate.is_empty() {
            if let Err(e) =
                flate2::read::DeflateDecoder::new(&self.deflate[..]).read_to_end(&mut out)
            {
                // Cannot happen with a stream we wrote ourselves; never panic on a request.
                tracing::error!(error = %e, "cannot inflate cached series");
                out.clear();
            }
        }
        out
    }

    /// `head` followed by the series, as one gzip member.
    pub fn gzip_after(&self, head: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(self.deflate.len() + head.len() / 4 + 64);
        // gzip header: magic, deflate, no flags, no mtime, no extra flags, OS unknown.
        out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
        let mut enc = DeflateEncoder::new(out, Compression::fast());
        enc.write_all(head).expect("writing to a Vec cannot fail");
        enc.flush().expect("sync flush into a Vec cannot fail");
        // Take the sync-flushed bytes; dropping the encoder then finishes into an empty Vec.
        let mut out = std::mem::take(enc.get_mut());
        drop(enc);
        if self.deflate.is_empty() {
            // No series: close the stream with an empty final block.
            out.extend_from_slice(&[0x03, 0x00]);
        } else {
            out.extend_from_slice(&self.deflate);
        }
        let mut crc = Crc::new();
        crc.update(head);
        crc.combine(&self.crc);
        out.extend_from_slice(&crc.sum().to_le_bytes());
        out.extend_from_slice(&crc.amount().to_le_bytes());
        out.into()
    }
}

/// A deflate writer that also keeps the CRC32 of what went in.
struct CrcWriter {
    enc: DeflateEncoder<Vec<u8>>,
    crc: Crc,
}

impl Write for CrcWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.enc.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.enc.flush()
    }
}

/// Whether an `Accept-Encoding` value allows gzip (a `q=0` refuses it).
pub fn accepts_gzip(accept_encoding: Option<&str>) -> bool {
    accept_encoding.is_some_and(|v| {
        v.split(',').any(|part| {
            let mut it = part.trim().split(';');
            let coding = it.next().unwrap_or("").trim();
            let q_zero = it.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !q_zero
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        // A single-member decoder: the answer must be one member, not several.
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn head_plus_precompressed_series_is_one_valid_gzip_member() {
        let series: Vec<u8> = (0..20_000)
            .flat_map(|i| {
                format!("balena_device_online{{device_uuid=\"{i:032x}\"}} 1\n").into_bytes()
            })
            .collect();
        let c = CompressedSeries::new(&series);
        assert!(c.compressed_len() * 5 < series.len());
        assert_eq!(c.text(), series);
        for head in [&b"probe_success 1\nprobe_duration_seconds 0.25\n"[..], b""] {
            let gz = c.gzip_after(head);
            let mut want = head.to_vec();
            want.extend_from_slice(&series);
            assert_eq!(gunzip(&gz), want);
        }
        assert!(CompressedSeries::default().text().is_empty());
        let empty = CompressedSeries::new(b"");
        assert_eq!(
            gunzip(&empty.gzip_after(b"probe_success 0\n")),
            b"probe_success 0\n"
        );
    }

    #[test]
    fn an_exposition_compresses_to_its_rendered_text() {
        let mut e = Exposition::new();
        for i in 0..500 {
            e.gauge(
                crate::metrics::DEVICE_ONLINE,
                &[("device_uuid", &format!("{i:032x}"))],
                1.0,
            );
            e.gauge(crate::metrics::FLEET_DEVICES, &[("fleet", "o/f")], i as f64);
        }
        let mut text = String::new();
        e.render_into(&mut text);
        assert_eq!(
            CompressedSeries::from_exposition(&e).text(),
            text.as_bytes()
        );
    }

    #[test]
    fn accept_encoding_is_read_with_q_values() {
        assert!(accepts_gzip(Some("gzip")));
        assert!(accepts_gzip(Some("deflate, gzip;q=0.5")));
        assert!(accepts_gzip(Some("*")));
        assert!(!accepts_gzip(Some("gzip;q=0")));
        assert!(!accepts_gzip(Some("identity")));
        assert!(!accepts_gzip(None));
    }
}
