//! No import loops inside a crate: for every crate of the workspace, the
//! modules (one per source file) and the `crate::…` / `super::…` paths each
//! uses form a graph that must have no cycle between modules of which neither
//! contains the other (a parent module and its children naturally name each
//! other: the children are its rooms). Between crates, Cargo itself forbids
//! cycles. CONTRIBUTING.md explains the rule and what to do when this fails.
//!
//! The scan reads source text, not the compiler's resolution: a path counts
//! where it appears in code (comments and string literals are skipped), and
//! resolves to the longest module path that exists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path inside a crate, e.g. `["transformer", "families", "llama"]`.
type ModPath = Vec<String>;

fn workspace_crates() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut crates: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("src").is_dir())
        .collect();
    crates.sort();
    crates
}

/// Every `.rs` file under `src` and its module path.
fn modules(src: &Path) -> BTreeMap<ModPath, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap();
            let mut parts: Vec<String> = rel
                .iter()
                .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            out.insert(parts, path);
        }
    }
    out
}

/// Source text without comments and string/char literals.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// The module paths `from` names with `crate::` and `super::` paths
/// (including braced groups: `crate::a::{b, c::d}`).
fn referenced(from: &ModPath, code: &str, known: &BTreeMap<ModPath, PathBuf>) -> BTreeSet<ModPath> {
    let mut out = BTreeSet::new();
    let bytes = code.as_bytes();
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    for (start, _) in code
        .match_indices("crate::")
        .chain(code.match_indices("super::"))
    {
        if start > 0 && (is_ident(bytes[start - 1]) || bytes[start - 1] == b':') {
            continue;
        }
        // The path: identifiers joined by `::`, possibly ending in a group.
        let mut base: ModPath = Vec::new();
        let mut rest = &code[start..];
        let mut first = true;
        loop {
            let len = rest.bytes().take_while(|&c| is_ident(c)).count();
            if len == 0 {
                break;
            }
            let ident = &rest[..len];
            match (first, ident) {
                (true, "crate") => {}
                (_, "super") => {
                    if first {
                        // `super` of the file's module: its parent.
                        base = from.clone();
                    }
                    base.pop();
                }
                _ => base.push(ident.to_string()),
            }
            first = false;
            rest = &rest[len..];
            match rest.strip_prefix("::") {
                Some(r) => rest = r,
                None => break,
            }
        }
        let mut targets = vec![base.clone()];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let mut t = base.clone();
                t.extend(
                    item.trim()
                        .split("::")
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty() && s != "self"),
                );
                targets.push(t);
            }
        }
        for mut t in targets {
            while !t.is_empty() && !known.contains_key(&t) {
                t.pop();
            }
            if !t.is_empty() && &t != from {
                out.insert(t);
            }
        }
    }
    out
}

fn is_prefix(a: &ModPath, b: &ModPath) -> bool {
    a.len() <= b.len() && b[..a.len()] == a[..]
}

/// A cycle through `start` in `graph`, if there is one (depth-first).
fn cycle_from(
    start: &ModPath,
    graph: &BTreeMap<ModPath, BTreeSet<ModPath>>,
) -> Option<Vec<ModPath>> {
    fn walk(
        node: &ModPath,
        start: &ModPath,
        graph: &BTreeMap<ModPath, BTreeSet<ModPath>>,
        path: &mut Vec<ModPath>,
        seen: &mut BTreeSet<ModPath>,
    ) -> bool {
        for next in graph.get(node).into_iter().flatten() {
            if next == start {
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(next, start, graph, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.clone()];
    let mut seen = BTreeSet::new();
    walk(start, start, graph, &mut path, &mut seen).then_some(path)
}

#[test]
fn no_module_imports_another_that_imports_it_back() {
    let mut problems = Vec::new();
    let crates = workspace_crates();
    assert!(crates.len() >= 5, "found only {crates:?}");
    for krate in crates {
        let known = modules(&krate.join("src"));
        let mut graph: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
        for (m, path) in &known {
            let code = code_only(&std::fs::read_to_string(path).unwrap());
            let edges = referenced(m, &code, &known)
                .into_iter()
                .filter(|t| !is_prefix(t, m) && !is_prefix(m, t))
                .collect();
            graph.insert(m.clone(), edges);
        }
        let mut reported = BTreeSet::new();
        for m in known.keys() {
            if let Some(cycle) = cycle_from(m, &graph) {
                let key: BTreeSet<ModPath> = cycle.iter().cloned().collect();
                if reported.insert(key) {
                    let names: Vec<String> = cycle.iter().map(|p| p.join("::")).collect();
                    problems.push(format!(
                        "{}: {} -> {}",
                        krate.file_name().unwrap().to_string_lossy(),
                        names.join(" -> "),
                        names[0]
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "import loops between modules (see CONTRIBUTING.md):\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_scan_finds_paths_and_loops() {
    let mut known = BTreeMap::new();
    for m in ["a", "b", "c", "c::d"] {
        known.insert(
            m.split("::").map(String::from).collect::<ModPath>(),
            PathBuf::new(),
        );
    }
    let a: ModPath = vec!["a".into()];
    let code = code_only(
        "use crate::b::Thing; // crate::c\nuse crate::c::{d::X, Y};\nlet s = \"crate::a\";",
    );
    let refs = referenced(&a, &code, &known);
    let names: Vec<String> = refs.iter().map(|p| p.join("::")).collect();
    assert_eq!(names, vec!["b", "c", "c::d"]);
    let d: ModPath = vec!["c".into(), "d".into()];
    let up = referenced(&d, "use super::super::a::Z;", &known);
    assert_eq!(up.into_iter().collect::<Vec<_>>(), vec![a.clone()]);
    let mut graph = BTreeMap::new();
    graph.insert(a.clone(), BTreeSet::from([vec!["b".to_string()]]));
    graph.insert(vec!["b".to_string()], BTreeSet::from([a.clone()]));
    assert!(cycle_from(&a, &graph).is_some());
}
