//! A probe's answer: [`ProbeData`] (fetched, cached, shared or kept as compact values) plus the
//! per-request head (`probe_success`, durations, ...) turned into every form an answer takes —
//! gzip, zstd or identity, streamed or sized, or the debug page's text. The one place that
//! knows the two forms of `ProbeData` (compressed pieces, compact per-device values), so that
//! every path serves the same series: the most delicate invariant of the exporter lives here
//! alone, and `tests/properties.rs` checks it over fetched, cached, shared and compact data.

use std::convert::Infallible;
use std::sync::{Arc, LazyLock};

use actix_web::web::Bytes;
use futures_util::stream::{self, LocalBoxStream, StreamExt as _};

use super::ProbeData;
use crate::exposition::body::CompressedSeries;
use crate::exposition::codec::Codec;

/// The slice of an answer written at a time; each connection's write buffer holds about one.
/// Measured with `examples/burst.rs` (1,000 clients, one cached 10,000-device target): peak
/// RSS 68 MiB with gzip and 50 MiB without at 16 KiB, 99 and 132 MiB at 64 KiB
/// (docs/reliability.md).
pub const ANSWER_CHUNK: usize = 16 * 1024;

/// Text rendered at a time from compact per-device values before it is compressed or sent:
/// large enough to compress well (the deflate window is 32 KiB).
pub const RENDER_CHUNK: usize = 64 * 1024;

/// At most this many answers decode the cached series at once (for a client that accepts
/// neither compression, or the other one than the pieces', which compresses them again). Each
/// holds a decoder and a chunk (~140 KB with the connection's buffers): a burst of 1,000 such
/// answers waits its turn here instead of holding hundreds of megabytes.
pub const MAX_INFLATING: usize = 32;

static INFLATING: LazyLock<Arc<tokio::sync::Semaphore>> =
    LazyLock::new(|| Arc::new(tokio::sync::Semaphore::new(MAX_INFLATING)));

/// How the body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `Content-Encoding: gzip`.
    Gzip,
    /// `Content-Encoding: zstd`.
    Zstd,
    /// No compression.
    Identity,
}

impl Encoding {
    /// The encoding of compressed pieces of `codec`, or identity.
    pub fn of(codec: Option<Codec>) -> Self {
        match codec {
            Some(Codec::Deflate) => Self::Gzip,
            Some(Codec::Zstd) => Self::Zstd,
            None => Self::Identity,
        }
    }

    /// The codec of its compression, if any.
    pub fn codec(self) -> Option<Codec> {
        match self {
            Self::Gzip => Some(Codec::Deflate),
            Self::Zstd => Some(Codec::Zstd),
            Self::Identity => None,
        }
    }

    /// The codec a probe answered in this encoding compresses the series in if it fetches:
    /// its own, or zstd for an answer without compression (text decoded from zstd pieces costs
    /// less to make and to decode than from deflate ones; docs/performance.md, "zstd answers").
    pub fn pieces(self) -> Codec {
        self.codec().unwrap_or(Codec::Zstd)
    }

    /// The `Content-Encoding` value.
    pub fn header(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
            Self::Identity => "identity",
        }
    }
}

/// An answer's body: its encoding, its length when known ahead, and its chunks.
pub struct Body {
    /// How it is encoded.
    pub encoding: Encoding,
    /// The length in bytes, when known before sending (then the answer is sized).
    pub len: Option<u64>,
    /// The bytes, in chunks of at most [`ANSWER_CHUNK`] (or [`RENDER_CHUNK`] rendered).
    pub chunks: LocalBoxStream<'static, Result<Bytes, Infallible>>,
}

/// The metrics answer: `head` (the per-request metrics, text format) then the series of
/// `data` (none when the probe failed), in `encoding`. Answers in the cached pieces' own
/// encoding stream them after a compressed head; answers in the other compression, or none,
/// decode them as they are sent (and compress them again), [`MAX_INFLATING`] at a time.
/// Compact per-device values are rendered for each answer.
pub fn metrics_body(head: String, data: Option<&ProbeData>, encoding: Encoding) -> Body {
    // A failed probe has no series: none in the answer's own codec, so its head is sized.
    let empty = CompressedSeries::empty(encoding.codec().unwrap_or_default());
    let series = data.map_or(&empty, |d| &d.series);
    let compact = data.and_then(|d| d.compact.clone());
    let rendered = move || {
        compact
            .into_iter()
            .flat_map(|c| c.render(RENDER_CHUNK))
            .map(Bytes::from)
    };
    let streamed = |chunks: LocalBoxStream<'static, Result<Bytes, Infallible>>| Body {
        encoding,
        len: None,
        chunks,
    };
    let own = encoding.codec() == Some(series.codec());
    match encoding.codec() {
        // Slices of the cached pieces (megabytes for a large fleet), which every concurrent
        // answer shares instead of copying them.
        Some(_) if own && data.is_none_or(|d| d.compact.is_none()) => {
            let answer = series.answer_after(head.as_bytes());
            let len = answer.len() as u64;
            let parts = answer.into_pieces(ANSWER_CHUNK).map(Ok);
            Body {
                encoding,
                len: Some(len),
                chunks: stream::iter(parts).boxed_local(),
            }
        }
        // Compact values rendered and compressed while they are sent: the length is not
        // known ahead.
        Some(codec) if own => {
            let parts = series.stream_then(codec, head.as_bytes(), rendered());
            streamed(stream::iter(parts.map(Ok)).boxed_local())
        }
        // Pieces of the other codec (fetched for a client of the other encoding): decoded and
        // compressed again while they are sent, holding one of the turns.
        Some(codec) => {
            let parts = series.stream_then(codec, head.as_bytes(), rendered());
            streamed(gated(parts).boxed_local())
        }
        None if data.is_some_and(|d| d.compact.is_some()) => {
            let chunks = std::iter::once(Bytes::from(head))
                .chain(series.text_chunks(RENDER_CHUNK))
                .chain(rendered())
                .map(Ok);
            streamed(stream::iter(chunks).boxed_local())
        }
        None => {
            let len = (head.len() + series.len()) as u64;
            let head = stream::once(async move { Ok(Bytes::from(head)) });
            Body {
                encoding,
                len: Some(len),
                chunks: head
                    .chain(gated(series.text_chunks(ANSWER_CHUNK)))
                    .boxed_local(),
            }
        }
    }
}

/// The series of `data` as text, as the debug page shows them after the head.
pub fn series_text(data: &ProbeData) -> String {
    let mut text = String::from_utf8_lossy(&data.series.text()).into_owned();
    for chunk in data.compact.iter().flat_map(|c| c.render(RENDER_CHUNK)) {
        text.push_str(&chunk);
    }
    text
}

/// `chunks`, which decode the cached series, sent once one of [`MAX_INFLATING`] turns is free
/// (their decoder is made at the first chunk, so only then), the turn held to the last chunk.
fn gated<I: Iterator<Item = Bytes> + 'static>(
    chunks: I,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    let start: (I, Option<tokio::sync::OwnedSemaphorePermit>) = (chunks, None);
    stream::unfold(start, |(mut chunks, turn)| async move {
        let turn = match turn {
            // Back to the event loop between chunks: the server polls a body for as long as
            // the socket takes its bytes, so a fast reader would otherwise keep the worker on
            // one answer's decoding to its end (`/-/healthy` waited 5.8 s behind a burst of 300
            // answers re-encoded to zstd, 13–29 ms with this; `examples/burst.rs`).
            Some(turn) => {
                tokio::task::yield_now().await;
                turn
            }
            None => INFLATING.clone().acquire_owned().await.ok()?,
        };
        let next = chunks.next()?;
        Some((Ok(next), (chunks, Some(turn))))
    })
}

/// The whole body as sent. For tests.
pub async fn sent(body: Body) -> Vec<u8> {
    body.chunks
        .map(|c| c.unwrap_or_else(|e| match e {}))
        .collect::<Vec<_>>()
        .await
        .concat()
}

/// The whole body, decoded: what a client reads. For tests.
pub async fn decoded(body: Body) -> Vec<u8> {
    use std::io::Read as _;
    let encoding = body.encoding;
    let bytes = sent(body).await;
    match encoding {
        Encoding::Identity => bytes,
        Encoding::Gzip => {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(&bytes[..])
                .read_to_end(&mut out)
                .expect("a gzip answer inflates");
            out
        }
        Encoding::Zstd => zstd::stream::decode_all(&bytes[..]).expect("a zstd answer decodes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt as _;

    #[actix_rt::test]
    async fn a_decoding_answer_gives_the_event_loop_a_turn_between_chunks() {
        let chunks = (0..3u8).map(|i| Bytes::from(vec![i; 10]));
        let mut answer = Box::pin(gated(chunks));
        // The first chunk as soon as a turn is free (one is), then each next one only after
        // the stream has once said "not yet" (the server then serves other connections).
        assert!(matches!(answer.next().now_or_never(), Some(Some(Ok(_)))));
        for _ in 0..2 {
            assert!(answer.next().now_or_never().is_none(), "no turn given back");
            assert!(matches!(answer.next().now_or_never(), Some(Some(Ok(_)))));
        }
        assert!(answer.next().now_or_never().is_none());
        assert!(matches!(answer.next().now_or_never(), Some(None)));
    }

    #[actix_rt::test]
    async fn a_failed_probe_is_a_sized_head_in_every_encoding() {
        let head = "probe_success 0\nprobe_duration_seconds 0.5\n";
        for encoding in [Encoding::Gzip, Encoding::Zstd, Encoding::Identity] {
            let body = metrics_body(head.to_string(), None, encoding);
            assert_eq!(body.encoding, encoding);
            let len = body.len.expect("sized");
            assert_eq!(sent(body).await.len() as u64, len, "{encoding:?}");
            let body = metrics_body(head.to_string(), None, encoding);
            assert_eq!(decoded(body).await, head.as_bytes(), "{encoding:?}");
        }
    }
}
