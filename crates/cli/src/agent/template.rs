//! The template language of `sentia agent render`, small enough to read in one go:
//!
//! - text is copied as it is;
//! - `{{ secret "PATH" }}` is the current value of the secret at PATH;
//! - filters follow a `|`: `base64` (standard, padded), `json` (a JSON string literal, quotes
//!   included; the value must be UTF-8), `trim` (surrounding whitespace removed);
//! - `{{ "text" }}` is the text itself (so `{{ "{{" }}` writes two braces).
//!
//! Anything else between braces is an error naming its line and column, found when the agent
//! starts rather than at the first rotation.

use std::collections::BTreeSet;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

/// What a value passes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    Base64,
    Json,
    Trim,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Secret { path: String, filters: Vec<Filter> },
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Piece>);

/// Line and column (from 1) of byte `at` in `text`.
fn position(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// A string literal at the start of `s` (after `"`), and what follows it.
fn literal(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 1..])),
            '\\' => match chars.next()?.1 {
                '"' => out.push('"'),
                '\\' => out.push('\\'),
                _ => return None,
            },
            c => out.push(c),
        }
    }
    None
}

/// One `{{ ... }}` expression's inside.
fn expression(inner: &str) -> Result<Piece, String> {
    let inner = inner.trim();
    if let Some(rest) = inner.strip_prefix('"') {
        let (text, rest) = literal(rest).ok_or("an unterminated string literal")?;
        if !rest.trim().is_empty() {
            return Err("a string literal takes no filters".into());
        }
        return Ok(Piece::Text(text));
    }
    let rest = inner
        .strip_prefix("secret")
        .filter(|r| r.starts_with(char::is_whitespace))
        .ok_or_else(|| {
            format!(
                "{:?} is not an expression; write {{{{ secret \"PATH\" }}}}, optionally with \
                 | base64, | json or | trim",
                inner
            )
        })?
        .trim_start();
    let rest = rest
        .strip_prefix('"')
        .ok_or("secret takes a quoted path: secret \"prod/app/db\"")?;
    let (path, rest) = literal(rest).ok_or("an unterminated path string")?;
    if path.is_empty() {
        return Err("secret takes a non-empty path".into());
    }
    let mut filters = Vec::new();
    let rest = rest.trim();
    if !rest.is_empty() {
        let rest = rest
            .strip_prefix('|')
            .ok_or_else(|| format!("unexpected {rest:?} after the path; filters follow a |"))?;
        for f in rest.split('|').map(str::trim) {
            filters.push(match f {
                "base64" => Filter::Base64,
                "json" => Filter::Json,
                "trim" => Filter::Trim,
                other => {
                    return Err(format!(
                        "unknown filter {other:?} (known: base64, json, trim)"
                    ));
                }
            });
        }
    }
    Ok(Piece::Secret { path, filters })
}

impl Template {
    /// Parses `text`; an error names the line and column of the bad expression.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut rest = 0;
        while let Some(open) = text[rest..].find("{{").map(|i| rest + i) {
            if open > rest {
                pieces.push(Piece::Text(text[rest..open].to_string()));
            }
            let at = |e: String| {
                let (line, column) = position(text, open);
                format!("line {line}, column {column}: {e}")
            };
            // A `}}` inside a string literal does not close the expression.
            let body = &text[open + 2..];
            let mut close = None;
            let mut in_string = false;
            let mut escaped = false;
            for (i, c) in body.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' if in_string => escaped = true,
                    '"' => in_string = !in_string,
                    '}' if !in_string && body[i..].starts_with("}}") => {
                        close = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let close = close.ok_or_else(|| at("{{ is never closed by }}".into()))?;
            pieces.push(expression(&body[..close]).map_err(at)?);
            rest = open + 2 + close + 2;
        }
        if rest < text.len() {
            pieces.push(Piece::Text(text[rest..].to_string()));
        }
        Ok(Self(pieces))
    }

    /// The secret paths it reads.
    pub fn paths(&self) -> BTreeSet<String> {
        self.0
            .iter()
            .filter_map(|p| match p {
                Piece::Secret { path, .. } => Some(path.clone()),
                Piece::Text(_) => None,
            })
            .collect()
    }

    /// The text with each secret's current value (`value(path)`) in place.
    pub fn render<'a>(
        &self,
        value: impl Fn(&str) -> Option<&'a [u8]>,
    ) -> Result<Zeroizing<Vec<u8>>, String> {
        let mut out = Zeroizing::new(Vec::new());
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => out.extend_from_slice(t.as_bytes()),
                Piece::Secret { path, filters } => {
                    let raw = value(path).ok_or_else(|| format!("no value for {path}"))?;
                    let mut v = Zeroizing::new(raw.to_vec());
                    for f in filters {
                        v = apply(*f, &v).map_err(|e| format!("{path}: {e}"))?;
                    }
                    out.extend_from_slice(&v);
                }
            }
        }
        Ok(out)
    }
}

fn apply(filter: Filter, v: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
    Ok(Zeroizing::new(match filter {
        Filter::Base64 => STANDARD.encode(v).into_bytes(),
        Filter::Trim => v.trim_ascii().to_vec(),
        Filter::Json => {
            let s = std::str::from_utf8(v)
                .map_err(|_| "the json filter needs a UTF-8 value (use base64)".to_string())?;
            let mut out = String::with_capacity(s.len() + 2);
            out.push('"');
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                    c => out.push(c),
                }
            }
            out.push('"');
            out.into_bytes()
        }
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn values(path: &str) -> Option<&'static [u8]> {
        match path {
            "prod/app/db" => Some(b"  p\"w\n "),
            "prod/app/user" => Some(b"app"),
            "prod/app/bin" => Some(&[0xff, 0x00]),
            _ => None,
        }
    }

    #[test]
    fn a_template_puts_values_through_their_filters_and_keeps_the_text_between() {
        let t = Template::parse(
            "DB_USER={{secret \"prod/app/user\"}}\nDB_PASSWORD={{ secret \"prod/app/db\" | trim }}\n\
             {\"pw\": {{ secret \"prod/app/db\" | json }}, \"bin\": \"{{ secret \"prod/app/bin\" | base64 }}\"}\n\
             {{ \"{{\" }} not an expression }}",
        )
        .unwrap();
        assert_eq!(
            t.paths().into_iter().collect::<Vec<_>>(),
            ["prod/app/bin", "prod/app/db", "prod/app/user"]
        );
        let out = t.render(values).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "DB_USER=app\nDB_PASSWORD=p\"w\n{\"pw\": \"  p\\\"w\\n \", \"bin\": \"/wA=\"}\n{{ not an expression }}"
        );
    }

    #[test]
    fn a_bad_expression_is_refused_naming_its_line_and_column() {
        let cases = [
            (
                "a\nb {{ secrets \"x\" }}",
                "line 2, column 3: \"secrets \\\"x\\\"\" is not",
            ),
            (
                "{{ secret x }}",
                "line 1, column 1: secret takes a quoted path",
            ),
            ("x {{ secret \"p\" | upper }}", "unknown filter \"upper\""),
            ("{{ secret \"p\"", "never closed"),
            ("{{ secret \"\" }}", "non-empty path"),
            ("{{ secret \"p\" json }}", "filters follow a |"),
        ];
        for (text, expected) in cases {
            let e = Template::parse(text).unwrap_err();
            assert!(e.contains(expected), "{text:?}: {e:?}");
        }
        let t = Template::parse("{{ secret \"prod/app/bin\" | json }}").unwrap();
        assert!(t.render(values).unwrap_err().contains("UTF-8"));
        let t = Template::parse("{{ secret \"nope\" }}").unwrap();
        assert!(t.render(values).unwrap_err().contains("no value for nope"));
    }
}
