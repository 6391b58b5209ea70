//! The two formats the cached series are compressed in, and how an answer's encoding is chosen.
//!
//! Series are compressed in *pieces* that concatenate in any order ([`compress_here`]):
//!
//! - **deflate** (the default; gzip answers): each piece from a reset compressor, ended by a
//!   sync flush, so pieces followed by an empty final block are one raw-deflate stream;
//! - **zstd** (answers to clients that name `zstd`, such as Prometheus with its `zstd-scrape`
//!   feature): each piece one whole frame, and a zstd stream is one or more frames (RFC 8878,
//!   section 3.1). Level 1 compresses the answer of 10,000 devices in less than half the time
//!   of deflate level 1 into 57% of its bytes (docs/performance.md, "zstd answers").
//!
//! [`TextChunks`] decodes pieces of either kind back to text, a chunk at a time;
//! [`negotiate`] reads `Accept-Encoding`.

use actix_web::web::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

/// The format of compressed pieces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Raw deflate, sync-flushed pieces (gzip answers).
    #[default]
    Deflate,
    /// One zstd frame a piece.
    Zstd,
}

impl Codec {
    /// Its name, as the debug page says it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Deflate => "deflate",
            Self::Zstd => "zstd",
        }
    }
}

/// The zstd level of pieces: level 1 compresses 64 KiB pieces of series text at ~1 GB/s to
/// 17% of it; level 3, which wins on one long stream, loses on pieces (slower, larger).
const ZSTD_LEVEL: i32 = 1;

/// log2 of the zstd window of pieces (see [`PieceCompressor::new`]).
const ZSTD_WINDOW_LOG: u32 = 17;

/// Compresses text into pieces of one [`Codec`] that can be concatenated in any order: a
/// deflate piece starts from a reset compressor (it never refers back before its own start)
/// and ends with a sync flush (byte-aligned, not final); a zstd piece is a frame. Each thread
/// keeps one of each codec ([`compress_here`]).
struct PieceCompressor {
    state: State,
    scratch: Vec<u8>,
}

enum State {
    Deflate(Compress),
    Zstd {
        compressor: zstd::bulk::Compressor<'static>,
        /// Parts of a piece joined (a frame is compressed from one slice).
        joined: Vec<u8>,
    },
}

impl std::fmt::Debug for PieceCompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PieceCompressor")
            .field(&self.codec())
            .finish()
    }
}

impl PieceCompressor {
    /// A fast-level compressor of `codec` pieces.
    pub fn new(codec: Codec) -> Self {
        let state = match codec {
            Codec::Deflate => State::Deflate(Compress::new(Compression::fast(), false)),
            Codec::Zstd => {
                let mut compressor =
                    zstd::bulk::Compressor::new(ZSTD_LEVEL).expect("zstd level 1 exists");
                use zstd::zstd_safe::CParameter;
                // Each frame checks its text, as gzip's CRC32 does the whole answer's; a window
                // of 128 KiB (level 1's is 512 KiB) bounds what decoding a frame holds, for the
                // answers that decode the series (`MAX_INFLATING` of them at once), and costs
                // nothing on pieces of 64 KiB.
                for parameter in [
                    CParameter::ChecksumFlag(true),
                    CParameter::WindowLog(ZSTD_WINDOW_LOG),
                ] {
                    compressor
                        .set_parameter(parameter)
                        .expect("zstd knows the checksum flag and this window");
                }
                State::Zstd {
                    compressor,
                    joined: Vec::new(),
                }
            }
        };
        Self {
            state,
            scratch: Vec::new(),
        }
    }

    /// The format of its pieces.
    pub fn codec(&self) -> Codec {
        match self.state {
            State::Deflate(_) => Codec::Deflate,
            State::Zstd { .. } => Codec::Zstd,
        }
    }

    /// Compresses `parts`, in order, as one piece, in a buffer of exactly its size (pieces
    /// are kept for the cache TTL); `None` when there is no text.
    pub fn piece(&mut self, parts: &[&[u8]]) -> Option<Bytes> {
        if parts.iter().all(|p| p.is_empty()) {
            return None;
        }
        self.scratch.clear();
        match &mut self.state {
            State::Deflate(compress) => deflate_piece(compress, parts, &mut self.scratch),
            State::Zstd { compressor, joined } => {
                let text: &[u8] = match parts {
                    [one] => one,
                    _ => {
                        joined.clear();
                        parts.iter().for_each(|p| joined.extend_from_slice(p));
                        joined
                    }
                };
                self.scratch
                    .reserve(zstd::zstd_safe::compress_bound(text.len()));
                compressor
                    .compress_to_buffer(text, &mut self.scratch)
                    .expect("zstd of in-memory text into its bound cannot fail");
                joined.clear();
            }
        }
        Some(Bytes::copy_from_slice(&self.scratch))
    }
}

/// One deflate piece of `parts` into `out`: reset, compressed, sync-flushed.
fn deflate_piece(compress: &mut Compress, parts: &[&[u8]], out: &mut Vec<u8>) {
    compress.reset();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let flush = if last {
            FlushCompress::Sync
        } else {
            FlushCompress::None
        };
        let mut input: &[u8] = part;
        loop {
            out.reserve(input.len() / 4 + 256);
            let before = compress.total_in();
            compress
                .compress_vec(input, out, flush)
                .expect("deflate of in-memory text cannot fail");
            input = &input[(compress.total_in() - before) as usize..];
            // Done when the input is consumed and (for the flush) output room was left over.
            if input.is_empty() && (!last || out.len() < out.capacity()) {
                break;
            }
        }
    }
}

/// Compresses `parts` as one piece with this thread's compressor of `codec`: every piece is
/// made here (a probe's series, heads, `compact_cache` pieces, text re-encoded for a client of
/// the other codec). A piece carries no state to the next, so pieces of many probes and answers
/// can take turns on one compressor; a deflate state is ~370 KB to allocate and clear, more
/// than a cached 100-device answer costs otherwise (wrk: ~26,000 answers a second with it
/// shared, ~5,000 with one per answer and fixed-size mmaps, see [`crate::memory`]).
pub fn compress_here(codec: Codec, parts: &[&[u8]]) -> Option<Bytes> {
    thread_local! {
        static DEFLATE: std::cell::RefCell<PieceCompressor> =
            std::cell::RefCell::new(PieceCompressor::new(Codec::Deflate));
        static ZSTD: std::cell::RefCell<PieceCompressor> =
            std::cell::RefCell::new(PieceCompressor::new(Codec::Zstd));
    }
    let here = match codec {
        Codec::Deflate => &DEFLATE,
        Codec::Zstd => &ZSTD,
    };
    here.with_borrow_mut(|c| c.piece(parts))
}

/// Text decoded from pieces of one codec, a chunk of at most `chunk` bytes at a time: an
/// answer that needs the text holds one chunk and one decoder, not the whole text. The decoder
/// is made at the first chunk, so an answer waiting for its turn holds none.
pub struct TextChunks {
    codec: Codec,
    pieces: std::vec::IntoIter<Bytes>,
    current: Bytes,
    pos: usize,
    decoder: Option<Decoder>,
    chunk: usize,
}

enum Decoder {
    Deflate(Decompress),
    Zstd(zstd::stream::raw::Decoder<'static>),
}

impl TextChunks {
    /// Decodes `pieces` (of `codec`) in chunks of at most `chunk` bytes.
    pub fn new(codec: Codec, pieces: Vec<Bytes>, chunk: usize) -> Self {
        Self {
            codec,
            pieces: pieces.into_iter(),
            current: Bytes::new(),
            pos: 0,
            decoder: None,
            chunk: chunk.max(1),
        }
    }

    /// Decodes from `self.current[self.pos..]` into `out`'s spare room: (input read, output
    /// written).
    fn step(&mut self, out: &mut Vec<u8>) -> std::io::Result<(usize, usize)> {
        let input = &self.current[self.pos..];
        let decoder = self.decoder.get_or_insert_with(|| match self.codec {
            Codec::Deflate => Decoder::Deflate(Decompress::new(false)),
            Codec::Zstd => {
                Decoder::Zstd(zstd::stream::raw::Decoder::new().expect("a zstd decoder"))
            }
        });
        match decoder {
            Decoder::Deflate(inflate) => {
                let (before_in, before_out) = (inflate.total_in(), inflate.total_out());
                inflate.decompress_vec(input, out, FlushDecompress::None)?;
                let read = (inflate.total_in() - before_in) as usize;
                Ok((read, (inflate.total_out() - before_out) as usize))
            }
            Decoder::Zstd(decoder) => {
                use zstd::stream::raw::Operation as _;
                let len = out.len();
                let mut input = zstd::stream::raw::InBuffer::around(input);
                let mut output = zstd::stream::raw::OutBuffer::around_pos(out, len);
                decoder.run(&mut input, &mut output)?;
                let written = output.pos() - len;
                Ok((input.pos(), written))
            }
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
            let (read, written) = match self.step(&mut out) {
                Ok(progress) => progress,
                Err(e) => {
                    // Cannot happen with pieces we wrote ourselves; end the text, never panic.
                    tracing::error!(error = %e, "cannot decode cached series");
                    return None;
                }
            };
            self.pos += read;
            if read == 0 && written == 0 {
                // Every piece is read and nothing is left in the decoder.
                break;
            }
        }
        (!out.is_empty()).then(|| out.into())
    }
}

/// The encoding an `Accept-Encoding` value asks for: zstd when it names `zstd` with a weight at
/// least gzip's, else gzip when it allows gzip, else none (`None`: identity, which every client
/// reads). An explicit entry overrides `*` (RFC 9110 12.5.3); a weight of 0 refuses. `*` alone
/// means gzip: zstd only for clients that name it, since older clients that send `*` may not
/// read it.
pub fn negotiate(accept_encoding: Option<&str>) -> Option<Codec> {
    let value = accept_encoding?;
    let (mut gzip, mut zstd, mut any) = (None, None, None);
    for part in value.split(',') {
        let mut it = part.trim().split(';');
        let coding = it.next().unwrap_or("").trim();
        let q = it
            .find_map(|p| p.trim().strip_prefix("q="))
            .map_or(Some(1.0), |q| q.trim().parse::<f32>().ok())
            .unwrap_or(0.0);
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            gzip = Some(q);
        } else if coding.eq_ignore_ascii_case("zstd") {
            zstd = Some(q);
        } else if coding == "*" {
            any = Some(q);
        }
    }
    let gzip = gzip.or(any).unwrap_or(0.0);
    let zstd = zstd.unwrap_or(0.0);
    if zstd > 0.0 && zstd >= gzip {
        Some(Codec::Zstd)
    } else if gzip > 0.0 {
        Some(Codec::Deflate)
    } else {
        None
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `lines` lines of series text, each with its own label value.
    pub(crate) fn series_text(lines: usize) -> Vec<u8> {
        (0..lines)
            .flat_map(|i| format!("m{{device_uuid=\"{i:032x}\"}} {i}\n").into_bytes())
            .collect()
    }

    #[test]
    fn pieces_of_either_codec_decode_to_their_text_in_any_chunk_size() {
        let text = series_text(6_000);
        for codec in [Codec::Deflate, Codec::Zstd] {
            let mut c = PieceCompressor::new(codec);
            assert_eq!(c.codec(), codec);
            let mut pieces: Vec<Bytes> = text
                .chunks(50_000)
                .map(|t| c.piece(&[t]).unwrap())
                .collect();
            // A piece of several parts, and one from this thread's compressor.
            pieces.push(c.piece(&[b"a 1\n", b"", b"b 2\n"]).unwrap());
            pieces.push(compress_here(codec, &[b"c 3\n"]).unwrap());
            assert!(c.piece(&[b"", b""]).is_none());
            let mut want = text.clone();
            want.extend_from_slice(b"a 1\nb 2\nc 3\n");
            for chunk in [1, 1000, 16 * 1024, 1 << 20] {
                let chunks: Vec<Bytes> = TextChunks::new(codec, pieces.clone(), chunk).collect();
                assert!(chunks.iter().all(|c| c.len() <= chunk && !c.is_empty()));
                assert_eq!(chunks.concat(), want, "{codec:?} in chunks of {chunk}");
            }
            assert_eq!(TextChunks::new(codec, Vec::new(), 10).count(), 0);
        }
    }

    #[test]
    fn zstd_pieces_are_frames_a_stock_decoder_reads_in_sequence() {
        let text = series_text(3_000);
        let mut c = PieceCompressor::new(Codec::Zstd);
        let stream: Vec<u8> = text
            .chunks(30_000)
            .flat_map(|t| c.piece(&[t]).unwrap())
            .collect();
        assert_eq!(zstd::stream::decode_all(&stream[..]).unwrap(), text);
        assert!(stream.len() * 5 < text.len(), "{} bytes", stream.len());
        // A large piece (the last one of a probe holds every family's rest) keeps the small
        // window: a decoder that refuses larger windows reads it.
        let large = series_text(40_000);
        assert!(large.len() > 1 << 20);
        let piece = c.piece(&[&large]).unwrap();
        let mut decoder = zstd::stream::read::Decoder::new(&piece[..]).unwrap();
        decoder
            .window_log_max(ZSTD_WINDOW_LOG)
            .expect("a decoder takes a window limit");
        let mut read = Vec::new();
        std::io::Read::read_to_end(&mut decoder, &mut read).expect("the window fits");
        assert_eq!(read, large);
        let mut unlimited = PieceCompressor::new(Codec::Zstd);
        if let State::Zstd { compressor, .. } = &mut unlimited.state {
            let level_1 = zstd::zstd_safe::CParameter::WindowLog(19);
            compressor.set_parameter(level_1).unwrap();
        }
        let wide = unlimited.piece(&[&large]).unwrap();
        let mut decoder = zstd::stream::read::Decoder::new(&wide[..]).unwrap();
        decoder.window_log_max(ZSTD_WINDOW_LOG).unwrap();
        assert!(
            std::io::Read::read_to_end(&mut decoder, &mut Vec::new()).is_err(),
            "the limit would catch a wider window"
        );
    }

    #[test]
    fn accept_encoding_is_read_with_q_values() {
        let cases = [
            (Some("gzip"), Some(Codec::Deflate)),
            (Some("deflate, gzip;q=0.5"), Some(Codec::Deflate)),
            (Some("*"), Some(Codec::Deflate)),
            (Some("gzip;q=0"), None),
            (Some("gzip;q=0, *"), None),
            (Some("*;q=0, gzip"), Some(Codec::Deflate)),
            (Some("*;q=0"), None),
            (Some("gzip;q=bad"), None),
            (Some("identity"), None),
            (None, None),
            (Some("zstd"), Some(Codec::Zstd)),
            (Some("ZSTD, gzip"), Some(Codec::Zstd)),
            (Some("gzip, deflate, br, zstd"), Some(Codec::Zstd)),
            (Some("zstd;q=0.5, gzip"), Some(Codec::Deflate)),
            (Some("zstd, gzip;q=0.9, identity;q=0.1"), Some(Codec::Zstd)),
            (Some("zstd;q=0, *"), Some(Codec::Deflate)),
            (Some("zstd;q=0.1, gzip;q=0"), Some(Codec::Zstd)),
        ];
        for (header, want) in cases {
            assert_eq!(negotiate(header), want, "{header:?}");
        }
    }
}
