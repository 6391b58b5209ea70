//! The measurement commands the docs give name things that exist: every `--bench NAME` a
//! bench target in `benches/`, every `--example NAME` a file in `examples/`, and every script
//! under `tests/` they call a file there. Benchmarks take minutes and are not run by the suite
//! (docs/performance.md gives their results); this keeps their commands from going stale when
//! a bench, example or script is renamed or removed.

use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every Markdown file a user reads: the README and docs/.
fn markdown() -> Vec<(String, String)> {
    let mut out = vec![("README.md".to_string(), read("README.md"))];
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            let name = format!("docs/{}", path.file_name().unwrap().to_string_lossy());
            out.push((name.clone(), read(&name)));
        }
    }
    out
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The word after each `flag ` in `text`.
fn after<'a>(text: &'a str, flag: &str) -> Vec<&'a str> {
    text.match_indices(flag)
        .filter_map(|(i, _)| {
            let rest = &text[i + flag.len()..];
            let word = rest
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                .next()?;
            (!word.is_empty()).then_some(word)
        })
        .collect()
}

/// Paths like `tests/conformance/bench.py` in `text`.
fn scripts(text: &str) -> Vec<&str> {
    text.match_indices("tests/")
        .filter_map(|(i, _)| {
            let path = text[i..]
                .split(|c: char| c.is_whitespace() || matches!(c, '`' | ')' | '(' | '"' | ','))
                .next()?;
            (path.ends_with(".py") || path.ends_with(".sh")).then_some(path)
        })
        .collect()
}

#[test]
fn the_docs_measurement_commands_name_what_exists() {
    let manifest = read("Cargo.toml");
    let mut checked = 0;
    for (file, text) in markdown() {
        for bench in after(&text, "--bench ") {
            assert!(
                root().join("benches").join(format!("{bench}.rs")).is_file()
                    && manifest.contains(&format!("name = \"{bench}\"")),
                "{file}: `--bench {bench}` is no bench target"
            );
            checked += 1;
        }
        for example in after(&text, "--example ") {
            assert!(
                root()
                    .join("examples")
                    .join(format!("{example}.rs"))
                    .is_file(),
                "{file}: `--example {example}` is no file in examples/"
            );
            checked += 1;
        }
        for script in scripts(&text) {
            assert!(
                root().join(script).is_file(),
                "{file}: {script} does not exist"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 20,
        "only {checked} commands found: is the scan broken?"
    );
}
