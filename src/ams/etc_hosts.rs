//! `/etc/hosts`: pin this node's host name to its private IPv4, so AMS (which
//! resolves its own host name) registers the right address.
//!
//! Unlike the shell, the host name is matched as a whole token
//! (`ip-10-0-0-1` never touches `ip-10-0-0-12`), other names on a line are
//! kept, and comments are kept.

use std::net::{IpAddr, Ipv4Addr};

/// Returns /etc/hosts with `hostname` mapped to `ip` only.
pub fn pin_hostname(text: &str, hostname: &str, ip: Ipv4Addr) -> String {
    let mut out = String::with_capacity(text.len() + 40);
    let mut pinned = false;
    for raw in text.split_inclusive('\n') {
        let ending = &raw[raw.trim_end_matches(['\n', '\r']).len()..];
        let line = &raw[..raw.len() - ending.len()];
        let (content, comment) = match line.find('#') {
            Some(i) => (&line[..i], &line[i..]),
            None => (line, ""),
        };
        let fields: Vec<&str> = content.split_whitespace().collect();
        let names_host = fields.len() >= 2
            && parse_addr(fields[0]).is_some()
            && fields[1..].iter().any(|n| n.eq_ignore_ascii_case(hostname));
        if !names_host {
            out.push_str(raw);
            continue;
        }
        if parse_addr(fields[0]) == Some(IpAddr::V4(ip)) {
            pinned = true;
            out.push_str(raw);
            continue;
        }
        // Another address claims our name: take the name off that line, and
        // drop the line if nothing else is left on it.
        let others: Vec<&str> = fields[1..]
            .iter()
            .copied()
            .filter(|n| !n.eq_ignore_ascii_case(hostname))
            .collect();
        if !others.is_empty() {
            out.push_str(fields[0]);
            out.push('\t');
            out.push_str(&others.join(" "));
            if !comment.is_empty() {
                out.push(' ');
                out.push_str(comment);
            }
            out.push_str(ending);
        }
    }
    if !pinned {
        // The file's own line ending (CRLF files stay CRLF).
        let eol = if text.contains("\r\n") { "\r\n" } else { "\n" };
        if !out.is_empty() && !out.ends_with('\n') {
            out.push_str(eol);
        }
        out.push_str(&format!("{ip}\t{hostname}{eol}"));
    }
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
}
