//! Plugin configuration: JSON, every field optional, unknown fields rejected by name.

use crate::duration::{format_duration, parse_duration, Millis};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Quiet time after which the filter sends a PING; `None` = keepalive off (`"0s"`).
    pub keepalive_interval: Option<Millis>,
    /// How long a filter PING may go unanswered before the link is declared dead.
    pub ping_timeout: Millis,
    /// A client command arriving after this long without a byte from Redis waits for a PING's
    /// answer first; `None` = off (`"0s"`).
    pub probe_after: Option<Millis>,
    /// `keepalive_interval: "auto"`: learn each upstream's idle cutoff and keep alive inside
    /// it, within these bounds. `keepalive_interval` is then the interval used before anything
    /// is learned (the upper bound).
    pub learn: Option<LearnBounds>,
}

/// Bounds of a learned keepalive interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LearnBounds {
    pub min: Millis,
    pub max: Millis,
}

/// The defaults cover every idle cutoff of [`COVERED_CUTOFF`] or more with no tuning: a
/// keepalive at half of it (the margin the learning keeps too), and a probe for a command after
/// a silence that the keepalives could not prevent, before the cutoff.
pub const COVERED_CUTOFF: Millis = 30_000;
const DEFAULT_KEEPALIVE: Millis = COVERED_CUTOFF / 2;
const DEFAULT_PROBE_AFTER: Millis = 25_000;
const DEFAULT_MIN_KEEPALIVE: Millis = 1_000;
/// "auto" starts from the default interval: it learns only cutoffs below the covered ones.
const DEFAULT_MAX_KEEPALIVE: Millis = DEFAULT_KEEPALIVE;

impl Default for Config {
    fn default() -> Self {
        Config {
            keepalive_interval: Some(DEFAULT_KEEPALIVE),
            ping_timeout: 5_000,
            probe_after: Some(DEFAULT_PROBE_AFTER),
            learn: None,
        }
    }
}

/// A configuration error always names the field, so the Envoy log says what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid redis-idle-guard configuration: field `{}`: {}",
            self.field, self.message
        )
    }
}

const FIELDS: &[&str] = &[
    "keepalive_interval",
    "min_keepalive_interval",
    "max_keepalive_interval",
    "ping_timeout",
    "probe_after",
];

fn err(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_string(),
        message: message.into(),
    }
}

fn duration_field(field: &str, value: &serde_json::Value) -> Result<Millis, ConfigError> {
    let Some(text) = value.as_str() else {
        return Err(err(
            field,
            format!("expected a duration string such as \"30s\", got {value}"),
        ));
    };
    parse_duration(text).map_err(|m| err(field, m))
}

impl Config {
    /// Parse the plugin configuration. Empty (or whitespace) means all defaults.
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(cfg);
        }
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| err("configuration", format!("not valid JSON: {e}")))?;
        let Some(object) = value.as_object() else {
            return Err(err("configuration", "expected a JSON object"));
        };
        let mut auto = false;
        let mut min = None;
        let mut max = None;
        for (key, value) in object {
            match key.as_str() {
                "keepalive_interval" if value.as_str() == Some("auto") => auto = true,
                "min_keepalive_interval" | "max_keepalive_interval" => {
                    let ms = duration_field(key, value)?;
                    if ms < 100 {
                        return Err(err(key, "must be at least 100ms"));
                    }
                    if key == "min_keepalive_interval" {
                        min = Some(ms);
                    } else {
                        max = Some(ms);
                    }
                }
                "keepalive_interval" => {
                    let ms = duration_field(key, value)?;
                    if ms != 0 && ms < 100 {
                        return Err(err(key, "must be \"0s\" (off) or at least 100ms"));
                    }
                    cfg.keepalive_interval = (ms != 0).then_some(ms);
                }
                "ping_timeout" => {
                    let ms = duration_field(key, value)?;
                    if ms < 10 {
                        return Err(err(key, "must be at least 10ms"));
                    }
                    cfg.ping_timeout = ms;
                }
                "probe_after" => {
                    let ms = duration_field(key, value)?;
                    if ms != 0 && ms < 100 {
                        return Err(err(key, "must be \"0s\" (off) or at least 100ms"));
                    }
                    cfg.probe_after = (ms != 0).then_some(ms);
                }
                other => {
                    return Err(err(
                        other,
                        format!("unknown field (known fields: {})", FIELDS.join(", ")),
                    ));
                }
            }
        }
        cfg.with_learning(auto, min, max)
    }

    /// `"keepalive_interval": "auto"` and its bounds, which apply only with it.
    fn with_learning(
        mut self,
        auto: bool,
        min: Option<Millis>,
        max: Option<Millis>,
    ) -> Result<Config, ConfigError> {
        if !auto {
            for (field, set) in [
                ("min_keepalive_interval", min),
                ("max_keepalive_interval", max),
            ] {
                if set.is_some() {
                    return Err(err(
                        field,
                        "applies only with \"keepalive_interval\": \"auto\"",
                    ));
                }
            }
            return Ok(self);
        }
        let min = min.unwrap_or(DEFAULT_MIN_KEEPALIVE);
        let max = max.unwrap_or(DEFAULT_MAX_KEEPALIVE.max(min));
        if max < min {
            return Err(err(
                "max_keepalive_interval",
                "must not be below min_keepalive_interval",
            ));
        }
        self.keepalive_interval = Some(max);
        self.learn = Some(LearnBounds { min, max });
        Ok(self)
    }

    /// The shortest keepalive interval this configuration can use.
    pub fn shortest_keepalive(&self) -> Option<Millis> {
        match self.learn {
            Some(b) => Some(b.min),
            None => self.keepalive_interval,
        }
    }

    /// The wasm build's tick period: fine enough to act within a tenth of the shortest timer,
    /// coarse enough to cost nothing; 0 (no tick) when neither keepalives nor probes are on.
    pub fn tick_period_ms(&self) -> Millis {
        let shortest = match (self.shortest_keepalive(), self.probe_after) {
            (None, None) => return 0,
            (Some(interval), _) => interval.min(self.ping_timeout),
            (None, Some(_)) => self.ping_timeout,
        };
        (shortest / 10).clamp(10, 1_000)
    }

    /// One line for the Envoy log at load time.
    pub fn describe(&self) -> String {
        let ka = match (self.learn, self.keepalive_interval) {
            (Some(b), _) => format!(
                "auto({}..{})",
                format_duration(b.min),
                format_duration(b.max)
            ),
            (None, Some(i)) => format_duration(i),
            (None, None) => "off".to_string(),
        };
        let probe = self
            .probe_after
            .map_or_else(|| "off".to_string(), format_duration);
        format!(
            "keepalive_interval={ka} ping_timeout={} probe_after={probe}",
            format_duration(self.ping_timeout)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's configuration table says what the code does.
    #[test]
    fn the_documented_defaults_are_the_defaults() {
        let readme = include_str!("../README.md");
        let documented = |field: &str| {
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `{field}` | `\"")))
                .unwrap_or_else(|| panic!("README: no row for {field}"));
            let value = row.split('"').nth(1).unwrap();
            crate::duration::parse_duration(value).unwrap()
        };
        let c = Config::default();
        assert_eq!(Some(documented("keepalive_interval")), c.keepalive_interval);
        assert_eq!(documented("ping_timeout"), c.ping_timeout);
        assert_eq!(Some(documented("probe_after")), c.probe_after);
        let auto = Config::parse(br#"{"keepalive_interval":"auto"}"#).unwrap();
        let bounds = auto.learn.unwrap();
        assert_eq!(documented("min_keepalive_interval"), bounds.min);
        assert_eq!(documented("max_keepalive_interval"), bounds.max);
    }

    #[test]
    fn the_defaults_cover_a_30s_cutoff_with_margin() {
        let c = Config::default();
        assert_eq!(c.keepalive_interval, Some(15_000));
        assert_eq!(c.ping_timeout, 5_000);
        assert_eq!(c.probe_after, Some(25_000));
        // The keepalive goes out by half the cutoff (plus a tick); the probe before it.
        assert!(c.keepalive_interval.unwrap() + c.tick_period_ms() <= COVERED_CUTOFF / 2 + 1_000);
        assert!(c.probe_after.unwrap() < COVERED_CUTOFF);
    }

    #[test]
    fn empty_means_defaults() {
        assert_eq!(Config::parse(b""), Ok(Config::default()));
        assert_eq!(Config::parse(b"  \n"), Ok(Config::default()));
        assert_eq!(Config::parse(b"{}"), Ok(Config::default()));
    }

    #[test]
    fn reads_fields() {
        let c = Config::parse(
            br#"{"keepalive_interval":"1s","ping_timeout":"250ms","probe_after":"2m"}"#,
        )
        .unwrap();
        assert_eq!(
            c,
            Config {
                keepalive_interval: Some(1_000),
                ping_timeout: 250,
                probe_after: Some(120_000),
                learn: None,
            }
        );
        let off = Config::parse(br#"{"keepalive_interval":"0s","probe_after":"0s"}"#).unwrap();
        assert_eq!(off.keepalive_interval, None);
        assert_eq!(off.probe_after, None);
    }

    #[test]
    fn auto_learns_within_bounds() {
        let c = Config::parse(br#"{"keepalive_interval":"auto"}"#).unwrap();
        assert_eq!(
            c.learn,
            Some(LearnBounds {
                min: 1_000,
                max: 15_000
            })
        );
        assert_eq!(c.keepalive_interval, Some(15_000));
        assert_eq!(c.shortest_keepalive(), Some(1_000));
        let c = Config::parse(
            br#"{"keepalive_interval":"auto","min_keepalive_interval":"5s","max_keepalive_interval":"2m"}"#,
        )
        .unwrap();
        assert_eq!(
            c.learn,
            Some(LearnBounds {
                min: 5_000,
                max: 120_000
            })
        );
        assert!(c.describe().contains("auto(5s..2m)"), "{}", c.describe());
        // A min above the default max lifts the default max with it.
        let c = Config::parse(br#"{"keepalive_interval":"auto","min_keepalive_interval":"90s"}"#)
            .unwrap();
        assert_eq!(
            c.learn,
            Some(LearnBounds {
                min: 90_000,
                max: 90_000
            })
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases: [(&[u8], &str); 14] = [
            (br#"{"keepalive_interval":"Auto"}"#, "keepalive_interval"),
            (br#"{"min_keepalive_interval":"1s"}"#, "min_keepalive_interval"),
            (br#"{"keepalive_interval":"5s","max_keepalive_interval":"1m"}"#, "max_keepalive_interval"),
            (br#"{"keepalive_interval":"auto","min_keepalive_interval":"10ms"}"#, "min_keepalive_interval"),
            (br#"{"keepalive_interval":"auto","min_keepalive_interval":"10s","max_keepalive_interval":"5s"}"#, "max_keepalive_interval"),
            (br#"{"probe_after":"50ms"}"#, "probe_after"),
            (br#"{"probe_after":true}"#, "probe_after"),
            (br#"{"keepalive_interval":"soon"}"#, "keepalive_interval"),
            (br#"{"keepalive_interval":30}"#, "keepalive_interval"),
            (br#"{"keepalive_interval":"10ms"}"#, "keepalive_interval"),
            (br#"{"ping_timeout":"0s"}"#, "ping_timeout"),
            (br#"{"bogus":1}"#, "bogus"),
            (br#"[1]"#, "configuration"),
            (br#"{"#, "configuration"),
        ];
        for (input, field) in cases {
            let e = Config::parse(input).unwrap_err();
            assert_eq!(e.field, field);
            assert!(e.to_string().contains(field));
        }
    }
}
