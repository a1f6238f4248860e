//! Build script of libpcisock.so: turns `exports.txt` (the golden list of hooked symbols) into
//! a linker version script, so the library exports exactly the hooks and nothing of Rust's.

use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=exports.txt");
    let list = std::fs::read_to_string("exports.txt").expect("shim/exports.txt");
    let mut names: Vec<&str> = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let n = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(n, names.len(), "exports.txt lists a symbol twice");
    let mut script = String::from("{\n");
    // The loom build (`--cfg loom`, for the model in tests/loom_table.rs) leaves the hooks out:
    // that library exports nothing.
    if std::env::var_os("CARGO_CFG_LOOM").is_none() {
        script.push_str("  global:\n");
        for name in &names {
            let _ = writeln!(script, "    {name};");
        }
    }
    script.push_str("  local: *;\n};\n");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("exports.map");
    std::fs::write(&out, script).expect("write the version script");
    println!(
        "cargo:rustc-cdylib-link-arg=-Wl,--version-script={}",
        out.display()
    );
}
