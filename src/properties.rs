//! Java's `.properties` format (AMS's configuration files): an editor that
//! changes only the keys it is asked to change:
//! every other line, comment, blank line and the order stay byte-for-byte.
//! Values are escaped the way `java.util.Properties.load` reads them back.

use std::borrow::Cow;

use anyhow::Result;

use crate::bail_usage;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Properties {
    /// Physical lines, each with its own line ending.
    lines: Vec<String>,
    newline: &'static str,
}

/// A logical entry: its physical line span, raw key text and decoded parts.
struct Entry<'a> {
    first: usize,
    last: usize,
    /// Unescaped.
    key: Cow<'a, str>,
    /// Still escaped: only [`Properties::get`] needs it decoded.
    value: Cow<'a, str>,
}

impl Properties {
    pub fn parse(text: &str) -> Self {
        let newline = if text.contains("\r\n") { "\r\n" } else { "\n" };
        let lines = text.split_inclusive('\n').map(str::to_string).collect();
        Properties { lines, newline }
    }

    pub fn to_text(&self) -> String {
        self.lines.concat()
    }

    /// The value of `key` as Java would read it (the last occurrence wins).
    pub fn get(&self, key: &str) -> Option<String> {
        self.entries()
            .into_iter()
            .rev()
            .find(|e| e.key == key)
            .map(|e| unescape(&e.value))
    }

    /// Sets `key` to `value`: each line holding the key is rewritten in place;
    /// a missing key is appended at the end.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        self.set_all(&[(key, value)])
    }

    /// Sets several keys in one pass over the file (see [`Properties::set`]).
    /// Nothing changes when any value is refused.
    pub fn set_all(&mut self, pairs: &[(&str, &str)]) -> Result<()> {
        let mut lines_for: Vec<String> = Vec::with_capacity(pairs.len());
        for (key, value) in pairs {
            lines_for.push(format!("{}={}", escape_key(key), escape_value(key, value)?));
        }
        // (first, last, which pair) for every line holding one of the keys.
        let hits: Vec<(usize, usize, usize)> = self
            .entries()
            .into_iter()
            .filter_map(|e| {
                let which = pairs.iter().position(|(k, _)| e.key == *k)?;
                Some((e.first, e.last, which))
            })
            .collect();
        let mut found = vec![false; pairs.len()];
        // Back to front, so earlier spans keep their indexes.
        for &(first, last, which) in hits.iter().rev() {
            found[which] = true;
            let wanted = &lines_for[which];
            if first == last && strip_eol(&self.lines[first]) == wanted {
                continue;
            }
            let ending = &self.lines[last][strip_eol(&self.lines[last]).len()..];
            let new_line = format!("{wanted}{ending}");
            self.lines.splice(first..=last, std::iter::once(new_line));
        }
        for (which, line) in lines_for.into_iter().enumerate() {
            if found[which] {
                continue;
            }
            if let Some(last) = self.lines.last_mut() {
                if !last.ends_with('\n') {
                    last.push_str(self.newline);
                }
            }
            self.lines.push(format!("{line}{}", self.newline));
        }
        Ok(())
    }

    /// The text as a dry run shows it: every entry for which `mask(key,
    /// value)` gives a replacement (the value still escaped, continuation
    /// lines joined) is written on one line with it; everything else as
    /// it is. So a secret is masked where it is, whole, even when split
    /// across continuation lines.
    pub fn masked(&self, mask: impl Fn(&str, &str) -> Option<String>) -> String {
        let mut lines = self.lines.clone();
        for e in self.entries().into_iter().rev() {
            let Some(shown) = mask(&e.key, &e.value) else {
                continue;
            };
            let last = &self.lines[e.last];
            let ending = &last[strip_eol(last).len()..];
            let line = format!("{}={shown}{ending}", escape_key(&e.key));
            lines.splice(e.first..=e.last, std::iter::once(line));
        }
        lines.concat()
    }

    fn entries(&self) -> Vec<Entry<'_>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.lines.len() {
            let first = i;
            let line = strip_eol(&self.lines[i]).trim_start_matches([' ', '\t', '\x0c']);
            if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
                i += 1;
                continue;
            }
            if !ends_with_odd_backslashes(line) || i + 1 == self.lines.len() {
                // The common case: one physical line, borrowed, no copies.
                let (key, value) = split_key_value(line);
                out.push(Entry {
                    first,
                    last: i,
                    key: unescape_cow(key),
                    value: Cow::Borrowed(value),
                });
                i += 1;
                continue;
            }
            let mut logical = String::new();
            let mut line = line;
            loop {
                if ends_with_odd_backslashes(line) && i + 1 < self.lines.len() {
                    logical.push_str(&line[..line.len() - 1]);
                    i += 1;
                    line = strip_eol(&self.lines[i]).trim_start_matches([' ', '\t', '\x0c']);
                } else {
                    logical.push_str(line);
                    break;
                }
            }
            let (key, value) = split_key_value(&logical);
            out.push(Entry {
                first,
                last: i,
                key: Cow::Owned(unescape(key)),
                value: Cow::Owned(value.to_string()),
            });
            i += 1;
        }
        out
    }
}

fn unescape_cow(s: &str) -> Cow<'_, str> {
    if s.contains('\\') {
        Cow::Owned(unescape(s))
    } else {
        Cow::Borrowed(s)
    }
}

fn strip_eol(line: &str) -> &str {
    line.trim_end_matches('\n').trim_end_matches('\r')
}

fn ends_with_odd_backslashes(s: &str) -> bool {
    s.chars().rev().take_while(|&c| c == '\\').count() % 2 == 1
}

/// Splits a logical line at the first unescaped `=`, `:` or whitespace.
fn split_key_value(line: &str) -> (&str, &str) {
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'=' | b':' | b' ' | b'\t' | b'\x0c' => break,
            _ => i += 1,
        }
    }
    let i = i.min(bytes.len());
    let key = &line[..i];
    let mut rest = line[i..].trim_start_matches([' ', '\t', '\x0c']);
    if let Some(r) = rest.strip_prefix(['=', ':']) {
        rest = r.trim_start_matches([' ', '\t', '\x0c']);
    }
    (key, rest)
}

/// Decodes Java escapes: `\t \n \r \f \uXXXX`, and `\x` for any other x.
pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut units: Vec<u16> = Vec::new();
    let mut chars = s.chars().peekable();
    let flush = |units: &mut Vec<u16>, out: &mut String| {
        if !units.is_empty() {
            out.push_str(&String::from_utf16_lossy(units));
            units.clear();
        }
    };
    while let Some(c) = chars.next() {
        if c != '\\' {
            flush(&mut units, &mut out);
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                match u16::from_str_radix(&hex, 16) {
                    Ok(u) => units.push(u),
                    Err(_) => {
                        flush(&mut units, &mut out);
                        out.push_str(&hex);
                    }
                }
            }
            Some(other) => {
                flush(&mut units, &mut out);
                out.push(match other {
                    't' => '\t',
                    'n' => '\n',
                    'r' => '\r',
                    'f' => '\x0c',
                    x => x,
                });
            }
            None => flush(&mut units, &mut out),
        }
    }
    flush(&mut units, &mut out);
    out
}

fn escape_key(key: &str) -> String {
    let mut out = String::new();
    for c in key.chars() {
        if matches!(c, '=' | ':' | ' ' | '#' | '!' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Escapes a value for `java.util.Properties.load(InputStream)`, which reads
/// ISO-8859-1: `\` doubled, a leading space kept, and everything outside
/// printable ASCII as `\uXXXX`. Newlines and NUL are refused: no value the
/// agent writes needs them, and they are a sign of a broken input.
pub fn escape_value(key: &str, value: &str) -> Result<String> {
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        match c {
            '\n' | '\r' | '\0' => {
                bail_usage!(
                    "the value for {key} contains a newline or NUL character, which a .properties file cannot hold"
                )
            }
            '\\' => out.push_str("\\\\"),
            ' ' if i == 0 => out.push_str("\\ "),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || (c as u32) >= 0x7f => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04X}"));
                }
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str =
        "# comment\ndb.type=mapdb\n\n! bang\ndb.host = localhost\nmulti=a\\\n    b\nlast=1";

    #[test]
    fn reads_like_java() {
        let p = Properties::parse(SAMPLE);
        assert_eq!(p.get("db.type").as_deref(), Some("mapdb"));
        assert_eq!(p.get("db.host").as_deref(), Some("localhost"));
        assert_eq!(p.get("multi").as_deref(), Some("ab"));
        assert_eq!(p.get("comment"), None);
        assert_eq!(p.get("last").as_deref(), Some("1"));
    }

    #[test]
    fn set_keeps_everything_else() {
        let mut p = Properties::parse(SAMPLE);
        p.set("db.host", "mongodb://h:27017").unwrap();
        p.set("multi", "c").unwrap();
        p.set("new.key", "v").unwrap();
        assert_eq!(
            p.to_text(),
            "# comment\ndb.type=mapdb\n\n! bang\ndb.host=mongodb://h:27017\nmulti=c\nlast=1\nnew.key=v\n"
        );
    }

    #[test]
    fn set_is_idempotent_and_keeps_crlf() {
        let mut p = Properties::parse("a=1\r\nb=2\r\n");
        p.set("a", "1").unwrap();
        assert_eq!(p.to_text(), "a=1\r\nb=2\r\n");
        p.set("b", "3").unwrap();
        assert_eq!(p.to_text(), "a=1\r\nb=3\r\n");
    }

    #[test]
    fn hostile_values_round_trip() {
        for v in ["p@ss:w/rd?#%\\", "\\", " lead", "ünï©ødé 🎉", "=:#!", ""] {
            let mut p = Properties::parse("k=old\n");
            p.set("k", v).unwrap();
            assert_eq!(
                Properties::parse(&p.to_text()).get("k").as_deref(),
                Some(v),
                "{v}"
            );
            assert!(p.to_text().is_ascii());
        }
    }

    #[test]
    fn newline_and_nul_are_refused() {
        let mut p = Properties::parse("k=old\n");
        assert!(p.set("k", "a\nb").is_err());
        assert!(p.set("k", "a\0b").is_err());
        assert_eq!(p.to_text(), "k=old\n");
    }
}
