//! Build script of the `pcisock` CLI: turns the shim's golden export list (`shim/exports.txt`, the
//! same file libpcisock.so's version script is generated from) into `$OUT_DIR/hooks.rs`, so that
//! `pcisock doctor` checks an installed library against exactly the hooks this build expects. It
//! writes nothing outside `$OUT_DIR` and never guesses: a hook missing from the list, or a
//! malformed line, fails the build.

use std::fmt::Write as _;
use std::path::PathBuf;

const EXPORTS: &str = "shim/exports.txt";

fn main() {
    println!("cargo:rerun-if-changed={EXPORTS}");
    println!("cargo:rerun-if-changed=build.rs");
    let list = std::fs::read_to_string(EXPORTS).unwrap_or_else(|e| panic!("read {EXPORTS}: {e}"));
    // The same reading as shim/build.rs: one symbol per line, blank lines and `#` comments skipped.
    let mut names: Vec<&str> = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for name in &names {
        let ident = name.chars().all(|c| c == '_' || c.is_ascii_alphanumeric())
            && !name.starts_with(|c: char| c.is_ascii_digit());
        assert!(ident, "{EXPORTS}: {name:?} is not a C symbol name");
    }
    let n = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(n, names.len(), "{EXPORTS} lists a symbol twice");
    assert!(!names.is_empty(), "{EXPORTS} lists no symbols");

    let mut out = String::from(
        "/// The hooks libpcisock.so must export (from `shim/exports.txt`, sorted).\n",
    );
    out.push_str("pub const HOOKS: &[&str] = &[\n");
    for name in &names {
        let _ = writeln!(out, "    {name:?},");
    }
    out.push_str("];\n");
    let path = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("hooks.rs");
    std::fs::write(&path, out).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
