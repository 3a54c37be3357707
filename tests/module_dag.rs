//! The top-level modules of the library form a DAG: no module reaches, through
//! any chain of `crate::…` paths, back to itself, and nothing imports `cli`.
//! A new circle fails here with the modules and the files that close it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Macros exported at the crate root, and the module that defines them.
const MACROS: &[(&str, &str)] = &[("bail_usage", "error")];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its comments (doc links name modules too).
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            // A `//` inside a string ("https://…") is kept: only a comment
            // start outside quotes is cut.
            Some(i) if l[..i].matches('"').count() % 2 == 0 => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every top-level module a piece of code names: `crate::x…` and the
/// groups of `use crate::{x, y::z}`.
fn referenced(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        // `ams_agent::crate::` cannot occur; a preceding identifier char
        // means another word ending in `crate` (none here), so skip it.
        let before_ok = rest[..i]
            .chars()
            .last()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        if before_ok {
            if let Some(group) = after.strip_prefix('{') {
                let end = matching_brace(group);
                for item in split_top_level(&group[..end]) {
                    let name: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        out.insert(name);
                    }
                }
            } else {
                let name: String = after
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        }
        rest = after;
    }
    out
}

fn matching_brace(s: &str) -> usize {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    s.len()
}

fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// module → (module it uses → a file that uses it).
fn graph() -> BTreeMap<String, BTreeMap<String, PathBuf>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules = BTreeSet::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if path.is_dir()
            || (path.extension().is_some_and(|e| e == "rs") && name != "lib" && name != "main")
        {
            modules.insert(name);
        }
    }
    let macros: BTreeMap<&str, &str> = MACROS.iter().copied().collect();
    let mut graph = BTreeMap::new();
    for module in &modules {
        let mut files = Vec::new();
        let dir = src.join(module);
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        } else {
            files.push(src.join(format!("{module}.rs")));
        }
        let mut edges: BTreeMap<String, PathBuf> = BTreeMap::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for name in referenced(&code_of(&text)) {
                let target = macros
                    .get(name.as_str())
                    .map_or(name.clone(), |m| m.to_string());
                if &target != module && modules.contains(&target) {
                    edges.entry(target).or_insert_with(|| file.clone());
                }
            }
        }
        graph.insert(module.clone(), edges);
    }
    graph
}

/// A circle through `start`, if there is one.
fn circle_from(
    graph: &BTreeMap<String, BTreeMap<String, PathBuf>>,
    start: &str,
) -> Option<Vec<String>> {
    fn walk(
        graph: &BTreeMap<String, BTreeMap<String, PathBuf>>,
        at: &str,
        start: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in graph[at].keys() {
            if next == start {
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, next, start, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    let mut seen = BTreeSet::new();
    walk(graph, start, start, &mut path, &mut seen).then_some(path)
}

#[test]
fn top_level_modules_form_a_dag() {
    let graph = graph();
    assert!(graph.len() > 5, "found too few modules: {graph:?}");
    for module in graph.keys() {
        if let Some(circle) = circle_from(&graph, module) {
            let mut hops = Vec::new();
            for pair in circle.iter().zip(circle.iter().skip(1).chain([&circle[0]])) {
                let file = &graph[pair.0][pair.1];
                hops.push(format!("{} → {} ({})", pair.0, pair.1, file.display()));
            }
            panic!("the modules form a circle: {}", hops.join(", "));
        }
    }
}

#[test]
fn nothing_imports_cli() {
    for (module, edges) in graph() {
        if let Some(file) = edges.get("cli") {
            panic!("{module} imports cli ({})", file.display());
        }
    }
}

#[test]
fn the_scanner_sees_groups_and_paths() {
    let code = code_of(
        "use crate::{ams::db, host::{Host, fs}};\nlet x = crate::mongo::registry::X; // crate::cli\n",
    );
    let found = referenced(&code);
    let want: BTreeSet<String> = ["ams", "host", "mongo"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(found, want);
}

#[test]
fn the_check_finds_a_circle() {
    let mut g: BTreeMap<String, BTreeMap<String, PathBuf>> = BTreeMap::new();
    for (a, b) in [
        ("ams", "mongo"),
        ("mongo", "node"),
        ("node", "ams"),
        ("plan", "host"),
    ] {
        g.entry(a.into())
            .or_default()
            .insert(b.into(), PathBuf::from(format!("{a}.rs")));
        g.entry(b.into()).or_default();
    }
    assert_eq!(circle_from(&g, "ams").unwrap(), ["ams", "mongo", "node"]);
    assert!(circle_from(&g, "plan").is_none());
}
