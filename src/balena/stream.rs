//! Decodes a `{"d": [ {...}, {...} ]}` answer fed chunk by chunk (a listing feeds a page in one
//! chunk, once it has arrived and its next page is asked for: `super::keyset`), and hands each
//! row over as soon as its closing brace is in. Only a row that straddles two chunks is copied.
//! [`last_row`] finds a page's last row by the same scan, without decoding.
//!
//! The envelope is checked here (one object; its `d` member an array of objects; other members
//! validated and ignored; nothing after the object); each row is decoded by the caller (serde),
//! in one pass: the caller's decoder is handed the text from the row's `{` to the end of the
//! chunk, decodes one row with [`one_row`] and says where it ended. Only the row a chunk cuts
//! in two is found by scanning it here (strings skipped with `memchr`), carried, and decoded
//! when whole. One pass instead of a scan then a parse saves a fifth of a page's decode
//! (`benches/pipeline.rs`, docs/performance.md "One pass, two deflate helpers").

use serde::de::IgnoredAny;
use serde::Deserialize;

/// The largest row taken: a device row is ~600 bytes, with tags and expansions a few KiB.
pub const MAX_ROW_BYTES: usize = 1024 * 1024;
/// The longest string in a row (its JSON text, escapes included). Every string of a device
/// row may become a label value, so this is the cap of a label value too.
pub const MAX_STRING_BYTES: usize = 16 * 1024;

/// An answer that is not a valid `{"d": [...]}`, a row or string over its cap, or a row the
/// caller refused. Never quotes the answer's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// Not the JSON expected.
    #[error("{0}")]
    Invalid(String),
    /// A row or a string over its cap.
    #[error("{0}")]
    Oversized(String),
}

impl StreamError {
    /// The same error, said of row `n`.
    fn in_row(self, n: usize) -> Self {
        match self {
            Self::Invalid(e) => Self::Invalid(format!("row {n}: {e}")),
            Self::Oversized(e) => Self::Oversized(format!("row {n}: {e}")),
        }
    }
}

/// Decodes the row at the start of `text`, which may go on past the row: the row and its
/// JSON bytes, or `None` when `text` ends before the row does (the rest is in a later chunk).
/// The caps of [`RowStream`] hold: a row over [`MAX_ROW_BYTES`], or with a string over
/// [`MAX_STRING_BYTES`], is refused, whichever way it was found.
pub fn one_row<'a, T: Deserialize<'a>>(
    text: &'a str,
) -> Result<Option<(T, &'a [u8])>, StreamError> {
    let mut values = serde_json::Deserializer::from_str(text).into_iter::<T>();
    let row = match values.next() {
        None => return Ok(None),
        Some(Err(e)) if e.is_eof() => return Ok(None),
        Some(Err(e)) => {
            // Not every cut row is an EOF to serde (`1.` at the end reads as a bad number):
            // only a row that ends within `text` is wrong.
            if let Scanned::Incomplete = Capture::scan_value(text.as_bytes()) {
                return Ok(None);
            }
            return Err(StreamError::Invalid(super::error::unquoted(&e)));
        }
        Some(Ok(row)) => row,
    };
    let bytes = &text.as_bytes()[..values.byte_offset()];
    if bytes.len() > MAX_ROW_BYTES {
        return Err(oversized_row());
    }
    // Only a row longer than the string cap can hold a string over it.
    if bytes.len() > MAX_STRING_BYTES {
        if let Scanned::StringTooLong = Capture::scan_value(bytes) {
            return Err(string_too_long());
        }
    }
    Ok(Some((row, bytes)))
}

/// The last row of a whole page: what keyset paging asks the next page after while this one is
/// decoded. Read from the page's end when it ends `...}]}` ([`last_row_from_end`], one row's
/// bytes), else found by scanning the whole page (strings skipped with `memchr`, nothing
/// decoded: ~1.8 GB/s). `None` when the page has no row or is not a valid answer (its decode
/// says why). Either way it is a guess that the decode confirms (`super::keyset`).
pub fn last_row(page: &[u8]) -> Option<&str> {
    last_row_from_end(page).or_else(|| last_row_by_scan(page))
}

/// The last row of a page that ends with its row array (`...}]}`, whitespace allowed), read
/// backwards: depth counted over braces and brackets outside strings, and a quote ends or starts
/// a string unless an odd number of backslashes escapes it, which in valid JSON tells string
/// from structure read in either direction. Saves the whole page's scan (~5 ms for 10,000
/// devices, `benches/pipeline.rs`, `last_row`).
pub fn last_row_from_end(page: &[u8]) -> Option<&str> {
    let mut end = page.len();
    for expected in [b'}', b']', b'}'] {
        end = page[..end].iter().rposition(|b| !is_space(*b))?;
        if page[end] != expected {
            return None;
        }
    }
    // `end` is the last row's closing brace.
    let (mut depth, mut in_string) = (0usize, false);
    let mut i = end + 1;
    while i > 0 {
        i -= 1;
        let b = page[i];
        if b == b'"' {
            let backslashes = page[..i].iter().rev().take_while(|c| **c == b'\\').count();
            if backslashes % 2 == 0 {
                in_string = !in_string;
            }
            continue;
        }
        if in_string {
            continue;
        }
        match b {
            b'}' | b']' => depth += 1,
            b'{' | b'[' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return std::str::from_utf8(&page[i..=end]).ok();
                }
            }
            _ => {}
        }
    }
    None
}

/// The last row of a whole page by scanning it from the start.
pub fn last_row_by_scan(page: &[u8]) -> Option<&str> {
    let range = page.as_ptr_range();
    let mut last = None;
    let mut rows = RowStream::new();
    rows.feed(page, &mut |text: &str| {
        let Scanned::End(n) = Capture::scan_value(text.as_bytes()) else {
            return Ok(None);
        };
        // Within a whole page every row is handed over in place, never carried.
        if range.contains(&text.as_ptr()) {
            last = Some((text.as_ptr() as usize - range.start as usize, n));
        }
        Ok(Some(n))
    })
    .ok()?;
    rows.finish().ok()?;
    let (at, n) = last?;
    std::str::from_utf8(&page[at..at + n]).ok()
}

/// A row as text: it must be UTF-8 (checked once, here, for the whole row).
pub fn utf8(row: &[u8]) -> Result<&str, StreamError> {
    std::str::from_utf8(row).map_err(|e| {
        StreamError::Invalid(format!(
            "invalid UTF-8 at byte {} of the row",
            e.valid_up_to()
        ))
    })
}

fn oversized_row() -> StreamError {
    StreamError::Oversized(format!(
        "a row longer than {MAX_ROW_BYTES} bytes (the cap of one row)"
    ))
}

fn string_too_long() -> StreamError {
    StreamError::Oversized(format!(
        "a string longer than {MAX_STRING_BYTES} bytes (the cap of a string, and so of a label value)"
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the envelope's `{`.
    Start,
    /// After `{`: a member name or `}`.
    FirstKey,
    /// After `,`: a member name.
    Key,
    /// Inside a member name.
    KeyText { escaped: bool },
    /// After a member name.
    Colon,
    /// After `:`.
    Value,
    /// Inside the value of a member other than `d` (captured, validated, dropped).
    Other,
    /// After the `[` of `d`: a row or `]`.
    FirstRow,
    /// After `,` between rows: a row.
    Row,
    /// Inside a row (captured).
    InRow,
    /// After a row: `,` or `]`.
    AfterRow,
    /// After a member value: `,` or `}`.
    AfterValue,
    /// After the envelope's `}`: only whitespace may follow.
    Done,
}

/// A value being captured: bytes from earlier chunks, nesting depth, string state.
#[derive(Debug, Default)]
struct Capture {
    carried: Vec<u8>,
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// A number or literal: it ends at the first delimiter, which is not part of it.
    scalar: bool,
    /// Bytes of the string being scanned so far.
    string_len: usize,
}

/// What a scan of a chunk found.
enum Scanned {
    /// The value ends (exclusive) here.
    End(usize),
    /// The value goes on in the next chunk.
    Incomplete,
    /// A string in it is longer than [`MAX_STRING_BYTES`].
    StringTooLong,
}

impl Capture {
    fn begin(&mut self, first: u8) {
        self.carried.clear();
        self.depth = u32::from(matches!(first, b'{' | b'['));
        self.in_string = first == b'"';
        self.string_len = 0;
        self.escaped = false;
        self.scalar = !matches!(first, b'{' | b'[' | b'"');
    }

    /// Scans a value from its first byte, with a capture of its own.
    fn scan_value(bytes: &[u8]) -> Scanned {
        let mut capture = Capture::default();
        capture.begin(bytes[0]);
        capture.scan(bytes, 1)
    }

    /// Scans `chunk[from..]`: where the value ends if it completes here.
    fn scan(&mut self, chunk: &[u8], from: usize) -> Scanned {
        let mut j = from;
        while j < chunk.len() {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                    self.string_len += 1;
                    j += 1;
                    continue;
                }
                let Some(n) = memchr::memchr2(b'"', b'\\', &chunk[j..]) else {
                    self.string_len += chunk.len() - j;
                    return self.within_cap(Scanned::Incomplete);
                };
                self.string_len += n + 1;
                j += n;
                if chunk[j] == b'\\' {
                    self.escaped = true;
                } else {
                    self.in_string = false;
                    if self.string_len > MAX_STRING_BYTES {
                        return Scanned::StringTooLong;
                    }
                    if self.depth == 0 {
                        return Scanned::End(j + 1);
                    }
                }
                j += 1;
                continue;
            }
            let b = chunk[j];
            if self.scalar {
                if matches!(b, b',' | b'}' | b']') || is_space(b) {
                    return Scanned::End(j);
                }
            } else {
                match b {
                    b'"' => {
                        self.in_string = true;
                        self.string_len = 0;
                    }
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' => {
                        self.depth -= 1;
                        if self.depth == 0 {
                            return Scanned::End(j + 1);
                        }
                    }
                    _ => {}
                }
            }
            j += 1;
        }
        Scanned::Incomplete
    }

    fn within_cap(&self, scanned: Scanned) -> Scanned {
        if self.string_len > MAX_STRING_BYTES {
            Scanned::StringTooLong
        } else {
            scanned
        }
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\r' | b'\t')
}

/// The incremental decoder: [`RowStream::feed`] each chunk as it arrives, then
/// [`RowStream::finish`].
#[derive(Debug)]
pub struct RowStream {
    state: State,
    key: Vec<u8>,
    seen_d: bool,
    capture: Capture,
    offset: usize,
    rows: usize,
    /// The length of the last row: the next is decoded in place only when the chunk has at
    /// least twice that left (else it is likely cut, and scanned instead).
    last_row: usize,
}

impl Default for RowStream {
    fn default() -> Self {
        Self::new()
    }
}

impl RowStream {
    /// A decoder at the start of a body.
    pub fn new() -> Self {
        Self {
            state: State::Start,
            key: Vec::new(),
            seen_d: false,
            capture: Capture::default(),
            offset: 0,
            rows: 0,
            last_row: 0,
        }
    }

    /// Hands every row that `chunk` completes to `on_row`: the text from the row's first byte
    /// to the end of what is whole (the rest of the chunk, or the row alone when it was carried
    /// over from earlier chunks). `on_row` decodes one row at its start (see [`one_row`]) and
    /// returns its length, or `None` when the text ends first.
    /// Long on purpose: a byte-level state machine in one loop; per-byte calls into helpers
    /// would cost on every byte of a 9.7 MB page (a captured value is finished once a value,
    /// in `RowStream::captured`).
    pub fn feed(
        &mut self,
        chunk: &[u8],
        on_row: &mut impl FnMut(&str) -> Result<Option<usize>, StreamError>,
    ) -> Result<(), StreamError> {
        // The chunk's text up to its first byte that is not UTF-8 (a character cut by the
        // chunk's end, or a bad byte): rows are decoded in place only within it.
        let text = match std::str::from_utf8(chunk) {
            Ok(text) => text,
            Err(e) => std::str::from_utf8(&chunk[..e.valid_up_to()]).unwrap_or_default(),
        };
        let mut i = 0;
        // Where the capture in progress started in this chunk (0 when carried over).
        let mut start = 0;
        while i < chunk.len() {
            match self.state {
                State::InRow | State::Other => match self.captured(chunk, i, start, on_row)? {
                    Some(end) => i = end,
                    None => break,
                },
                State::KeyText { escaped } => {
                    let b = chunk[i];
                    i += 1;
                    self.state = match (escaped, b) {
                        (true, _) => State::KeyText { escaped: false },
                        (false, b'\\') => State::KeyText { escaped: true },
                        (false, b'"') => State::Colon,
                        _ => State::KeyText { escaped: false },
                    };
                    if self.state != State::Colon {
                        self.key.push(b);
                        if self.key.len() > MAX_STRING_BYTES {
                            return Err(StreamError::Oversized(format!(
                                "a member name longer than {MAX_STRING_BYTES} bytes"
                            )));
                        }
                    }
                }
                state => {
                    let b = chunk[i];
                    if is_space(b) {
                        i += 1;
                        continue;
                    }
                    let next = match (state, b) {
                        (State::Start, b'{') => State::FirstKey,
                        (State::FirstKey, b'}') | (State::AfterValue, b'}') => State::Done,
                        (State::FirstKey | State::Key, b'"') => {
                            self.key.clear();
                            State::KeyText { escaped: false }
                        }
                        (State::Colon, b':') => State::Value,
                        (State::Value, b'[') if self.key == b"d" => {
                            self.seen_d = true;
                            State::FirstRow
                        }
                        (State::Value, _) if self.key == b"d" => {
                            return Err(self.error("`d` is not an array", i));
                        }
                        (State::Value, _) => {
                            self.capture.begin(b);
                            start = i;
                            self.state = State::Other;
                            continue;
                        }
                        (State::FirstRow | State::Row, b'{') => {
                            if let Some(len) = self.row_in_place(text, i, on_row)? {
                                i += len;
                                self.state = State::AfterRow;
                                continue;
                            }
                            self.capture.begin(b);
                            start = i;
                            self.state = State::InRow;
                            continue;
                        }
                        (State::FirstRow, b']') | (State::AfterRow, b']') => State::AfterValue,
                        (State::FirstRow | State::Row, _) => {
                            return Err(self.error("expected a device object", i));
                        }
                        (State::AfterRow, b',') => State::Row,
                        (State::AfterValue, b',') => State::Key,
                        (State::Done, _) => return Err(self.error("trailing characters", i)),
                        _ => {
                            return Err(
                                self.error(&format!("unexpected character {:?}", char::from(b)), i)
                            )
                        }
                    };
                    self.state = next;
                    i += 1;
                }
            }
        }
        self.offset += chunk.len();
        Ok(())
    }

    /// Goes on with the value being captured (a row, or another member's value) from byte `i`
    /// of `chunk`, where the capture started at `start` (0 when carried over): at its end, the
    /// row goes to `on_row` (or the value is checked and skipped) and the byte after it is
    /// returned; `None` when the chunk ends first (the rest is carried to the next chunk).
    fn captured(
        &mut self,
        chunk: &[u8],
        i: usize,
        start: usize,
        on_row: &mut impl FnMut(&str) -> Result<Option<usize>, StreamError>,
    ) -> Result<Option<usize>, StreamError> {
        let from = if self.capture.carried.is_empty() && i == start {
            i + 1
        } else {
            i
        };
        let end = match self.capture.scan(chunk, from) {
            Scanned::End(end) => end,
            Scanned::Incomplete => {
                self.capture.carried.extend_from_slice(&chunk[start..]);
                self.check_row_size(self.capture.carried.len())?;
                return Ok(None);
            }
            Scanned::StringTooLong => {
                return Err(string_too_long().in_row(self.rows + 1));
            }
        };
        self.check_row_size(self.capture.carried.len() + end - start)?;
        let value: &[u8] = if self.capture.carried.is_empty() {
            &chunk[start..end]
        } else {
            self.capture.carried.extend_from_slice(&chunk[..end]);
            &self.capture.carried
        };
        if self.state == State::InRow {
            let n = self.rows + 1;
            let whole = on_row(utf8(value).map_err(|e| e.in_row(n))?).map_err(|e| e.in_row(n))?;
            if whole != Some(value.len()) {
                return Err(StreamError::Invalid("not one JSON object".into()).in_row(n));
            }
            self.rows = n;
            self.last_row = value.len();
            self.state = State::AfterRow;
        } else {
            serde_json::from_slice::<IgnoredAny>(value).map_err(|e| {
                StreamError::Invalid(format!(
                    "member {:?}: {}",
                    String::from_utf8_lossy(&self.key),
                    super::error::unquoted(&e)
                ))
            })?;
            self.state = State::AfterValue;
        }
        self.capture.carried.clear();
        Ok(Some(end))
    }

    /// The row starting at byte `i` (its `{`), decoded in place by `on_row` when the chunk's
    /// text likely holds it whole: its length, or `None` to scan it instead.
    fn row_in_place(
        &mut self,
        text: &str,
        i: usize,
        on_row: &mut impl FnMut(&str) -> Result<Option<usize>, StreamError>,
    ) -> Result<Option<usize>, StreamError> {
        if i >= text.len() || text.len() - i < 2 * self.last_row {
            return Ok(None);
        }
        let n = self.rows + 1;
        let Some(len) = on_row(&text[i..]).map_err(|e| e.in_row(n))? else {
            return Ok(None);
        };
        self.rows = n;
        self.last_row = len;
        Ok(Some(len))
    }

    /// Checks that the body ended where a body may end; the number of rows.
    pub fn finish(&self) -> Result<usize, StreamError> {
        match self.state {
            State::Done if self.seen_d => Ok(self.rows),
            State::Done => Err(StreamError::Invalid("missing field `d`".into())),
            State::Start if self.offset == 0 => {
                Err(StreamError::Invalid(super::error::EMPTY_BODY.into()))
            }
            _ => Err(StreamError::Invalid(format!(
                "EOF while parsing: the answer ends after {} bytes",
                self.offset
            ))),
        }
    }

    fn error(&self, what: &str, i: usize) -> StreamError {
        StreamError::Invalid(format!("{what} at byte {}", self.offset + i))
    }

    /// A row (or another member's value) of `len` bytes so far is within [`MAX_ROW_BYTES`].
    fn check_row_size(&self, len: usize) -> Result<(), StreamError> {
        if len <= MAX_ROW_BYTES {
            return Ok(());
        }
        if self.state == State::InRow {
            return Err(oversized_row().in_row(self.rows + 1));
        }
        Err(StreamError::Oversized(format!(
            "member {:?}: a value longer than {MAX_ROW_BYTES} bytes",
            String::from_utf8_lossy(&self.key)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row of `body` fed in chunks of `size`, or the error.
    fn rows(body: &[u8], size: usize) -> Result<Vec<String>, StreamError> {
        let mut s = RowStream::new();
        let mut out = Vec::new();
        for chunk in body.chunks(size.max(1)) {
            s.feed(chunk, &mut |text: &str| {
                let Some((_, row)) = one_row::<IgnoredAny>(text)? else {
                    return Ok(None);
                };
                out.push(String::from_utf8(row.to_vec()).unwrap());
                Ok(Some(row.len()))
            })?;
        }
        assert_eq!(s.finish()?, out.len());
        Ok(out)
    }

    #[test]
    fn the_last_row_of_a_page_is_found_past_strings_and_other_members() {
        let page = br#"{"x":{"id":9},"d":[{"id":1,"s":"}{]"},{"id":2,"s":"a\"},{","t":[{"id":7}]}],"y":[1]}"#;
        assert_eq!(
            last_row(page),
            Some(r#"{"id":2,"s":"a\"},{","t":[{"id":7}]}"#)
        );
        let rows: String = (1..=3000)
            .map(|i| format!(r#"{{"id":{i},"name":"dev-{i}"}}"#))
            .collect::<Vec<_>>()
            .join(",");
        let page = format!(r#"{{"d":[{rows}]}}"#);
        assert_eq!(
            last_row(page.as_bytes()),
            Some(r#"{"id":3000,"name":"dev-3000"}"#)
        );
        // No row, or not an answer whose rows can be trusted: the decode says why.
        assert_eq!(last_row(br#"{"d":[]}"#), None);
        assert_eq!(last_row(br#"{"d":[{"id":1},{"id":2"#), None);
        assert_eq!(last_row(br#"{"d":[{"id":1}]} x"#), None);
        // Read from the end, the last array's row is a guess: the decode refuses the answer.
        assert_eq!(last_row_by_scan(br#"{"e":[{"id":1}]}"#), None);
        assert_eq!(last_row(b""), None);
    }

    #[test]
    fn the_last_row_read_from_the_end_is_the_one_the_scan_finds() {
        let strings = [
            r#""plain""#,
            r#""a\\""#,
            r#""a\\\"}{""#,
            r#""\\\\""#,
            r#""]}{[""#,
            r#""\"""#,
            r#""""#,
        ];
        for (i, s) in strings.iter().enumerate() {
            for t in strings {
                let page = format!(
                    "{{\"d\": [ {{\"id\":1,\"s\":{t}}} ,\n {{\"id\":{i},\"s\":{s},\"n\":[{{\"t\":{t}}}],\"e\":{{}}}} ] }} \n"
                );
                let scanned = last_row_by_scan(page.as_bytes());
                assert!(scanned.is_some(), "{page}");
                assert_eq!(last_row_from_end(page.as_bytes()), scanned, "{page}");
            }
        }
        // Not ending with the row array: the scan decides.
        let other_last = br#"{"d":[{"id":1}],"x":{"y":[{"id":2}]}}"#;
        assert_eq!(last_row_from_end(other_last), None);
        assert_eq!(last_row(other_last), Some(r#"{"id":1}"#));
        assert_eq!(last_row_from_end(br#"{"d":[]}"#), None);
        assert_eq!(last_row_from_end(br#"{"d":[{"id":1"}]}"#), None);
    }

    #[test]
    fn rows_come_out_whole_whatever_the_chunking() {
        let body = br#" { "__count": [1, {"x": "]}"}], "d" : [ {"id":1,"n":"a\"}{b\\"}, {"id":2,"t":[{"k":"v"}]} ] , "z": -1.5e3 , "s": "\\\"" } "#;
        let want = vec![
            r#"{"id":1,"n":"a\"}{b\\"}"#.to_string(),
            r#"{"id":2,"t":[{"k":"v"}]}"#.to_string(),
        ];
        for size in 1..body.len() + 1 {
            assert_eq!(rows(body, size).unwrap(), want, "chunk size {size}");
        }
        assert_eq!(rows(br#"{"d":[]}"#, 3).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn a_row_cut_where_serde_sees_a_bad_number_is_carried_not_refused() {
        // serde reads `1.` or `2e` at the end of its text as an invalid number, not as EOF:
        // the row must be carried to the next chunk, whatever the cut.
        let body = br#"{"d":[{"id":1,"x":1.5e3,"y":-0.25},{"id":2,"x":2E-2}]}"#;
        for size in 1..body.len() + 1 {
            let got = rows(body, size).unwrap();
            assert_eq!(got.len(), 2, "chunk size {size}");
        }
        for cut in 1..body.len() {
            let mut s = RowStream::new();
            let mut n = 0;
            for chunk in [&body[..cut], &body[cut..]] {
                s.feed(chunk, &mut |text: &str| {
                    let Some((_, row)) = one_row::<IgnoredAny>(text)? else {
                        return Ok(None);
                    };
                    n += 1;
                    Ok(Some(row.len()))
                })
                .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            }
            assert_eq!((s.finish().unwrap(), n), (2, 2), "cut at {cut}");
        }
    }

    #[test]
    fn bad_bodies_are_errors_never_rows_missed_silently() {
        for (body, what) in [
            (&br#"{"d":[{"id":1}"#[..], "EOF while parsing"),
            (br#"{"d":[{"id":1}]"#, "EOF while parsing"),
            (br#""#, "the answer's body is empty"),
            (br#"{"d":[{"id":1}]} x"#, "trailing characters"),
            (br#"{"d":{"id":1}}"#, "`d` is not an array"),
            (br#"{"d":[1]}"#, "expected a device object"),
            (br#"{"e":[]}"#, "missing field `d`"),
            (br#"{"d":[] "e":1}"#, "unexpected character"),
            (br#"{"x": tru, "d":[]}"#, "member \"x\""),
            (br#"<html>502</html>"#, "unexpected character '<'"),
            (br#"{"d":[{"id":1},]}"#, "expected a device object"),
        ] {
            for size in [1, 4, body.len().max(1)] {
                let err = rows(body, size).unwrap_err();
                assert!(
                    err.to_string().contains(what),
                    "{body:?} in chunks of {size}: {err}"
                );
            }
        }
    }

    #[test]
    fn a_refused_row_stops_the_stream_with_its_number() {
        let mut s = RowStream::new();
        let err = s
            .feed(br#"{"d":[{"id":1},{"id":"x"}]}"#, &mut |text: &str| {
                let (v, row) = one_row::<serde_json::Value>(text)?.unwrap();
                v["id"]
                    .is_u64()
                    .then_some(Some(row.len()))
                    .ok_or_else(|| StreamError::Invalid("id is not a number".into()))
            })
            .unwrap_err();
        assert_eq!(err.to_string(), "row 2: id is not a number");
    }
}
