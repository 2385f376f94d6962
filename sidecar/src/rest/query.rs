//! Query strings of the health endpoints: `?lag=<size>` and `?tag_<key>=<value>` (Patroni's forms).
//! Pure parsing; a malformed value is an error the handler answers with 400.

use std::collections::BTreeMap;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("invalid lag {0:?}: use bytes or a size with a unit (kB, MB, GB, TB)")]
    Lag(String),
    #[error("invalid query string: {0}")]
    Malformed(String),
}

/// What a health check's query string asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HealthQuery {
    /// Maximum replication lag in bytes.
    pub max_lag: Option<u64>,
    /// Tags the member must have, keyed without the `tag_` prefix.
    pub tags: BTreeMap<String, String>,
}

/// Parses `lag=16MB&tag_nofailover=false`; other keys are ignored, as Patroni does.
pub fn parse_health_query(raw: &str) -> Result<HealthQuery, QueryError> {
    let mut q = HealthQuery::default();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key)?;
        let value = percent_decode(value)?;
        if key == "lag" {
            q.max_lag = Some(parse_size(&value).ok_or(QueryError::Lag(value))?);
        } else if let Some(tag) = key.strip_prefix("tag_") {
            q.tags.insert(tag.to_owned(), value);
        }
    }
    Ok(q)
}

/// A byte size: a plain number of bytes, or a number with a unit in PostgreSQL's spelling (`B`, `kB`,
/// `MB`, `GB`, `TB`, powers of 1024), case-insensitive, optional space between.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits.parse().ok()?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        "t" | "tb" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// One key or value of the query string: `+` is a space, `%XX` a byte (`percent-encoding`), and the
/// result must be UTF-8. A `%` not followed by two hex digits is refused, where the crate would keep it
/// as it is.
fn percent_decode(text: &str) -> Result<String, QueryError> {
    let malformed = || QueryError::Malformed(text.to_owned());
    let escapes_complete = text.split('%').skip(1).all(|after| {
        after
            .as_bytes()
            .get(..2)
            .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if !escapes_complete {
        return Err(malformed());
    }
    // `+` before decoding: an escaped `%2B` stays a plus.
    percent_encoding::percent_decode_str(&text.replace('+', " "))
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|_| malformed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_bytes_and_units() {
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size("1048576"), Some(1 << 20));
        assert_eq!(parse_size("1kB"), Some(1024));
        assert_eq!(parse_size("16MB"), Some(16 << 20));
        assert_eq!(parse_size("16mb"), Some(16 << 20));
        assert_eq!(parse_size("2 GB"), Some(2 << 30));
        assert_eq!(parse_size("1TB"), Some(1 << 40));
        assert_eq!(parse_size("100B"), Some(100));
    }

    #[test]
    fn bad_sizes_are_refused() {
        for bad in [
            "",
            "MB",
            "-1",
            "1.5MB",
            "10XB",
            "abc",
            "99999999999999999999",
            "20000000TB",
        ] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn lag_and_tags_from_the_query_string() {
        let q =
            parse_health_query("lag=16MB&tag_nofailover=false&tag_zone=eu%2Dwest&other=1").unwrap();
        assert_eq!(q.max_lag, Some(16 << 20));
        assert_eq!(q.tags.get("nofailover").map(String::as_str), Some("false"));
        assert_eq!(q.tags.get("zone").map(String::as_str), Some("eu-west"));
        assert_eq!(parse_health_query("").unwrap(), HealthQuery::default());
        assert_eq!(
            parse_health_query("lag=lots"),
            Err(QueryError::Lag("lots".into()))
        );
        assert!(matches!(
            parse_health_query("tag_a=%zz"),
            Err(QueryError::Malformed(_))
        ));
    }

    #[test]
    fn escapes_plus_and_malformed_input() {
        let q = parse_health_query("tag_zone=eu+west&tag_sign=a%2Bb&tag_utf=%C3%A9").unwrap();
        assert_eq!(q.tags.get("zone").map(String::as_str), Some("eu west"));
        assert_eq!(
            q.tags.get("sign").map(String::as_str),
            Some("a+b"),
            "%2B is a plus"
        );
        assert_eq!(q.tags.get("utf").map(String::as_str), Some("\u{e9}"));
        assert_eq!(
            parse_health_query("lag=16%4DB").unwrap().max_lag,
            Some(16 << 20)
        );
        for bad in [
            "tag_a=%",
            "tag_a=%4",
            "tag_a=x%g0",
            "tag_%zz=1",
            "tag_a=%ff",
            "lag=%C3",
        ] {
            assert!(
                matches!(parse_health_query(bad), Err(QueryError::Malformed(_))),
                "{bad}"
            );
        }
    }
}
