//! docs/INTERPOSITION.md's table agrees with shim/exports.txt: every exported hook is a "yes"
//! row, every "yes" row is exported, and every "no" row says why.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One table row: hooked?, what pcisock does, why it is not hooked.
struct Row {
    hooked: bool,
    does: String,
    reason: String,
}

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The exported hooks, as `shim/build.rs` reads them.
fn exports() -> BTreeSet<String> {
    read("exports.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// The rows of the table whose header starts with `| symbol |`.
fn table() -> BTreeMap<String, Row> {
    let doc = read("../docs/INTERPOSITION.md");
    let mut lines = doc.lines().map(str::trim);
    lines
        .by_ref()
        .find(|l| l.starts_with("| symbol |"))
        .expect("docs/INTERPOSITION.md has a `| symbol | ...` table");
    let sep = lines.next().expect("the table's separator line");
    assert!(sep.starts_with("|---"), "separator line: {sep}");
    let mut rows = BTreeMap::new();
    for line in lines.take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        assert_eq!(
            cells.len(),
            6,
            "a row has 4 cells (no `|` inside a cell): {line}"
        );
        let sym = cells[1]
            .strip_prefix('`')
            .and_then(|s| s.strip_suffix('`'))
            .unwrap_or_else(|| panic!("symbol cell is not `name`: {line}"));
        assert!(
            !sym.is_empty() && sym.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "not a symbol name: {sym:?}"
        );
        let hooked = match cells[2] {
            "yes" => true,
            "no" => false,
            other => panic!("{sym}: hooked? must be yes or no, not {other:?}"),
        };
        let row = Row {
            hooked,
            does: cells[3].to_string(),
            reason: cells[4].to_string(),
        };
        assert!(
            rows.insert(sym.to_string(), row).is_none(),
            "{sym} is in the table twice"
        );
    }
    assert!(!rows.is_empty(), "the table has no rows");
    rows
}

#[test]
fn every_export_is_a_yes_row() {
    let rows = table();
    for sym in exports() {
        match rows.get(&sym) {
            Some(r) => assert!(r.hooked, "{sym} is exported but the table says no"),
            None => panic!("{sym} is exported but not in docs/INTERPOSITION.md"),
        }
    }
}

#[test]
fn every_yes_row_is_exported_and_says_what_it_does() {
    let exported = exports();
    for (sym, r) in table().iter().filter(|(_, r)| r.hooked) {
        assert!(
            exported.contains(sym),
            "{sym} is marked hooked but is not in shim/exports.txt"
        );
        assert!(!r.does.is_empty(), "{sym}: hooked, but no behaviour given");
    }
}

#[test]
fn every_no_row_has_a_reason() {
    for (sym, r) in table().iter().filter(|(_, r)| !r.hooked) {
        assert!(
            !r.reason.is_empty(),
            "{sym}: not hooked, but no reason given"
        );
    }
}
