//! `pcisock run`: exec a program with libpcisock.so preloaded (like `onload` or `smc_run`), and
//! where that library is found (shared with `pcisock doctor`).

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cli::{unknown_option, Arg, Args, CliError};
use crate::config::{Config, ENV_LOG, ENV_PORTS, ENV_STRICT};

pub const HELP: &str = "\
Run a program with libpcisock.so preloaded, so its flagged TCP connections use the NTB path.

Usage: pcisock run [OPTIONS] [--] PROGRAM [ARGS...]

Options:
      --ports LIST       Flag these ports too (sets PCISOCK_PORTS), e.g. 6379 or 6000-6010,7000;
                         '*' flags every port. Ports 5001 and 5201 are flagged by default.
      --strict           A flagged connection that cannot use the NTB path fails instead of
                         falling back to TCP (sets PCISOCK_STRICT=1)
      --log LEVEL        off, error, warn, info or debug (sets PCISOCK_LOG; default off)
      --stats-file PATH  Write the process's connection counters, NTB and TCP fallbacks, to PATH
                         (sets PCISOCK_STATS_FILE)
  -h, --help             Print this help

Options not given leave the corresponding variable as it is in the environment. PROGRAM is run
in place of pcisock (exec), with libpcisock.so put first in LD_PRELOAD (an existing LD_PRELOAD
is kept after it). A statically linked PROGRAM cannot load the library: pcisock says so on
stderr and runs it on plain TCP, or, with --strict (or PCISOCK_STRICT=1), refuses to run it.
The library is $PCISOCK_LIB if set, else libpcisock.so next to the pcisock executable (or in
../lib/ or, in a cargo build tree, deps/ beside it).

Exit status: PROGRAM's own; 2 if the command line is wrong, the library is not found, or
PROGRAM is statically linked under --strict; 1 if PROGRAM cannot be started.";

/// The variable that overrides where the library is.
pub const ENV_LIB: &str = "PCISOCK_LIB";
/// The library's file name.
pub const LIB_NAME: &str = "libpcisock.so";

/// Find libpcisock.so: `$PCISOCK_LIB` (which must exist), else next to the executable, else in
/// `../lib/` or `deps/` beside it. Returns the canonical path, or a message listing where it looked.
pub fn locate_library() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(ENV_LIB).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        return match std::fs::canonicalize(&path) {
            Ok(p) if p.is_file() => Ok(p),
            Ok(_) => Err(format!(
                "{LIB_NAME} not found: {ENV_LIB}={} is not a file",
                path.display()
            )),
            Err(e) => Err(format!(
                "{LIB_NAME} not found: {ENV_LIB}={}: {e}",
                path.display()
            )),
        };
    }
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the pcisock executable: {e}"))?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let candidates = [
        dir.join(LIB_NAME),
        dir.join("../lib").join(LIB_NAME),
        dir.join("deps").join(LIB_NAME),
    ];
    for c in &candidates {
        if let Ok(p) = std::fs::canonicalize(c) {
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let looked: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
    Err(format!(
        "{LIB_NAME} not found (looked for {}); build it or set {ENV_LIB}",
        looked.join(", ")
    ))
}

/// What `pcisock run` was asked to do.
#[derive(Debug, Default, PartialEq, Eq)]
struct Request {
    ports: Option<String>,
    strict: bool,
    log: Option<String>,
    stats_file: Option<OsString>,
    program: Vec<OsString>,
}

fn parse(mut args: Args) -> Result<Option<Request>, CliError> {
    let mut r = Request::default();
    while let Some(arg) = args.next()? {
        match arg {
            Arg::EndOfOptions => break,
            Arg::Word(w) => {
                args.push_front(w.into());
                break;
            }
            Arg::Option { name, inline } => match name.as_str() {
                "-h" | "--help" => return Ok(None),
                "--ports" => r.ports = Some(args.value(&name, inline)?),
                "--log" => r.log = Some(args.value(&name, inline)?),
                "--strict" => {
                    args.no_value(&name, inline)?;
                    r.strict = true;
                }
                "--stats-file" => {
                    let v = args.value(&name, inline)?;
                    if v.is_empty() {
                        return Err(args.usage("--stats-file needs a path"));
                    }
                    r.stats_file = Some(v.into());
                }
                _ => return Err(unknown_option(args.command(), &name)),
            },
        }
    }
    r.program = args.rest();
    match r.program.first() {
        Some(p) if !p.is_empty() => {}
        _ => return Err(args.usage("no program given: pcisock run [OPTIONS] -- PROGRAM [ARGS...]")),
    }
    // Check the values with the library's own parser, so a typo is caught here and not turned
    // into a pass-through configuration inside the program.
    let (_, errors) = Config::from_env_vars(|name| match name {
        ENV_PORTS => r.ports.clone(),
        ENV_LOG => r.log.clone(),
        _ => None,
    });
    if let Some(e) = errors.first() {
        let option = if e.to_string().starts_with(ENV_PORTS) {
            "--ports"
        } else {
            "--log"
        };
        return Err(args.usage(format!("bad {option}: {e}")));
    }
    Ok(Some(r))
}

/// Where `exec` would find `program`: itself if it holds a '/', else the first executable
/// match in `$PATH`.
fn find_program(program: &std::ffi::OsStr) -> Option<PathBuf> {
    if program.as_bytes().contains(&b'/') {
        return Some(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// An ELF executable without a program interpreter (PT_INTERP): the dynamic loader never runs
/// for it, so LD_PRELOAD has no effect. False for scripts, dynamic executables and anything
/// unreadable or not ELF.
fn is_static_elf(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    const PT_INTERP: u32 = 3;
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let mut h = [0u8; 64];
    if f.read_exact(&mut h).is_err() || &h[..4] != b"\x7fELF" || h[5] != 1 {
        return false; // not ELF, or not little-endian
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as u64;
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let (phoff, phentsize, phnum) = match h[4] {
        1 => (u32_at(&h, 0x1C) as u64, u16_at(&h, 0x2A), u16_at(&h, 0x2C)),
        2 => (
            u64::from_le_bytes(h[0x20..0x28].try_into().unwrap()),
            u16_at(&h, 0x36),
            u16_at(&h, 0x38),
        ),
        _ => return false,
    };
    if phentsize < 4 || phnum == 0 || phnum > 4096 {
        return false;
    }
    let mut ph = vec![0u8; (phentsize * phnum) as usize];
    if f.seek(SeekFrom::Start(phoff)).is_err() || f.read_exact(&mut ph).is_err() {
        return false;
    }
    // A static-pie executable has a dynamic section but no interpreter: it is static too.
    !ph.chunks_exact(phentsize as usize)
        .any(|e| u32_at(e, 0) == PT_INTERP)
}

/// `LD_PRELOAD` with `lib` first (not repeated if already listed).
fn preload_value(lib: &Path, existing: Option<OsString>) -> OsString {
    let mut value = OsString::from(lib.as_os_str());
    if let Some(existing) = existing {
        for entry in existing
            .as_bytes()
            .split(|b| *b == b':' || *b == b' ')
            .filter(|e| !e.is_empty())
        {
            if entry != lib.as_os_str().as_bytes() {
                value.push(":");
                value.push(std::ffi::OsStr::from_bytes(entry));
            }
        }
    }
    value
}

pub fn main(args: Args, out: &mut String) -> Result<u8, CliError> {
    let Some(r) = parse(args)? else {
        out.push_str(HELP);
        out.push('\n');
        return Ok(0);
    };
    let lib = locate_library().map_err(|e| CliError::usage("run", e))?;
    if lib
        .as_os_str()
        .as_bytes()
        .iter()
        .any(|b| matches!(b, b':' | b' '))
    {
        return Err(CliError::usage(
            "run",
            format!(
                "the library path {} holds ':' or a space, which LD_PRELOAD cannot carry",
                lib.display()
            ),
        ));
    }
    if let Some(path) = find_program(&r.program[0]) {
        if is_static_elf(&path) {
            let what = format!(
                "{} is statically linked: LD_PRELOAD cannot load libpcisock.so into it, so its \
                 connections would all stay on plain TCP",
                path.display()
            );
            if r.strict || Config::from_env().0.strict() {
                return Err(CliError::usage(
                    "run",
                    format!("{what} (refused under strict)"),
                ));
            }
            eprintln!("pcisock run: warning: {what}");
        }
    }
    let mut cmd = Command::new(&r.program[0]);
    cmd.args(&r.program[1..]);
    cmd.env(
        "LD_PRELOAD",
        preload_value(&lib, std::env::var_os("LD_PRELOAD")),
    );
    if let Some(p) = &r.ports {
        cmd.env(ENV_PORTS, p);
    }
    if r.strict {
        cmd.env(ENV_STRICT, "1");
    }
    if let Some(l) = &r.log {
        cmd.env(ENV_LOG, l);
    }
    if let Some(f) = &r.stats_file {
        cmd.env("PCISOCK_STATS_FILE", f);
    }
    // exec only returns on failure.
    let err = cmd.exec();
    Err(CliError::failed(format!(
        "cannot run {}: {err}",
        Path::new(&r.program[0]).display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_words(v: &[&str]) -> Result<Option<Request>, CliError> {
        parse(Args::new("run", v.iter().map(OsString::from)))
    }

    #[test]
    fn parses_options_and_program() {
        let r = parse_words(&[
            "--ports",
            "6379",
            "--strict",
            "--log=debug",
            "--stats-file",
            "/tmp/s",
            "--",
            "app",
            "-x",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(r.ports.as_deref(), Some("6379"));
        assert!(r.strict);
        assert_eq!(r.log.as_deref(), Some("debug"));
        assert_eq!(r.stats_file, Some("/tmp/s".into()));
        assert_eq!(r.program, vec![OsString::from("app"), OsString::from("-x")]);
        // Without `--`, the first word starts the program and its options are its own.
        let r = parse_words(&["app", "--ports", "1"]).unwrap().unwrap();
        assert_eq!(r.program.len(), 3);
        assert!(r.ports.is_none());
    }

    #[test]
    fn bad_command_lines_are_usage_errors() {
        for bad in [
            &["--ports", "70000", "--", "x"][..],
            &["--log", "loud", "x"],
            &["--bogus", "x"],
            &[],
            &["--"],
            &["--strict=1", "x"],
            &["--ports"],
        ] {
            let e = parse_words(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
        assert!(parse_words(&["--help"]).unwrap().is_none());
    }

    #[test]
    fn preload_goes_first_once() {
        let lib = Path::new("/x/libpcisock.so");
        assert_eq!(preload_value(lib, None), OsString::from("/x/libpcisock.so"));
        assert_eq!(
            preload_value(lib, Some("/a.so /b.so".into())),
            OsString::from("/x/libpcisock.so:/a.so:/b.so")
        );
        assert_eq!(
            preload_value(lib, Some("/x/libpcisock.so:/a.so".into())),
            OsString::from("/x/libpcisock.so:/a.so")
        );
    }
}
