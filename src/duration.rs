//! Durations as Envoy and Istio users write them: `"250ms"`, `"30s"`, `"1.5s"`, `"5m"`, `"1h"`.

/// Milliseconds. The whole core keeps time in ms taken from the host clock.
pub type Millis = u64;

/// Parse a duration string into milliseconds. `"0s"` (or `"0"`) is zero.
pub fn parse_duration(text: &str) -> Result<Millis, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(0);
    }
    if t.starts_with('-') {
        return Err(format!("{text:?} is negative"));
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{text:?} has no unit (use ms, s, m or h)"))?;
    let (number, unit) = t.split_at(split);
    let scale: f64 = match unit {
        "ms" => 1.0,
        "s" => 1_000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => {
            return Err(format!(
                "{text:?} has an unknown unit {unit:?} (use ms, s, m or h)"
            ))
        }
    };
    if number.is_empty()
        || number.starts_with('.')
        || number.ends_with('.')
        || number.matches('.').count() > 1
    {
        return Err(format!("{text:?} is not a number followed by a unit"));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a number followed by a unit"))?;
    let ms = value * scale;
    // A week is far beyond any idle cutoff; refusing more keeps arithmetic far from overflow.
    if !(0.0..=604_800_000.0).contains(&ms) {
        return Err(format!("{text:?} is out of range (at most 168h)"));
    }
    if ms > 0.0 && ms < 1.0 {
        return Err(format!("{text:?} is below the 1ms resolution"));
    }
    Ok(ms.round() as Millis)
}

/// Format milliseconds the way the config accepts them (for logs).
pub fn format_duration(ms: Millis) -> String {
    if ms > 0 && ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms > 0 && ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_envoy_style_durations() {
        assert_eq!(parse_duration("250ms"), Ok(250));
        assert_eq!(parse_duration("30s"), Ok(30_000));
        assert_eq!(parse_duration("1.5s"), Ok(1_500));
        assert_eq!(parse_duration("0.250s"), Ok(250));
        assert_eq!(parse_duration("5m"), Ok(300_000));
        assert_eq!(parse_duration("1h"), Ok(3_600_000));
        assert_eq!(parse_duration("0s"), Ok(0));
        assert_eq!(parse_duration("0"), Ok(0));
    }

    #[test]
    fn rejects_the_rest() {
        for bad in [
            "", "s", "10", "soon", "-1s", "1.s", ".5s", "1.2.3s", "10x", "1e3s", "200h", "0.1ms",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn formats_round_trip() {
        for ms in [0, 1, 250, 1_000, 1_500, 60_000, 300_000, 3_600_000] {
            assert_eq!(parse_duration(&format_duration(ms)), Ok(ms));
        }
    }
}
