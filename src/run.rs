//! `pcisock run`: exec a program with libpcisock.so preloaded (like `onload` or `smc_run`), and
//! where that library is found (shared with `pcisock doctor`). It never changes the program's
//! arguments, and its environment only by LD_PRELOAD and the `PCISOCK_*` variables its options name
//! (and the statistics files it reads back); pcisock only waits beside the program, passing signals
//! on.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cli::{unexpected, Arg, Args, CliError};
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
      --stats-file PATH  Write each process's connection counters, NTB and TCP fallbacks, to PATH
                         (sets PCISOCK_STATS_FILE): a directory (or a path ending in /) gets
                         one file per process, DIR/pcisock-PID.json; %p in PATH is replaced by
                         the pid; any other PATH is one file that each process rewrites
  -q, --quiet            No fallback report: run PROGRAM in place of pcisock (exec)
  -h, --help             Print this help

Options not given leave the corresponding variable as it is in the environment. PROGRAM gets
libpcisock.so put first in LD_PRELOAD (an existing LD_PRELOAD is kept after it). pcisock waits
for it and, when it exits, prints one line on stderr if flagged connections of PROGRAM or of
its child processes fell back to TCP, with the count for each reason code ('pcisock explain
REASON' says why and what to do), and nothing if they all used the NTB path. It reads the
processes' statistics files for this: those of --stats-file or PCISOCK_STATS_FILE if given
(a single shared file shows only the process that wrote it last), else files in a private
directory that it removes afterwards. While waiting it passes SIGTERM, SIGHUP, SIGUSR1 and
SIGUSR2 on to PROGRAM and ignores SIGINT and SIGQUIT (the terminal sends those to PROGRAM
itself). With --quiet, PROGRAM replaces pcisock (exec) and nothing is reported.

A statically linked PROGRAM cannot load the library: pcisock says so on stderr and runs it on
plain TCP, or, with --strict (or PCISOCK_STRICT=1), refuses to run it. The library is
$PCISOCK_LIB if set, else libpcisock.so next to the pcisock executable (or in ../lib/ or, in a
cargo build tree, deps/ beside it).

Exit status: PROGRAM's own (killed by a signal: pcisock ends by the same signal); 2 if the
command line is wrong, the library is not found, or PROGRAM is statically linked under
--strict; 1 if PROGRAM cannot be started.";

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
    quiet: bool,
    program: Vec<OsString>,
}

fn parse(mut args: Args) -> Result<Option<Request>, CliError> {
    let mut r = Request::default();
    while let Some(arg) = args.next()? {
        match arg {
            // The program (after `--` or not): it and everything after it go to it as given.
            Arg::Value(program) => {
                r.program.push(program);
                r.program.extend(args.rest()?);
                break;
            }
            Arg::Short('h') | Arg::Long("help") => return Ok(None),
            Arg::Long("ports") => r.ports = Some(args.value()?),
            Arg::Long("log") => r.log = Some(args.value()?),
            Arg::Long("strict") => r.strict = true,
            Arg::Short('q') | Arg::Long("quiet") => r.quiet = true,
            Arg::Long("stats-file") => {
                let v = args.value()?;
                if v.is_empty() {
                    return Err(args.usage("--stats-file needs a path"));
                }
                r.stats_file = Some(v.into());
            }
            arg => return Err(unexpected("run", arg)),
        }
    }
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
        cmd.env(ENV_STATS, f);
    }
    let cannot = |err: std::io::Error| {
        CliError::failed(format!(
            "cannot run {}: {err}",
            Path::new(&r.program[0]).display()
        ))
    };
    if r.quiet {
        // exec only returns on failure.
        return Err(cannot(cmd.exec()));
    }
    let stats = StatsPlace::choose(r.stats_file.as_deref())?;
    cmd.env(ENV_STATS, stats.template());
    let started = std::time::SystemTime::now();
    let mut child = cmd.spawn().map_err(cannot)?;
    signals::forward_to(child.id());
    let status = child.wait();
    signals::restore();
    let tally = Tally::read(&stats.files(started));
    if let Some(line) = tally.line() {
        eprintln!("{line}");
    }
    drop(stats);
    let status = status.map_err(|e| CliError::failed(format!("waiting for the program: {e}")))?;
    Ok(signals::exit_like(status))
}

/// The variable that names the statistics files.
const ENV_STATS: &str = "PCISOCK_STATS_FILE";

/// Where the program's processes write their statistics for the report.
enum StatsPlace {
    /// A template given by the user (`--stats-file` or `PCISOCK_STATS_FILE`).
    Given(PathBuf),
    /// Our own directory, removed when done.
    Private(PathBuf),
}

impl StatsPlace {
    fn choose(option: Option<&std::ffi::OsStr>) -> Result<StatsPlace, CliError> {
        let given = option
            .map(OsString::from)
            .or_else(|| std::env::var_os(ENV_STATS).filter(|v| !v.is_empty()));
        if let Some(g) = given {
            return Ok(StatsPlace::Given(PathBuf::from(g)));
        }
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|d| d.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("pcisock-run-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir); // a leftover of an earlier pcisock with our pid
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| {
                CliError::failed(format!(
                    "cannot make {} for the fallback report: {e} (--quiet runs without it)",
                    dir.display()
                ))
            })?;
        Ok(StatsPlace::Private(dir))
    }

    /// The value of PCISOCK_STATS_FILE.
    fn template(&self) -> OsString {
        match self {
            StatsPlace::Given(p) => p.clone().into_os_string(),
            StatsPlace::Private(d) => {
                let mut v = d.clone().into_os_string();
                v.push("/");
                v
            }
        }
    }

    /// The statistics files written since `since`.
    fn files(&self, since: std::time::SystemTime) -> Vec<PathBuf> {
        let template = match self {
            StatsPlace::Given(p) => p.clone(),
            StatsPlace::Private(d) => d.join(""),
        };
        stats_files(&template)
            .into_iter()
            .filter(|f| {
                std::fs::metadata(f)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t >= since)
            })
            .collect()
    }
}

impl Drop for StatsPlace {
    fn drop(&mut self) {
        if let StatsPlace::Private(d) = self {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// The files a PCISOCK_STATS_FILE value stands for, as the library names them: `%p` replaced
/// by a pid; a directory's (or a path ending in /) `pcisock-PID.json`; else the path itself.
fn stats_files(template: &Path) -> Vec<PathBuf> {
    let b = template.as_os_str().as_bytes();
    let per_pid = |dir: &Path, prefix: &[u8], suffix: &[u8]| -> Vec<PathBuf> {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut v: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .filter(|e| {
                let n = e.file_name();
                let n = n.as_bytes();
                n.len() > prefix.len() + suffix.len()
                    && n.starts_with(prefix)
                    && n.ends_with(suffix)
                    && n[prefix.len()..n.len() - suffix.len()]
                        .iter()
                        .all(u8::is_ascii_digit)
            })
            .map(|e| e.path())
            .collect();
        v.sort();
        v
    };
    if let Some(name) = template
        .file_name()
        .filter(|n| n.as_bytes().windows(2).any(|w| w == b"%p"))
    {
        let n = name.as_bytes();
        let at = n.windows(2).position(|w| w == b"%p").unwrap_or(0);
        let dir = template.parent().filter(|p| !p.as_os_str().is_empty());
        return per_pid(dir.unwrap_or(Path::new(".")), &n[..at], &n[at + 2..]);
    }
    if b.ends_with(b"/") || template.is_dir() {
        return per_pid(template, b"pcisock-", b".json");
    }
    vec![template.to_path_buf()]
}

/// Connections of the program's processes, summed over their statistics files.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    ntb: u64,
    /// Flagged connections that fell back, by reason name (in code order), and those whose
    /// file names no reason (an older library).
    fallbacks: std::collections::BTreeMap<(u32, String), u64>,
}

impl Tally {
    fn read(files: &[PathBuf]) -> Tally {
        let mut t = Tally::default();
        for f in files {
            if let Ok(text) = std::fs::read_to_string(f) {
                t.add(&text);
            }
        }
        t
    }

    /// Add one statistics file's counts (the library's JSON: `ntb_connections`,
    /// `tcp_connections`, and `fallbacks` by reason name). A file that is not JSON counts nothing.
    fn add(&mut self, json: &str) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
            return;
        };
        self.ntb += v["ntb_connections"].as_u64().unwrap_or(0);
        let tcp = v["tcp_connections"].as_u64().unwrap_or(0);
        let Some(fallbacks) = v["fallbacks"].as_object() else {
            if tcp > 0 {
                *self
                    .fallbacks
                    .entry((u32::MAX, "unknown".into()))
                    .or_default() += tcp;
            }
            return;
        };
        for (name, n) in fallbacks {
            let n = n.as_u64().unwrap_or(0);
            let code = transport::Reason::ALL
                .into_iter()
                .find(|r| r.name() == name)
                .map_or(u32::MAX, |r| r.code());
            if code == transport::Reason::NotFlagged.code() {
                continue; // not a flagged connection
            }
            *self.fallbacks.entry((code, name.to_owned())).or_default() += n;
        }
    }

    /// The report line, if any flagged connection fell back.
    fn line(&self) -> Option<String> {
        let fell: u64 = self.fallbacks.values().sum();
        if fell == 0 {
            return None;
        }
        let mut by: Vec<_> = self.fallbacks.iter().filter(|(_, n)| **n > 0).collect();
        by.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let parts: Vec<String> = by
            .iter()
            .map(|((code, name), n)| {
                if *code == u32::MAX {
                    format!("{n} {name}")
                } else {
                    format!("{n} {name} ({code})")
                }
            })
            .collect();
        let total = fell + self.ntb;
        let conns = if total == 1 {
            "connection"
        } else {
            "connections"
        };
        Some(format!(
            "pcisock run: {fell} of {total} flagged {conns} fell back to TCP: {}; 'pcisock explain REASON' says why",
            parts.join(", ")
        ))
    }
}

mod signals {
    //! Passing signals on to the program while pcisock waits for it, and ending like it.
    //!
    //! # Safety
    //! Signal dispositions of this process only; the handler makes one async-signal-safe call
    //! (kill) with a pid read from an atomic.
    #![allow(unsafe_code)]
    use std::sync::atomic::{AtomicI32, Ordering::Relaxed};

    static CHILD: AtomicI32 = AtomicI32::new(0);
    const FORWARDED: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2];
    const IGNORED: [libc::c_int; 2] = [libc::SIGINT, libc::SIGQUIT];

    extern "C" fn forward(sig: libc::c_int) {
        let pid = CHILD.load(Relaxed);
        if pid > 0 {
            // SAFETY: kill is async-signal-safe and takes plain integers.
            unsafe { libc::kill(pid, sig) };
        }
    }

    /// Set after the spawn, so the program inherits none of these dispositions.
    pub fn forward_to(pid: u32) {
        CHILD.store(pid as i32, Relaxed);
        for sig in FORWARDED {
            // SAFETY: installing a handler that only makes an async-signal-safe call.
            unsafe { libc::signal(sig, forward as *const () as libc::sighandler_t) };
        }
        for sig in IGNORED {
            // SAFETY: plain integers.
            unsafe { libc::signal(sig, libc::SIG_IGN) };
        }
    }

    pub fn restore() {
        CHILD.store(0, Relaxed);
        for sig in FORWARDED.into_iter().chain(IGNORED) {
            // SAFETY: plain integers.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }

    /// The exit code for the program's status; a program killed by a signal makes pcisock end
    /// by the same signal (without a core file of its own).
    pub fn exit_like(status: std::process::ExitStatus) -> u8 {
        use std::os::unix::process::ExitStatusExt;
        if let Some(code) = status.code() {
            return code as u8;
        }
        let sig = status.signal().unwrap_or(libc::SIGKILL);
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: a live rlimit; then plain integers. raise returns only if the signal does not
        // end the process.
        unsafe {
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::raise(sig);
        }
        (128 + sig) as u8
    }
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
    fn the_report_sums_files_and_leaves_out_unflagged_connections() {
        let mut t = Tally::default();
        assert_eq!(t.line(), None);
        t.add(r#"{"pid":1,"ntb_connections":3,"tcp_connections":0,"fallbacks":{},"x":1}"#);
        assert_eq!(t.line(), None, "all on NTB: silent");
        t.add(r#"{"pid":2,"ntb_connections":0,"tcp_connections":3,"fallbacks":{"NoListener":1,"NoPermission":2}}"#);
        t.add(r#"{"pid":3,"ntb_connections":1,"tcp_connections":2,"fallbacks":{"NotFlagged":1,"NoListener":1}}"#);
        assert_eq!(
            t.line().unwrap(),
            "pcisock run: 4 of 8 flagged connections fell back to TCP: 2 NoListener (4), \
             2 NoPermission (16); 'pcisock explain REASON' says why"
        );
        // A file of an older library, without the breakdown.
        let mut t = Tally::default();
        t.add(r#"{"ntb_connections":0,"tcp_connections":1,"connections":[]}"#);
        assert_eq!(
            t.line().unwrap(),
            "pcisock run: 1 of 1 flagged connection fell back to TCP: 1 unknown; \
             'pcisock explain REASON' says why"
        );
    }

    #[test]
    fn stats_files_follow_the_librarys_names() {
        let d = std::env::temp_dir().join(format!("pcisock-run-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        for n in [
            "pcisock-12.json",
            "pcisock-7.json",
            "pcisock-x.json",
            "s.12.out",
            "s.tmp",
        ] {
            std::fs::write(d.join(n), "{}").unwrap();
        }
        let names = |v: Vec<PathBuf>| -> Vec<String> {
            v.iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            names(stats_files(&d)),
            vec!["pcisock-12.json", "pcisock-7.json"]
        );
        assert_eq!(names(stats_files(&d.join("s.%p.out"))), vec!["s.12.out"]);
        assert_eq!(stats_files(&d.join("one.json")), vec![d.join("one.json")]);
        std::fs::remove_dir_all(&d).unwrap();
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
