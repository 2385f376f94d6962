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

fn percent_decode(text: &str) -> Result<String, QueryError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                let byte = hex
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| QueryError::Malformed(text.to_owned()))?;
                out.push(byte);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| QueryError::Malformed(text.to_owned()))
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
}
