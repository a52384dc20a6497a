//! The `grpc-timeout` header of gRPC over HTTP/2: at most 8 digits and a unit (`H`, `M`,
//! `S`, `m`, `u`, `n`). Read by our client transport ([`crate::h2_channel`]) and by a
//! follower that forwards a call with its client's deadline.

use std::time::Duration;

/// The duration `value` names; `None` for anything else (no digits, too many, a sign, an
/// unknown unit, an hour count that overflows).
pub fn parse(value: &str) -> Option<Duration> {
    // The unit is one ASCII byte, so the digits end on a character boundary.
    if !value.as_bytes().last()?.is_ascii() {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The `grpc-timeout` of a request's headers, if it has a valid one.
pub fn of(headers: &http::HeaderMap) -> Option<Duration> {
    parse(headers.get("grpc-timeout")?.to_str().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_parses_and_junk_is_refused() {
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("30S"), Some(Duration::from_secs(30)));
        assert_eq!(parse("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("9n"), Some(Duration::from_nanos(9)));
        assert_eq!(parse("99999999H"), Some(Duration::from_secs(99_999_999 * 3600)));
        for junk in ["", "S", "m", "10x", "-1S", "+1S", "123456789m", "1 S", "１S", "5１"] {
            assert_eq!(parse(junk), None, "{junk:?}");
        }
        let mut headers = http::HeaderMap::new();
        assert_eq!(of(&headers), None);
        headers.insert("grpc-timeout", "5000m".parse().unwrap());
        assert_eq!(of(&headers), Some(Duration::from_secs(5)));
    }
}
