//! `/etc/hosts`: pin this node's host name to its private IPv4, so AMS (which
//! resolves its own host name) registers the right address.
//!
//! Unlike the shell, the host name is matched as a whole token
//! (`ip-10-0-0-1` never touches `ip-10-0-0-12`), other names on a line are
//! kept, and comments are kept.

use std::net::{IpAddr, Ipv4Addr};

/// Returns /etc/hosts with `hostname` mapped to `ip` only. The host's
/// other names on a line that maps it elsewhere (its FQDN `name.domain`, or
/// the short name when `hostname` is an FQDN) move with it, and a comment
/// of a line that is left empty moves to the new line. The text is the
/// file's bytes one character each (ISO-8859-1): only ASCII spaces and tabs
/// separate fields, and every other byte is kept.
pub fn pin_hostname(text: &str, hostname: &str, ip: Ipv4Addr) -> String {
    let host = hostname.to_ascii_lowercase();
    let ours = |name: &str| {
        let name = name.to_ascii_lowercase();
        name == host
            || name
                .strip_prefix(host.as_str())
                .is_some_and(|r| r.starts_with('.'))
            || host
                .strip_prefix(name.as_str())
                .is_some_and(|r| r.starts_with('.'))
    };
    let mut lines: Vec<String> = Vec::new();
    // The line that already maps the name to `ip`: (index, its names).
    let mut pinned: Option<(usize, Vec<String>)> = None;
    let mut moved: Vec<String> = Vec::new();
    let mut comments: Vec<&str> = Vec::new();
    for raw in text.split_inclusive('\n') {
        let ending = &raw[raw.trim_end_matches(['\n', '\r']).len()..];
        let line = &raw[..raw.len() - ending.len()];
        let (content, comment) = match line.find('#') {
            Some(i) => (&line[..i], &line[i..]),
            None => (line, ""),
        };
        let fields: Vec<&str> = content
            .split([' ', '\t'])
            .filter(|f| !f.is_empty())
            .collect();
        let names_host = fields.len() >= 2
            && parse_addr(fields[0]).is_some()
            && fields[1..].iter().any(|n| n.eq_ignore_ascii_case(hostname));
        if !names_host {
            lines.push(raw.to_string());
            continue;
        }
        if parse_addr(fields[0]) == Some(IpAddr::V4(ip)) {
            let names = fields[1..].iter().map(|n| n.to_string()).collect();
            pinned.get_or_insert((lines.len(), names));
            lines.push(raw.to_string());
            continue;
        }
        // Another address claims our name: take our names off that line,
        // and drop the line if nothing else is left on it.
        let (mine, others): (Vec<&str>, Vec<&str>) = fields[1..].iter().partition(|n| ours(n));
        for name in mine {
            if !moved.iter().any(|m| m.eq_ignore_ascii_case(name)) {
                moved.push(name.to_string());
            }
        }
        if !others.is_empty() {
            let mut kept = format!("{}\t{}", fields[0], others.join(" "));
            if !comment.is_empty() {
                kept.push(' ');
                kept.push_str(comment);
            }
            kept.push_str(ending);
            lines.push(kept);
        } else if !comment.is_empty() {
            comments.push(comment);
        }
    }
    let mut out = lines.concat();
    if let Some((index, names)) = pinned {
        let missing: Vec<&String> = moved
            .iter()
            .filter(|m| !names.iter().any(|n| n.eq_ignore_ascii_case(m)))
            .collect();
        if missing.is_empty() {
            return out;
        }
        let raw = &lines[index];
        let body = raw.trim_end_matches(['\n', '\r']);
        let ending = &raw[body.len()..];
        let (content, comment) = match body.find('#') {
            Some(i) => (body[..i].trim_end(), &body[i..]),
            None => (body, ""),
        };
        let extra: Vec<&str> = missing.iter().map(|m| m.as_str()).collect();
        let mut line = format!("{content} {}", extra.join(" "));
        if !comment.is_empty() {
            line.push(' ');
            line.push_str(comment);
        }
        line.push_str(ending);
        lines[index] = line;
        return lines.concat();
    }
    // The file's own line ending (CRLF files stay CRLF).
    let eol = if text.contains("\r\n") { "\r\n" } else { "\n" };
    if !out.is_empty() && !out.ends_with('\n') {
        out.push_str(eol);
    }
    if moved.is_empty() {
        moved.push(hostname.to_string());
    }
    out.push_str(&format!("{ip}\t{}", moved.join(" ")));
    for comment in comments {
        out.push(' ');
        out.push_str(comment);
    }
    out.push_str(eol);
    out
}

/// An address as /etc/hosts writes it; IPv6 may carry a `%zone`.
fn parse_addr(field: &str) -> Option<IpAddr> {
    field.split('%').next()?.parse().ok()
}

/// A host name as /etc/hosts and AMS accept it.
pub fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

    #[test]
    fn whole_token_match_only() {
        let text = "127.0.0.1 localhost\n127.0.1.1 ip-10-0-0-1\n10.0.0.12 ip-10-0-0-12\n# ip-10-0-0-1 comment\n";
        let out = pin_hostname(text, "ip-10-0-0-1", IP);
        assert_eq!(
            out,
            "127.0.0.1 localhost\n10.0.0.12 ip-10-0-0-12\n# ip-10-0-0-1 comment\n10.0.0.1\tip-10-0-0-1\n"
        );
        assert_eq!(pin_hostname(&out, "ip-10-0-0-1", IP), out, "idempotent");
    }

    #[test]
    fn other_names_on_a_line_survive() {
        let text = "127.0.0.1 localhost node1 # keep me\n::1 localhost ip6-localhost\n";
        let out = pin_hostname(text, "node1", IP);
        assert_eq!(
            out,
            "127.0.0.1\tlocalhost # keep me\n::1 localhost ip6-localhost\n10.0.0.1\tnode1\n"
        );
    }

    #[test]
    fn crlf_files_and_scoped_ipv6_lines() {
        assert_eq!(
            pin_hostname("127.0.0.1 localhost\r\n", "node1", IP),
            "127.0.0.1 localhost\r\n10.0.0.1\tnode1\r\n"
        );
        assert_eq!(
            pin_hostname("fe80::1%eth0 node1\n", "node1", IP),
            "10.0.0.1\tnode1\n"
        );
    }

    #[test]
    fn existing_correct_line_is_kept_verbatim() {
        let text = "10.0.0.1   node1 node1.internal\n";
        assert_eq!(pin_hostname(text, "node1", IP), text);
        assert_eq!(pin_hostname("", "node1", IP), "10.0.0.1\tnode1\n");
        assert_eq!(pin_hostname("x y", "node1", IP), "x y\n10.0.0.1\tnode1\n");
    }

    #[test]
    fn fqdn_aliases_move_with_the_short_name_and_comments_stay() {
        let text =
            "127.0.0.1 localhost\n127.0.1.1 ip-10-0-0-1.ec2.internal ip-10-0-0-1 # cloud-init\n";
        assert_eq!(
            pin_hostname(text, "ip-10-0-0-1", IP),
            "127.0.0.1 localhost\n10.0.0.1\tip-10-0-0-1.ec2.internal ip-10-0-0-1 # cloud-init\n"
        );
        // The name given as an FQDN takes its short alias along.
        let text = "127.0.1.1 node1.example.internal node1 other # mine\n";
        assert_eq!(
            pin_hostname(text, "node1.example.internal", IP),
            "127.0.1.1\tother # mine\n10.0.0.1\tnode1.example.internal node1\n"
        );
        // A line already right gets the aliases found elsewhere.
        let text = "10.0.0.1 node1\n127.0.1.1 node1 node1.x.internal\n";
        assert_eq!(
            pin_hostname(text, "node1", IP),
            "10.0.0.1 node1 node1.x.internal\n"
        );
        // node10 is not an alias of node1.
        let text = "127.0.1.1 node1 node10.x.internal\n";
        assert_eq!(
            pin_hostname(text, "node1", IP),
            "127.0.1.1\tnode10.x.internal\n10.0.0.1\tnode1\n"
        );
    }

    #[test]
    fn latin1_bytes_on_other_lines_are_kept() {
        // /etc/hosts is read one byte per character (ISO-8859-1): a
        // no-break space (0xA0) is no separator, and every byte comes back.
        let text = "127.0.0.1 localhost # caf\u{e9} \u{a0}x\n10.0.0.9 a\u{a0}b node1\n";
        let out = pin_hostname(text, "node1", IP);
        assert_eq!(
            out,
            "127.0.0.1 localhost # caf\u{e9} \u{a0}x\n10.0.0.9\ta\u{a0}b\n10.0.0.1\tnode1\n"
        );
    }
}
