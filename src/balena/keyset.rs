//! Keyset paging, as every large listing of the exporter pages (devices, image installs):
//! `$filter=(<filter>) and id gt <last id>&$orderby=id asc&$top=N`, until a page comes back
//! empty. Each row is handed on as soon as it has arrived: no page is ever held whole.
//!
//! Rows must come in ascending id order, as asked: a row repeated (a proxy or a server sending
//! rows twice) is taken once, but a new row out of order, or a unique text (a device's uuid) on
//! two rows, fails the listing ([`BalenaError::Inconsistent`]): keyset paging over rows out of
//! order skips rows, and two rows of one uuid write duplicate series that Prometheus refuses for
//! the whole scrape.
//!
//! A short page does not end the listing: a server that caps `$top` below `page_size` answers
//! short pages that are not the last, so only an empty page is the end (one small request,
//! ~10 ms on the real API whatever the fleet size). Keyset pages cost the same however deep they
//! go (`$skip` costs more per row skipped), and rows created or deleted while the listing runs
//! shift nothing: no row that exists throughout is missed or taken twice.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher as _;

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
}

/// Lists every row of `listing`, handing each row's text to `on_row`, which decodes it and asks
/// the [`Gate`] whether to take it. Returns the rows taken.
pub async fn list(
    s: &Session<'_>,
    listing: &Listing<'_>,
    mut on_row: impl FnMut(&[u8], &mut Gate) -> Result<(), StreamError>,
) -> Result<usize, BalenaError> {
    let page = s.api().page_size as usize;
    let mut gate = Gate::default();
    loop {
        let filter = match gate.after {
            None => listing.filter.clone(),
            Some(id) => format!("({}) and id gt {id}", listing.filter),
        };
        let mut q = Query::new()
            .option("$select", listing.select)
            .option("$filter", filter)
            .option("$orderby", "id asc")
            .option("$top", page.to_string());
        if let Some(expand) = listing.expand {
            q = q.option("$expand", expand);
        }
        let mut rows = stream::RowStream::new();
        gate.begin_page();
        s.get_streamed(listing.endpoint, listing.path, &q.to_wire(), &mut |chunk| {
            rows.feed(chunk, &mut |row| on_row(row, &mut gate))
                .map_err(|e| gate.refused.take().unwrap_or_else(|| stream_error(e)))
        })
        .await?;
        let n = rows.finish().map_err(stream_error)?;
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
        if n < page {
            s.note(format_args!(
                "a page of {n} {} (asked {page}): asking for rows after id {} to be sure it was the last",
                listing.rows,
                gate.after.unwrap_or(0)
            ));
        }
    }
}

/// A stream error as the probe reports it.
fn stream_error(e: StreamError) -> BalenaError {
    match e {
        StreamError::Invalid(e) => BalenaError::Decode(e),
        StreamError::Oversized(e) => BalenaError::Oversized(e),
    }
}

/// What a listing has taken so far: every row id, and each unique text's row (by a hash of
/// it: ~24 bytes a row), and where the page being read stands.
#[derive(Default)]
pub struct Gate {
    ids: HashSet<u64>,
    unique: HashMap<u64, u64>,
    hasher: std::collections::hash_map::RandomState,
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

impl Gate {
    fn begin_page(&mut self) {
        self.page_last = None;
        self.repeated = 0;
    }

    /// Whether to take the row of `id` (true), or to skip it as a repeat (false); `unique`,
    /// when given, must be a non-empty text no other row has. A row that cannot be trusted is
    /// an error that ends the listing.
    pub fn admit(&mut self, id: u64, unique: Option<&str>) -> Result<bool, StreamError> {
        match self.check(id, unique) {
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
                self.refused = Some(BalenaError::Inconsistent(why));
                Err(StreamError::Invalid("refused".into()))
            }
        }
    }

    /// Why not, in words (ids only: a uuid is the API's text and is never quoted).
    fn check(&mut self, id: u64, unique: Option<&str>) -> Result<bool, String> {
        if self.ids.contains(&id) {
            return Ok(false);
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
        self.ids.insert(id);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(gate: &mut Gate, after: Option<u64>) {
        gate.after = after;
        gate.begin_page();
    }

    #[test]
    fn a_listing_takes_repeats_once_and_refuses_what_it_cannot_trust() {
        let mut gate = Gate::default();
        page(&mut gate, None);
        assert_eq!(gate.check(1, Some("a")), Ok(true));
        gate.page_last = Some(1);
        assert_eq!(gate.check(2, Some("b")), Ok(true));
        gate.page_last = Some(2);
        assert_eq!(gate.check(2, Some("b")), Ok(false));
        page(&mut gate, Some(2));
        assert_eq!(gate.check(1, Some("a")), Ok(false));
        page(&mut gate, None);
        gate.page_last = Some(2);
        let reversed = gate.check(0, Some("z")).unwrap_err();
        assert!(
            reversed.contains("out of id order (id 0 after id 2)"),
            "{reversed}"
        );
        page(&mut gate, Some(2));
        let ignored_filter = gate.check(0, Some("z")).unwrap_err();
        assert!(
            ignored_filter.contains("out of id order"),
            "{ignored_filter}"
        );
        let twice = gate.check(3, Some("a")).unwrap_err();
        assert_eq!(twice, "the rows of ids 1 and 3 have the same uuid");
        assert!(!twice.contains("\"a\""), "never quotes the uuid");
        assert_eq!(gate.check(4, None), Ok(true));
        page(&mut gate, Some(4));
        assert!(gate.check(5, Some("")).is_err());
    }

    #[test]
    fn admit_counts_what_it_skips_and_keeps_why_it_refused() {
        let mut gate = Gate::default();
        assert!(gate.admit(7, None).unwrap());
        assert!(!gate.admit(7, None).unwrap());
        assert_eq!((gate.repeated, gate.last), (1, Some(7)));
        assert!(gate.admit(3, None).is_err());
        assert!(matches!(
            gate.refused.take(),
            Some(BalenaError::Inconsistent(why)) if why.contains("id 3 after id 7")
        ));
    }
}
