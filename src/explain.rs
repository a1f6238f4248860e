//! `pcisock explain`: what a fallback reason code means, or how the current configuration (the same
//! `PCISOCK_*` variables and rules file the library reads) decides a connection. It never opens the
//! device or a socket: the answer comes from the reason codes and the policy alone.

use std::fmt::Write as _;
use std::net::IpAddr;

use transport::Reason;

use crate::cli::{parse_number, unexpected, Arg, Args, CliError};
use crate::config::{Config, Role, ENV_CONF, ENV_DEFAULT_PORTS, ENV_PORTS, ENV_STRICT};

pub const HELP: &str = "\
Explain why a connection does or does not use the NTB path.

Usage: pcisock explain                 List every fallback reason with its meaning
       pcisock explain REASON          Explain one reason, by name (NoListener) or code (4)
       pcisock explain --port N [--role client|server] [--addr IP] [--program NAME]
                                       Decide a connection with the current configuration

Options:
      --port N          The port: the one connected to (client) or listened on (server)
      --role ROLE       client (connect) or server (listen); default: show both
      --addr IP         The peer's address (client) or the local one (server); default: unknown,
                        so only rules for any address (*) match
      --program NAME    The program name (file name of argv[0]); default: none, so rules naming a
                        program do not match
  -h, --help            Print this help

The configuration is read from this environment exactly as libpcisock.so reads it: PCISOCK_CONF
(rules file), PCISOCK_PORTS, PCISOCK_DEFAULT_PORTS, PCISOCK_STRICT, PCISOCK_LOG. Configuration
errors are printed; with any error the library passes every connection through to TCP.
A flagged connection is only tried on the NTB path: if that fails it falls back to TCP with one
of the reason codes (or fails, with PCISOCK_STRICT=1).

Exit status: 0, or 2 on a usage error (unknown reason, bad port or address).";

fn all_reasons() -> impl Iterator<Item = Reason> {
    Reason::ALL.into_iter()
}

/// A reason by name (any case) or code.
fn find_reason(word: &str) -> Option<Reason> {
    if let Ok(code) = word.trim().parse::<u32>() {
        return Reason::from_code(code);
    }
    all_reasons().find(|r| r.name().eq_ignore_ascii_case(word.trim()))
}

fn list_reasons(out: &mut String) {
    out.push_str("Reasons a flagged connection uses TCP instead of the NTB path:\n");
    let width = all_reasons().map(|r| r.name().len()).max().unwrap_or(0);
    for r in all_reasons() {
        let _ = writeln!(
            out,
            "  {:>2}  {:<width$} {}",
            r.code(),
            r.name(),
            r.explain()
        );
    }
    out.push_str("Explain one with 'pcisock explain REASON'; decide a connection with 'pcisock explain --port N'.\n");
}

fn explain_reason(r: Reason, out: &mut String) {
    let _ = writeln!(out, "{} (code {}): {}", r.name(), r.code(), r.explain());
    let hint = match r {
        Reason::NotFlagged => "Flag the port with PCISOCK_PORTS or a rules file (PCISOCK_CONF); check with 'pcisock explain --port N'.",
        Reason::NoDevice => "Run 'pcisock doctor'; PCISOCK_LOG=warn shows the device error in the application.",
        Reason::LinkDown => "'pcisock emu info' shows the link and any injected fault ('pcisock emu clear' removes faults). A connection already on the NTB path when the link goes down is not cut: it fails over to its own TCP socket and returns when the link is back ('pcisock stats': PATH tcp-failover, FAILOVERS, FAILBACKS, TCP_US; PCISOCK_STRICT=1 resets it instead). One made while the link was down moves onto the NTB path once the link is up, over a device (a late upgrade: 'late_upgrades' in the stats file; docs/PROTOCOL.md section 6 says what is not carried yet).",
        Reason::NoListener => "Run the server under pcisock too (pcisock run -- SERVER), with the port flagged there. If it is: the two must meet through the same host fabric service ('pcisock doctor' names the one this environment uses). Processes of different users meet only through the system service: start it as root ('pcisock fabric start', or the systemd unit), or start the server as root (it starts the system service on demand). Two processes that map a device (PCISOCK_FABRIC=device, PCISOCK_EMU_DIR) must map the same one, and each user has their own.",
        Reason::PeerDeclined => "The peer's configuration does not flag this port or program; check 'pcisock explain' on the peer.",
        Reason::NoAnswer => "The peer is slow or stuck; check the peer with 'pcisock stats' and the link with 'pcisock emu info'.",
        Reason::NoWindowSpace | Reason::NoDoorbell => {
            "Too many connections, or leases of dead processes: 'pcisock stats' lists them, 'pcisock emu reclaim' frees dead ones."
        }
        Reason::BadPeer => "The two sides run different pcisock versions, or the peer is misbehaving.",
        Reason::NoOffer => "Run the client under pcisock too, with the port flagged there.",
        Reason::NotInet => "Only IPv4/IPv6 TCP sockets can use the NTB path.",
        Reason::TableFull => "Too many pending upgrades or leases at once (each connection holds a few of the host table's lease slots); 'pcisock emu reclaim' frees the leases of dead processes.",
        Reason::BadConfig => "'pcisock explain --port N' prints the configuration errors.",
        Reason::Unsupported => "The application used the socket before the upgrade finished (e.g. sent data first).",
        Reason::ClosedBeforeAccept => "Nothing to do: the client hung up before the server got to it, and no byte was lost.",
        Reason::NoPermission => "A process that maps the device itself (PCISOCK_FABRIC=device, or a device named by PCISOCK_EMU_DIR and friends) changed user after the device was opened (workers that drop privileges after listen, e.g. nginx's 'user www-data;', or a setuid after listen), or names another user's device: each user's emulated device is private to that user (directory mode 0700). Let the processes meet through the host fabric service instead (the default: unset PCISOCK_FABRIC and the PCISOCK_EMU_* variables), which serves every user; or run all of the server's processes as one user. PCISOCK_LOG=warn names the file that was refused.",
        Reason::Untrusted => "Across the bridge between two hosts the host fabric services pair only processes they trust with every connection of the host (without a kernel helper a process maps the whole window): run the program as root or as a member of group pcisock (both ends), or leave it on TCP.",
    };
    let _ = writeln!(out, "  what to do: {hint}");
}

#[derive(Debug, Default)]
struct Query {
    port: Option<u16>,
    role: Option<Role>,
    addr: Option<IpAddr>,
    program: Option<String>,
}

fn role_word(role: Role) -> &'static str {
    match role {
        Role::Client => "client (connect to port",
        Role::Server => "server (listen on port",
    }
}

fn decide(q: &Query, port: u16, out: &mut String) {
    let (config, errors) = Config::from_env();
    decide_with(&config, &errors, q, port, out);
}

fn decide_with(
    config: &Config,
    errors: &[crate::config::ConfigError],
    q: &Query,
    port: u16,
    out: &mut String,
) {
    let shown = |name: &str| match std::env::var_os(name) {
        Some(v) => format!("{name}={}", v.to_string_lossy()),
        None => format!("{name} unset"),
    };
    let vars: Vec<String> = [ENV_CONF, ENV_PORTS, ENV_DEFAULT_PORTS, ENV_STRICT]
        .iter()
        .map(|n| shown(n))
        .collect();
    let _ = writeln!(out, "configuration: {}", vars.join(", "));
    if !errors.is_empty() {
        let _ = writeln!(
            out,
            "configuration errors ({}), so the library passes every connection through to TCP:",
            errors.len()
        );
        for e in errors {
            let _ = writeln!(out, "  {e}");
        }
    }
    let addr = q
        .addr
        .map_or("any address".to_owned(), |a| format!("address {a}"));
    let program = q.program.as_deref().unwrap_or("");
    let prog = if program.is_empty() {
        "no program name".to_owned()
    } else {
        format!("program {program}")
    };
    let roles: &[Role] = match q.role {
        Some(Role::Client) => &[Role::Client],
        Some(Role::Server) => &[Role::Server],
        None => &[Role::Client, Role::Server],
    };
    for role in roles {
        let d = config.decide(*role, port, q.addr, program);
        let verdict = if d.is_ntb() {
            "flagged: tried on the NTB path"
        } else {
            "not flagged: plain TCP"
        };
        let _ = writeln!(
            out,
            "{} {port}, {addr}, {prog}): {verdict} (rule: {})",
            role_word(*role),
            d.rule()
        );
    }
    if roles
        .iter()
        .any(|r| config.decide(*r, port, q.addr, program).is_ntb())
    {
        let _ = writeln!(
            out,
            "if the NTB path cannot be used, the connection {} (see 'pcisock explain' for the reasons)",
            if config.strict() { "fails (PCISOCK_STRICT)" } else { "falls back to TCP with a reason code" }
        );
    } else if errors.is_empty() {
        let _ = writeln!(out, "to flag it: PCISOCK_PORTS={port} (or pcisock run --ports {port}), or a rule in {ENV_CONF}");
    }
}

pub fn main(mut args: Args, out: &mut String) -> Result<u8, CliError> {
    let mut q = Query::default();
    let mut reason: Option<String> = None;
    let mut querying = false;
    while let Some(arg) = args.next()? {
        match arg {
            Arg::Short('h') | Arg::Long("help") => {
                out.push_str(HELP);
                out.push('\n');
                return Ok(0);
            }
            Arg::Value(w) if reason.is_none() => reason = Some(args.string(w)?),
            Arg::Value(w) => {
                return Err(args.usage(format!("unexpected argument {:?}", w.to_string_lossy())))
            }
            arg => {
                match arg {
                    Arg::Long("port") => {
                        let v = args.value()?;
                        let port: u16 = parse_number("explain", "--port", &v)?;
                        if port == 0 {
                            return Err(args.usage("--port 0: ports are 1 to 65535"));
                        }
                        q.port = Some(port);
                    }
                    Arg::Long("role") => {
                        q.role = Some(match args.value()?.to_ascii_lowercase().as_str() {
                            "client" => Role::Client,
                            "server" => Role::Server,
                            other => {
                                return Err(args
                                    .usage(format!("--role {other:?}: expected client or server")))
                            }
                        })
                    }
                    Arg::Long("addr") => {
                        let v = args.value()?;
                        q.addr = Some(v.trim().parse().map_err(|_| {
                            args.usage(format!("--addr {v:?} is not an IP address"))
                        })?);
                    }
                    Arg::Long("program") => q.program = Some(args.value()?),
                    arg => return Err(unexpected("explain", arg)),
                }
                querying = true;
            }
        }
    }
    match (reason, querying) {
        (Some(_), true) => Err(args.usage("give either a REASON or --port and friends, not both")),
        (Some(word), false) => {
            let r = find_reason(&word).ok_or_else(|| {
                let names: Vec<&str> = all_reasons().map(Reason::name).collect();
                args.usage(format!(
                    "unknown reason {word:?}: expected a code 1-{} or one of {}",
                    Reason::ALL.len(),
                    names.join(", ")
                ))
            })?;
            explain_reason(r, out);
            Ok(0)
        }
        (None, true) => {
            let port = q
                .port
                .ok_or_else(|| args.usage("--port N is required to decide a connection"))?;
            decide(&q, port, out);
            Ok(0)
        }
        (None, false) => {
            list_reasons(out);
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_reasons_by_name_and_code() {
        assert_eq!(find_reason("NoListener"), Some(Reason::NoListener));
        assert_eq!(find_reason("nolistener"), Some(Reason::NoListener));
        assert_eq!(find_reason("4"), Some(Reason::NoListener));
        assert_eq!(find_reason("0"), None);
        assert_eq!(find_reason("99999999999999"), None);
        assert_eq!(find_reason("Nope"), None);
        assert_eq!(all_reasons().count(), 17);
        // Codes are 1..=N, each once, so "a code 1-N" in the usage error is true.
        for (i, r) in all_reasons().enumerate() {
            assert_eq!(r.code() as usize, i + 1);
            assert_eq!(Reason::from_code(r.code()), Some(r));
        }
    }

    #[test]
    fn every_reason_explains() {
        let mut out = String::new();
        for r in all_reasons() {
            explain_reason(r, &mut out);
        }
        list_reasons(&mut out);
        assert!(out.contains("what to do"));
    }

    #[test]
    fn decides_with_a_given_configuration() {
        let q = Query {
            role: Some(Role::Client),
            ..Query::default()
        };
        let (config, errors) = Config::from_env_vars(|_| None);
        let mut out = String::new();
        decide_with(&config, &errors, &q, 5201, &mut out);
        assert!(
            out.contains("flagged: tried on the NTB path (rule: built-in defaults)"),
            "{out}"
        );
        let (config, errors) = Config::from_env_vars(|n| (n == ENV_PORTS).then(|| "0".to_owned()));
        let mut out = String::new();
        decide_with(&config, &errors, &q, 5201, &mut out);
        assert!(out.contains("configuration errors (1)"), "{out}");
        assert!(out.contains("not flagged"), "{out}");
    }
}
