//! The `/probe` answer body: a per-request head (`probe_*` metrics) followed by the target's
//! series, which are compressed once per fetch and shared by every answer served from it.
//!
//! The series are compressed as they are written, in *pieces* (`super::codec`): each family's
//! text is compressed every 64 KiB as a piece that concatenates with any other, so pieces make
//! one valid stream in whatever order the families need, and a probe never holds its whole
//! text (26 MB for 10,000 devices). The probe's own thread compresses each piece once it is
//! filled, between two rows, with that thread's compressor ([`compress_here`]): helper threads
//! cost ~10 ms of CPU a 10,000-device probe and saved little wall time once pages came one at
//! a time (docs/performance.md, "Compressing inline"). The pieces are deflate, or zstd when the
//! probe that fetched was asked for zstd.
//!
//! An answer in the pieces' own encoding is built without compressing the series again: for
//! gzip, the gzip header and the head deflated and sync-flushed, the cached pieces as they are
//! (streamed, shared by every answer in flight), then an empty final block and the CRC32 of
//! both parts combined; for zstd, the head as a frame, then the pieces (frames). A client of
//! the other encoding gets the text decoded and compressed again as it is sent, and one that
//! accepts neither gets the text decoded.

use actix_web::web::Bytes;
use flate2::Crc;

use super::codec::{compress_here, Codec, TextChunks};
use crate::exposition::Exposition;

/// The empty final block (fixed Huffman, no symbols but end-of-block) that closes a stream of
/// deflate pieces.
const FINAL_EMPTY_BLOCK: [u8; 2] = [0x03, 0x00];

/// Text decoded at a time when an answer re-encodes the series for a client of the other
/// codec: large enough to compress well (the deflate window is 32 KiB).
const RECODE_CHUNK: usize = 64 * 1024;

/// Compressed pieces, the length of the text they hold and, for deflate pieces, its CRC32
/// (gzip's trailer; zstd frames check themselves).
#[derive(Debug, Default)]
pub struct Packed {
    pieces: Vec<Bytes>,
    len: u64,
    crc: Crc,
}

impl Packed {
    /// True when no text was packed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Compresses `parts` as one more `codec` piece, with this thread's compressor.
    pub fn add(&mut self, codec: Codec, parts: &[&[u8]]) {
        if let Some(piece) = compress_here(codec, parts) {
            for part in parts {
                self.len += part.len() as u64;
                if codec == Codec::Deflate {
                    self.crc.update(part);
                }
            }
            self.pieces.push(piece);
        }
    }

    /// Appends `other`'s pieces after these.
    pub fn append(&mut self, other: Packed) {
        if other.is_empty() {
            return;
        }
        if self.is_empty() {
            *self = other;
            return;
        }
        self.pieces.extend(other.pieces);
        self.len += other.len;
        self.crc.combine(&other.crc);
    }
}

/// A target's series in compressed form: pieces of one codec, each in a buffer of its own size.
#[derive(Debug, Default)]
pub struct CompressedSeries {
    codec: Codec,
    pieces: Vec<Bytes>,
    len: u64,
    crc: Crc,
}

impl CompressedSeries {
    /// No series, as `codec` pieces.
    pub fn empty(codec: Codec) -> Self {
        Self {
            codec,
            ..Self::default()
        }
    }

    /// Compresses `text` as `codec` pieces.
    pub fn new(codec: Codec, text: &[u8]) -> Self {
        let mut packed = Packed::default();
        packed.add(codec, &[text]);
        Self::from_packed(codec, packed)
    }

    /// Compresses expositions one after another (families in order) as `codec` pieces; text
    /// already packed by a packing exposition (of the same codec) is not compressed again.
    pub fn from_expositions(codec: Codec, parts: impl IntoIterator<Item = Exposition>) -> Self {
        let mut packed = Packed::default();
        for e in parts {
            e.pack_into(codec, &mut packed);
        }
        Self::from_packed(codec, packed)
    }

    /// The series of `packed`, pieces of `codec`.
    pub fn from_packed(codec: Codec, packed: Packed) -> Self {
        let Packed {
            mut pieces,
            len,
            crc,
        } = packed;
        pieces.shrink_to_fit();
        Self {
            codec,
            pieces,
            len,
            crc,
        }
    }

    /// The format of the pieces.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Length of the uncompressed text.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True when there is no text.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held in memory.
    pub fn compressed_len(&self) -> usize {
        self.pieces.iter().map(Bytes::len).sum()
    }

    /// The uncompressed text.
    pub fn text(&self) -> Vec<u8> {
        let mut text = Vec::with_capacity(self.len());
        for chunk in self.text_chunks(1 << 20) {
            text.extend_from_slice(&chunk);
        }
        text
    }

    /// The text decoded piece by piece, in chunks of at most `chunk` bytes: an answer to a
    /// client that needs the text holds one chunk at a time, not the whole text.
    pub fn text_chunks(&self, chunk: usize) -> TextChunks {
        TextChunks::new(self.codec, self.pieces.clone(), chunk)
    }

    /// `head` followed by the series, in the pieces' own encoding (a gzip member for deflate
    /// pieces, zstd frames for zstd ones), whose largest part is the cached pieces themselves
    /// (shared, not copied).
    pub fn answer_after(&self, head: &[u8]) -> SizedAnswer {
        let mut crc = Crc::new();
        crc.update(head);
        crc.combine(&self.crc);
        SizedAnswer {
            head: encoded_head(self.codec, head),
            series: self.pieces.clone(),
            trailer: trailer(self.codec, &crc),
        }
    }

    /// `head`, the series, then the text of `more`, encoded as `codec` while it is sent: the
    /// pieces as they are when they are of `codec`, else decoded and compressed again; `more`
    /// compressed chunk by chunk (series rendered per answer, `compact_cache`).
    pub fn stream_then(
        &self,
        codec: Codec,
        head: &[u8],
        more: impl Iterator<Item = Bytes> + 'static,
    ) -> EncodedStream {
        let mut crc = Crc::new();
        crc.update(head);
        let (pieces, more): (Vec<Bytes>, Box<dyn Iterator<Item = Bytes>>) = if codec == self.codec {
            crc.combine(&self.crc);
            (self.pieces.clone(), Box::new(more))
        } else {
            let text = TextChunks::new(self.codec, self.pieces.clone(), RECODE_CHUNK);
            (Vec::new(), Box::new(text.chain(more)))
        };
        EncodedStream {
            codec,
            head: Some(encoded_head(codec, head)),
            pieces: pieces.into_iter(),
            more,
            crc,
            done: false,
        }
    }
}

/// The start of an answer in `codec`: for gzip, the gzip header and `head` deflated and
/// sync-flushed; for zstd, `head` as a frame.
fn encoded_head(codec: Codec, head: &[u8]) -> Bytes {
    let piece = compress_here(codec, &[head]).unwrap_or_default();
    match codec {
        Codec::Zstd => piece,
        Codec::Deflate => {
            // gzip header: magic, deflate, no flags, no mtime, no extra flags, OS unknown.
            let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
            out.extend_from_slice(&piece);
            out.into()
        }
    }
}

/// The end of an answer in `codec`: for gzip, an empty final block, then CRC32 and length; for
/// zstd, nothing (each frame ends itself).
fn trailer(codec: Codec, crc: &Crc) -> Bytes {
    match codec {
        Codec::Zstd => Bytes::new(),
        Codec::Deflate => {
            let mut trailer = Vec::with_capacity(2 + 8);
            trailer.extend_from_slice(&FINAL_EMPTY_BLOCK);
            trailer.extend_from_slice(&crc.sum().to_le_bytes());
            trailer.extend_from_slice(&crc.amount().to_le_bytes());
            trailer.into()
        }
    }
}

/// An answer whose end is compressed while it is sent (see [`CompressedSeries::stream_then`]).
pub struct EncodedStream {
    codec: Codec,
    head: Option<Bytes>,
    pieces: std::vec::IntoIter<Bytes>,
    more: Box<dyn Iterator<Item = Bytes>>,
    crc: Crc,
    done: bool,
}

impl Iterator for EncodedStream {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if let Some(head) = self.head.take() {
            return Some(head);
        }
        if let Some(piece) = self.pieces.next() {
            return Some(piece);
        }
        for text in self.more.by_ref() {
            if let Some(piece) = compress_here(self.codec, &[&text]) {
                if self.codec == Codec::Deflate {
                    self.crc.update(&text);
                }
                return Some(piece);
            }
        }
        if self.done {
            return None;
        }
        self.done = true;
        Some(trailer(self.codec, &self.crc)).filter(|t| !t.is_empty())
    }
}

/// An answer of known length: its head (for gzip, with the gzip header), the cached series
/// pieces, and its trailer (for gzip, the closing block with CRC32 and length).
#[derive(Debug, Clone)]
pub struct SizedAnswer {
    head: Bytes,
    series: Vec<Bytes>,
    trailer: Bytes,
}

impl SizedAnswer {
    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.head.len() + self.series.iter().map(Bytes::len).sum::<usize>() + self.trailer.len()
    }

    /// True when there are no bytes at all (zstd with no head and no series).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The answer in pieces of at most `piece` bytes (the head and trailer excepted), for a
    /// streamed response body: the server copies each into its write buffer just before
    /// sending it, so an answer in flight holds about one piece besides the shared series.
    pub fn into_pieces(self, piece: usize) -> impl Iterator<Item = Bytes> {
        let piece = piece.max(1);
        std::iter::once(self.head)
            .chain(self.series.into_iter().flat_map(move |b| {
                let count = b.len().div_ceil(piece);
                (0..count).map(move |i| b.slice(i * piece..((i + 1) * piece).min(b.len())))
            }))
            .chain(std::iter::once(self.trailer))
            .filter(|b| !b.is_empty())
    }

    /// The whole answer in one buffer (tests).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        v.extend_from_slice(&self.head);
        for p in &self.series {
            v.extend_from_slice(p);
        }
        v.extend_from_slice(&self.trailer);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exposition::codec::tests::series_text;

    const CODECS: [Codec; 2] = [Codec::Deflate, Codec::Zstd];

    /// What a client reads from an answer in `codec`: a single-member gzip decoder (the answer
    /// must be one member, not several), or a stock zstd decoder.
    fn decode(codec: Codec, data: &[u8]) -> Vec<u8> {
        use std::io::Read as _;
        match codec {
            Codec::Deflate => {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(data)
                    .read_to_end(&mut out)
                    .unwrap();
                out
            }
            Codec::Zstd => zstd::stream::decode_all(data).unwrap(),
        }
    }

    #[test]
    fn head_plus_precompressed_series_is_one_valid_answer() {
        let series = series_text(20_000);
        for codec in CODECS {
            let c = CompressedSeries::new(codec, &series);
            assert_eq!(c.codec(), codec);
            assert!(c.compressed_len() * 5 < series.len());
            assert_eq!(c.text(), series);
            for head in [&b"probe_success 1\nprobe_duration_seconds 0.25\n"[..], b""] {
                let answer = c.answer_after(head).to_vec();
                let mut want = head.to_vec();
                want.extend_from_slice(&series);
                assert_eq!(decode(codec, &answer), want, "{codec:?}");
            }
            assert!(CompressedSeries::default().text().is_empty());
            let empty = CompressedSeries::new(codec, b"");
            let answer = empty.answer_after(b"probe_success 0\n").to_vec();
            assert_eq!(decode(codec, &answer), b"probe_success 0\n");
        }
    }

    #[test]
    fn an_exposition_compresses_to_its_rendered_text() {
        let build = || {
            let mut e = Exposition::new();
            for i in 0..500 {
                e.gauge(
                    crate::metrics::DEVICE_ONLINE,
                    &[("device_uuid", &format!("{i:032x}"))],
                    1.0,
                );
                e.gauge(crate::metrics::FLEET_DEVICES, &[("fleet", "o/f")], i as f64);
            }
            e
        };
        let mut text = String::new();
        build().render_into(&mut text);
        for codec in CODECS {
            let series = CompressedSeries::from_expositions(codec, [build()]);
            assert_eq!(series.text(), text.as_bytes(), "{codec:?}");
        }
    }

    #[test]
    fn an_answer_in_pieces_is_the_same_answer_and_shares_the_series() {
        let series = series_text(5_000);
        for codec in CODECS {
            let c = CompressedSeries::new(codec, &series);
            let answer = c.answer_after(b"probe_success 1\n");
            let whole = answer.to_vec();
            assert_eq!(answer.len(), whole.len());
            let pieces: Vec<Bytes> = answer.into_pieces(1000).collect();
            assert!(pieces.len() > 3);
            assert!(pieces
                .iter()
                .all(|p| p.len() <= 1000 || p.len() == pieces[0].len()));
            // The series pieces point into the cached pieces: no copy per answer.
            let cached = c.pieces[0].as_ptr_range();
            let series_pieces = match codec {
                Codec::Deflate => &pieces[1..pieces.len() - 1],
                Codec::Zstd => &pieces[1..],
            };
            assert!(series_pieces.iter().all(|p| cached.contains(&p.as_ptr())));
            assert_eq!(pieces.concat(), whole);
            let mut want = b"probe_success 1\n".to_vec();
            want.extend_from_slice(&series);
            assert_eq!(decode(codec, &whole), want, "{codec:?}");
        }
    }

    #[test]
    fn text_chunks_decode_every_piece_in_order() {
        for codec in CODECS {
            let mut e = Exposition::packing(2_000, codec);
            for i in 0..3_000 {
                e.gauge(
                    crate::metrics::DEVICE_ONLINE,
                    &[("device_uuid", &format!("{i:032x}"))],
                    1.0,
                );
                e.gauge(
                    crate::metrics::DEVICE_CPU,
                    &[("device_uuid", &format!("{i:x}"))],
                    0.5,
                );
            }
            let series = CompressedSeries::from_expositions(codec, [e]);
            assert!(series.pieces.len() > 20);
            let chunks: Vec<Bytes> = series.text_chunks(4096).collect();
            assert!(chunks.iter().all(|c| c.len() <= 4096 && !c.is_empty()));
            assert_eq!(chunks.concat(), series.text());
            assert_eq!(chunks.concat().len(), series.len());
        }
        assert_eq!(CompressedSeries::default().text_chunks(10).count(), 0);
    }

    #[test]
    fn a_streamed_answer_in_either_codec_is_head_series_and_more() {
        let series = series_text(8_000);
        let more = || (0..3).map(|i| Bytes::from(format!("more {i}\n")));
        let mut want = b"probe_success 1\n".to_vec();
        want.extend_from_slice(&series);
        want.extend_from_slice(b"more 0\nmore 1\nmore 2\n");
        for cached in CODECS {
            let c = CompressedSeries::new(cached, &series);
            for asked in CODECS {
                let stream = c.stream_then(asked, b"probe_success 1\n", more());
                let parts: Vec<Bytes> = stream.collect();
                assert!(parts.iter().all(|p| !p.is_empty()));
                // In its own codec the cached pieces are sent as they are.
                let shared = parts.iter().any(|p| p.as_ptr() == c.pieces[0].as_ptr());
                assert_eq!(shared, cached == asked, "{cached:?} asked {asked:?}");
                let got = decode(asked, &parts.concat());
                assert!(got == want, "{cached:?} pieces asked as {asked:?}");
            }
        }
    }
}
