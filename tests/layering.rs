//! The layers depend downward only: ntb-sys → ntbdrv → transport → shim (→ the CLI on top), and
//! the integration tests use none of them (they drive real binaries). Checked from each crate's
//! manifest, so a new `[dependencies]` line that breaks the layering fails here.

use std::collections::BTreeSet;
use std::path::Path;

/// Workspace crates named in the `[dependencies]`, `[dev-dependencies]` and
/// `[build-dependencies]` tables of a manifest.
fn internal_deps(manifest: &Path) -> BTreeSet<String> {
    const INTERNAL: [&str; 9] = [
        "ntb-sys",
        "ntbdrv",
        "fabric",
        "pcisock-fabric",
        "policy",
        "pcisock-policy",
        "transport",
        "pcisock-transport",
        "pcisock-shim",
    ];
    let text =
        std::fs::read_to_string(manifest).unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
    let mut in_deps = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_deps = matches!(
                l,
                "[dependencies]" | "[dev-dependencies]" | "[build-dependencies]"
            );
            continue;
        }
        if !in_deps || l.is_empty() || l.starts_with('#') {
            continue;
        }
        let name = l.split(['=', '.', ' ']).next().unwrap_or("").trim();
        if INTERNAL.contains(&name) {
            out.insert(match name {
                "pcisock-transport" => "transport".to_string(),
                "pcisock-fabric" => "fabric".to_string(),
                "pcisock-policy" => "policy".to_string(),
                _ => name.to_string(),
            });
        }
    }
    out
}

#[test]
fn crates_depend_downward_only() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let allowed: [(&str, &[&str]); 7] = [
        ("ntbdrv/ntb-sys", &[]),
        ("ntbdrv", &["ntb-sys"]),
        ("fabric", &["ntbdrv"]),
        ("transport", &["ntbdrv", "fabric"]),
        ("policy", &[]),
        ("shim", &["transport", "policy"]),
        ("iperf-tests", &[]),
    ];
    for (dir, ok) in allowed {
        let deps = internal_deps(&root.join(dir).join("Cargo.toml"));
        let bad: Vec<_> = deps.iter().filter(|d| !ok.contains(&d.as_str())).collect();
        assert!(
            bad.is_empty(),
            "{dir} must not depend on {bad:?} (allowed: {ok:?})"
        );
    }
    // The workspace table maps `transport` to the package pcisock-transport: keep it that way.
    let ws = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(ws.contains("transport = { path = \"transport\", package = \"pcisock-transport\" }"));
}

#[test]
fn layers_do_not_name_what_is_above_them() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // (directory, words its code must not use): the device knows no sockets; the transport
    // knows nothing of LD_PRELOAD or errno.
    for (dir, words) in [
        (
            "ntbdrv/src",
            &["TcpStream", "SOCK_STREAM", "LD_PRELOAD"][..],
        ),
        (
            "transport/src",
            &["LD_PRELOAD", "__errno_location", "dlsym"][..],
        ),
        // The service knows sockets, but not how its clients intercept them.
        ("fabric/src", &["LD_PRELOAD", "dlsym"][..]),
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

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}
