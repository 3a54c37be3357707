//! The host's netfilter rules, evaluated for one packet: would a new UDP
//! packet from a WebRTC client to port 50000, or a new TCP connection from
//! another node to port 5000, get through?
//!
//! Two sources, both read-only: `iptables-save` (the `filter` table's
//! INPUT chain and the chains it jumps to) and `nft -j list ruleset` (every
//! IPv4 base chain on the input hook, in priority order; a drop in any of
//! them is final). Tables iptables-nft keeps in nftables are evaluated once,
//! through `iptables-save`.
//!
//! A rule is matched three ways: yes, no, or "cannot tell" (a match on a
//! named set, a rate limit, the source port). A rule that cannot be told
//! and would change the verdict makes the answer "unclear, depends on this
//! rule" rather than a guess. IPv6 rules are not evaluated.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use serde_json::Value;

use super::env::Env;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    fn number(self) -> u64 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }

    fn is(self, name: &str) -> bool {
        let n = name.to_ascii_lowercase();
        n == self.name() || n == self.number().to_string()
    }
}

/// A new packet arriving on the host.
#[derive(Debug, Clone)]
pub struct Probe {
    pub proto: Proto,
    pub dport: u16,
    pub src: Ipv4Addr,
    /// This host's address the packet is for, when known.
    pub dst: Option<Ipv4Addr>,
    /// The interface it arrives on, when known (never loopback).
    pub iface: Option<String>,
}

/// What the rules do with a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Dropped or rejected; `by` names the rule or chain policy.
    Drop {
        by: String,
    },
    /// Depends on a rule whose match cannot be told.
    Unclear {
        rule: String,
        why: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum M {
    Yes,
    No,
    Unknown,
}

impl M {
    fn and(self, other: M) -> M {
        match (self, other) {
            (M::No, _) | (_, M::No) => M::No,
            (M::Yes, M::Yes) => M::Yes,
            _ => M::Unknown,
        }
    }

    fn not(self, neg: bool) -> M {
        match (self, neg) {
            (M::Yes, true) => M::No,
            (M::No, true) => M::Yes,
            (m, _) => m,
        }
    }

    fn of(b: bool) -> M {
        if b { M::Yes } else { M::No }
    }
}

/// A terminal decision of a rule, or what to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
    /// Logging, counting, marking: the next rule follows.
    Continue,
}

/// The evaluation of one chain walk.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    Accept,
    Drop(String),
    /// Fell off the end of a chain (or `return`).
    Return,
}

/// A rule whose match could not be told, and what it would have done.
#[derive(Debug, Clone)]
struct Doubt {
    rule: String,
    why: String,
}

/// The outcome of a walk with the doubts met on the way.
struct Walk {
    end: End,
    doubts: Vec<(Doubt, Target)>,
}

fn settle(end: End, doubts: &[(Doubt, Target)]) -> Verdict {
    // A doubtful rule matters when, had it matched, the packet would have
    // gone the other way.
    let against = doubts.iter().find(|(_, t)| {
        !matches!(
            (&end, t),
            (End::Accept, Target::Accept) | (End::Drop(_), Target::Drop) | (_, Target::Continue)
        )
    });
    match (end, against) {
        (_, Some((d, _))) => Verdict::Unclear {
            rule: d.rule.clone(),
            why: d.why.clone(),
        },
        (End::Drop(by), None) => Verdict::Drop { by },
        (End::Accept | End::Return, None) => Verdict::Accept,
    }
}

// ------------------------------------------------------------ addresses

fn parse_net(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => {
            let len = match l.parse::<u8>() {
                Ok(n) if n <= 32 => n,
                _ => {
                    // A dotted mask (iptables-save writes /255.255.0.0
                    // for non-contiguous masks only; take the bits set).
                    let m: Ipv4Addr = l.parse().ok()?;
                    u32::from(m).count_ones() as u8
                }
            };
            (a, len)
        }
        None => (s, 32),
    };
    Some((addr.parse().ok()?, len))
}

fn in_net(ip: Ipv4Addr, (net, len): (Ipv4Addr, u8)) -> bool {
    if len == 0 {
        return true;
    }
    let mask = u32::MAX << (32 - len as u32);
    (u32::from(ip) & mask) == (u32::from(net) & mask)
}

fn iface_matches(pattern: &str, name: &str) -> bool {
    match pattern
        .strip_suffix('+')
        .or_else(|| pattern.strip_suffix('*'))
    {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

fn iface_match(pattern: &str, probe: &Probe) -> M {
    if pattern == "lo" {
        return M::No;
    }
    match &probe.iface {
        Some(name) => M::of(iface_matches(pattern, name)),
        None => M::Unknown,
    }
}

// ------------------------------------------------------------ iptables-save

#[derive(Debug, Clone)]
struct IptRule {
    text: String,
    target: Target,
}

#[derive(Debug, Clone, Default)]
pub struct Iptables {
    /// Chains of the filter table: policy (built-in chains) and rules.
    chains: HashMap<String, (Option<String>, Vec<IptRule>)>,
    /// Whether this is iptables-nft (its tables also show in `nft`).
    pub nf_tables: bool,
}

/// Splits an iptables-save line into words, honouring double quotes.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn port_ranges(spec: &str) -> Option<Vec<(u16, u16)>> {
    spec.split(',')
        .map(|p| match p.split_once(':') {
            Some((a, b)) => {
                let a = if a.is_empty() { 0 } else { a.parse().ok()? };
                let b = if b.is_empty() { 65535 } else { b.parse().ok()? };
                Some((a, b))
            }
            None => p.parse().ok().map(|n| (n, n)),
        })
        .collect()
}

impl Iptables {
    pub fn parse(text: &str) -> Iptables {
        let mut ipt = Iptables {
            nf_tables: text
                .lines()
                .any(|l| l.starts_with('#') && l.contains("nf_tables")),
            ..Default::default()
        };
        let mut in_filter = false;
        for raw in text.lines() {
            let line = raw.trim();
            if let Some(table) = line.strip_prefix('*') {
                in_filter = table == "filter";
                continue;
            }
            if !in_filter || line.is_empty() || line.starts_with('#') || line == "COMMIT" {
                continue;
            }
            if let Some(decl) = line.strip_prefix(':') {
                let mut f = decl.split_whitespace();
                if let Some(name) = f.next() {
                    let policy = f.next().filter(|p| *p != "-").map(str::to_string);
                    ipt.chains.entry(name.to_string()).or_default().0 = policy;
                }
                continue;
            }
            // `iptables-save -c` puts counters first.
            let line = match line.strip_prefix('[') {
                Some(rest) => rest.split_once(']').map_or(line, |(_, r)| r.trim_start()),
                None => line,
            };
            let w = words(line);
            if w.len() >= 2 && w[0] == "-A" {
                let rule = parse_rule(line, &w[2..]);
                ipt.chains.entry(w[1].clone()).or_default().1.push(rule);
            }
        }
        ipt
    }

    /// What the filter table's INPUT chain does with `p`.
    pub fn verdict(&self, p: &Probe) -> Verdict {
        if !self.chains.contains_key("INPUT") {
            return Verdict::Accept;
        }
        let walk = self.walk("INPUT", p, 0);
        let end = match walk.end {
            End::Return => match self.chains.get("INPUT").and_then(|c| c.0.as_deref()) {
                Some("DROP") | Some("REJECT") => End::Drop("the INPUT chain's policy DROP".into()),
                _ => End::Accept,
            },
            e => e,
        };
        settle(end, &walk.doubts)
    }

    fn walk(&self, chain: &str, p: &Probe, depth: usize) -> Walk {
        let mut doubts = Vec::new();
        let Some((_, rules)) = self.chains.get(chain) else {
            return Walk {
                end: End::Return,
                doubts,
            };
        };
        if depth > 16 {
            doubts.push((
                Doubt {
                    rule: format!("-A {chain} …"),
                    why: "chains nested deeper than 16".into(),
                },
                Target::Drop,
            ));
            return Walk {
                end: End::Return,
                doubts,
            };
        }
        for r in rules {
            let mut why = String::new();
            match r.eval(p, &mut why) {
                M::No => continue,
                M::Unknown => {
                    doubts.push((
                        Doubt {
                            rule: r.text.clone(),
                            why: why.clone(),
                        },
                        r.target.clone(),
                    ));
                    continue;
                }
                M::Yes => {}
            }
            match &r.target {
                Target::Accept => {
                    return Walk {
                        end: End::Accept,
                        doubts,
                    };
                }
                Target::Drop => {
                    return Walk {
                        end: End::Drop(format!("iptables rule `{}`", r.text)),
                        doubts,
                    };
                }
                Target::Return => {
                    return Walk {
                        end: End::Return,
                        doubts,
                    };
                }
                Target::Jump(to) | Target::Goto(to) => {
                    let sub = self.walk(to, p, depth + 1);
                    doubts.extend(sub.doubts);
                    match sub.end {
                        End::Return if matches!(r.target, Target::Jump(_)) => continue,
                        End::Return => {
                            return Walk {
                                end: End::Return,
                                doubts,
                            };
                        }
                        end => return Walk { end, doubts },
                    }
                }
                Target::Continue => continue,
            }
        }
        Walk {
            end: End::Return,
            doubts,
        }
    }
}

/// A rule's matches, evaluated for one probe (the rule is kept as text).
impl IptRule {
    fn eval(&self, p: &Probe, why: &mut String) -> M {
        let w = words(&self.text);
        let mut m = M::Yes;
        let mut i = 2; // after -A CHAIN
        let mut proto: Option<String> = None;
        while i < w.len() {
            let mut neg = false;
            if w[i] == "!" {
                neg = true;
                i += 1;
                if i >= w.len() {
                    break;
                }
            }
            let opt = w[i].as_str();
            let val = |i: &mut usize| -> (bool, String) {
                *i += 1;
                let mut n = false;
                if w.get(*i).map(String::as_str) == Some("!") {
                    n = true;
                    *i += 1;
                }
                (n, w.get(*i).cloned().unwrap_or_default())
            };
            let c = match opt {
                "-p" | "--protocol" => {
                    let (n, v) = val(&mut i);
                    proto = Some(v.clone());
                    M::of(v == "all" || p.proto.is(&v)).not(neg || n)
                }
                "-s" | "--source" | "-d" | "--destination" => {
                    let (n, v) = val(&mut i);
                    let ip = if opt.starts_with("-s") || opt == "--source" {
                        Some(p.src)
                    } else {
                        p.dst
                    };
                    match ip {
                        None => {
                            *why = format!("it matches the destination address {v}");
                            M::Unknown
                        }
                        Some(ip) => {
                            let nets: Option<Vec<_>> = v.split(',').map(parse_net).collect();
                            match nets {
                                Some(nets) => {
                                    M::of(nets.iter().any(|n| in_net(ip, *n))).not(neg || n)
                                }
                                None => {
                                    *why = format!("`{v}` is not an IPv4 address");
                                    M::Unknown
                                }
                            }
                        }
                    }
                }
                "-i" | "--in-interface" => {
                    let (n, v) = val(&mut i);
                    let m = iface_match(&v, p);
                    if m == M::Unknown {
                        *why = format!("it matches the interface {v}");
                    }
                    m.not(neg || n)
                }
                "-o" | "--out-interface" => {
                    val(&mut i);
                    M::Yes
                }
                "-m" | "--match" => {
                    val(&mut i);
                    M::Yes
                }
                "--dport" | "--destination-port" | "--dports" | "--destination-ports" => {
                    let (n, v) = val(&mut i);
                    let proto_ok = proto.as_deref().is_none_or(|x| p.proto.is(x));
                    match port_ranges(&v) {
                        Some(r) if proto_ok => {
                            M::of(r.iter().any(|(a, b)| (*a..=*b).contains(&p.dport))).not(neg || n)
                        }
                        Some(_) => M::No,
                        None => {
                            *why = format!("port `{v}` cannot be read");
                            M::Unknown
                        }
                    }
                }
                "--ports" => {
                    let (n, v) = val(&mut i);
                    match port_ranges(&v) {
                        Some(r) if r.iter().any(|(a, b)| (*a..=*b).contains(&p.dport)) => {
                            M::Yes.not(neg || n)
                        }
                        _ => {
                            *why = format!("it matches the source port too (--ports {v})");
                            M::Unknown
                        }
                    }
                }
                "--sport" | "--source-port" | "--sports" | "--source-ports" => {
                    let (_, v) = val(&mut i);
                    *why = format!("it matches the client's source port ({opt} {v})");
                    M::Unknown
                }
                "--state" | "--ctstate" => {
                    let (n, v) = val(&mut i);
                    M::of(v.split(',').any(|s| s.eq_ignore_ascii_case("NEW"))).not(neg || n)
                }
                "--comment" | "--log-prefix" | "--log-level" | "--reject-with" | "--to-ports"
                | "--to-port" | "--set-mark" | "--set-xmark" => {
                    val(&mut i);
                    M::Yes
                }
                "--dst-type" => {
                    let (n, v) = val(&mut i);
                    if v.eq_ignore_ascii_case("LOCAL") {
                        M::Yes.not(neg || n)
                    } else {
                        *why = format!("--dst-type {v}");
                        M::Unknown
                    }
                }
                "--syn" => M::of(p.proto == Proto::Tcp).not(neg),
                "-j" | "--jump" | "-g" | "--goto" => {
                    // The target and its own options end the matches.
                    break;
                }
                other if other.starts_with('-') => {
                    // An option this reader does not know: its value (if
                    // any) follows; the rule cannot be told.
                    if w.get(i + 1).is_some_and(|n| !n.starts_with('-')) {
                        i += 1;
                    }
                    *why = format!("it uses `{other}`");
                    M::Unknown
                }
                _ => M::Yes,
            };
            m = m.and(c);
            i += 1;
        }
        m
    }
}

fn parse_rule(line: &str, rest: &[String]) -> IptRule {
    let mut target = Target::Continue;
    let mut i = 0;
    while i < rest.len() {
        if matches!(rest[i].as_str(), "-j" | "--jump" | "-g" | "--goto") {
            let goto = matches!(rest[i].as_str(), "-g" | "--goto");
            let t = rest.get(i + 1).cloned().unwrap_or_default();
            target = match t.as_str() {
                "ACCEPT" => Target::Accept,
                "DROP" | "REJECT" => Target::Drop,
                "RETURN" => Target::Return,
                "LOG" | "NFLOG" | "ULOG" | "MARK" | "CONNMARK" | "CT" | "NOTRACK" | "TRACE"
                | "AUDIT" | "" => Target::Continue,
                chain if goto => Target::Goto(chain.to_string()),
                chain => Target::Jump(chain.to_string()),
            };
            break;
        }
        i += 1;
    }
    IptRule {
        text: line.to_string(),
        target,
    }
}

// ------------------------------------------------------------ nftables

/// (family, table, chain).
type ChainKey = (String, String, String);
/// A rule's expressions and its printable form.
type NftRule = (Vec<Value>, String);

#[derive(Debug, Clone, Default)]
pub struct Nft {
    /// Base chains on the input hook (family, table, chain, policy), in
    /// priority order.
    base: Vec<(String, String, String, String)>,
    /// Rules per (family, table, chain), in order: their expressions and
    /// a printable form.
    rules: HashMap<ChainKey, Vec<NftRule>>,
}

fn prio(v: &Value) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => match s.as_str() {
            "raw" => -300,
            "mangle" => -150,
            "dstnat" => -100,
            "filter" => 0,
            "security" => 50,
            "srcnat" => 100,
            _ => 0,
        },
        _ => 0,
    }
}

impl Nft {
    /// Reads `nft -j list ruleset`; `skip_iptables` leaves out the tables
    /// iptables-nft owns (they are read through `iptables-save`).
    pub fn parse(json: &str, skip_iptables: bool) -> Result<Nft, String> {
        let v: Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
        let items = v
            .get("nftables")
            .and_then(Value::as_array)
            .ok_or("no \"nftables\" array")?;
        let skipped = |family: &str, table: &str| {
            skip_iptables
                && family == "ip"
                && ["filter", "mangle", "raw", "security", "nat"].contains(&table)
        };
        let mut nft = Nft::default();
        let mut base = Vec::new();
        for item in items {
            if let Some(c) = item.get("chain") {
                let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                let (family, table, name) = (s("family"), s("table"), s("name"));
                if !["ip", "inet"].contains(&family.as_str()) || skipped(&family, &table) {
                    continue;
                }
                if s("hook") == "input" && matches!(s("type").as_str(), "filter" | "") {
                    let policy = c
                        .get("policy")
                        .and_then(Value::as_str)
                        .unwrap_or("accept")
                        .to_string();
                    let p = c.get("prio").map_or(0, prio);
                    base.push((p, family, table, name, policy));
                }
            } else if let Some(r) = item.get("rule") {
                let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                let (family, table, chain) = (s("family"), s("table"), s("chain"));
                if skipped(&family, &table) {
                    continue;
                }
                let expr = r
                    .get("expr")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let shown = format!(
                    "{family} {table} {chain} handle {}: {}",
                    r.get("handle").map_or("?".into(), |h| h.to_string()),
                    show_exprs(&expr)
                );
                nft.rules
                    .entry((family, table, chain))
                    .or_default()
                    .push((expr, shown));
            }
        }
        base.sort_by_key(|b| b.0);
        nft.base = base
            .into_iter()
            .map(|(_, f, t, n, p)| (f, t, n, p))
            .collect();
        Ok(nft)
    }

    pub fn verdict(&self, p: &Probe) -> Verdict {
        let mut doubts = Vec::new();
        for (family, table, chain, policy) in &self.base {
            let walk = self.walk(family, table, chain, p, 0);
            doubts.extend(walk.doubts);
            match walk.end {
                End::Accept => continue,
                End::Drop(by) => return settle(End::Drop(by), &doubts),
                End::Return => {
                    if policy == "drop" {
                        return settle(
                            End::Drop(format!(
                                "the policy drop of nft chain {family} {table} {chain}"
                            )),
                            &doubts,
                        );
                    }
                }
            }
        }
        settle(End::Accept, &doubts)
    }

    fn walk(&self, family: &str, table: &str, chain: &str, p: &Probe, depth: usize) -> Walk {
        let mut doubts = Vec::new();
        let key = (family.to_string(), table.to_string(), chain.to_string());
        let Some(rules) = self.rules.get(&key) else {
            return Walk {
                end: End::Return,
                doubts,
            };
        };
        if depth > 16 {
            return Walk {
                end: End::Return,
                doubts,
            };
        }
        for (expr, shown) in rules {
            let mut m = M::Yes;
            let mut why = String::new();
            let mut target = Target::Continue;
            for e in expr {
                if let Some(t) = verdict_of(e) {
                    target = t;
                    break;
                }
                let c = nft_match(e, p, &mut why);
                m = m.and(c);
                if m == M::No {
                    break;
                }
            }
            match m {
                M::No => continue,
                M::Unknown => {
                    if target != Target::Continue {
                        doubts.push((
                            Doubt {
                                rule: shown.clone(),
                                why,
                            },
                            target,
                        ));
                    }
                    continue;
                }
                M::Yes => {}
            }
            match target {
                Target::Accept => {
                    return Walk {
                        end: End::Accept,
                        doubts,
                    };
                }
                Target::Drop => {
                    return Walk {
                        end: End::Drop(format!("nft rule {shown}")),
                        doubts,
                    };
                }
                Target::Return => {
                    return Walk {
                        end: End::Return,
                        doubts,
                    };
                }
                Target::Jump(to) | Target::Goto(to) => {
                    let goto = matches!(expr.iter().find_map(verdict_of), Some(Target::Goto(_)));
                    let sub = self.walk(family, table, &to, p, depth + 1);
                    doubts.extend(sub.doubts);
                    match sub.end {
                        End::Return if !goto => continue,
                        end => return Walk { end, doubts },
                    }
                }
                Target::Continue => continue,
            }
        }
        Walk {
            end: End::Return,
            doubts,
        }
    }
}

fn verdict_of(e: &Value) -> Option<Target> {
    let obj = e.as_object()?;
    let (k, v) = obj.iter().next()?;
    Some(match k.as_str() {
        "accept" => Target::Accept,
        "drop" | "reject" => Target::Drop,
        "return" => Target::Return,
        "jump" => Target::Jump(v.get("target")?.as_str()?.to_string()),
        "goto" => Target::Goto(v.get("target")?.as_str()?.to_string()),
        _ => return None,
    })
}

/// The elements a right-hand side stands for.
enum Elem {
    Num(u64, u64),
    Str(String),
    Net(Ipv4Addr, u8),
}

fn elems(v: &Value) -> Option<Vec<Elem>> {
    match v {
        Value::Number(n) => n.as_u64().map(|n| vec![Elem::Num(n, n)]),
        Value::String(s) => {
            if s.starts_with('@') {
                return None; // a named set
            }
            Some(vec![match parse_net(s) {
                Some((ip, len)) if s.contains('.') => Elem::Net(ip, len),
                _ => Elem::Str(s.clone()),
            }])
        }
        Value::Array(a) => a.iter().map(elems).try_fold(Vec::new(), |mut acc, e| {
            acc.extend(e?);
            Some(acc)
        }),
        Value::Object(o) => {
            if let Some(s) = o.get("set") {
                return elems(s);
            }
            if let Some(r) = o.get("range").and_then(Value::as_array) {
                let a = r.first()?.as_u64()?;
                let b = r.get(1)?.as_u64()?;
                return Some(vec![Elem::Num(a, b)]);
            }
            if let Some(p) = o.get("prefix") {
                let ip: Ipv4Addr = p.get("addr")?.as_str()?.parse().ok()?;
                let len = p.get("len")?.as_u64()? as u8;
                return Some(vec![Elem::Net(ip, len)]);
            }
            if let Some(e) = o.get("elem") {
                return elems(e.get("val")?);
            }
            None
        }
        _ => None,
    }
}

/// What the probe has for a match's left side.
enum Have {
    Num(u64),
    Str(Vec<String>),
    Ip(Ipv4Addr),
}

fn nft_match(e: &Value, p: &Probe, why: &mut String) -> M {
    let Some(obj) = e.as_object() else {
        return M::Unknown;
    };
    let Some((k, v)) = obj.iter().next() else {
        return M::Unknown;
    };
    match k.as_str() {
        "match" => {}
        // Statements that do not filter.
        "counter" | "log" | "mangle" | "notrack" | "set" => return M::Yes,
        "limit" | "quota" => {
            *why = format!("it has a {k}");
            return M::Unknown;
        }
        other => {
            *why = format!("it uses the `{other}` expression");
            return M::Unknown;
        }
    }
    let op = v.get("op").and_then(Value::as_str).unwrap_or("==");
    let mut left = v.get("left").cloned().unwrap_or(Value::Null);
    let right = v.get("right").cloned().unwrap_or(Value::Null);
    // `ct state & (established | related) != 0`: the flags are the set.
    let (op, right) = match left.get("&").and_then(Value::as_array).cloned() {
        Some(parts) if parts.len() == 2 && right == 0 => {
            left = parts[0].clone();
            (if op == "!=" { "in" } else { "!=" }, parts[1].clone())
        }
        _ => (op, right),
    };
    let have = if let Some(pl) = left.get("payload") {
        let proto = pl.get("protocol").and_then(Value::as_str).unwrap_or("");
        let field = pl.get("field").and_then(Value::as_str).unwrap_or("");
        match (proto, field) {
            ("udp" | "tcp", _) if !p.proto.is(proto) => return M::No,
            ("udp" | "tcp" | "th", "dport") => Have::Num(p.dport as u64),
            ("ip6", _) => return M::No,
            ("ip", "saddr") => Have::Ip(p.src),
            ("ip", "daddr") => match p.dst {
                Some(d) => Have::Ip(d),
                None => {
                    *why = "it matches the destination address".into();
                    return M::Unknown;
                }
            },
            ("ip", "protocol") => {
                Have::Str(vec![p.proto.name().into(), p.proto.number().to_string()])
            }
            _ => {
                *why = format!("it matches {proto} {field}");
                return M::Unknown;
            }
        }
    } else if let Some(meta) = left.get("meta") {
        match meta.get("key").and_then(Value::as_str).unwrap_or("") {
            "l4proto" => Have::Str(vec![p.proto.name().into(), p.proto.number().to_string()]),
            "nfproto" => Have::Str(vec!["ipv4".into()]),
            "protocol" => Have::Str(vec!["ip".into()]),
            "iifname" | "iif" => {
                // Loopback never; another name only when the interface is known.
                let names: Vec<String> = match elems(&right) {
                    Some(es) => es
                        .into_iter()
                        .filter_map(|e| match e {
                            Elem::Str(s) => Some(s),
                            _ => None,
                        })
                        .collect(),
                    None => return M::Unknown,
                };
                let any = names
                    .iter()
                    .map(|n| iface_match(n, p))
                    .fold(M::No, |acc, m| match (acc, m) {
                        (M::Yes, _) | (_, M::Yes) => M::Yes,
                        (M::Unknown, _) | (_, M::Unknown) => M::Unknown,
                        _ => M::No,
                    });
                if any == M::Unknown {
                    *why = format!("it matches the interface {}", names.join(","));
                }
                return if op == "!=" { any.not(true) } else { any };
            }
            key => {
                *why = format!("it matches meta {key}");
                return M::Unknown;
            }
        }
    } else if let Some(ct) = left.get("ct") {
        match ct.get("key").and_then(Value::as_str).unwrap_or("") {
            "state" => Have::Str(vec!["new".into()]),
            key => {
                *why = format!("it matches ct {key}");
                return M::Unknown;
            }
        }
    } else {
        *why = "it matches something this reader does not know".into();
        return M::Unknown;
    };
    let Some(es) = elems(&right) else {
        *why = format!("it compares with {right}");
        return M::Unknown;
    };
    let hit = es.iter().any(|e| match (&have, e) {
        (Have::Num(n), Elem::Num(a, b)) => match op {
            "<" => n < a,
            ">" => n > a,
            "<=" => n <= a,
            ">=" => n >= a,
            _ => (*a..=*b).contains(n),
        },
        (Have::Str(names), Elem::Str(s)) => names.iter().any(|h| h.eq_ignore_ascii_case(s)),
        (Have::Str(names), Elem::Num(a, _)) => names.iter().any(|h| *h == a.to_string()),
        (Have::Ip(ip), Elem::Net(n, l)) => in_net(*ip, (*n, *l)),
        _ => false,
    });
    M::of(hit).not(op == "!=")
}

/// A short printable form of a rule's expressions (for messages).
fn show_exprs(expr: &[Value]) -> String {
    let text = Value::Array(expr.to_vec()).to_string();
    if text.len() > 200 {
        format!(
            "{}…",
            &text[..text.char_indices().take(200).last().map_or(0, |(i, _)| i)]
        )
    } else {
        text
    }
}

// ------------------------------------------------------------ both

/// One source of rules: None when its tool is not installed.
pub type Source<T> = Option<Result<T, String>>;

pub struct Rulesets {
    pub iptables: Source<Iptables>,
    pub nft: Source<Nft>,
}

fn read_tool(env: &Env, program: &str, args: &[&str]) -> Option<Result<String, String>> {
    match env.command(program, args) {
        Err(e) if e.contains("is not installed") => None,
        Err(e) => Some(Err(e)),
        Ok(out) if out.success() => Some(Ok(out.stdout)),
        Ok(out) => Some(Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            super::env::nonempty(&out.tail(2), "no message")
        ))),
    }
}

impl Rulesets {
    pub fn read(env: &Env) -> Rulesets {
        let iptables = read_tool(env, "iptables-save", &[]).map(|r| r.map(|t| Iptables::parse(&t)));
        let skip = matches!(&iptables, Some(Ok(i)) if i.nf_tables);
        let nft = read_tool(env, "nft", &["-j", "list", "ruleset"])
            .map(|r| r.and_then(|t| Nft::parse(&t, skip)));
        Rulesets { iptables, nft }
    }

    /// The verdict of both for one probe: a drop in either is final.
    pub fn verdict(&self, p: &Probe) -> Result<Verdict, String> {
        let mut verdicts = Vec::new();
        let mut errors = Vec::new();
        if let Some(r) = &self.iptables {
            match r {
                Ok(i) => verdicts.push(i.verdict(p)),
                Err(e) => errors.push(e.clone()),
            }
        }
        if let Some(r) = &self.nft {
            match r {
                Ok(n) => verdicts.push(n.verdict(p)),
                Err(e) => errors.push(e.clone()),
            }
        }
        if let Some(d) = verdicts.iter().find(|v| matches!(v, Verdict::Drop { .. })) {
            return Ok(d.clone());
        }
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        if let Some(u) = verdicts
            .iter()
            .find(|v| matches!(v, Verdict::Unclear { .. }))
        {
            return Ok(u.clone());
        }
        Ok(Verdict::Accept)
    }

    /// Nothing to read rules with.
    pub fn none(&self) -> bool {
        self.iptables.is_none() && self.nft.is_none()
    }

    /// Every port number the rules name, for evaluating a range exactly.
    pub fn ports(&self) -> Vec<u16> {
        let mut out = Vec::new();
        if let Some(Ok(i)) = &self.iptables {
            for (_, rules) in i.chains.values() {
                for r in rules {
                    let w = words(&r.text);
                    for pair in w.windows(2) {
                        if pair[0].contains("port") {
                            for (a, b) in port_ranges(&pair[1]).unwrap_or_default() {
                                out.extend([a, b, b.saturating_add(1)]);
                            }
                        }
                    }
                }
            }
        }
        if let Some(Ok(n)) = &self.nft {
            for rules in n.rules.values() {
                for (expr, _) in rules {
                    collect_numbers(&Value::Array(expr.clone()), &mut out);
                }
            }
        }
        out
    }
}

fn collect_numbers(v: &Value, out: &mut Vec<u16>) {
    match v {
        Value::Number(n) => {
            if let Some(n) = n.as_u64().filter(|n| *n <= 65535) {
                out.extend([n as u16, (n as u16).saturating_add(1)]);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_numbers(x, out)),
        Value::Object(o) => o.values().for_each(|x| collect_numbers(x, out)),
        _ => {}
    }
}

/// The verdicts over a port range, as maximal runs of equal verdicts.
pub fn over_range(
    rules: &Rulesets,
    base: &Probe,
    lo: u16,
    hi: u16,
) -> Result<Vec<(u16, u16, Verdict)>, String> {
    let mut points: Vec<u16> = rules
        .ports()
        .into_iter()
        .filter(|p| (lo..=hi).contains(p))
        .collect();
    points.push(lo);
    points.sort_unstable();
    points.dedup();
    let mut runs: Vec<(u16, u16, Verdict)> = Vec::new();
    for (i, &start) in points.iter().enumerate() {
        let end = points.get(i + 1).map_or(hi, |n| n - 1);
        let v = rules.verdict(&Probe {
            dport: start,
            ..base.clone()
        })?;
        match runs.last_mut() {
            Some(last) if last.2 == v => last.1 = end,
            _ => runs.push((start, end, v)),
        }
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp(port: u16) -> Probe {
        Probe {
            proto: Proto::Udp,
            dport: port,
            src: "203.0.113.10".parse().unwrap(),
            dst: Some("10.0.1.20".parse().unwrap()),
            iface: Some("ens5".into()),
        }
    }

    fn tcp(port: u16, src: &str) -> Probe {
        Probe {
            proto: Proto::Tcp,
            dport: port,
            src: src.parse().unwrap(),
            dst: Some("10.0.1.20".parse().unwrap()),
            iface: Some("ens5".into()),
        }
    }

    const IPT: &str = "# Generated by iptables-save v1.8.9 (nf_tables) on Tue Dec  1 11:52:51 2026
*nat
:PREROUTING ACCEPT [0:0]
-A PREROUTING -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 5080
COMMIT
*filter
:INPUT DROP [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:ams - [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -p udp -m multiport --dports 50000:54999 -m comment --comment \"web rtc\" -j ACCEPT
-A INPUT -j ams
-A ams -s 10.0.0.0/16 -p tcp -m tcp --dport 5000 -j ACCEPT
-A ams -p udp -m udp --dport 55000:60000 -j LOG --log-prefix \"drop \"
COMMIT
";

    #[test]
    fn iptables_input_with_a_user_chain() {
        let ipt = Iptables::parse(IPT);
        assert!(ipt.nf_tables);
        assert_eq!(ipt.verdict(&udp(50000)), Verdict::Accept);
        assert_eq!(ipt.verdict(&udp(54999)), Verdict::Accept);
        assert!(matches!(ipt.verdict(&udp(55000)), Verdict::Drop { by } if by.contains("policy")));
        assert_eq!(ipt.verdict(&tcp(5000, "10.0.2.7")), Verdict::Accept);
        assert!(matches!(
            ipt.verdict(&tcp(5000, "10.1.0.1")),
            Verdict::Drop { .. }
        ));
        let rules = Rulesets {
            iptables: Some(Ok(ipt)),
            nft: None,
        };
        let runs = over_range(&rules, &udp(0), 50000, 60000).unwrap();
        assert_eq!(runs.len(), 2, "{runs:?}");
        assert_eq!((runs[0].0, runs[0].1), (50000, 54999));
        assert_eq!((runs[1].0, runs[1].1), (55000, 60000));
    }

    #[test]
    fn explicit_drops_negations_and_doubts() {
        let text = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT ! -s 10.0.0.0/8 -p tcp --dport 5000 -j DROP\n-A INPUT -p udp -m set --match-set blocked src -j DROP\n-A INPUT -p udp --sport 53 -j ACCEPT\nCOMMIT\n";
        let ipt = Iptables::parse(text);
        assert_eq!(ipt.verdict(&tcp(5000, "10.9.9.9")), Verdict::Accept);
        assert!(
            matches!(ipt.verdict(&tcp(5000, "192.0.2.1")), Verdict::Drop { by } if by.contains("! -s 10.0.0.0/8"))
        );
        // The ipset could hold the client: unclear, naming the rule.
        match ipt.verdict(&udp(50000)) {
            Verdict::Unclear { rule, why } => {
                assert!(rule.contains("--match-set"), "{rule}");
                assert!(why.contains("--match-set"), "{why}");
            }
            v => panic!("{v:?}"),
        }
        // A doubtful ACCEPT before an ACCEPT policy changes nothing.
        let text = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p udp --sport 53 -j ACCEPT\nCOMMIT\n";
        assert_eq!(Iptables::parse(text).verdict(&udp(50000)), Verdict::Accept);
    }

    /// `nft -j list ruleset` as nft 1.0.6 prints it (taken from a real
    /// namespace with iptables-nft rules too).
    const NFT: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "inet", "name": "filter", "handle": 1}}, {"chain": {"family": "inet", "table": "filter", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}}, {"chain": {"family": "inet", "table": "filter", "name": "extra", "handle": 2}}, {"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 3, "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 4, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "lo"}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 5, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.0.0.0", "len": 8}}}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 5000}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 7, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": {"set": [{"range": [50000, 55000]}, 60000]}}}, {"counter": {"packets": 0, "bytes": 0}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 9, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": {"set": [5080, 5443]}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 10, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "udp"}}, {"reject": {"type": "icmpx", "expr": "port-unreachable"}}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 11, "expr": [{"jump": {"target": "extra"}}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "extra", "handle": 12, "expr": [{"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "192.168.0.0", "len": 16}}}}, {"return": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "extra", "handle": 13, "expr": [{"accept": null}]}}, {"table": {"family": "ip", "name": "filter", "handle": 2}}, {"chain": {"family": "ip", "table": "filter", "name": "INPUT", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}}, {"rule": {"family": "ip", "table": "filter", "chain": "INPUT", "handle": 2, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "udp"}}, {"xt": {"type": "match", "name": "multiport"}}, {"xt": {"type": "match", "name": "comment"}}, {"counter": {"packets": 0, "bytes": 0}}, {"accept": null}]}}]}"#;

    #[test]
    fn nft_base_chains_sets_ranges_and_jumps() {
        let nft = Nft::parse(NFT, true).unwrap();
        assert_eq!(nft.base.len(), 1, "the iptables-nft table is left out");
        assert_eq!(nft.verdict(&udp(50000)), Verdict::Accept);
        assert_eq!(nft.verdict(&udp(55000)), Verdict::Accept);
        assert_eq!(nft.verdict(&udp(60000)), Verdict::Accept);
        assert!(
            matches!(nft.verdict(&udp(55001)), Verdict::Drop { by } if by.contains("handle 10")),
            "{:?}",
            nft.verdict(&udp(55001))
        );
        assert_eq!(nft.verdict(&tcp(5000, "10.0.2.7")), Verdict::Accept);
        // Outside 10/8: jumps to `extra`, which returns for non-192.168.
        assert!(
            matches!(nft.verdict(&tcp(5000, "172.16.0.1")), Verdict::Drop { by } if by.contains("policy drop"))
        );
        assert_eq!(nft.verdict(&tcp(5000, "192.168.1.1")), Verdict::Accept);
        // With the iptables-nft table too, its xt match cannot be told.
        let all = Nft::parse(NFT, false).unwrap();
        assert!(matches!(
            all.verdict(&tcp(5000, "192.168.1.1")),
            Verdict::Drop { .. }
        ));
        let rules = Rulesets {
            iptables: None,
            nft: Some(Ok(nft)),
        };
        let runs = over_range(&rules, &udp(0), 50000, 60000).unwrap();
        let spans: Vec<(u16, u16, bool)> = runs
            .iter()
            .map(|(a, b, v)| (*a, *b, *v == Verdict::Accept))
            .collect();
        assert_eq!(
            spans,
            [
                (50000, 55000, true),
                (55001, 59999, false),
                (60000, 60000, true)
            ]
        );
    }

    #[test]
    fn words_keep_quoted_comments() {
        assert_eq!(
            words(r#"-A INPUT -m comment --comment "a \"b\" c" -j ACCEPT"#),
            [
                "-A",
                "INPUT",
                "-m",
                "comment",
                "--comment",
                "a \"b\" c",
                "-j",
                "ACCEPT"
            ]
        );
    }
}
