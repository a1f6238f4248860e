//! The layers depend downward only: ntb-sys → ntbdrv → transport → shim (→ the CLI on top), and
//! the integration tests use none of them (they drive real binaries). Checked from cargo's own
//! view of the workspace (`cargo metadata`, `cargo tree`), so a new package, or a new
//! `[dependencies]` line that breaks the layering, fails here; and libpcisock.so's dependency
//! graph is proved free of test-only crates.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Run cargo (the one running this test) in the workspace and return its stdout.
fn cargo(args: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("{cargo} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{cargo} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A workspace package as `cargo metadata` describes it.
struct Package {
    /// Its directory, relative to the workspace root ("" for the root package).
    dir: String,
    /// Declared dependencies: (name, kind), kind one of "normal", "dev", "build".
    deps: Vec<(String, String)>,
    /// `[package.metadata.pcisock] test-only = true`: nothing of the product may depend on it.
    test_only: bool,
}

fn workspace() -> BTreeMap<String, Package> {
    let meta: Value = serde_json::from_str(&cargo(&[
        "metadata",
        "--no-deps",
        "--format-version",
        "1",
        "--offline",
    ]))
    .unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = BTreeMap::new();
    for p in meta["packages"].as_array().unwrap() {
        let manifest = Path::new(p["manifest_path"].as_str().unwrap());
        let dir = manifest
            .parent()
            .unwrap()
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let deps = p["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["name"].as_str().unwrap().to_owned(),
                    d["kind"].as_str().unwrap_or("normal").to_owned(),
                )
            })
            .collect();
        let test_only = p["metadata"]["pcisock"]["test-only"].as_bool() == Some(true);
        out.insert(
            p["name"].as_str().unwrap().to_owned(),
            Package {
                dir,
                deps,
                test_only,
            },
        );
    }
    out
}

/// Every workspace package and the workspace packages it may depend on (any kind). A package
/// missing here fails the test: a new crate must say where it sits.
const ALLOWED: [(&str, &[&str]); 10] = [
    ("ntb-sys", &[]),
    ("ntbdrv", &["ntb-sys"]),
    ("ntbdrv-conformance", &["ntbdrv", "ntb-sys"]),
    ("pcisock-fabric", &["ntbdrv"]),
    ("pcisock-transport", &["ntbdrv", "pcisock-fabric"]),
    ("pcisock-policy", &[]),
    // Direct Connect: storage copies through an NTB window; no sockets, no transport.
    ("pcisock-dc", &["ntbdrv"]),
    ("pcisock-shim", &["pcisock-transport", "pcisock-policy"]),
    ("iperf-tests", &[]),
    // The CLI: the layers' public APIs; ntb-sys only for a test that corrupts a device header,
    // iperf-tests only for tests (its port picker; it is test-only, checked below).
    (
        "pcisock",
        &[
            "ntbdrv",
            "pcisock-dc",
            "pcisock-fabric",
            "pcisock-policy",
            "pcisock-transport",
            "pcisock-shim",
            "ntb-sys",
            "iperf-tests",
        ],
    ),
];

#[test]
fn every_package_depends_downward_only() {
    let ws = workspace();
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.into_iter().collect();
    for (name, p) in &ws {
        let Some(ok) = allowed.get(name.as_str()) else {
            panic!(
                "package {name} ({}) is not in tests/layering.rs's table: say which layers it may use",
                p.dir
            );
        };
        for (dep, kind) in &p.deps {
            if ws.contains_key(dep) {
                assert!(
                    ok.contains(&dep.as_str()),
                    "{name} must not depend on {dep} ({kind}; allowed: {ok:?})"
                );
            }
        }
    }
    // The root package is checked too: it is the CLI, at the top.
    assert_eq!(ws["pcisock"].dir, "");
    // The CLI reaches the device through ntbdrv's API, never its C definitions.
    let cli_sys: Vec<_> = ws["pcisock"]
        .deps
        .iter()
        .filter(|(d, k)| d == "ntb-sys" && k != "dev")
        .collect();
    assert!(cli_sys.is_empty(), "the CLI must not depend on ntb-sys");
    // Test-only packages are marked as such.
    for name in ["ntbdrv-conformance", "iperf-tests"] {
        assert!(ws[name].test_only, "{name} must say test-only = true");
    }
}

/// Crates that exist for tests: the workspace's test-only packages, their dependencies, and
/// every crate some package uses only as a dev-dependency.
fn test_only_crates(ws: &BTreeMap<String, Package>) -> BTreeSet<String> {
    let product_uses: BTreeSet<&str> = ws
        .values()
        .filter(|p| !p.test_only)
        .flat_map(|p| p.deps.iter())
        .filter(|(_, k)| k != "dev")
        .map(|(d, _)| d.as_str())
        .collect();
    let mut out = BTreeSet::new();
    for (name, p) in ws {
        if p.test_only {
            out.insert(name.clone());
        }
        for (dep, kind) in &p.deps {
            if (p.test_only || kind == "dev") && !product_uses.contains(dep.as_str()) {
                out.insert(dep.clone());
            }
        }
    }
    out
}

#[test]
fn the_library_links_no_test_only_crate() {
    let ws = workspace();
    let test_only = test_only_crates(&ws);
    for known in ["ntbdrv-conformance", "iperf-tests", "criterion"] {
        assert!(test_only.contains(known), "{known} must count as test-only");
    }
    // libpcisock.so is the shim's cdylib: everything it is built from (build scripts included).
    let tree = cargo(&[
        "tree",
        "-p",
        "pcisock-shim",
        "-e",
        "normal,build",
        "--prefix",
        "none",
        "--format",
        "{p}",
        "--offline",
    ]);
    let linked: BTreeSet<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        linked.contains("pcisock-shim") && linked.contains("ntbdrv"),
        "cargo tree said: {tree}"
    );
    let bad: Vec<_> = linked.iter().filter(|c| test_only.contains(**c)).collect();
    assert!(
        bad.is_empty(),
        "libpcisock.so's dependency graph holds test-only crates: {bad:?}"
    );
}

#[test]
fn layers_do_not_name_what_is_above_them() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // (directory, words its code must not use): the device knows no sockets; the transport
    // knows nothing of LD_PRELOAD or errno; the layers above use ntbdrv's API, not the
    // emulation's internals or the device's C definitions.
    for (dir, words) in [
        (
            "ntbdrv/src",
            &["TcpStream", "SOCK_STREAM", "LD_PRELOAD"][..],
        ),
        (
            "transport/src",
            &["LD_PRELOAD", "__errno_location", "dlsym", "emu::parse_size"][..],
        ),
        // The service knows sockets, but not how its clients intercept them.
        ("fabric/src", &["LD_PRELOAD", "dlsym"][..]),
        // The CLI: ntbdrv's API only (fault names, sizes), never the C definitions.
        ("src", &["ntb_sys", "NTBEMU_", "emu::parse_size"][..]),
    ] {
        for entry in walk(&root.join(dir)) {
            let text = std::fs::read_to_string(&entry).unwrap();
            for w in words {
                let hits: Vec<_> = text
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("//") && l.contains(w))
                    .collect();
                assert!(hits.is_empty(), "{} uses {w:?}: {hits:?}", entry.display());
            }
        }
    }
}

#[test]
fn no_module_is_borrowed_from_another_crate() {
    // `#[path]` pointing out of a crate compiles one file into two crates (the policy once was);
    // a shared concept is a crate of its own.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ws = workspace();
    for p in ws.values() {
        for entry in walk(&root.join(&p.dir).join("src")) {
            let text = std::fs::read_to_string(&entry).unwrap();
            let hits: Vec<_> = text
                .lines()
                .filter(|l| l.trim_start().starts_with("#[path") && l.contains(".."))
                .collect();
            assert!(hits.is_empty(), "{}: {hits:?}", entry.display());
        }
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

/// Files longer than `LONGEST` lines that wait to be split, each with the reason it waits; the
/// test fails when one of them is short enough, so the list only shrinks.
const LONG_WAITING: [(&str, &str); 0] = [];

/// The most lines a source file may have: a file longer than that holds more than one idea
/// (issue 16's "no source file outside generated code exceeds ~800 lines").
const LONGEST: usize = 800;

#[test]
fn no_source_file_is_longer_than_800_lines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut long = Vec::new();
    let mut done = Vec::new();
    let mut files = vec![root.join("build.rs")];
    for p in workspace().values() {
        for sub in ["src", "tests", "benches"] {
            files.extend(walk(&root.join(&p.dir).join(sub)));
        }
    }
    files.sort();
    files.dedup();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        if text.starts_with("// @generated") {
            continue;
        }
        let rel = f.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let lines = text.lines().count();
        let waits = LONG_WAITING.iter().any(|(p, _)| *p == rel);
        if lines > LONGEST && !waits {
            long.push(format!("{rel} ({lines} lines)"));
        } else if lines <= LONGEST && waits {
            done.push(rel);
        }
    }
    assert!(files.len() > 100, "the sources were not found");
    assert!(long.is_empty(), "split these by topic: {long:?}");
    assert!(
        done.is_empty(),
        "these are short enough now: take them out of LONG_WAITING: {done:?}"
    );
}
