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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            keepalive_interval: Some(30_000),
            ping_timeout: 5_000,
            probe_after: Some(60_000),
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

const FIELDS: &[&str] = &["keepalive_interval", "ping_timeout", "probe_after"];

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
        for (key, value) in object {
            match key.as_str() {
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
        Ok(cfg)
    }

    /// One line for the Envoy log at load time.
    pub fn describe(&self) -> String {
        let ka = self
            .keepalive_interval
            .map_or_else(|| "off".to_string(), format_duration);
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
            }
        );
        let off = Config::parse(br#"{"keepalive_interval":"0s","probe_after":"0s"}"#).unwrap();
        assert_eq!(off.keepalive_interval, None);
        assert_eq!(off.probe_after, None);
    }

    #[test]
    fn errors_name_the_field() {
        let cases: [(&[u8], &str); 9] = [
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
