//! The sections the agent owns inside the balancer's file, between marker
//! lines. Everything outside the markers is kept byte for byte (the file
//! is handled as bytes: a Latin-1 comment elsewhere stays as it was).

use std::ops::Range;

/// One marked region: its first line starts with `begin`, its last with
/// `end` (both as the line's first non-blank characters).
#[derive(Debug, Clone, Copy)]
pub struct Markers {
    pub begin: &'static str,
    pub end: &'static str,
}

/// Lines of `text` with their byte ranges (the range includes the LF).
fn lines(text: &[u8]) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= text.len() {
            return None;
        }
        let end = text[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(text.len(), |i| start + i + 1);
        let r = start..end;
        start = end;
        Some(r)
    })
}

fn starts(line: &[u8], marker: &str) -> bool {
    let trimmed = line
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .map_or(&line[line.len()..], |i| &line[i..]);
    trimmed.starts_with(marker.as_bytes())
}

/// Where the marked region is (whole lines, markers included), None when
/// the file has none; an error naming the problem when the markers are
/// broken (one without the other, twice, in the wrong order).
pub fn find(text: &[u8], m: Markers) -> Result<Option<Range<usize>>, String> {
    let mut begin: Option<(usize, usize)> = None;
    let mut found: Option<Range<usize>> = None;
    for (n, r) in lines(text).enumerate() {
        let line = &text[r.clone()];
        if starts(line, m.begin) {
            if begin.is_some() || found.is_some() {
                return Err(format!(
                    "the marker `{}` appears twice (line {})",
                    m.begin,
                    n + 1
                ));
            }
            begin = Some((r.start, n + 1));
        } else if starts(line, m.end) {
            match begin.take() {
                Some((start, _)) => found = Some(start..r.end),
                None if found.is_some() => {
                    return Err(format!(
                        "the marker `{}` appears twice (line {})",
                        m.end,
                        n + 1
                    ));
                }
                None => {
                    return Err(format!(
                        "line {}: `{}` without `{}` before it",
                        n + 1,
                        m.end,
                        m.begin
                    ));
                }
            }
        }
    }
    if let Some((_, n)) = begin {
        return Err(format!(
            "line {n}: `{}` without `{}` after it",
            m.begin, m.end
        ));
    }
    Ok(found)
}

/// `text` with `range` replaced by `block`.
pub fn splice(text: &[u8], range: Range<usize>, block: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + block.len());
    out.extend_from_slice(&text[..range.start]);
    out.extend_from_slice(block.as_bytes());
    out.extend_from_slice(&text[range.end..]);
    out
}

/// `text` with `block` appended on lines of its own (only a missing final
/// LF is added).
pub fn append(text: &[u8], block: &str) -> Vec<u8> {
    let mut out = text.to_vec();
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out.extend_from_slice(block.as_bytes());
    out
}

/// The text between the marker lines (without them), as UTF-8.
pub fn inner(text: &[u8], range: Range<usize>) -> Option<String> {
    let region = std::str::from_utf8(&text[range]).ok()?;
    let mut ls: Vec<&str> = region.split_inclusive('\n').collect();
    if ls.len() < 2 {
        return None;
    }
    ls.remove(0);
    ls.pop();
    Some(ls.concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: Markers = Markers {
        begin: "# BEGIN x",
        end: "# END x",
    };

    #[test]
    fn markers_are_found_and_broken_ones_refused() {
        let text = b"a\xe9\n# BEGIN x -- generated\nmine\n# END x\nb\n";
        let r = find(text, M).unwrap().unwrap();
        assert_eq!(&text[r.clone()], b"# BEGIN x -- generated\nmine\n# END x\n");
        assert_eq!(inner(text, r.clone()).unwrap(), "mine\n");
        let out = splice(text, r, "# BEGIN x\nnew\n# END x\n");
        assert_eq!(out, b"a\xe9\n# BEGIN x\nnew\n# END x\nb\n");
        assert_eq!(find(b"a\nb\n", M).unwrap(), None);
        for broken in [
            &b"# BEGIN x\na\n"[..],
            b"a\n# END x\n",
            b"# BEGIN x\n# BEGIN x\n# END x\n",
            b"# BEGIN x\n# END x\n# END x\n",
            b"# BEGIN x\n# END x\n# BEGIN x\n# END x\n",
        ] {
            assert!(
                find(broken, M).is_err(),
                "{}",
                String::from_utf8_lossy(broken)
            );
        }
        assert_eq!(append(b"a", "B\n"), b"a\nB\n");
        assert_eq!(append(b"", "B\n"), b"B\n");
    }
}
