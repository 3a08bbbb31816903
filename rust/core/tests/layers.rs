//! The layering that `lib.rs` documents, checked on the source: no import cycle between
//! subsystems, HTTP used by nothing below it, private modules, no `unsafe`, no printing.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's code without its `#[cfg(test)]` modules (tests may reach anywhere).
fn code(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap();
    match text.find("#[cfg(test)]\nmod ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// The subsystem of a file: its first path component under `src/` (`http`, `runtime`, `config`…).
fn subsystem(path: &Path) -> String {
    let rel = path.strip_prefix(src()).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().to_string();
    first.trim_end_matches(".rs").to_string()
}

/// `crate::<name>` paths in `code` (one `use crate::{a, b}` group counts each name).
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

fn subsystem_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let subsystems: BTreeSet<String> = files.iter().map(|f| subsystem(f)).filter(|s| s != "lib").collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let from = subsystem(f);
        for to in crate_refs(&code(f)) {
            if to != from && subsystems.contains(&to) && from != "lib" {
                graph.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    graph
}

#[test]
fn no_import_cycle_crosses_subsystems() {
    let graph = subsystem_graph();
    for start in graph.keys() {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&String> = graph[start].iter().collect();
        while let Some(next) = todo.pop() {
            assert_ne!(next, start, "an import cycle runs through {start}: {graph:?}");
            if seen.insert(next.clone()) {
                todo.extend(graph.get(next).into_iter().flatten());
            }
        }
    }
    // The documented direction: http → runtime → state; observe and the leaves import no subsystem.
    assert!(graph["http"].contains("runtime"), "{graph:?}");
    for leaf in ["observe", "config", "error", "outcome"] {
        let above: Vec<_> =
            graph.get(leaf).into_iter().flatten().filter(|s| !["error", "outcome"].contains(&s.as_str())).collect();
        assert!(above.is_empty(), "{leaf} imports {above:?}");
    }
    assert!(!graph.get("state").is_some_and(|s| s.contains("runtime")), "state imports the runtime: {graph:?}");
}

#[test]
fn nothing_outside_http_uses_it() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    for f in files.iter().filter(|f| subsystem(f) != "http" && subsystem(f) != "lib") {
        assert!(!crate_refs(&code(f)).contains("http"), "{} uses crate::http", f.display());
    }
}

#[test]
fn modules_are_private_unsafe_is_forbidden_and_nothing_prints() {
    let lib = fs::read_to_string(src().join("lib.rs")).unwrap();
    assert!(lib.contains("#![forbid(unsafe_code)]"));
    assert!(!lib.lines().any(|l| l.trim_start().starts_with("pub mod ")), "lib.rs declares a public module");
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    for f in &files {
        let text = code(f);
        for word in ["eprintln!", "println!", "dbg!"] {
            assert!(!text.contains(word), "{} uses {word}; log through the `log` crate", f.display());
        }
        assert!(!fs::read_to_string(f).unwrap().contains("eprintln!"), "{} prints to stderr", f.display());
    }
}
