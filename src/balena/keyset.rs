//! Keyset paging, as every large listing of the exporter pages (devices, image installs):
//! `$filter=(<filter>) and id gt <last id>&$orderby=id asc&$top=N`, until a page comes back
//! empty. One page is held at a time, and the next is asked for before it is decoded
//! ([`list`]): the API works on the next page while the exporter decodes this one.
//!
//! Rows must come in ascending id order, as asked. A row repeated *exactly* (the same bytes: a
//! proxy or a server sending a page twice) is taken once. Anything else that cannot be trusted
//! fails the listing ([`BalenaError::Inconsistent`]), never shrinks the count: a new row out of
//! order (keyset paging over rows out of order skips rows), a row without an id (or id 0, which
//! balena never gives), one id on two rows that differ (which is the real one?), and a unique
//! text (a device's uuid) on two rows (duplicate series, which Prometheus refuses for the whole
//! scrape).
//!
//! All pages of one listing together are bounded by `api.max_response_bytes`, as one answer is
//! (a server that pages forever fails the listing `too_large` instead of filling the probe's
//! time with rows). A listing may be bounded in rows too ([`Listing::max_rows`]): past it the
//! listing fails
//! ([`BalenaError::OverBound`]) instead of holding more. Pages need no bound of their own: a page
//! that brings no new row ends the listing, so there are never more pages than rows + 1.
//!
//! A short page does not end the listing: a server that caps `$top` below `page_size` answers
//! short pages that are not the last, so only an empty page is the end (one small request,
//! ~10 ms on the real API whatever the fleet size). Keyset pages cost the same however deep they
//! go (`$skip` costs more per row skipped), and rows created or deleted while the listing runs
//! shift nothing: no row that exists throughout is missed or taken twice.

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::BuildHasher as _;

use serde::Deserialize;

use super::odata::Query;
use super::stream::{self, StreamError};
use super::{BalenaError, Session};

/// What one listing asks for: the collection, and the options every page repeats.
pub struct Listing<'a> {
    /// Bounded endpoint name (`device`, `image_install`): the metrics label.
    pub endpoint: &'static str,
    /// `/v7/<resource>`.
    pub path: &'a str,
    /// The rows wanted, before the keyset condition is added.
    pub filter: String,
    /// `$select`.
    pub select: &'a str,
    /// `$expand`, if any.
    pub expand: Option<&'a str>,
    /// What a row is called in notes ("device rows").
    pub rows: &'static str,
    /// The most rows taken, and the setting that says so (`None`: unbounded).
    pub max_rows: Option<(usize, &'static str)>,
}

/// Lists every row of `listing`, handing each row's text to `on_row`, which decodes the row at
/// the start of the text ([`stream::one_row`]), asks the [`Gate`] whether to take it, and
/// returns its length (`None`: the text ends first; see [`stream::RowStream::feed`]). Returns
/// the rows taken.
///
/// One page ahead: a page is read whole, its last row read from its end
/// ([`stream::last_row`]), and the next page asked for before the page is decoded, so the
/// decoding (and what `on_row` does with each row: series, compression) runs while the API
/// works on the next page. The API answers a page at its end, all at once (docs/performance.md),
/// so decoding a page as it arrives overlapped nothing there; this leaves only the last page's
/// work after the listing's last byte. It holds one page at a time: the next page's answer
/// waits in the socket until this one is decoded.
pub async fn list(
    s: &Session<'_>,
    listing: &Listing<'_>,
    mut on_row: impl FnMut(&str, &mut Gate) -> Result<Option<usize>, StreamError>,
) -> Result<usize, BalenaError> {
    let page_size = s.api().page_size as usize;
    let mut listed = Listed::default();
    // One page buffer for the whole listing: a decoded page's buffer is the next page's, so a
    // listing allocates (and the kernel maps) ~1 MB once, not once a page (docs/performance.md,
    // "Compressing inline, one page buffer").
    let spare = Cell::new(Vec::new());
    let mut gate = Gate {
        rows: listing.rows,
        max_rows: listing.max_rows,
        ..Gate::default()
    };
    let mut page = fetch_page(s, listing, None, &mut listed, &spare).await?;
    loop {
        gate.begin_page();
        // The next page is asked for after the last row this page shows; if the decode finds
        // otherwise (a refusal ends the listing; a row repeated at the end), that is dropped.
        let ahead = stream::last_row(&page).and_then(row_id);
        let (n, next) = match ahead.filter(|id| Some(*id) != gate.after) {
            Some(after) => {
                let (n, next) = tokio::try_join!(
                    decode_page(page, &mut on_row, &mut gate, &spare),
                    fetch_page(s, listing, Some(after), &mut listed, &spare),
                )?;
                (n, Some((after, next)))
            }
            None => (
                decode_page(page, &mut on_row, &mut gate, &spare).await?,
                None,
            ),
        };
        if gate.repeated > 0 {
            s.note(format_args!(
                "{} repeated {} ignored",
                gate.repeated, listing.rows
            ));
        }
        gate.taken += n - gate.repeated;
        if n == 0 || gate.last == gate.after {
            return Ok(gate.taken);
        }
        gate.after = gate.last;
        if n < page_size {
            s.note(format_args!(
                "a page of {n} {} (asked {page_size}): asking for rows after id {} to be sure it was the last",
                listing.rows,
                gate.after.unwrap_or(0)
            ));
        }
        page = match next {
            Some((after, next)) if Some(after) == gate.after => next,
            _ => fetch_page(s, listing, gate.after, &mut listed, &spare).await?,
        };
    }
}

/// The bytes of all pages of one listing so far: bounded as one answer is, so that a server
/// that pages forever within a probe's deadline fills no more than `api.max_response_bytes`.
#[derive(Default)]
struct Listed(usize);

/// One page of `listing`, the rows after `after`, read whole into the `spare` buffer (when a
/// decoded page left one there by the time the first bytes come).
async fn fetch_page(
    s: &Session<'_>,
    listing: &Listing<'_>,
    after: Option<u64>,
    listed: &mut Listed,
    spare: &Cell<Vec<u8>>,
) -> Result<Vec<u8>, BalenaError> {
    let filter = match after {
        None => listing.filter.clone(),
        Some(id) => format!("({}) and id gt {id}", listing.filter),
    };
    let mut q = Query::new()
        .option("$select", listing.select)
        .option("$filter", filter)
        .option("$orderby", "id asc")
        .option("$top", s.api().page_size.to_string());
    if let Some(expand) = listing.expand {
        q = q.option("$expand", expand);
    }
    let max_bytes = s.api().max_response_bytes;
    let mut page = Vec::new();
    s.get_streamed(listing.endpoint, listing.path, &q.to_wire(), &mut |chunk| {
        listed.0 += chunk.len();
        if listed.0 > max_bytes {
            return Err(BalenaError::Oversized(format!(
                "the {} of one listing pass {max_bytes} bytes in all (api.max_response_bytes bounds one answer, and all pages of one listing together)",
                listing.rows
            )));
        }
        if page.capacity() == 0 {
            page = spare.take();
        }
        page.extend_from_slice(chunk);
        Ok(())
    })
    .await?;
    Ok(page)
}

/// A row's id, as the next page's keyset condition (`None`: not a row the decode will take).
fn row_id(row: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct Id {
        id: u64,
    }
    serde_json::from_str::<Id>(row).ok().map(|r| r.id)
}

/// Decodes one page, handing each row to `on_row`: the rows it held. It first gives the next
/// page's request (polled beside it) a turn, in which it goes out on the pooled connection,
/// then decodes without another: that request's answer waits in the socket until the page is
/// decoded and dropped, so a listing holds one page at a time (~0.8 KB a device row).
async fn decode_page(
    mut page: Vec<u8>,
    on_row: &mut impl FnMut(&str, &mut Gate) -> Result<Option<usize>, StreamError>,
    gate: &mut Gate,
    spare: &Cell<Vec<u8>>,
) -> Result<usize, BalenaError> {
    tokio::task::yield_now().await;
    let mut rows = stream::RowStream::new();
    rows.feed(&page, &mut |text| on_row(text, gate))
        .map_err(|e| gate.refused.take().unwrap_or_else(|| stream_error(e)))?;
    page.clear();
    spare.set(page);
    rows.finish().map_err(stream_error)
}

/// A stream error as the probe reports it.
fn stream_error(e: StreamError) -> BalenaError {
    match e {
        StreamError::Invalid(e) => BalenaError::Decode(e),
        StreamError::Oversized(e) => BalenaError::Oversized(e),
    }
}

/// What a listing has taken so far: every row id with a hash of its text, and each unique
/// text's row (by a hash of it: ~48 bytes a row in all, [`Gate::BYTES_PER_ROW`]), and where the
/// page being read stands.
#[derive(Default)]
pub struct Gate {
    /// Row id → hash of the row's text.
    ids: HashMap<u64, u64>,
    rows: &'static str,
    max_rows: Option<(usize, &'static str)>,
    unique: HashMap<u64, u64>,
    /// Seeded per listing. foldhash, not SipHash: the row texts of a 10,000-device page
    /// (9.7 MB) hash in 0.4 ms instead of 1.9 ms; the texts come from the API the token
    /// trusts, and a collision could at worst take a changed row as a repeat.
    hasher: foldhash::quality::RandomState,
    /// The page asks for ids after this one.
    after: Option<u64>,
    /// The last row taken on this page.
    page_last: Option<u64>,
    /// The highest id taken.
    last: Option<u64>,
    /// Rows repeated on this page.
    repeated: usize,
    /// Rows taken on earlier pages.
    taken: usize,
    /// Why a row was refused (the listing fails with it).
    refused: Option<BalenaError>,
}

/// A row a listing pages by: its id, and a text no other row may share, if any.
pub trait Keyed {
    /// The row's id (keyset order).
    fn id(&self) -> u64;
    /// A text unique to the row (a device's uuid), checked when the listing asks.
    fn unique(&self) -> Option<&str> {
        None
    }
}

impl Gate {
    /// The usual `on_row` of [`list`]: decodes the row at the start of `text`, admits it
    /// (checking [`Keyed::unique`] when `unique`) and hands it to `on` when taken; the row's
    /// length, or `None` when `text` ends first.
    pub fn take<'a, T: Deserialize<'a> + Keyed>(
        &mut self,
        text: &'a str,
        unique: bool,
        on: impl FnOnce(T),
    ) -> Result<Option<usize>, StreamError> {
        let Some((row, bytes)) = stream::one_row::<T>(text)? else {
            return Ok(None);
        };
        let unique = if unique { row.unique() } else { None };
        if self.admit(row.id(), unique, bytes)? {
            on(row);
        }
        Ok(Some(bytes.len()))
    }

    /// What the gate holds per row taken, roughly (hash map entries with their overhead).
    pub const BYTES_PER_ROW: usize = 48;

    fn begin_page(&mut self) {
        self.page_last = None;
        self.repeated = 0;
    }

    /// Whether to take the row of `id` whose text is `row` (true), or to skip it as an exact
    /// repeat (false); `unique`, when given, must be a non-empty text no other row has. A row
    /// that cannot be trusted, or one past the listing's bound, is an error that ends it.
    pub fn admit(
        &mut self,
        id: u64,
        unique: Option<&str>,
        row: &[u8],
    ) -> Result<bool, StreamError> {
        if let Some((max, key)) = self.max_rows {
            if self.ids.len() >= max && !self.ids.contains_key(&id) {
                self.refused = Some(BalenaError::OverBound(format!(
                    "more than {max} {} (the bound set by {key})",
                    self.rows
                )));
                return Err(StreamError::Invalid("refused".into()));
            }
        }
        let text = self.hasher.hash_one(row);
        match self.check(id, unique, text) {
            Ok(take) => {
                if take {
                    self.page_last = Some(id);
                    self.last = self.last.max(Some(id));
                } else {
                    self.repeated += 1;
                }
                Ok(take)
            }
            Err(why) => {
                let listing = self.rows.trim_end_matches(" rows");
                self.refused = Some(BalenaError::Inconsistent(format!(
                    "the {listing} listing cannot be trusted: {why}"
                )));
                Err(StreamError::Invalid("refused".into()))
            }
        }
    }

    /// Why not, in words (ids only: a uuid is the API's text and is never quoted).
    fn check(&mut self, id: u64, unique: Option<&str>, text: u64) -> Result<bool, String> {
        if id == 0 {
            return Err("a row without an id (or id 0, which balena never gives)".into());
        }
        if let Some(seen) = self.ids.get(&id) {
            if *seen == text {
                return Ok(false);
            }
            return Err(format!(
                "two different rows of id {id}; either could be the real one"
            ));
        }
        if let Some(before) = self
            .page_last
            .filter(|l| id < *l)
            .or(self.after.filter(|a| id <= *a))
        {
            return Err(format!(
                "rows out of id order (id {id} after id {before}); paging by id would skip rows"
            ));
        }
        if let Some(text) = unique {
            if text.is_empty() {
                return Err(format!("the row of id {id} has no uuid"));
            }
            let key = self.hasher.hash_one(text);
            if let Some(other) = self.unique.insert(key, id) {
                return Err(format!(
                    "the rows of ids {other} and {id} have the same uuid"
                ));
            }
        }
        self.ids.insert(id, text);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn page(gate: &mut Gate, after: Option<u64>) {
        gate.after = after;
        gate.begin_page();
    }

    /// A keep-alive HTTP/1.1 server on a loopback port that answers `pages[0]` to the first
    /// request, and to the Nth request for rows after an id (which it notes) `pages[N]`, or an
    /// empty page past the last.
    fn paged_api(pages: Vec<String>, asked_after: Arc<AtomicBool>) -> (String, Arc<AtomicBool>) {
        let pages = Arc::new(pages);
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let (pages, asked, asked_after) =
                    (pages.clone(), asked.clone(), asked_after.clone());
                std::thread::spawn(move || {
                    let mut conn = conn.unwrap();
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    loop {
                        let mut head = String::new();
                        while !head.ends_with("\r\n\r\n") {
                            if reader.read_line(&mut head).unwrap_or(0) == 0 {
                                return;
                            }
                        }
                        let n = if head.contains("%20gt%20") {
                            asked_after.store(true, Ordering::SeqCst);
                            asked.fetch_add(1, Ordering::SeqCst) + 1
                        } else {
                            0
                        };
                        let body = pages.get(n).map_or(r#"{"d":[]}"#, |p| p.as_str());
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if conn.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, stop)
    }

    #[derive(Deserialize)]
    struct Row {
        id: u64,
    }

    impl Keyed for Row {
        fn id(&self) -> u64 {
            self.id
        }
    }

    /// What a device listing over the server at `url` needs: its settings (pages of
    /// `page_size`), a client and a token.
    fn api_at(
        url: &str,
        page_size: u32,
    ) -> (
        crate::config::ApiConfig,
        super::super::BalenaClient,
        secrecy::SecretString,
    ) {
        let api = crate::config::ApiConfig {
            url: url.parse().unwrap(),
            page_size,
            ..Default::default()
        };
        let client = super::super::BalenaClient::new(
            Arc::new(crate::metrics::ExporterMetrics::new()),
            Arc::new(super::super::AuthLimits::default()),
        );
        (api, client, secrecy::SecretString::from("t"))
    }

    fn device_listing() -> Listing<'static> {
        Listing {
            endpoint: "device",
            path: "/v7/device",
            filter: "belongs_to__application eq 1".into(),
            select: "id,name",
            expand: None,
            rows: "device rows",
            max_rows: None,
        }
    }

    /// `{"d":[…]}` of rows `ids`, each with a name of `width` characters.
    fn rows_page(ids: std::ops::RangeInclusive<u32>, width: usize) -> String {
        let rows: Vec<String> = ids
            .map(|i| format!(r#"{{"id":{i},"name":"device-{i:0>width$}"}}"#))
            .collect();
        format!(r#"{{"d":[{}]}}"#, rows.join(","))
    }

    #[actix_rt::test]
    async fn the_next_page_is_asked_for_before_the_page_is_decoded() {
        // A page long enough to decode for a while: the next request must go out in the
        // decode's first turn, before its last row is reached.
        let rows = 20_000;
        let page = rows_page(1..=rows, 40);
        assert!(page.len() > 4 * 256 * 1024);
        let asked_after = Arc::new(AtomicBool::new(false));
        let (url, stop) = paged_api(vec![page], asked_after.clone());
        let (api, client, token) = api_at(&url, rows);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let s = Session::new(&client, &api, "a", &token, deadline);
        let listing = device_listing();
        let mut asked_before_the_last_row = None;
        let taken = list(&s, &listing, |text, gate| {
            gate.take(text, false, |row: Row| {
                if row.id == u64::from(rows) {
                    // The request went out at one of the decode's earlier turns; the server's
                    // thread may still be reading it, so it is given a bound, not a race.
                    let waited = std::time::Instant::now();
                    while !asked_after.load(Ordering::SeqCst)
                        && waited.elapsed() < std::time::Duration::from_secs(10)
                    {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    asked_before_the_last_row = Some(asked_after.load(Ordering::SeqCst));
                }
            })
        })
        .await
        .unwrap();
        stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(url.trim_start_matches("http://"));
        assert_eq!(taken, rows as usize);
        assert_eq!(
            asked_before_the_last_row,
            Some(true),
            "the rows after the page's last id were asked for while the page was decoded"
        );
    }

    /// A listing reads every page into one buffer: a short page after a long one is decoded
    /// from its own bytes only, none left from the page before.
    #[actix_rt::test]
    async fn each_page_is_decoded_from_its_own_bytes_in_the_reused_buffer() {
        let pages = vec![
            rows_page(1..=300, 200),
            rows_page(301..=302, 10),
            rows_page(303..=303, 500),
        ];
        let (url, stop) = paged_api(pages, Arc::new(AtomicBool::new(false)));
        let (api, client, token) = api_at(&url, 300);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let s = Session::new(&client, &api, "a", &token, deadline);
        let (mut texts, mut ids) = (0, Vec::new());
        let taken = list(&s, &device_listing(), |text, gate| {
            texts += 1;
            gate.take(text, false, |row: Row| ids.push(row.id))
        })
        .await
        .unwrap();
        stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(url.trim_start_matches("http://"));
        assert_eq!(taken, 303);
        assert_eq!(ids, (1..=303).collect::<Vec<u64>>());
        assert_eq!(
            texts, 303,
            "no row handed over twice (a page's leftover bytes)"
        );
    }

    #[test]
    fn a_listing_takes_exact_repeats_once_and_refuses_what_it_cannot_trust() {
        let mut gate = Gate::default();
        page(&mut gate, None);
        assert_eq!(gate.check(1, Some("a"), 10), Ok(true));
        gate.page_last = Some(1);
        assert_eq!(gate.check(2, Some("b"), 20), Ok(true));
        gate.page_last = Some(2);
        assert_eq!(gate.check(2, Some("b"), 20), Ok(false));
        let differs = gate.check(2, Some("c"), 21).unwrap_err();
        assert_eq!(
            differs,
            "two different rows of id 2; either could be the real one"
        );
        page(&mut gate, Some(2));
        assert_eq!(gate.check(1, Some("a"), 10), Ok(false));
        page(&mut gate, None);
        gate.page_last = Some(2);
        let reversed = gate.check(1, Some("z"), 30).unwrap_err();
        assert!(
            reversed.contains("two different rows of id 1"),
            "{reversed}"
        );
        let reversed = gate.check(3, Some("z"), 30);
        assert_eq!(reversed, Ok(true));
        page(&mut gate, Some(3));
        let ignored_filter = gate.check(2 + 100, Some("y"), 40);
        assert_eq!(ignored_filter, Ok(true));
        gate.page_last = Some(102);
        let out_of_order = gate.check(50, Some("x"), 50).unwrap_err();
        assert!(
            out_of_order.contains("out of id order (id 50 after id 102)"),
            "{out_of_order}"
        );
        let twice = gate.check(103, Some("a"), 60).unwrap_err();
        assert_eq!(twice, "the rows of ids 1 and 103 have the same uuid");
        assert!(!twice.contains("\"a\""), "never quotes the uuid");
        assert_eq!(gate.check(104, None, 70), Ok(true));
        page(&mut gate, Some(104));
        assert!(gate.check(105, Some(""), 80).is_err());
        let no_id = gate.check(0, None, 90).unwrap_err();
        assert!(no_id.contains("without an id"), "{no_id}");
    }

    #[test]
    fn admit_counts_what_it_skips_and_keeps_why_it_refused() {
        let mut gate = Gate {
            rows: "image install rows",
            ..Gate::default()
        };
        assert!(gate.admit(7, None, b"{\"id\":7}").unwrap());
        assert!(!gate.admit(7, None, b"{\"id\":7}").unwrap());
        assert_eq!((gate.repeated, gate.last), (1, Some(7)));
        assert!(gate.admit(3, None, b"{\"id\":3}").is_err());
        assert!(matches!(
            gate.refused.take(),
            Some(BalenaError::Inconsistent(why))
                if why.starts_with("the image install listing cannot be trusted: ") && why.contains("id 3 after id 7")
        ));
    }

    #[test]
    fn a_bounded_listing_fails_past_its_bound_and_names_the_setting() {
        let mut gate = Gate {
            rows: "image install rows",
            max_rows: Some((2, "api.background_max_bytes")),
            ..Gate::default()
        };
        assert!(gate.admit(1, None, b"1").unwrap());
        assert!(gate.admit(2, None, b"2").unwrap());
        assert!(
            !gate.admit(2, None, b"2").unwrap(),
            "a repeat is no new row"
        );
        assert!(gate.admit(3, None, b"3").is_err());
        let why = gate.refused.take().unwrap().to_string();
        assert_eq!(
            why,
            "more than 2 image install rows (the bound set by api.background_max_bytes)"
        );
    }
}
