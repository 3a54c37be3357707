//! `/etc/mongod.conf` (YAML) edited in place, line by line, so every comment
//! and every other setting is kept; the result is parsed to verify that it
//! says what was asked and nothing else changed.

use anyhow::{Result, bail};
use yaml_rust2::{Yaml, YamlLoader};

pub const MONGOD_CONF: &str = "/etc/mongod.conf";
pub const DEFAULT_PORT: u16 = 27017;

/// `/etc/mongod.conf` as mongodb-org ships it (the same on every supported
/// release), used to show the plan before the package is installed.
pub const PACKAGED_CONF: &str = include_str!("../../examples/host/etc/mongod.conf");

/// The settings `setup mongo` owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub bind_ip: Vec<String>,
    pub authorization: bool,
}

impl Wanted {
    fn binds_everywhere(&self) -> bool {
        self.bind_ip.iter().any(|a| a == "0.0.0.0" || a == "::")
    }

    fn bind_value(&self) -> String {
        let joined = self.bind_ip.join(",");
        // A plain YAML scalar may not start with ':' ("::1"); quote any IPv6.
        if joined.contains(':') {
            format!("\"{joined}\"")
        } else {
            joined
        }
    }
}

/// What a mongod.conf says about the settings the agent cares for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    pub port: u16,
    pub bind_ip: Option<String>,
    pub bind_ip_all: bool,
    pub authorization: bool,
    /// `storage.dbPath` (mongod's default when unset).
    pub db_path: String,
}

/// Where mongod keeps its data when `storage.dbPath` is not set.
pub const DEFAULT_DB_PATH: &str = "/var/lib/mongodb";

fn parse(text: &str) -> Result<Yaml> {
    match YamlLoader::load_from_str(text) {
        Ok(mut docs) if docs.len() <= 1 => Ok(docs.pop().unwrap_or(Yaml::Hash(Default::default()))),
        Ok(_) => bail!("it holds several YAML documents"),
        Err(e) => bail!("it is not valid YAML: {e}"),
    }
}

/// Reads the settings the agent cares for.
pub fn current(text: &str) -> Result<Current> {
    let doc = parse(text)?;
    let port = match &doc["net"]["port"] {
        Yaml::Integer(p) => u16::try_from(*p).ok().filter(|p| *p > 0),
        Yaml::BadValue | Yaml::Null => Some(DEFAULT_PORT),
        _ => None,
    };
    let Some(port) = port else {
        bail!("net.port is not a port number");
    };
    Ok(Current {
        port,
        bind_ip: doc["net"]["bindIp"].as_str().map(str::to_string),
        bind_ip_all: doc["net"]["bindIpAll"].as_bool() == Some(true),
        authorization: doc["security"]["authorization"].as_str() == Some("enabled"),
        db_path: doc["storage"]["dbPath"]
            .as_str()
            .unwrap_or(DEFAULT_DB_PATH)
            .to_string(),
    })
}

/// A top-level key line (`net:`), with what follows its colon.
fn top_key(line: &str) -> Option<(&str, &str)> {
    let first = line.chars().next()?;
    if first.is_whitespace() || first == '#' {
        return None;
    }
    let (key, rest) = line.split_once(':')?;
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    Some((key, rest))
}

/// Any line at column 0 that is not a comment ends a block (`---`, keys).
fn ends_block(line: &str) -> bool {
    line.chars()
        .next()
        .is_some_and(|c| !c.is_whitespace() && c != '#')
}

fn is_content(line: &str) -> bool {
    let t = line.trim_start();
    !t.is_empty() && !t.starts_with('#')
}

struct Doc {
    lines: Vec<String>,
    trailing_newline: bool,
}

impl Doc {
    fn new(text: &str) -> Result<Self> {
        if text.lines().any(|l| {
            l.chars()
                .take_while(|c| c.is_whitespace())
                .any(|c| c == '\t')
        }) {
            bail!("a line is indented with a tab, which YAML forbids");
        }
        Ok(Doc {
            lines: text.lines().map(str::to_string).collect(),
            trailing_newline: text.is_empty() || text.ends_with('\n'),
        })
    }

    fn text(&self) -> String {
        let mut out = self.lines.join("\n");
        if self.trailing_newline && !out.is_empty() {
            out.push('\n');
        }
        out
    }

    /// The line range of a top-level block (key line included).
    fn block(&self, key: &str) -> Result<Option<(usize, usize)>> {
        let starts: Vec<usize> = self
            .lines
            .iter()
            .enumerate()
            .filter(|(_, l)| top_key(l).is_some_and(|(k, _)| k == key))
            .map(|(i, _)| i)
            .collect();
        match starts.as_slice() {
            [] => Ok(None),
            [start] => {
                let (_, rest) = top_key(&self.lines[*start]).expect("matched above");
                let rest = rest.split(" #").next().unwrap_or("").trim();
                if !rest.is_empty() {
                    bail!(
                        "`{key}:` is written on one line (`{}`); write it as an indented block",
                        self.lines[*start].trim()
                    );
                }
                let end = (start + 1..self.lines.len())
                    .find(|&i| ends_block(&self.lines[i]))
                    .unwrap_or(self.lines.len());
                Ok(Some((*start, end)))
            }
            _ => bail!("it has {} `{key}:` sections", starts.len()),
        }
    }

    /// The indentation of a block's children (two spaces when it has none).
    fn child_indent(&self, (start, end): (usize, usize)) -> String {
        self.lines[start + 1..end]
            .iter()
            .find(|l| is_content(l))
            .map(|l| l.chars().take_while(|c| *c == ' ').collect())
            .unwrap_or_else(|| "  ".to_string())
    }

    fn find_child(&self, range: (usize, usize), indent: &str, key: &str) -> Option<usize> {
        (range.0 + 1..range.1).find(|&i| {
            let l = &self.lines[i];
            l.strip_prefix(indent)
                .filter(|rest| !rest.starts_with(' '))
                .and_then(|rest| rest.strip_prefix(key))
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
        })
    }

    /// Sets `key: value` inside a top-level block, creating the block (in
    /// place of a `#block:` placeholder comment, if any) when missing.
    fn set(&mut self, block: &str, key: &str, value: &str) -> Result<()> {
        let Some(range) = self.block(block)? else {
            let new = [format!("{block}:"), format!("  {key}: {value}")];
            let placeholder = self
                .lines
                .iter()
                .position(|l| l.trim_end() == format!("#{block}:"));
            match placeholder {
                Some(i) => {
                    self.lines.splice(i..=i, new);
                }
                None => {
                    if self.lines.last().is_some_and(|l| !l.trim().is_empty()) {
                        self.lines.push(String::new());
                    }
                    self.lines.extend(new);
                }
            }
            return Ok(());
        };
        let indent = self.child_indent(range);
        match self.find_child(range, &indent, key) {
            Some(i) => {
                let line = &self.lines[i];
                let after_colon = &line[line.find(':').expect("a key line") + 1..];
                // A comment starts at a '#' after white space (and after a
                // quoted value's closing quote); keep it with all the space
                // before it.
                let old_value = after_colon.trim_start();
                let skip = match old_value.chars().next() {
                    Some(q @ ('"' | '\'')) => old_value[1..]
                        .find(q)
                        .map_or(0, |end| after_colon.len() - old_value.len() + end + 2),
                    _ => 0,
                };
                let comment = after_colon[skip..]
                    .find(" #")
                    .map(|c| c + skip)
                    .map(|c| {
                        let start = after_colon[..=c].trim_end().len();
                        after_colon[start..].to_string()
                    })
                    .unwrap_or_default();
                self.lines[i] = format!("{indent}{key}: {value}{comment}");
            }
            None => {
                // After the block's last setting, before trailing comments.
                let last = (range.0 + 1..range.1)
                    .rev()
                    .find(|&i| is_content(&self.lines[i]))
                    .unwrap_or(range.0);
                self.lines
                    .insert(last + 1, format!("{indent}{key}: {value}"));
            }
        }
        Ok(())
    }

    fn remove(&mut self, block: &str, key: &str) -> Result<()> {
        if let Some(range) = self.block(block)? {
            let indent = self.child_indent(range);
            if let Some(i) = self.find_child(range, &indent, key) {
                self.lines.remove(i);
            }
        }
        Ok(())
    }
}

/// The configuration with `want` applied. Refuses a result that listens on
/// every interface without authorization.
pub fn edit(original: &str, want: &Wanted) -> Result<String> {
    if want.bind_ip.is_empty() {
        bail!("no address to bind to");
    }
    if want.binds_everywhere() && !want.authorization {
        bail!("refusing to bind mongod to every interface while authorization is off");
    }
    // A byte-order mark and CRLF line ends are kept as they were; the
    // editing works on the plain text.
    let (bom, body) = match original.strip_prefix('\u{feff}') {
        Some(rest) => ("\u{feff}", rest),
        None => ("", original),
    };
    let crlf = body.contains("\r\n");
    let plain = if crlf {
        body.replace("\r\n", "\n")
    } else {
        body.to_string()
    };
    let edited = edit_plain(&plain, want)?;
    if edited == plain {
        return Ok(original.to_string());
    }
    let edited = if crlf {
        edited.replace('\n', "\r\n")
    } else {
        edited
    };
    Ok(format!("{bom}{edited}"))
}

fn edit_plain(text: &str, want: &Wanted) -> Result<String> {
    let before = current(text)?;
    let mut doc = Doc::new(text)?;
    let value = want.bind_value();
    if before.bind_ip.as_deref() != Some(value.trim_matches('"')) || before.bind_ip_all {
        doc.remove("net", "bindIpAll")?;
        doc.set("net", "bindIp", &value)?;
    }
    if want.bind_ip.iter().any(|a| a.contains(':')) {
        let doc_now = parse(&doc.text())?;
        if doc_now["net"]["ipv6"].as_bool() != Some(true) {
            doc.set("net", "ipv6", "true")?;
        }
    }
    if want.authorization && !before.authorization {
        doc.set("security", "authorization", "enabled")?;
    }
    let after = doc.text();
    if parse(&after).is_err() {
        // The original parsed, the line edit broke it: the settings are
        // written in a form the editor does not follow (a quoted key, a
        // space before ':', an anchor).
        bail!(
            "net.bindIp or security.authorization is written in a form this editor does not change safely (a quoted key, `key :`, an anchor?); set them by hand, or write them as plain `key: value` lines"
        );
    }
    verify(text, &after, want)?;
    Ok(after)
}

/// Parses the edited file and checks it says what was asked, and that no
/// other setting changed.
pub fn verify(before: &str, after: &str, want: &Wanted) -> Result<()> {
    let old = parse(before)?;
    let new = parse(after)?;
    let got = current(after)?;
    let wanted_bind = want.bind_ip.join(",");
    if got.bind_ip.as_deref() != Some(wanted_bind.as_str()) || got.bind_ip_all {
        bail!(
            "the edited file says bindIp {:?}, not {wanted_bind}",
            got.bind_ip
        );
    }
    if want.authorization && !got.authorization {
        bail!("the edited file does not enable authorization");
    }
    let owned = |section: &str, key: &str| match section {
        "net" => matches!(key, "bindIp" | "bindIpAll" | "ipv6"),
        "security" => key == "authorization",
        _ => false,
    };
    let (Yaml::Hash(old_top), Yaml::Hash(new_top)) = (&old, &new) else {
        bail!("the edited file is not a YAML mapping");
    };
    let keys = old_top.keys().chain(new_top.keys());
    for key in keys {
        let name = key.as_str().unwrap_or("");
        let (a, b) = (&old[name], &new[name]);
        if name == "net" || name == "security" {
            let empty = yaml_rust2::yaml::Hash::new();
            let a_hash = a.as_hash().unwrap_or(&empty);
            let b_hash = b.as_hash().unwrap_or(&empty);
            for k in a_hash.keys().chain(b_hash.keys()) {
                let child = k.as_str().unwrap_or("");
                if !owned(name, child) && a[child] != b[child] {
                    bail!("editing would change {name}.{child}");
                }
            }
        } else if a != b {
            bail!("editing would change {name}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(ips: &[&str]) -> Wanted {
        Wanted {
            bind_ip: ips.iter().map(|s| s.to_string()).collect(),
            authorization: true,
        }
    }

    #[test]
    fn packaged_file_gets_bind_ip_and_authorization_in_place() {
        let out = edit(PACKAGED_CONF, &want(&["127.0.0.1", "10.0.1.5"])).unwrap();
        assert!(
            out.contains("net:\n  port: 27017\n  bindIp: 127.0.0.1,10.0.1.5\n"),
            "{out}"
        );
        assert!(
            out.contains("\nsecurity:\n  authorization: enabled\n\n#operationProfiling:"),
            "{out}"
        );
        assert!(!out.contains("#security:"));
        // Every comment is kept.
        for line in PACKAGED_CONF
            .lines()
            .filter(|l| l.starts_with('#') && *l != "#security:")
        {
            assert!(out.contains(line), "lost {line}");
        }
        // Applying again changes nothing.
        assert_eq!(edit(&out, &want(&["127.0.0.1", "10.0.1.5"])).unwrap(), out);
    }

    #[test]
    fn existing_security_block_and_comments_on_lines() {
        let text = "net:\n    port: 27018 # custom\n    bindIp: 127.0.0.1  # only local\n    tls:\n      mode: disabled\nsecurity:\n    keyFile: /k\n";
        let out = edit(text, &want(&["127.0.0.1", "::1"])).unwrap();
        assert_eq!(
            out,
            "net:\n    port: 27018 # custom\n    bindIp: \"127.0.0.1,::1\"  # only local\n    tls:\n      mode: disabled\n    ipv6: true\nsecurity:\n    keyFile: /k\n    authorization: enabled\n"
        );
        assert_eq!(current(&out).unwrap().port, 27018);
    }

    #[test]
    fn crlf_bom_and_quoted_values_are_kept() {
        let text = "\u{feff}net:\r\n  bindIp: \"127.0.0.1 # x\" # why\r\n";
        let out = edit(text, &want(&["127.0.0.1", "10.0.1.5"])).unwrap();
        assert_eq!(
            out,
            "\u{feff}net:\r\n  bindIp: 127.0.0.1,10.0.1.5 # why\r\n\r\nsecurity:\r\n  authorization: enabled\r\n"
        );
    }

    #[test]
    fn forms_the_editor_does_not_follow_are_refused_with_a_reason() {
        let quoted = "net:\n  \"bindIp\": 10.0.0.9\n";
        let err = edit(quoted, &want(&["127.0.0.1"])).unwrap_err().to_string();
        assert!(err.contains("by hand"), "{err}");
    }

    #[test]
    fn bind_ip_all_is_replaced() {
        let text = "net:\n  bindIpAll: true\n";
        let out = edit(text, &want(&["127.0.0.1"])).unwrap();
        assert_eq!(
            out,
            "net:\n  bindIp: 127.0.0.1\n\nsecurity:\n  authorization: enabled\n"
        );
    }

    #[test]
    fn refusals() {
        let open = Wanted {
            bind_ip: vec!["0.0.0.0".into()],
            authorization: false,
        };
        assert!(
            edit(PACKAGED_CONF, &open)
                .unwrap_err()
                .to_string()
                .contains("authorization is off")
        );
        let flow = "net: {port: 27017, bindIp: 127.0.0.1}\n";
        assert!(
            edit(flow, &want(&["127.0.0.1", "10.0.1.5"]))
                .unwrap_err()
                .to_string()
                .contains("one line")
        );
        let twice = "net:\n  port: 1\nnet:\n  port: 2\n";
        assert!(edit(twice, &want(&["127.0.0.1"])).is_err());
        let tabs = "net:\n\tport: 1\n";
        assert!(
            edit(tabs, &want(&["127.0.0.1"]))
                .unwrap_err()
                .to_string()
                .contains("tab")
        );
        assert!(edit("net: [\n", &want(&["127.0.0.1"])).is_err());
    }

    #[test]
    fn missing_net_block_is_added() {
        let out = edit("storage:\n  dbPath: /data\n", &want(&["127.0.0.1"])).unwrap();
        assert_eq!(
            out,
            "storage:\n  dbPath: /data\n\nnet:\n  bindIp: 127.0.0.1\n\nsecurity:\n  authorization: enabled\n"
        );
    }
}
