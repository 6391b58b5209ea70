//! The `/probe` answer body: a per-request head (`probe_*` metrics) followed by the target's
//! series, which are compressed once per fetch and shared by every answer served from it.
//!
//! The series are compressed as they are written, in *pieces*: each family's text is deflated
//! every 64 KiB from a reset compressor and sync-flushed, so pieces concatenate into one valid
//! stream in whatever order the families need, and a probe never holds its whole text (18 MB
//! for 10,000 devices). [`Packer`] does this on two helper threads while rows are still decoded.
//!
//! For clients that accept gzip (Prometheus always does), the answer is one gzip member built
//! without recompressing the series: the head is deflated and sync-flushed, the cached pieces
//! follow as they are (streamed, shared by every answer in flight), then an empty final block
//! and the CRC32 of both parts combined. Other clients get the series inflated.

use std::io::Read;

use actix_web::web::Bytes;
use flate2::{Compress, Compression, Crc, Decompress, FlushCompress, FlushDecompress};

use crate::exposition::Exposition;

/// The empty final block (fixed Huffman, no symbols but end-of-block) that closes a stream of
/// pieces.
const FINAL_EMPTY_BLOCK: [u8; 2] = [0x03, 0x00];

/// Compresses text into raw-deflate *pieces* that can be concatenated in any order: each piece
/// starts from a reset compressor (it never refers back before its own start) and ends with a
/// sync flush (byte-aligned, not final). Concatenated pieces followed by an empty final block
/// are one valid deflate stream. One compressor serves a whole probe.
pub struct PieceDeflater {
    compress: Compress,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for PieceDeflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PieceDeflater")
    }
}

impl Default for PieceDeflater {
    fn default() -> Self {
        Self::new()
    }
}

impl PieceDeflater {
    /// A fast-level raw-deflate compressor.
    pub fn new() -> Self {
        Self {
            compress: Compress::new(Compression::fast(), false),
            scratch: Vec::new(),
        }
    }

    /// Compresses `parts`, in order, as one piece appended to `out` (in a buffer of exactly
    /// its size: pieces are kept for the cache TTL).
    pub fn piece(&mut self, parts: &[&[u8]], out: &mut Packed) {
        if parts.iter().all(|p| p.is_empty()) {
            return;
        }
        self.compress.reset();
        self.scratch.clear();
        for (i, part) in parts.iter().enumerate() {
            out.crc.update(part);
            let last = i + 1 == parts.len();
            let flush = if last {
                FlushCompress::Sync
            } else {
                FlushCompress::None
            };
            let mut input: &[u8] = part;
            loop {
                self.scratch.reserve(input.len() / 4 + 256);
                let before = self.compress.total_in();
                self.compress
                    .compress_vec(input, &mut self.scratch, flush)
                    .expect("deflate of in-memory text cannot fail");
                input = &input[(self.compress.total_in() - before) as usize..];
                // Done when the input is consumed and (for the flush) output room was left over.
                if input.is_empty() && (!last || self.scratch.len() < self.scratch.capacity()) {
                    break;
                }
            }
        }
        out.pieces.push(Bytes::copy_from_slice(&self.scratch));
    }
}

/// Packs families' pending text as pieces. The first piece starts the helper threads (two, or
/// one on a single core), which compress the pieces in turn while the probe goes on decoding
/// rows and writing text; the channels to them are bounded, so at most a few pieces wait.
/// Pieces are independent (each from a reset compressor), so two helpers can share one
/// family's; `finish` puts them back in order. Deflate is the longest step of a 10,000-device
/// probe (~60 ms of ~90 ms of CPU): with one helper it alone set the pipeline's wall time,
/// with two it is shared with the core the decoding leaves idle (`benches/pipeline.rs`,
/// docs/performance.md). Without a thread (spawn refused), pieces are compressed inline.
pub struct Packer {
    inline: PieceDeflater,
    workers: Vec<PackWorker>,
    /// Pieces handed to the helpers so far (a piece's number orders it within its family).
    sent: usize,
    threaded: bool,
}

/// A piece compressed by a helper: its family, its number, and the piece.
type Numbered = (usize, usize, Packed);

struct PackWorker {
    pieces: std::sync::mpsc::SyncSender<(usize, usize, String)>,
    done: std::thread::JoinHandle<Vec<Numbered>>,
}

/// How many helper threads a packing probe starts: two, or one on a single core.
fn helpers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(2))
}

impl std::fmt::Debug for Packer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packer")
            .field("helpers", &self.workers.len())
            .finish()
    }
}

impl Packer {
    /// A packer; `threaded` allows the helper threads.
    pub fn new(threaded: bool) -> Self {
        Self {
            inline: PieceDeflater::new(),
            workers: Vec::new(),
            sent: 0,
            threaded,
        }
    }

    /// Packs `text` as the next piece of family number `family` (inline into `inline_out`, or
    /// on a helper thread), leaving `text` empty.
    pub fn pack(&mut self, family: usize, text: &mut String, inline_out: &mut Packed) {
        if self.workers.is_empty() && self.threaded {
            self.workers = (0..helpers()).map_while(|_| PackWorker::spawn()).collect();
            self.threaded = !self.workers.is_empty();
        }
        if !self.workers.is_empty() {
            let worker = &self.workers[self.sent % self.workers.len()];
            let piece = std::mem::replace(text, String::with_capacity(text.capacity()));
            match worker.pieces.send((family, self.sent, piece)) {
                Ok(()) => {
                    self.sent += 1;
                    return;
                }
                // The helper is gone: `finish` reports it; keep the text meanwhile.
                Err(std::sync::mpsc::SendError((_, _, piece))) => *text = piece,
            }
        }
        self.inline.piece(&[text.as_bytes()], inline_out);
        text.clear();
    }

    /// Waits for the helper threads: the pieces they packed, by family number, each family's
    /// in the order they were handed over.
    pub fn finish(&mut self) -> Vec<Packed> {
        let mut numbered: Vec<Numbered> = Vec::new();
        for PackWorker { pieces, done } in std::mem::take(&mut self.workers) {
            drop(pieces);
            match done.join() {
                Ok(packed) => numbered.extend(packed),
                // Only a bug can get here (deflating memory cannot fail): fail as loudly as
                // inline.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        numbered.sort_unstable_by_key(|(_, n, _)| *n);
        let mut packed: Vec<Packed> = Vec::new();
        for (family, _, piece) in numbered {
            if packed.len() <= family {
                packed.resize_with(family + 1, Packed::default);
            }
            packed[family].append(piece);
        }
        packed
    }

    /// The inline compressor, for the last pieces.
    pub fn deflater(&mut self) -> &mut PieceDeflater {
        &mut self.inline
    }
}

impl PackWorker {
    fn spawn() -> Option<Self> {
        let (pieces, queue) = std::sync::mpsc::sync_channel::<(usize, usize, String)>(2);
        let done = std::thread::Builder::new()
            .name("deflate".into())
            .spawn(move || {
                let mut deflater = PieceDeflater::new();
                queue
                    .into_iter()
                    .map(|(family, n, text)| {
                        let mut piece = Packed::default();
                        deflater.piece(&[text.as_bytes()], &mut piece);
                        (family, n, piece)
                    })
                    .collect()
            })
            .ok()?;
        Some(Self { pieces, done })
    }
}

/// Deflate pieces and the CRC32 of the text they hold.
#[derive(Debug, Default)]
pub struct Packed {
    pieces: Vec<Bytes>,
    crc: Crc,
}

impl Packed {
    /// True when no text was packed.
    pub fn is_empty(&self) -> bool {
        self.crc.amount() == 0
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
        self.crc.combine(&other.crc);
    }
}

/// Inflates pieces (closing the stream with an empty final block).
fn inflate(pieces: &[Bytes], size_hint: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size_hint);
    if pieces.is_empty() {
        return out;
    }
    let mut stream: Vec<u8> = pieces.concat();
    stream.extend_from_slice(&FINAL_EMPTY_BLOCK);
    if let Err(e) = flate2::read::DeflateDecoder::new(&stream[..]).read_to_end(&mut out) {
        // Cannot happen with a stream we wrote ourselves; never panic on a request.
        tracing::error!(error = %e, "cannot inflate cached series");
        out.clear();
    }
    out
}

/// A target's series in compressed form: deflate pieces, each in a buffer of its own size.
#[derive(Debug, Default)]
pub struct CompressedSeries {
    pieces: Vec<Bytes>,
    crc: Crc,
}

impl CompressedSeries {
    /// Compresses `text`.
    pub fn new(text: &[u8]) -> Self {
        let mut packed = Packed::default();
        PieceDeflater::new().piece(&[text], &mut packed);
        Self::from_packed(packed)
    }

    /// Compresses expositions one after another (families in order); text already packed by
    /// a packing exposition is not compressed again.
    pub fn from_expositions(parts: impl IntoIterator<Item = Exposition>) -> Self {
        let mut packer = PieceDeflater::new();
        let mut packed = Packed::default();
        for e in parts {
            e.pack_into(&mut packer, &mut packed);
        }
        Self::from_packed(packed)
    }

    /// The series of `packed`.
    pub fn from_packed(packed: Packed) -> Self {
        let Packed { mut pieces, crc } = packed;
        pieces.shrink_to_fit();
        Self { pieces, crc }
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
        self.pieces.iter().map(Bytes::len).sum()
    }

    /// The uncompressed text.
    pub fn text(&self) -> Vec<u8> {
        inflate(&self.pieces, self.len())
    }

    /// The text inflated piece by piece, in chunks of at most `chunk` bytes: an answer to a
    /// client without gzip holds one chunk at a time, not the whole text.
    pub fn text_chunks(&self, chunk: usize) -> TextChunks {
        TextChunks::new(self.shared_pieces(), chunk)
    }

    /// The pieces, shared (reference-counted buffers, not copies), to inflate later with
    /// [`TextChunks::new`].
    pub fn shared_pieces(&self) -> Vec<Bytes> {
        self.pieces.clone()
    }

    /// `head` followed by the series, as one gzip member whose largest part is the cached
    /// pieces themselves (shared, not copied).
    pub fn gzip_after(&self, head: &[u8]) -> GzipAnswer {
        let mut crc = Crc::new();
        crc.update(head);
        crc.combine(&self.crc);
        GzipAnswer {
            head: gzip_head(head),
            series: self.pieces.clone(),
            trailer: gzip_trailer(&crc),
        }
    }

    /// `head`, the series, then the text of `more` compressed piece by piece as it is sent,
    /// as one gzip member (for series rendered per answer, `compact_cache`).
    pub fn gzip_then<I: Iterator<Item = String>>(&self, head: &[u8], more: I) -> GzipStream<I> {
        let mut crc = Crc::new();
        crc.update(head);
        crc.combine(&self.crc);
        GzipStream {
            head: Some(gzip_head(head)),
            pieces: self.pieces.clone().into_iter(),
            more,
            crc,
            done: false,
        }
    }
}

/// Deflates `parts` as one piece appended to `out`, with this thread's compressor for small
/// per-answer text (heads, `compact_cache` pieces): a deflate state is ~370 KB to allocate and
/// clear, more than a cached 100-device answer costs otherwise (wrk: ~26,000 answers a second
/// with it shared, ~5,000 with one per answer and fixed-size mmaps, see [`crate::memory`]).
fn deflate_here(parts: &[&[u8]], out: &mut Packed) {
    thread_local! {
        static DEFLATER: std::cell::RefCell<PieceDeflater> =
            std::cell::RefCell::new(PieceDeflater::new());
    }
    DEFLATER.with_borrow_mut(|d| d.piece(parts, out));
}

/// The gzip header and `head` deflated and sync-flushed.
fn gzip_head(head: &[u8]) -> Bytes {
    let mut packed = Packed::default();
    deflate_here(&[head], &mut packed);
    // gzip header: magic, deflate, no flags, no mtime, no extra flags, OS unknown.
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    for piece in &packed.pieces {
        out.extend_from_slice(piece);
    }
    out.into()
}

/// Closes a gzip member: an empty final block, then CRC32 and length.
fn gzip_trailer(crc: &Crc) -> Bytes {
    let mut trailer = Vec::with_capacity(2 + 8);
    trailer.extend_from_slice(&FINAL_EMPTY_BLOCK);
    trailer.extend_from_slice(&crc.sum().to_le_bytes());
    trailer.extend_from_slice(&crc.amount().to_le_bytes());
    trailer.into()
}

/// A gzip answer whose end is compressed while it is sent (see
/// [`CompressedSeries::gzip_then`]).
pub struct GzipStream<I> {
    head: Option<Bytes>,
    pieces: std::vec::IntoIter<Bytes>,
    more: I,
    crc: Crc,
    done: bool,
}

impl<I: Iterator<Item = String>> Iterator for GzipStream<I> {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if let Some(head) = self.head.take() {
            return Some(head);
        }
        if let Some(piece) = self.pieces.next() {
            return Some(piece);
        }
        if let Some(text) = self.more.next() {
            self.crc.update(text.as_bytes());
            let mut packed = Packed::default();
            deflate_here(&[text.as_bytes()], &mut packed);
            return Some(packed.pieces.concat().into());
        }
        if self.done {
            return None;
        }
        self.done = true;
        Some(gzip_trailer(&self.crc))
    }
}

/// The series' text, inflated chunk by chunk (see [`CompressedSeries::text_chunks`]).
pub struct TextChunks {
    pieces: std::vec::IntoIter<Bytes>,
    current: Bytes,
    pos: usize,
    inflate: Decompress,
    chunk: usize,
}

impl TextChunks {
    /// Inflates `pieces` in chunks of at most `chunk` bytes.
    pub fn new(pieces: Vec<Bytes>, chunk: usize) -> Self {
        Self {
            pieces: pieces.into_iter(),
            current: Bytes::new(),
            pos: 0,
            inflate: Decompress::new(false),
            chunk: chunk.max(1),
        }
    }
}

impl Iterator for TextChunks {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        let mut out = Vec::with_capacity(self.chunk);
        while out.len() < out.capacity() {
            if self.pos >= self.current.len() {
                if let Some(piece) = self.pieces.next() {
                    self.current = piece;
                    self.pos = 0;
                }
            }
            let (before_in, before_out) = (self.inflate.total_in(), self.inflate.total_out());
            if let Err(e) = self.inflate.decompress_vec(
                &self.current[self.pos..],
                &mut out,
                FlushDecompress::None,
            ) {
                // Cannot happen with pieces we wrote ourselves; end the text, never panic.
                tracing::error!(error = %e, "cannot inflate cached series");
                return None;
            }
            self.pos += (self.inflate.total_in() - before_in) as usize;
            let progressed =
                self.inflate.total_in() != before_in || self.inflate.total_out() != before_out;
            if !progressed {
                // Every piece is read and nothing is left in the inflater.
                break;
            }
        }
        (!out.is_empty()).then(|| out.into())
    }
}

/// A gzip answer: header and compressed head, the cached series pieces, and the closing
/// block with the trailer (CRC32 and length).
#[derive(Debug, Clone)]
pub struct GzipAnswer {
    head: Bytes,
    series: Vec<Bytes>,
    trailer: Bytes,
}

impl GzipAnswer {
    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.head.len() + self.series.iter().map(Bytes::len).sum::<usize>() + self.trailer.len()
    }

    /// Never empty (a gzip member has a header), for clippy's sake.
    pub fn is_empty(&self) -> bool {
        false
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
    }

    /// The whole member in one buffer (tests).
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

/// Whether an `Accept-Encoding` value allows gzip: the weight of a `gzip` entry if there is
/// one, else that of `*` (an explicit entry overrides the wildcard, RFC 9110 12.5.3); a weight
/// of 0 refuses it.
pub fn accepts_gzip(accept_encoding: Option<&str>) -> bool {
    let Some(value) = accept_encoding else {
        return false;
    };
    let (mut gzip, mut any) = (None, None);
    for part in value.split(',') {
        let mut it = part.trim().split(';');
        let coding = it.next().unwrap_or("").trim();
        let q = it
            .find_map(|p| p.trim().strip_prefix("q="))
            .map_or(Some(1.0), |q| q.trim().parse::<f32>().ok())
            .unwrap_or(0.0);
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            gzip = Some(q);
        } else if coding == "*" {
            any = Some(q);
        }
    }
    gzip.or(any).is_some_and(|q| q > 0.0)
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
            let gz = c.gzip_after(head).to_vec();
            let mut want = head.to_vec();
            want.extend_from_slice(&series);
            assert_eq!(gunzip(&gz), want);
        }
        assert!(CompressedSeries::default().text().is_empty());
        let empty = CompressedSeries::new(b"");
        assert_eq!(
            gunzip(&empty.gzip_after(b"probe_success 0\n").to_vec()),
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
            CompressedSeries::from_expositions([e]).text(),
            text.as_bytes()
        );
    }

    #[test]
    fn an_answer_in_pieces_is_the_same_member_and_shares_the_series() {
        let series: Vec<u8> = (0..5_000)
            .flat_map(|i| format!("m{{device_uuid=\"{i:032x}\"}} {i}\n").into_bytes())
            .collect();
        let c = CompressedSeries::new(&series);
        let answer = c.gzip_after(b"probe_success 1\n");
        let whole = answer.to_vec();
        assert_eq!(answer.len(), whole.len());
        let pieces: Vec<Bytes> = answer.into_pieces(1000).collect();
        assert!(pieces.len() > 3);
        assert!(pieces
            .iter()
            .all(|p| p.len() <= 1000 || p.len() == pieces[0].len()));
        // The series pieces point into the cached pieces: no copy per answer.
        let cached = c.pieces[0].as_ptr_range();
        assert!(pieces[1..pieces.len() - 1]
            .iter()
            .all(|p| cached.contains(&p.as_ptr())));
        assert_eq!(pieces.concat(), whole);
        let mut want = b"probe_success 1\n".to_vec();
        want.extend_from_slice(&series);
        assert_eq!(gunzip(&whole), want);
    }

    #[test]
    fn text_chunks_inflate_every_piece_in_order() {
        let mut e = Exposition::packing(2_000);
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
        let series = CompressedSeries::from_expositions([e]);
        assert!(series.pieces.len() > 20);
        let chunks: Vec<Bytes> = series.text_chunks(4096).collect();
        assert!(chunks.iter().all(|c| c.len() <= 4096 && !c.is_empty()));
        assert_eq!(chunks.concat(), series.text());
        assert_eq!(chunks.concat().len(), series.len());
        assert_eq!(CompressedSeries::default().text_chunks(10).count(), 0);
    }

    #[test]
    fn accept_encoding_is_read_with_q_values() {
        assert!(accepts_gzip(Some("gzip")));
        assert!(accepts_gzip(Some("deflate, gzip;q=0.5")));
        assert!(accepts_gzip(Some("*")));
        assert!(!accepts_gzip(Some("gzip;q=0")));
        assert!(
            !accepts_gzip(Some("gzip;q=0, *")),
            "the explicit entry wins"
        );
        assert!(accepts_gzip(Some("*;q=0, gzip")));
        assert!(!accepts_gzip(Some("*;q=0")));
        assert!(!accepts_gzip(Some("gzip;q=bad")));
        assert!(!accepts_gzip(Some("identity")));
        assert!(!accepts_gzip(None));
    }
}
