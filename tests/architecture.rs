//! The import graph of `src/`, read from the source: the top-level modules keep to their layers
//! (a module imports only modules of a lower layer: the data flow config → balena → probe →
//! routes → startup, with the leaves they share below), and no two files import each other,
//! directly or around a circle. A parent module's own `mod` declarations and re-exports of its
//! children are how Rust composes a directory and are not counted; a child using its parent's
//! items is.
//!
//! docs/development.md explains the layers; a new top-level module needs a line in [`LAYERS`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules by layer, lowest first: a module may import only modules of lower layers.
const LAYERS: &[&[&str]] = &[
    // Leaves: settings, the metric catalogue, the basic-auth check, the allocator.
    &["config", "metrics", "basic_auth", "memory"],
    // What reads settings or writes the text format: flags, the text format, the web config.
    &["cli", "exposition", "web_config"],
    // Logging; the balena API client.
    &["telemetry", "balena"],
    // A probe: target → fetch → series → answer; background reads.
    &["probe"],
    // What uses probes: the probe history, discovery.
    &["history", "discovery"],
    // Reload, stop and signals.
    &["lifecycle"],
    // HTTP.
    &["routes"],
    // The start-up sequence and the server.
    &["startup"],
    // The binary.
    &["main", "lib"],
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A file's module path: `src/probe/reads/mod.rs` → `probe::reads`, `src/probe/fleet.rs` →
/// `probe::fleet`, `src/lib.rs` → `lib`.
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") && parts.len() > 1 {
        parts.pop();
    }
    parts
}

/// The file of the longest existing module prefix of `path`.
fn resolve(path: &[String], known: &BTreeMap<Vec<String>, PathBuf>) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| known.contains_key(p))
}

/// The code of a file without comments and string literals (roughly: enough for paths).
fn code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    match (escaped, c) {
                        (false, '\\') => escaped = true,
                        (false, '"') => break,
                        _ => escaped = false,
                    }
                }
                out.push_str("\"\"");
            }
            _ => out.push(c),
        }
    }
    out
}

/// Every module path `file` names through `crate::` or `super::`, as written (a `{...}` group
/// gives one path per member).
fn paths(file: &Path, text: &str) -> Vec<Vec<String>> {
    let me = module_of(file);
    let is_parent = file
        .file_name()
        .is_some_and(|n| n == "mod.rs" || n == "lib.rs");
    let mut out = Vec::new();
    let bytes = code(text);
    for (prefix, base) in [
        ("crate::", Vec::new()),
        ("super::", {
            // `super` of `probe/fleet.rs` is `probe`; of `probe/reads/mod.rs`, `probe`.
            let mut b = me.clone();
            b.pop();
            b
        }),
    ] {
        let mut at = 0;
        while let Some(i) = bytes[at..].find(prefix) {
            let start = at + i;
            at = start + prefix.len();
            let before = bytes[..start].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let rest = &bytes[at..];
            let mut segs = base.clone();
            let mut rest_it = rest;
            loop {
                let ident: String = rest_it
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if ident.is_empty() {
                    if let Some(group) = rest_it.strip_prefix('{') {
                        let mut depth = 1;
                        let end = group
                            .char_indices()
                            .find(|(_, c)| {
                                match c {
                                    '{' => depth += 1,
                                    '}' => depth -= 1,
                                    _ => {}
                                }
                                depth == 0
                            })
                            .map_or(group.len(), |(i, _)| i);
                        let mut depth = 0;
                        let mut member = String::new();
                        let mut members = Vec::new();
                        for c in group[..end].chars() {
                            match c {
                                '{' => depth += 1,
                                '}' => depth -= 1,
                                ',' if depth == 0 => members.push(std::mem::take(&mut member)),
                                _ => {}
                            }
                            member.push(c);
                        }
                        members.push(member);
                        for m in members {
                            let first: String = m
                                .trim_start_matches(',')
                                .trim()
                                .chars()
                                .take_while(|c| c.is_alphanumeric() || *c == '_')
                                .collect();
                            if !first.is_empty() && first != "self" {
                                let mut p = segs.clone();
                                p.push(first);
                                out.push(p);
                            }
                        }
                        segs.clear();
                    }
                    break;
                }
                segs.push(ident.clone());
                rest_it = &rest_it[ident.len()..];
                match rest_it.strip_prefix("::") {
                    Some(r) => rest_it = r,
                    None => break,
                }
            }
            if !segs.is_empty() {
                out.push(segs);
            }
        }
    }
    // A parent's paths into its own children are its composition, not a dependency.
    if is_parent {
        out.retain(|p| !(p.len() > me.len() && p[..me.len()] == me[..] && me != ["lib"]));
    }
    out
}

struct Graph {
    /// module path → the module paths (files) it imports.
    edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
}

fn graph() -> Graph {
    let mut all = Vec::new();
    files(&src(), &mut all);
    let known: BTreeMap<Vec<String>, PathBuf> =
        all.iter().map(|f| (module_of(f), f.clone())).collect();
    let mut edges = BTreeMap::new();
    for file in &all {
        let me = module_of(file);
        let text = std::fs::read_to_string(file).unwrap();
        let mut to = BTreeSet::new();
        for p in paths(file, &text) {
            // A child naming its parent's items is an edge to the parent's file; a path through
            // the parent to a sibling resolves to the sibling.
            if let Some(target) = resolve(&p, &known) {
                let own_child = target.len() > me.len() && target[..me.len()] == me[..];
                if target != me && !(own_child && known[&me].ends_with("mod.rs")) {
                    to.insert(target);
                }
            }
        }
        edges.insert(me, to);
    }
    Graph { edges }
}

fn layer(top: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| l.contains(&top))
        .unwrap_or_else(|| panic!("src/{top}: a top-level module with no layer in LAYERS"))
}

#[test]
fn top_level_modules_import_only_lower_layers() {
    let g = graph();
    let mut wrong = Vec::new();
    for (from, tos) in &g.edges {
        for to in tos {
            let (a, b) = (&from[0], &to[0]);
            if a != b && layer(b) >= layer(a) {
                wrong.push(format!(
                    "{} imports {} (layer {} >= {})",
                    from.join("::"),
                    to.join("::"),
                    layer(b),
                    layer(a)
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports up or across a layer:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_two_files_import_each_other_around_a_circle() {
    let g = graph();
    // Depth-first search for a back edge.
    fn visit(
        n: &Vec<String>,
        g: &Graph,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        state.insert(n.clone(), 1);
        stack.push(n.clone());
        for m in g.edges.get(n).into_iter().flatten() {
            match state.get(m).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| s == m).unwrap();
                    let mut circle = stack[at..].to_vec();
                    circle.push(m.clone());
                    return Some(circle);
                }
                0 => {
                    if let Some(c) = visit(m, g, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.edges.keys() {
        if state.get(n).copied().unwrap_or(0) == 0 {
            if let Some(circle) = visit(n, &g, &mut state, &mut Vec::new()) {
                let shown: Vec<String> = circle.iter().map(|m| m.join("::")).collect();
                panic!("an import circle: {}", shown.join(" → "));
            }
        }
    }
}

/// The checker sees what it must: a known edge each way, and a circle made on purpose.
#[test]
fn the_checker_reads_imports_as_written() {
    let g = graph();
    let of = |m: &str| g.edges[&m.split("::").map(String::from).collect::<Vec<_>>()].clone();
    let probe_mod = of("probe");
    assert!(
        probe_mod.contains(&vec!["balena".to_string()]),
        "{probe_mod:?}"
    );
    let services = of("probe::reads::services");
    assert!(
        services.contains(&vec!["probe".into(), "labels".into()]),
        "{services:?}"
    );
    assert!(
        services.contains(&vec!["probe".into(), "reads".into()]),
        "a child using its parent's items: {services:?}"
    );
    let text = "use super::{fleet, labels::{a, b}};\nfn f() { crate::config::x(); \"crate::nope\"; } // crate::nope\n";
    let p = paths(&src().join("probe/device.rs"), text);
    assert_eq!(
        p,
        vec![
            vec!["config".to_string(), "x".into()],
            vec!["probe".into(), "fleet".into()],
            vec!["probe".into(), "labels".into()],
        ]
    );
}
