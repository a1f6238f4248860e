//! `pcisock fabric`: start, stop and inspect the host fabric service (docs/HOST-SERVICE.md). It
//! never pairs connections itself: the service does (the `fabric` crate); this module only starts,
//! stops and asks it.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fabric::Options;

use crate::cli::{unexpected, Arg, Args, CliError};

pub const HELP: &str = "\
Start, stop and inspect the host fabric service: the one owner of this host's NTB fabric, which
pairs flagged connections of every user and process by possession of their TCP sockets.

Usage: pcisock fabric start [--foreground] [--on-demand] [--socket PATH] [--ring-size SIZE]
                            [--window-size SIZE] [--bridge]
       pcisock fabric stop [--socket PATH]
       pcisock fabric status [--socket PATH]

Options:
  --socket PATH       The service's socket. Default for start: /run/pcisock/fabric-v16.sock
                      as root (the system service, which every local user can reach), else
                      this user's ($XDG_RUNTIME_DIR/pcisock/fabric-v16.sock or
                      /dev/shm/pcisock-UID/fabric-v16.sock; v16: the service protocol's version,
                      so that two versions' services never share a socket). Default for stop
                      and status: the one a
                      process would use (PCISOCK_FABRIC, else the system service if it
                      answers, else this user's).
  --foreground        Serve in this process instead of detaching (for systemd and tests)
  --on-demand         Exit after a minute with no client, listener or connection (how
                      libpcisock.so starts a service when none answers); without it the
                      service runs until 'pcisock fabric stop'
  --ring-size SIZE    The largest receive ring a connection gets per direction (power of two;
                      default 1M; less when its ends ask for less or space runs short)
  --window-size SIZE  Window space shared by all connections (default 512M)
  --bridge            Also pair across the bridge: open this host's side of the device the
                      environment names (PCISOCK_DEVICE, PCISOCK_EMU_DIR, PCISOCK_EMU_HOST,
                      PCISOCK_EMU_TOPOLOGY) and meet the other host's service there; only
                      processes of root or group pcisock are paired across it
  -h, --help          Print this help

'start' returns once the service answers; it fails (exit 1) if another service already
holds the socket. 'stop' is allowed to the service's owner and root.

Exit status: 0 ok, 1 if the service cannot be started, reached or stopped, 2 on a usage error.";

struct Opts {
    socket: Option<PathBuf>,
    foreground: bool,
    on_demand: bool,
    ring: Option<u64>,
    window: Option<u64>,
    bridge: bool,
}

fn options(args: &mut Args, start: bool) -> Result<Option<Opts>, CliError> {
    let mut o = Opts {
        socket: None,
        foreground: false,
        on_demand: false,
        ring: None,
        window: None,
        bridge: false,
    };
    let size = |args: &Args, name: &str, v: &str| {
        ntbdrv::parse_size(v).map_err(|e| args.usage(format!("{name} {v:?}: {e}")))
    };
    while let Some(arg) = args.next()? {
        match arg {
            Arg::Short('h') | Arg::Long("help") => return Ok(None),
            Arg::Long("socket") => o.socket = Some(args.value()?.into()),
            Arg::Long("foreground") if start => o.foreground = true,
            Arg::Long("on-demand") if start => o.on_demand = true,
            Arg::Long("bridge") if start => o.bridge = true,
            Arg::Long("ring-size") if start => {
                let v = args.value()?;
                let n = size(args, "--ring-size", &v)?;
                if !n.is_power_of_two() || !(4096..=1 << 30).contains(&n) {
                    return Err(
                        args.usage(format!("--ring-size {v:?}: a power of two from 4K to 1G"))
                    );
                }
                o.ring = Some(n);
            }
            Arg::Long("window-size") if start => {
                let v = args.value()?;
                o.window = Some(size(args, "--window-size", &v)?);
            }
            arg => return Err(unexpected("fabric", arg)),
        }
    }
    Ok(Some(o))
}

fn default_start_socket() -> PathBuf {
    if crate::ffi::uid() == 0 {
        fabric::client::system_socket()
    } else {
        fabric::client::user_socket()
    }
}

/// The service this environment's processes would use (`PCISOCK_FABRIC`, see
/// `transport::rendezvous`); where they map a device instead, the default service.
fn reach(socket: &Option<PathBuf>) -> PathBuf {
    socket
        .clone()
        .unwrap_or_else(|| match transport::rendezvous(|k| std::env::var(k).ok()) {
            transport::Rendezvous::Service { socket, .. } => socket,
            transport::Rendezvous::Device => fabric::client::default_socket(),
        })
}

pub fn main(mut args: Args, out: &mut String) -> Result<u8, CliError> {
    let sub = match args.next()? {
        None => return Err(args.usage("missing subcommand: start, stop or status")),
        Some(Arg::Short('h') | Arg::Long("help")) => {
            out.push_str(HELP);
            out.push('\n');
            return Ok(0);
        }
        Some(Arg::Value(w)) if ["start", "stop", "status"].map(OsString::from).contains(&w) => {
            args.string(w)?
        }
        Some(Arg::Value(w)) => {
            return Err(args.usage(format!(
                "unknown fabric subcommand {:?}: expected start, stop or status",
                w.to_string_lossy()
            )))
        }
        Some(arg) => return Err(unexpected("fabric", arg)),
    };
    let Some(o) = options(&mut args, sub == "start")? else {
        out.push_str(HELP);
        out.push('\n');
        return Ok(0);
    };
    match sub.as_str() {
        "start" => start(o, out),
        "stop" => {
            let socket = reach(&o.socket);
            let mut c = fabric::Client::connect(&socket)
                .map_err(|e| CliError::failed(format!("{}: {e}", socket.display())))?;
            c.stop()
                .map_err(|e| CliError::failed(format!("{}: {e}", socket.display())))?;
            let _ = writeln!(out, "stopped the fabric service at {}", socket.display());
            Ok(0)
        }
        _ => {
            let socket = reach(&o.socket);
            let s = fabric::Client::connect(&socket)
                .and_then(|mut c| c.status())
                .map_err(|e| {
                    CliError::failed(format!(
                        "no fabric service answers at {}: {e}",
                        socket.display()
                    ))
                })?;
            let _ = writeln!(
                out,
                "fabric service pid {} at {}\n  clients {}  listeners {}  pending offers {}  connections {}\n  window space {} of {} bytes\n  paired {}  declined {}  refused requests {}  connections reclaimed {}",
                s.service_pid,
                socket.display(),
                s.clients,
                s.listeners,
                s.offers,
                s.connections,
                s.window_used,
                s.window_bytes,
                s.paired,
                s.declined,
                s.refused,
                s.reclaimed
            );
            Ok(0)
        }
    }
}

fn start(o: Opts, out: &mut String) -> Result<u8, CliError> {
    let socket = o.socket.clone().unwrap_or_else(default_start_socket);
    if o.on_demand && !o.foreground && fabric::Client::connect(&socket).is_ok() {
        return Ok(0); // somebody started it meanwhile
    }
    let mut opts = Options::default();
    if let Some(r) = o.ring {
        opts.ring_bytes = r;
    }
    if let Some(w) = o.window {
        opts.window_bytes = w;
    }
    if o.on_demand {
        opts.idle_exit = Some(Duration::from_secs(60));
    }
    let detached = std::env::var_os("PCISOCK_FABRIC_DETACH").is_some();
    if o.foreground && detached {
        crate::ffi::close_inherited();
    }
    if o.foreground {
        let bridge = match o.bridge {
            true => Some(
                ntbdrv::recommended::open_default()
                    .map_err(|e| CliError::failed(format!("--bridge: {e}")))?,
            ),
            false => None,
        };
        let bound = fabric::bind(&socket).map_err(|e| CliError::failed(e.to_string()))?;
        if detached {
            crate::ffi::detach();
        }
        bound
            .serve_bridged(opts, bridge)
            .map_err(|e| CliError::failed(format!("fabric service: {e}")))?;
        return Ok(0);
    }
    // Detach: the same binary, serving in the foreground of its own session, with no stdio
    // and without any preloaded library of ours.
    let exe = std::env::current_exe().map_err(|e| CliError::failed(e.to_string()))?;
    let mut cmd = Command::new(exe);
    cmd.args(["fabric", "start", "--foreground", "--socket"])
        .arg(&socket)
        .env_remove("LD_PRELOAD")
        .env("PCISOCK_FABRIC_DETACH", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(r) = o.ring {
        cmd.arg("--ring-size").arg(r.to_string());
    }
    if let Some(w) = o.window {
        cmd.arg("--window-size").arg(w.to_string());
    }
    if o.on_demand {
        cmd.arg("--on-demand");
    }
    if o.bridge {
        cmd.arg("--bridge");
    }
    let mut child = cmd.spawn().map_err(|e| CliError::failed(e.to_string()))?;
    let t0 = Instant::now();
    loop {
        if let Ok(mut c) = fabric::Client::connect(&socket) {
            if let Ok(s) = c.status() {
                if s.service_pid == child.id() {
                    let _ = writeln!(
                        out,
                        "started the fabric service (pid {}) at {}",
                        s.service_pid,
                        socket.display()
                    );
                    return Ok(0);
                }
            }
        }
        if let Ok(Some(_)) = child.try_wait() {
            let mut why = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut why);
            }
            return Err(CliError::failed(
                why.trim().trim_start_matches("pcisock: ").to_string(),
            ));
        }
        if t0.elapsed() > Duration::from_secs(10) {
            return Err(CliError::failed(format!(
                "the fabric service (pid {}) did not answer at {} within 10 s",
                child.id(),
                socket.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    /// The help names the default sockets, whose names carry the protocol's version: it must
    /// name this build's.
    #[test]
    fn the_help_names_this_versions_sockets() {
        let name = fabric::client::socket_name();
        assert!(super::HELP.contains(&name), "the help does not name {name}");
        assert_eq!(
            fabric::client::system_socket(),
            std::path::Path::new("/run/pcisock").join(&name)
        );
    }
}
