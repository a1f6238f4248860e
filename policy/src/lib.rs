//! Which TCP connections are *flagged*, i.e. tried on the NTB fast path.
//!
//! Used by the shim (libpcisock.so) and by the `pcisock` CLI (`explain`, `run`, `doctor`), so both
//! read the `PCISOCK_*` variables the same way, from one compiled copy of the policy.
//!
//! The shim builds one [`Config`] at load time from the `PCISOCK_*` environment variables (and the rules
//! file `PCISOCK_CONF` names), then asks [`Config::decide`] once per `connect()` / `listen()`, and
//! [`Config::may_flag_port`] on hot paths to skip work for ports no rule can flag. This module is pure
//! policy: it does no socket I/O, no logging and no unsafe, and it must never panic — bad configuration
//! comes back as [`ConfigError`]s next to a *pass-through* config that flags nothing. The user-facing
//! description (variables, file syntax, precedence) is `docs/CONFIG.md`; keep the two in step.
//!
//! Precedence, as [`Config::decide`] applies it:
//! 1. the rules of `PCISOCK_CONF`, first match wins (`use tcp` lines can exclude);
//! 2. the ports of `PCISOCK_PORTS` (both roles, any address, any program);
//! 3. the built-in default ports 5001 and 5201 (unless `PCISOCK_DEFAULT_PORTS=0`);
//! 4. the file's `default` line (`tcp` if it has none), or TCP when there is no file.
#![deny(unsafe_code)]

use std::fmt;
use std::io::Read;
use std::net::IpAddr;
use std::ops::RangeInclusive;

/// The rules file: `PCISOCK_CONF=/path/file`.
pub const ENV_CONF: &str = "PCISOCK_CONF";
/// Extra flagged ports: `PCISOCK_PORTS=5001,6000-6010`.
pub const ENV_PORTS: &str = "PCISOCK_PORTS";
/// `PCISOCK_DEFAULT_PORTS=0` turns the built-in default ports off.
pub const ENV_DEFAULT_PORTS: &str = "PCISOCK_DEFAULT_PORTS";
/// `PCISOCK_STRICT=1`: a flagged connection that cannot use the fast path fails instead of using TCP.
pub const ENV_STRICT: &str = "PCISOCK_STRICT";
/// `PCISOCK_LOG=off|error|warn|info|debug`.
pub const ENV_LOG: &str = "PCISOCK_LOG";

/// The ports flagged with no setting at all: iperf2 (5001) and iperf3 (5201).
pub const DEFAULT_PORTS: [u16; 2] = [5001, 5201];

/// A rules file larger than this is refused (it is certainly not a rules file, e.g. `/dev/zero`).
const MAX_FILE_BYTES: u64 = 1 << 20;
/// Quoted bad text in an error message is cut to this many characters.
const MAX_QUOTED_CHARS: usize = 120;

/// Which side of a connection the shim is deciding for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// `connect()`: the port is the remote port, the address the peer's.
    Client,
    /// `listen()` / `accept()`: the port is the local port, the address the local one.
    Server,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Client => "client",
            Role::Server => "server",
        })
    }
}

/// How much the shim may say (`PCISOCK_LOG`). Ordered: `Off < Error < Warn < Info < Debug`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum LogLevel {
    /// Say nothing (the default: the shim never writes to the app's stdout/stderr unless asked).
    #[default]
    Off,
    Error,
    Warn,
    Info,
    Debug,
}

impl LogLevel {
    /// Whether a message of level `message` is shown at this setting.
    pub fn enables(self, message: LogLevel) -> bool {
        message != LogLevel::Off && message <= self
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogLevel::Off => "off",
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        })
    }
}

/// Which rule decided a connection (what `pcisock explain` shows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleRef {
    /// The built-in rule set: ports 5001/5201 flagged, every other port TCP (also when no file is given
    /// and nothing else matched).
    Default,
    /// A port listed in `PCISOCK_PORTS`.
    EnvPorts,
    /// The `use` rule on this line (1-based) of the `PCISOCK_CONF` file.
    File { line: u32 },
    /// The `default` of the `PCISOCK_CONF` file (its `default` line, or `tcp` if it has none).
    FileDefault,
    /// The configuration was bad, so nothing is flagged.
    PassThrough,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleRef::Default => f.write_str("built-in defaults"),
            RuleRef::EnvPorts => f.write_str(ENV_PORTS),
            RuleRef::File { line } => write!(f, "{ENV_CONF} line {line}"),
            RuleRef::FileDefault => write!(f, "{ENV_CONF} default"),
            RuleRef::PassThrough => f.write_str("pass-through (bad configuration)"),
        }
    }
}

/// The outcome of [`Config::decide`]: try the fast path or leave the connection to the kernel's TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Flagged: try the NTB fast path.
    Ntb { rule: RuleRef },
    /// Not flagged: plain TCP.
    Tcp { rule: RuleRef },
}

impl Decision {
    /// Whether the connection is flagged.
    pub fn is_ntb(self) -> bool {
        matches!(self, Decision::Ntb { .. })
    }

    /// The rule that decided.
    pub fn rule(self) -> RuleRef {
        match self {
            Decision::Ntb { rule } | Decision::Tcp { rule } => rule,
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Ntb { rule } => write!(f, "ntb ({rule})"),
            Decision::Tcp { rule } => write!(f, "tcp ({rule})"),
        }
    }
}

/// A bad setting: where it came from, the bad text and why it is bad.
///
/// Displays as `PCISOCK_PORTS="70000": port 70000 out of range 1..65535` or
/// `PCISOCK_CONF=/etc/x.conf line 3: "use ntb client 70000": port 70000 out of range 1..65535`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The variable name, `PCISOCK_CONF=<path>`, or the name given to [`Config::parse_file_text`].
    origin: String,
    /// The 1-based line, for errors inside a rules file.
    line: Option<u32>,
    /// The offending text (a variable's value or a file line), if there is one.
    text: Option<String>,
    reason: String,
}

impl ConfigError {
    fn new(origin: &str, line: Option<u32>, text: Option<&str>, reason: String) -> ConfigError {
        ConfigError {
            origin: origin.to_owned(),
            line,
            text: text.map(str::to_owned),
            reason,
        }
    }

    /// The 1-based line of the rules file, if the error is inside one.
    pub fn line(&self) -> Option<u32> {
        self.line
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)?;
        if let Some(line) = self.line {
            write!(f, " line {line}")?;
        }
        match (&self.text, self.line) {
            // A variable's value follows its name: PCISOCK_PORTS="abc".
            (Some(text), None) => write!(f, "={:?}", Shortened(text))?,
            (Some(text), Some(_)) => write!(f, ": {:?}", Shortened(text))?,
            (None, _) => {}
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Cuts long text (a line of a binary file) when quoted in a message.
struct Shortened<'a>(&'a str);

impl Shortened<'_> {
    /// The text up to the cut, and whether anything was cut.
    fn parts(&self) -> (&str, bool) {
        match self.0.char_indices().nth(MAX_QUOTED_CHARS) {
            Some((cut, _)) => (&self.0[..cut], true),
            None => (self.0, false),
        }
    }
}

impl fmt::Display for Shortened<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (text, cut) = self.parts();
        write!(f, "{text}{}", if cut { "…" } else { "" })
    }
}

impl fmt::Debug for Shortened<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (text, cut) = self.parts();
        write!(f, "{text:?}{}", if cut { "…" } else { "" })
    }
}

/// The flagging policy, built once at load time.
#[derive(Debug, Clone)]
pub struct Config {
    /// Set when the configuration was bad: nothing is flagged.
    pass_through: bool,
    file: Option<RulesFile>,
    env_ports: Ports,
    default_ports: bool,
    strict: bool,
    log: LogLevel,
    /// Ports that some (role, address, program) could get flagged on; see [`Config::may_flag_port`].
    may_flag: PortBitmap,
}

impl Config {
    /// Reads the configuration through `get` (a variable's value, or `None` if unset) and, if
    /// `PCISOCK_CONF` is set, the rules file. Never fails: on any error the result is
    /// [`pass-through`](Config::pass_through) plus the errors, keeping only `strict` and the log level
    /// where those variables themselves were valid.
    pub fn from_env_vars(get: impl Fn(&str) -> Option<String>) -> (Config, Vec<ConfigError>) {
        let mut errors = Vec::new();

        let file = get(ENV_CONF).and_then(|path| match read_rules_file(&path) {
            Ok(rules) => Some(rules),
            Err(e) => {
                errors.push(e);
                None
            }
        });
        let env_ports = match get(ENV_PORTS) {
            None => Ports::List(Vec::new()),
            Some(value) => Ports::parse(value.trim()).unwrap_or_else(|reason| {
                errors.push(ConfigError::new(ENV_PORTS, None, Some(&value), reason));
                Ports::List(Vec::new())
            }),
        };
        let default_ports = parse_var(&get, ENV_DEFAULT_PORTS, parse_bool, true, &mut errors);
        let strict = parse_var(&get, ENV_STRICT, parse_bool, false, &mut errors);
        let log = parse_var(&get, ENV_LOG, parse_log_level, LogLevel::Off, &mut errors);

        if !errors.is_empty() {
            let mut config = Config::pass_through();
            config.strict = strict;
            config.log = log;
            return (config, errors);
        }
        let config = Config::build(file, env_ports, default_ports, strict, log);
        (config, errors)
    }

    /// [`Config::from_env_vars`] over the process environment. A value that is not valid Unicode is
    /// read lossily (and so is reported as bad rather than ignored).
    pub fn from_env() -> (Config, Vec<ConfigError>) {
        Config::from_env_vars(|name| {
            std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
        })
    }

    /// A config that flags nothing: the application runs as if the library were absent.
    pub fn pass_through() -> Config {
        Config {
            pass_through: true,
            file: None,
            env_ports: Ports::List(Vec::new()),
            default_ports: false,
            strict: false,
            log: LogLevel::Off,
            may_flag: PortBitmap::empty(),
        }
    }

    /// The config for a rules file with the given text and no other variables set (so the built-in
    /// default ports apply after the file's rules). `source_name` names the file in errors. Returns the
    /// first bad line's error.
    pub fn parse_file_text(text: &str, source_name: &str) -> Result<Config, ConfigError> {
        let file = RulesFile::parse(text, source_name)?;
        Ok(Config::build(
            Some(file),
            Ports::List(Vec::new()),
            true,
            false,
            LogLevel::Off,
        ))
    }

    fn build(
        file: Option<RulesFile>,
        env_ports: Ports,
        default_ports: bool,
        strict: bool,
        log: LogLevel,
    ) -> Config {
        let mut config = Config {
            pass_through: false,
            file,
            env_ports,
            default_ports,
            strict,
            log,
            may_flag: PortBitmap::empty(),
        };
        config.may_flag = config.compute_may_flag();
        config
    }

    /// Whether a connection is flagged. `port` is the remote port for [`Role::Client`] and the local
    /// port for [`Role::Server`]; `addr` is the peer's address for a client and the local one for a
    /// server, `None` if unknown (then only rules whose address is `*` match); `program` is the basename
    /// of `argv[0]`.
    pub fn decide(&self, role: Role, port: u16, addr: Option<IpAddr>, program: &str) -> Decision {
        if self.pass_through {
            return Decision::Tcp {
                rule: RuleRef::PassThrough,
            };
        }
        if let Some(file) = &self.file {
            if let Some(rule) = file
                .rules
                .iter()
                .find(|r| r.matches(role, port, addr, program))
            {
                return rule.action.decision(RuleRef::File { line: rule.line });
            }
        }
        if self.env_ports.contains(port) {
            return Decision::Ntb {
                rule: RuleRef::EnvPorts,
            };
        }
        if self.default_ports && DEFAULT_PORTS.contains(&port) {
            return Decision::Ntb {
                rule: RuleRef::Default,
            };
        }
        match &self.file {
            Some(file) => file.default.decision(RuleRef::FileDefault),
            None => Decision::Tcp {
                rule: RuleRef::Default,
            },
        }
    }

    /// Whether strict mode is on: a flagged connection that cannot use the fast path fails instead of
    /// falling back to TCP.
    pub fn strict(&self) -> bool {
        self.strict
    }

    /// The `PCISOCK_LOG` level.
    pub fn log_level(&self) -> LogLevel {
        self.log
    }

    /// Whether this config is pass-through (it flags nothing because the configuration was bad, or it
    /// was made by [`Config::pass_through`]).
    pub fn is_pass_through(&self) -> bool {
        self.pass_through
    }

    /// A cheap pre-check: could any role, address and program get a connection on `port` flagged?
    /// `false` guarantees [`Config::decide`] returns [`Decision::Tcp`] for this port; `true` means it may
    /// not (it is exact except where several narrower `use tcp` rules together shadow a `use ntb`).
    pub fn may_flag_port(&self, port: u16) -> bool {
        self.may_flag.get(port)
    }

    /// Works out [`Config::may_flag_port`] for every port by walking the rules in `decide`'s order and
    /// remembering, per role, which ports an earlier unconditional rule (any address, any program) has
    /// already decided.
    fn compute_may_flag(&self) -> PortBitmap {
        let mut may = PortBitmap::empty();
        if self.pass_through {
            return may;
        }
        let mut decided_client = PortBitmap::empty();
        let mut decided_server = PortBitmap::empty();
        let mut apply = |roles: RoleSet, ports: &Ports, action: Action, unconditional: bool| {
            for port in ports.iter() {
                let open = (roles.has(Role::Client) && !decided_client.get(port))
                    || (roles.has(Role::Server) && !decided_server.get(port));
                if action == Action::Ntb && open {
                    may.set(port);
                }
                if unconditional {
                    if roles.has(Role::Client) {
                        decided_client.set(port);
                    }
                    if roles.has(Role::Server) {
                        decided_server.set(port);
                    }
                }
            }
        };
        if let Some(file) = &self.file {
            for rule in &file.rules {
                apply(
                    rule.roles,
                    &rule.ports,
                    rule.action,
                    rule.is_unconditional(),
                );
            }
        }
        apply(RoleSet::Both, &self.env_ports, Action::Ntb, true);
        if self.default_ports {
            apply(
                RoleSet::Both,
                &Ports::from_list(&DEFAULT_PORTS),
                Action::Ntb,
                true,
            );
        }
        if let Some(file) = &self.file {
            apply(RoleSet::Both, &Ports::Any, file.default, true);
        }
        may
    }
}

mod rules;
use rules::*;

#[cfg(test)]
mod tests;
