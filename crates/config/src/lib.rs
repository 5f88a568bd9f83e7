//! Configuration from `SENTIA_*` environment variables, read through a [`Source`] so tests
//! pass a map instead of touching the process environment. Every problem is collected and
//! reported at once, with the variable name and what it should look like.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Where configuration values come from.
pub trait Source {
    /// The raw value of `name`, if set (empty counts as unset).
    fn get(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl Source for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

/// A fixed map, for tests and for `sentia dev`, which builds configs in-process.
#[derive(Debug, Default, Clone)]
pub struct MapSource(pub HashMap<String, String>);

impl MapSource {
    /// From `(name, value)` pairs.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }
}

impl Source for MapSource {
    fn get(&self, name: &str) -> Option<String> {
        self.0.get(name).filter(|v| !v.is_empty()).cloned()
    }
}

/// Every configuration problem found, one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Human-readable problems, each naming its variable.
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration:")?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads typed values and remembers every problem instead of stopping at the first.
pub struct Reader<'a> {
    source: &'a dyn Source,
    problems: Vec<String>,
}

impl<'a> Reader<'a> {
    /// Starts reading from `source`.
    pub fn new(source: &'a dyn Source) -> Self {
        Self {
            source,
            problems: Vec::new(),
        }
    }

    /// The raw value, if set.
    pub fn optional(&self, name: &str) -> Option<String> {
        self.source.get(name)
    }

    /// A required value; records a problem when unset.
    pub fn required(&mut self, name: &str, what: &str) -> Option<String> {
        let value = self.source.get(name);
        if value.is_none() {
            self.problems.push(format!("{name} is not set: {what}"));
        }
        value
    }

    /// A string with a default.
    pub fn string_or(&self, name: &str, default: &str) -> String {
        self.source.get(name).unwrap_or_else(|| default.to_string())
    }

    /// Any `FromStr` value with a default; `expected` describes the format in the message.
    pub fn parse_or<T: FromStr>(&mut self, name: &str, default: T, expected: &str) -> T {
        match self.source.get(name) {
            None => default,
            Some(raw) => match raw.trim().parse() {
                Ok(v) => v,
                Err(_) => {
                    self.problems
                        .push(format!("{name}={raw:?} is not {expected}"));
                    default
                }
            },
        }
    }

    /// `true`/`false`/`1`/`0`/`yes`/`no`.
    pub fn bool_or(&mut self, name: &str, default: bool) -> bool {
        match self.source.get(name).map(|v| v.trim().to_ascii_lowercase()) {
            None => default,
            Some(v) if matches!(v.as_str(), "true" | "1" | "yes" | "on") => true,
            Some(v) if matches!(v.as_str(), "false" | "0" | "no" | "off") => false,
            Some(v) => {
                self.problems
                    .push(format!("{name}={v:?} is not a boolean (true or false)"));
                default
            }
        }
    }

    /// A duration like `30s`, `5m`, `12h`, `90d`, or plain seconds.
    pub fn duration_or(&mut self, name: &str, default: Duration) -> Duration {
        match self.source.get(name) {
            None => default,
            Some(raw) => match parse_duration(&raw) {
                Some(d) => d,
                None => {
                    self.problems.push(format!(
                        "{name}={raw:?} is not a duration (e.g. 30s, 5m, 12h, 90d)"
                    ));
                    default
                }
            },
        }
    }

    /// Records a problem found by the caller's own validation.
    pub fn problem(&mut self, message: impl Into<String>) {
        self.problems.push(message.into());
    }

    /// Ok when no problem was recorded.
    pub fn finish(self) -> Result<(), ConfigError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                problems: self.problems,
            })
        }
    }
}

/// What `read` makes of a source that sets nothing — every setting at its default — or the
/// problems it found: how a configuration built in-process shares the defaults (and their
/// checks) of the one read from the environment.
pub fn defaults<T>(read: impl FnOnce(&mut Reader<'_>) -> T) -> Result<T, ConfigError> {
    let empty = MapSource::default();
    let mut r = Reader::new(&empty);
    let value = read(&mut r);
    r.finish()?;
    Ok(value)
}

/// Parses `30s`, `5m`, `12h`, `90d`, `250ms` or plain seconds.
pub fn parse_duration(raw: &str) -> Option<Duration> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let n: u64 = number.parse().ok()?;
    let secs = match unit {
        "ms" => return Some(Duration::from_millis(n)),
        "" | "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_the_documented_units() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(
            parse_duration("90d"),
            Some(Duration::from_secs(90 * 86_400))
        );
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("12"), Some(Duration::from_secs(12)));
        assert_eq!(parse_duration("5 weeks"), None);
        assert_eq!(parse_duration(""), None);
    }
}
