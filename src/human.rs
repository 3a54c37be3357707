//! Values as people read them in messages.

use std::time::Duration;

/// A duration as printed in messages: whole milliseconds below a second,
/// whole seconds above (never `6s 999ms 991us 564ns`); below a millisecond
/// exactly as it is (`1ns` is never shown as `0s`).
pub fn show_duration(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        return humantime::format_duration(d).to_string();
    }
    let rounded = if d < Duration::from_secs(1) {
        Duration::from_millis(((d.as_micros() + 500) / 1000) as u64)
    } else {
        Duration::from_secs(((d.as_millis() + 500) / 1000) as u64)
    };
    humantime::format_duration(rounded).to_string()
}

/// Text from outside (another node's registry document, a flag's value, a
/// file) made safe to print on one line: control characters (newlines,
/// escape sequences, DEL, C1 controls) and bidirectional overrides are
/// shown escaped (`\n`, `\u{1b}`), everything else as it is. Use it on
/// every value echoed in a message or a table.
pub fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    fn unsafe_char(c: char) -> bool {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A table as people read it: every column as wide as its widest cell,
/// two spaces between columns, the last one not padded, one line per row
/// (the header first). Cells are printed as given: escape them first.
pub fn table<R: AsRef<[String]>>(head: &[&str], rows: &[R]) -> String {
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r.as_ref()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, c) in cells.enumerate() {
            if i + 1 == widths.len() {
                l.push_str(c);
            } else {
                let pad = widths[i].saturating_sub(c.chars().count());
                l.push_str(c);
                l.extend(std::iter::repeat_n(' ', pad + 2));
            }
        }
        let mut l = l.trim_end().to_string();
        l.push('\n');
        l
    };
    let mut out = line(&mut head.iter().copied());
    for r in rows {
        out.push_str(&line(&mut r.as_ref().iter().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_durations_are_not_rounded_to_zero() {
        assert_eq!(show_duration(Duration::from_nanos(1)), "1ns");
        assert_eq!(show_duration(Duration::from_micros(400)), "400us");
        assert_eq!(show_duration(Duration::ZERO), "0s");
        assert_eq!(show_duration(Duration::from_micros(1_600)), "2ms");
        assert_eq!(show_duration(Duration::from_millis(6_999)), "7s");
    }

    #[test]
    fn tables_align_their_columns() {
        let rows = vec![
            vec!["a".to_string(), "ünï".into(), "x".into()],
            vec!["long-id".into(), "-".into(), "".into()],
        ];
        assert_eq!(
            table(&["ID", "NAME", "LAST"], &rows),
            "ID       NAME  LAST\na        ünï   x\nlong-id  -\n"
        );
    }

    #[test]
    fn escape_shows_controls_and_keeps_the_rest() {
        assert_eq!(escape("ip-10-0-1-5 ünï"), "ip-10-0-1-5 ünï");
        assert_eq!(escape("a\nerror: forged"), "a\\nerror: forged");
        assert_eq!(escape("\u{1b}[2Jx\r"), "\\u{1b}[2Jx\\r");
        assert_eq!(escape("\u{202e}evil"), "\\u{202e}evil");
        assert_eq!(escape("tab\there\u{7f}"), "tab\\there\\u{7f}");
    }
}
