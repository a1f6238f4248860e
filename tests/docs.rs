//! Docs that a script can check against the code: the sync-point index in
//! docs/MEMORY-ORDERING.md against the `SYNC POINT (name)` comments in every crate's sources, and
//! every module's opening comment (there, and saying what the module must never do).
//! (docs/CLI.md against each `--help` is tests/cli/main.rs's.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The header row of a sync-point table in docs/MEMORY-ORDERING.md. Other tables there (shared
/// words that need no ordering, process-local locks) have other headers and are not sync points.
const SYNC_TABLE_HEADER: &str = "| name | where | producer → consumer | mechanism | why |";

/// The names in the first column of every sync-point table of `doc`.
fn documented(doc: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_table = false;
    for line in doc.lines() {
        let l = line.trim();
        if l == SYNC_TABLE_HEADER {
            in_table = true;
            continue;
        }
        if !l.starts_with('|') {
            in_table = false;
            continue;
        }
        if in_table && !l.starts_with("|---") {
            let name = l
                .trim_start_matches('|')
                .split('|')
                .next()
                .unwrap_or("")
                .trim();
            names.push(name.to_owned());
        }
    }
    names
}

/// The names of the `SYNC POINT (name)` comments in `text`.
fn marked(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in text.lines() {
        // In a comment: after the line's first `//` (a whole-line or a trailing comment).
        let Some(at) = line.find("//") else {
            continue;
        };
        let comment = &line[at + 2..];
        let mut rest = comment;
        while let Some(at) = rest.find("SYNC POINT (") {
            rest = &rest[at + "SYNC POINT (".len()..];
            if let Some(end) = rest.find(')') {
                names.push(rest[..end].trim().to_owned());
                rest = &rest[end..];
            }
        }
    }
    names
}

/// Every .rs file of the workspace's sources (not target/, not hidden directories).
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if p.is_dir() {
            sources(&p, out);
        } else if name.ends_with(".rs") {
            out.push(p);
        }
    }
}

#[test]
fn the_sync_point_index_lists_exactly_the_code_s_sync_points() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/MEMORY-ORDERING.md")).unwrap();
    let rows = documented(&doc);
    let in_doc: BTreeSet<String> = rows.iter().cloned().collect();
    assert_eq!(
        rows.len(),
        in_doc.len(),
        "a sync point has two rows in docs/MEMORY-ORDERING.md: {rows:?}"
    );
    let mut files = Vec::new();
    sources(root, &mut files);
    let mut in_code = BTreeSet::new();
    for f in &files {
        // This file names the marker in its own text; it marks nothing.
        if f.ends_with("tests/docs.rs") {
            continue;
        }
        in_code.extend(marked(&std::fs::read_to_string(f).unwrap()));
    }
    let undocumented: Vec<_> = in_code.difference(&in_doc).collect();
    let stale: Vec<_> = in_doc.difference(&in_code).collect();
    assert!(
        undocumented.is_empty() && stale.is_empty(),
        "docs/MEMORY-ORDERING.md and the code's SYNC POINT comments differ:\n  in the code, \
         without a row: {undocumented:?}\n  rows no code marks: {stale:?}"
    );
    assert!(in_doc.len() >= 20, "the tables were not found: {rows:?}");
}

#[test]
fn the_parsers_see_what_they_should() {
    let doc = format!(
        "intro\n\n{SYNC_TABLE_HEADER}\n|---|---|---|---|---|\n| a b | x | y | z | w |\n| c | x | \
         y | z | w |\n\n| word | where | other |\n|---|---|---|\n| not a sync point | x | y |\n"
    );
    assert_eq!(documented(&doc), ["a b", "c"]);
    let code = "let s = \"SYNC POINT (in a string)\";\n    x.store(1, Release); // SYNC POINT \
                (FIN)\n    // SYNC POINT (ring data): Release\n    // pairs with SYNC POINT (credits) too\n";
    assert_eq!(marked(code), ["FIN", "ring data", "credits"]);
}

/// Modules whose opening comment is not yet what the next test asks, each with the reason it
/// waits; the test fails when one of them is fixed, so the list only shrinks.
const WAITING: [(&str, &str); 0] = [];

/// Every source file of the product's crates (not the test-only ones, not generated code)
/// opens with a module comment (`//!`) that says, among what the module is and who calls it,
/// what it must never do (CONVENTIONS.md: "Module docs start with one paragraph: what this is,
/// who calls it, what it must never do"). Unit-test modules only need the comment.
#[test]
fn every_module_says_what_it_is_and_what_it_must_never_do() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("build.rs")];
    for dir in [
        "src",
        "ntbdrv/src",
        "ntbdrv/ntb-sys/src",
        "fabric/src",
        "transport/src",
        "policy/src",
        "shim/src",
        "dc/src",
    ] {
        sources(&root.join(dir), &mut files);
    }
    let (mut bad, mut fixed) = (Vec::new(), Vec::new());
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let rel = f.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        if text.starts_with("// @generated") {
            continue;
        }
        let opening: Vec<&str> = text.lines().take_while(|l| l.starts_with("//!")).collect();
        let test_module = rel.ends_with("/tests.rs") || rel.contains("/tests/");
        let says_never = opening
            .iter()
            .any(|l| l.contains("never") || l.contains("must not"));
        let why = match (opening.is_empty(), test_module || says_never) {
            (true, _) => Some("no opening `//!` comment"),
            (false, false) => Some("the opening comment does not say what it must never do"),
            (false, true) => None,
        };
        let waits = WAITING.iter().any(|(p, _)| *p == rel);
        match (why, waits) {
            (Some(why), false) => bad.push(format!("{rel}: {why}")),
            (None, true) => fixed.push(rel),
            _ => {}
        }
    }
    assert!(files.len() > 80, "the sources were not found: {files:?}");
    assert!(
        bad.is_empty(),
        "module comments to write:\n  {}",
        bad.join("\n  ")
    );
    assert!(
        fixed.is_empty(),
        "these are done now: take them out of WAITING: {fixed:?}"
    );
}
