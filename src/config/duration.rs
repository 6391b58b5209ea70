//! Durations written exactly as Prometheus writes them (`model.ParseDuration`): one or more
//! `<integer><unit>` with units `y`, `w`, `d`, `h`, `m`, `s`, `ms`, each at most once and in that
//! order (`1h30m`, `500ms`, `2d`), or a bare `0`. No spaces, no fractions, no bare number of
//! seconds: the config, the flags and the Helm chart's schema (`definitions.duration`) accept the
//! same texts, and a test holds them to it.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// The longest duration any key or flag takes: far beyond any sensible timeout, TTL or
/// interval, and far from where adding it to a clock could overflow.
pub const MAX: Duration = Duration::from_secs(30 * 24 * 3600);

/// The units, largest first, with their length in milliseconds.
const UNITS: [(&str, u64); 7] = [
    ("y", 365 * 86_400_000),
    ("w", 7 * 86_400_000),
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// What every duration error says it expects.
pub const EXPECTED: &str =
    "expected e.g. 10s, 1m30s, 500ms (units y w d h m s ms, largest first, no spaces), at most 30d";

/// Parses a duration of at most [`MAX`]; `None` for anything Prometheus would not read.
pub fn parse(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut next_unit = 0;
    let mut millis: u128 = 0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let n: u64 = rest.get(..digits).filter(|d| !d.is_empty())?.parse().ok()?;
        rest = &rest[digits..];
        // "ms" before "m": the longest unit that matches.
        let (index, (unit, len)) = UNITS
            .iter()
            .enumerate()
            .filter(|(_, (u, _))| rest.starts_with(u))
            .max_by_key(|(_, (u, _))| u.len())?;
        if index < next_unit {
            return None; // repeated, or out of order
        }
        next_unit = index + 1;
        millis += u128::from(n) * u128::from(*len);
        rest = &rest[unit.len()..];
    }
    let d = Duration::from_millis(u64::try_from(millis).ok()?);
    (d <= MAX).then_some(d)
}

/// The text Prometheus would write for `d` (`1m30s`, `500ms`, `0s`); [`parse`] reads it back.
pub fn format(d: Duration) -> String {
    let mut left = d.as_millis();
    if left == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    // Days are the largest unit written: a duration is at most 30 days, and `2w` and `14d`
    // read the same.
    for (unit, len) in &UNITS[2..] {
        let len = u128::from(*len);
        if left >= len {
            out.push_str(&(left / len).to_string());
            out.push_str(unit);
            left %= len;
        }
    }
    out
}

/// Writes [`format()`]'s text.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format(*d))
}

/// Reads [`parse`]'s texts; a YAML number is refused (but `0`), with a hint to add a unit.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Number(0) => Ok(Duration::ZERO),
        Raw::Number(n) => Err(serde::de::Error::custom(format!(
            "invalid duration {n}: a duration needs a unit, e.g. {n}s; {EXPECTED}"
        ))),
        Raw::Text(t) => parse(&t)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid duration {t:?}; {EXPECTED}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_prometheus_reads() {
        let ok = [
            ("0", 0),
            ("0s", 0),
            ("500ms", 500),
            ("10s", 10_000),
            ("1m30s", 90_000),
            ("1h30m", 5_400_000),
            ("2d", 172_800_000),
            ("1w", 604_800_000),
            ("1d2h3m4s5ms", 93_784_005),
            ("30d", 2_592_000_000),
        ];
        for (text, ms) in ok {
            assert_eq!(parse(text), Some(Duration::from_millis(ms)), "{text}");
        }
        for bad in [
            "",
            "30",
            "1.5s",
            "1m 30s",
            " 10s",
            "10s ",
            "30s1m",
            "1s1s",
            "1ms1s",
            "10 seconds",
            "1hour",
            "1y",
            "31d",
            "5w",
            "-1s",
            "s",
            "1",
            "99999999999999999999s",
            "1µs",
            "1ns",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formats_what_it_reads() {
        for ms in [
            0,
            1,
            500,
            1_000,
            90_000,
            5_400_000,
            93_784_005,
            2_592_000_000,
        ] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse(&format(d)), Some(d), "{}", format(d));
        }
        assert_eq!(format(Duration::from_secs(90)), "1m30s");
        assert_eq!(format(Duration::from_millis(119_500)), "1m59s500ms");
    }
}
