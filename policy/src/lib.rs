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

/// Reads an optional variable with `parse`, recording an error (and returning `unset`) if it is bad.
fn parse_var<T>(
    get: &impl Fn(&str) -> Option<String>,
    name: &str,
    parse: fn(&str) -> Result<T, String>,
    unset: T,
    errors: &mut Vec<ConfigError>,
) -> T {
    let Some(value) = get(name) else {
        return unset;
    };
    match parse(value.trim()) {
        Ok(v) => v,
        Err(reason) => {
            errors.push(ConfigError::new(name, None, Some(&value), reason));
            unset
        }
    }
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        _ => Err("expected 1, true, yes, 0, false or no".to_owned()),
    }
}

fn parse_log_level(value: &str) -> Result<LogLevel, String> {
    match value.to_ascii_lowercase().as_str() {
        "off" | "0" => Ok(LogLevel::Off),
        "error" => Ok(LogLevel::Error),
        "warn" => Ok(LogLevel::Warn),
        "info" | "1" => Ok(LogLevel::Info),
        "debug" => Ok(LogLevel::Debug),
        _ => Err("expected off, error, warn, info, debug, 0 or 1".to_owned()),
    }
}

/// Reads and parses the file `PCISOCK_CONF` names.
fn read_rules_file(path: &str) -> Result<RulesFile, ConfigError> {
    let origin = format!("{ENV_CONF}={path}");
    let fail = |reason: String| ConfigError::new(&origin, None, None, reason);
    if path.trim().is_empty() {
        return Err(ConfigError::new(
            ENV_CONF,
            None,
            Some(path),
            "empty path".to_owned(),
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| fail(format!("cannot open: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(fail(format!(
            "larger than {MAX_FILE_BYTES} bytes; not a rules file"
        )));
    }
    let text = String::from_utf8(bytes).map_err(|_| fail("not UTF-8 text".to_owned()))?;
    RulesFile::parse(&text, &origin)
}

/// `ntb` or `tcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Ntb,
    Tcp,
}

impl Action {
    fn parse(word: &str) -> Result<Action, String> {
        match word {
            "ntb" => Ok(Action::Ntb),
            "tcp" => Ok(Action::Tcp),
            _ => Err(format!("expected ntb or tcp, found {:?}", Shortened(word))),
        }
    }

    fn decision(self, rule: RuleRef) -> Decision {
        match self {
            Action::Ntb => Decision::Ntb { rule },
            Action::Tcp => Decision::Tcp { rule },
        }
    }
}

/// `client`, `server` or `both`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RoleSet {
    Client,
    Server,
    Both,
}

impl RoleSet {
    fn parse(word: &str) -> Result<RoleSet, String> {
        match word {
            "client" => Ok(RoleSet::Client),
            "server" => Ok(RoleSet::Server),
            "both" => Ok(RoleSet::Both),
            _ => Err(format!(
                "expected client, server or both, found {:?}",
                Shortened(word)
            )),
        }
    }

    fn has(self, role: Role) -> bool {
        matches!(
            (self, role),
            (RoleSet::Both, _) | (RoleSet::Client, Role::Client) | (RoleSet::Server, Role::Server)
        )
    }
}

/// A port selector: `*` or a list of ports and inclusive ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ports {
    Any,
    List(Vec<RangeInclusive<u16>>),
}

impl Ports {
    /// Parses `*` or `5001,6000-6010`; the reason on error.
    fn parse(text: &str) -> Result<Ports, String> {
        if text == "*" {
            return Ok(Ports::Any);
        }
        if text.is_empty() {
            return Err("empty port list".to_owned());
        }
        let mut ranges = Vec::new();
        for item in text.split(',') {
            let item = item.trim();
            if item.is_empty() {
                return Err("empty entry in port list".to_owned());
            }
            let range = match item.split_once('-') {
                Some((start, end)) => {
                    let (start, end) = (parse_port(start.trim())?, parse_port(end.trim())?);
                    if start > end {
                        return Err(format!("port range {item} is backwards ({start} > {end})"));
                    }
                    start..=end
                }
                None => {
                    let port = parse_port(item)?;
                    port..=port
                }
            };
            ranges.push(range);
        }
        Ok(Ports::List(ranges))
    }

    fn from_list(ports: &[u16]) -> Ports {
        Ports::List(ports.iter().map(|&p| p..=p).collect())
    }

    fn contains(&self, port: u16) -> bool {
        match self {
            Ports::Any => true,
            Ports::List(ranges) => ranges.iter().any(|r| r.contains(&port)),
        }
    }

    /// Every port selected (`*` includes 0, so this agrees with `contains`).
    fn iter(&self) -> Box<dyn Iterator<Item = u16> + '_> {
        match self {
            Ports::Any => Box::new(0..=u16::MAX),
            Ports::List(ranges) => Box::new(ranges.iter().flat_map(Clone::clone)),
        }
    }
}

fn parse_port(text: &str) -> Result<u16, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{:?} is not a port number", Shortened(text)));
    }
    match text.parse::<u16>() {
        Ok(port) if port >= 1 => Ok(port),
        _ => Err(format!("port {} out of range 1..65535", Shortened(text))),
    }
}

/// An address selector: `*` or a CIDR block.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AddrMatch {
    Any,
    Cidr(Cidr),
}

impl AddrMatch {
    fn matches(&self, addr: Option<IpAddr>) -> bool {
        match (self, addr) {
            (AddrMatch::Any, _) => true,
            (AddrMatch::Cidr(cidr), Some(addr)) => cidr.contains(addr),
            (AddrMatch::Cidr(_), None) => false,
        }
    }
}

/// An IPv4 or IPv6 network. An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) is stored as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `fd00::/8`, or a bare address (`/32`, `/128`). Host bits are ignored.
    fn parse(text: &str) -> Result<Cidr, String> {
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let net: IpAddr = addr_text
            .parse()
            .map_err(|_| format!("{:?} is not an IPv4 or IPv6 address", Shortened(addr_text)))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => {
                    return Err(format!(
                        "prefix /{} is not a number in 0..={max}",
                        Shortened(p)
                    ))
                }
            },
        };
        if let IpAddr::V6(v6) = net {
            if let (Some(v4), true) = (v6.to_ipv4_mapped(), prefix >= 96) {
                return Ok(Cidr {
                    net: IpAddr::V4(v4),
                    prefix: prefix - 96,
                });
            }
        }
        Ok(Cidr { net, prefix })
    }

    /// Whether `addr` is inside; IPv4-mapped IPv6 addresses count as IPv4.
    fn contains(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            IpAddr::V4(_) => addr,
        };
        match (self.net, addr) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                (u32::from(net) ^ u32::from(a)) & mask == 0
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                (u128::from(net) ^ u128::from(a)) & mask == 0
            }
            _ => false,
        }
    }
}

/// Shell-style match of `*` (any run, including none) and `?` (one character); everything else literal.
fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = name.chars().collect();
    let (mut pi, mut si) = (0, 0);
    // Where the last `*` was, and how much of `s` it has swallowed so far.
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((star_pi, star_si)) = star {
            pi = star_pi + 1;
            si = star_si + 1;
            star = Some((star_pi, star_si + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// One `use` line.
#[derive(Debug, Clone)]
struct Rule {
    line: u32,
    action: Action,
    roles: RoleSet,
    ports: Ports,
    addr: AddrMatch,
    program: Option<String>,
}

impl Rule {
    fn matches(&self, role: Role, port: u16, addr: Option<IpAddr>, program: &str) -> bool {
        self.roles.has(role)
            && self.ports.contains(port)
            && self.addr.matches(addr)
            && self
                .program
                .as_deref()
                .is_none_or(|g| glob_match(g, program))
    }

    /// Matches every address and program (so it decides its ports for its roles outright).
    fn is_unconditional(&self) -> bool {
        self.addr == AddrMatch::Any && self.program.as_deref().is_none_or(|g| g == "*")
    }

    /// Parses the fields after `use`: `ntb|tcp client|server|both PORTS [CIDR|*] [program=GLOB]`.
    fn parse(line: u32, fields: &[&str]) -> Result<Rule, String> {
        let [action, roles, ports, rest @ ..] = fields else {
            return Err(
                "expected \"use ntb|tcp client|server|both PORTS [CIDR|*] [program=GLOB]\""
                    .to_owned(),
            );
        };
        let action = Action::parse(action)?;
        let roles = RoleSet::parse(roles)?;
        let ports = Ports::parse(ports)?;
        let mut addr = AddrMatch::Any;
        let mut program = None;
        for (i, field) in rest.iter().enumerate() {
            if let Some(glob) = field.strip_prefix("program=") {
                if program.is_some() {
                    return Err("program= given twice".to_owned());
                }
                if glob.is_empty() {
                    return Err("empty program= pattern".to_owned());
                }
                program = Some(glob.to_owned());
            } else if i == 0 {
                addr = match *field {
                    "*" => AddrMatch::Any,
                    cidr => AddrMatch::Cidr(Cidr::parse(cidr)?),
                };
            } else {
                return Err(format!(
                    "unexpected field {:?} (after PORTS come an optional CIDR or *, then an optional program=GLOB)",
                    Shortened(field)
                ));
            }
        }
        Ok(Rule {
            line,
            action,
            roles,
            ports,
            addr,
            program,
        })
    }
}

/// A parsed `PCISOCK_CONF` file.
#[derive(Debug, Clone)]
struct RulesFile {
    rules: Vec<Rule>,
    /// What an unmatched connection gets (after `PCISOCK_PORTS` and the defaults); `tcp` unless a
    /// `default` line says otherwise.
    default: Action,
}

impl RulesFile {
    /// Parses the file; the error names `origin` and the first bad line.
    fn parse(text: &str, origin: &str) -> Result<RulesFile, ConfigError> {
        let mut rules = Vec::new();
        let mut default: Option<(Action, u32)> = None;
        for (index, raw) in text.lines().enumerate() {
            let line = u32::try_from(index + 1).unwrap_or(u32::MAX);
            let content = raw.split('#').next().unwrap_or("").trim();
            let fail =
                |reason: String| ConfigError::new(origin, Some(line), Some(raw.trim()), reason);
            let fields: Vec<&str> = content.split_whitespace().collect();
            match fields.as_slice() {
                [] => {}
                ["use", rest @ ..] => rules.push(Rule::parse(line, rest).map_err(fail)?),
                ["default", word] => {
                    if let Some((_, first)) = default {
                        return Err(fail(format!("second default line (first on line {first})")));
                    }
                    default = Some((Action::parse(word).map_err(fail)?, line));
                }
                ["default", ..] => return Err(fail("expected \"default ntb|tcp\"".to_owned())),
                [word, ..] => {
                    return Err(fail(format!(
                        "unknown keyword {:?} (expected use or default)",
                        Shortened(word)
                    )))
                }
            }
        }
        Ok(RulesFile {
            rules,
            default: default.map_or(Action::Tcp, |(action, _)| action),
        })
    }
}

/// One bit per port.
#[derive(Clone)]
struct PortBitmap(Box<[u64]>);

impl PortBitmap {
    fn empty() -> PortBitmap {
        PortBitmap(vec![0; 65536 / 64].into_boxed_slice())
    }

    fn get(&self, port: u16) -> bool {
        self.0[usize::from(port / 64)] & (1 << (port % 64)) != 0
    }

    fn set(&mut self, port: u16) {
        self.0[usize::from(port / 64)] |= 1 << (port % 64);
    }
}

impl fmt::Debug for PortBitmap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count: u32 = self.0.iter().map(|w| w.count_ones()).sum();
        write!(f, "PortBitmap({count} ports)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// A `get` over a fixed set of variables.
    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    fn env_config(pairs: &[(&str, &str)]) -> Config {
        let (config, errors) = Config::from_env_vars(vars(pairs));
        assert!(errors.is_empty(), "unexpected errors: {errors:?}");
        config
    }

    fn file_config(text: &str) -> Config {
        Config::parse_file_text(text, "test.conf").unwrap_or_else(|e| panic!("{e}"))
    }

    fn file_error(text: &str) -> ConfigError {
        match Config::parse_file_text(text, "test.conf") {
            Ok(_) => panic!("expected an error for {text:?}"),
            Err(e) => e,
        }
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> Option<IpAddr> {
        Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d)))
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    fn ntb(rule: RuleRef) -> Decision {
        Decision::Ntb { rule }
    }

    fn tcp(rule: RuleRef) -> Decision {
        Decision::Tcp { rule }
    }

    /// A temporary file that removes itself.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(tag: &str, contents: &str) -> TempFile {
            let path = std::env::temp_dir().join(format!(
                "pcisock-config-test-{}-{tag}.conf",
                std::process::id()
            ));
            std::fs::write(&path, contents).unwrap();
            TempFile(path)
        }

        fn path(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn assert_pass_through(config: &Config) {
        assert!(config.is_pass_through());
        for port in [1, 5001, 5201, 6000, 65535] {
            for role in [Role::Client, Role::Server] {
                assert_eq!(
                    config.decide(role, port, v4(10, 0, 0, 1), "iperf3"),
                    tcp(RuleRef::PassThrough)
                );
            }
        }
        assert!((0..=u16::MAX).all(|p| !config.may_flag_port(p)));
    }

    #[test]
    fn defaults_flag_iperf_ports_for_both_roles_and_nothing_else() {
        let config = env_config(&[]);
        assert!(!config.is_pass_through());
        for port in 0..=u16::MAX {
            for role in [Role::Client, Role::Server] {
                let got = config.decide(role, port, None, "anything");
                if port == 5001 || port == 5201 {
                    assert_eq!(got, ntb(RuleRef::Default), "port {port} {role}");
                } else {
                    assert_eq!(got, tcp(RuleRef::Default), "port {port} {role}");
                }
            }
            assert_eq!(config.may_flag_port(port), port == 5001 || port == 5201);
        }
        assert!(!config.strict());
        assert_eq!(config.log_level(), LogLevel::Off);
    }

    #[test]
    fn default_ports_can_be_turned_off() {
        let config = env_config(&[("PCISOCK_DEFAULT_PORTS", "0")]);
        assert_eq!(
            config.decide(Role::Client, 5001, None, "iperf"),
            tcp(RuleRef::Default)
        );
        assert!((0..=u16::MAX).all(|p| !config.may_flag_port(p)));

        let config = env_config(&[("PCISOCK_DEFAULT_PORTS", "no"), ("PCISOCK_PORTS", "6000")]);
        assert_eq!(
            config.decide(Role::Server, 6000, None, "x"),
            ntb(RuleRef::EnvPorts)
        );
        assert_eq!(
            config.decide(Role::Server, 5201, None, "x"),
            tcp(RuleRef::Default)
        );

        let config = env_config(&[("PCISOCK_DEFAULT_PORTS", "1")]);
        assert_eq!(
            config.decide(Role::Server, 5201, None, "x"),
            ntb(RuleRef::Default)
        );
    }

    #[test]
    fn env_ports_add_ports_and_ranges() {
        let config = env_config(&[("PCISOCK_PORTS", "7000, 6000-6010")]);
        for port in [7000, 6000, 6005, 6010] {
            assert_eq!(
                config.decide(Role::Client, port, None, "x"),
                ntb(RuleRef::EnvPorts)
            );
            assert_eq!(
                config.decide(Role::Server, port, v4(1, 2, 3, 4), "y"),
                ntb(RuleRef::EnvPorts)
            );
            assert!(config.may_flag_port(port));
        }
        for port in [5999, 6011, 6999, 7001] {
            assert_eq!(
                config.decide(Role::Client, port, None, "x"),
                tcp(RuleRef::Default)
            );
            assert!(!config.may_flag_port(port));
        }
        // The defaults still apply.
        assert_eq!(
            config.decide(Role::Client, 5001, None, "x"),
            ntb(RuleRef::Default)
        );
        // A port in both is credited to PCISOCK_PORTS.
        let config = env_config(&[("PCISOCK_PORTS", "5001")]);
        assert_eq!(
            config.decide(Role::Client, 5001, None, "x"),
            ntb(RuleRef::EnvPorts)
        );
    }

    #[test]
    fn bad_env_ports_give_errors_and_pass_through() {
        let cases = [
            ("70000", "PCISOCK_PORTS=\"70000\": port 70000 out of range 1..65535"),
            ("0", "PCISOCK_PORTS=\"0\": port 0 out of range 1..65535"),
            ("5-2", "PCISOCK_PORTS=\"5-2\": port range 5-2 is backwards (5 > 2)"),
            ("abc", "PCISOCK_PORTS=\"abc\": \"abc\" is not a port number"),
            ("", "PCISOCK_PORTS=\"\": empty port list"),
            ("5001,,5201", "PCISOCK_PORTS=\"5001,,5201\": empty entry in port list"),
            ("-5", "PCISOCK_PORTS=\"-5\": \"\" is not a port number"),
            ("+5", "PCISOCK_PORTS=\"+5\": \"+5\" is not a port number"),
            ("99999999999999999999", "PCISOCK_PORTS=\"99999999999999999999\": port 99999999999999999999 out of range 1..65535"),
        ];
        for (value, message) in cases {
            let (config, errors) = Config::from_env_vars(vars(&[("PCISOCK_PORTS", value)]));
            assert_eq!(errors.len(), 1, "{value:?}: {errors:?}");
            assert_eq!(errors[0].to_string(), message);
            assert_eq!(errors[0].line(), None);
            assert_pass_through(&config);
        }
    }

    #[test]
    fn file_first_match_lets_use_tcp_exclude() {
        let config = file_config("use tcp both 5201\nuse ntb both 5000-5300\n");
        assert_eq!(
            config.decide(Role::Client, 5201, None, "iperf3"),
            tcp(RuleRef::File { line: 1 })
        );
        assert_eq!(
            config.decide(Role::Server, 5201, None, "iperf3"),
            tcp(RuleRef::File { line: 1 })
        );
        assert_eq!(
            config.decide(Role::Client, 5202, None, "x"),
            ntb(RuleRef::File { line: 2 })
        );
        assert_eq!(
            config.decide(Role::Client, 5001, None, "x"),
            ntb(RuleRef::File { line: 2 })
        );
        // Not in the file: the built-in defaults, then the file's default (tcp).
        assert_eq!(
            config.decide(Role::Client, 5400, None, "x"),
            tcp(RuleRef::FileDefault)
        );
        // Order matters: the other way round, the broad rule wins.
        let config = file_config("use ntb both 5000-5300\nuse tcp both 5201\n");
        assert_eq!(
            config.decide(Role::Client, 5201, None, "x"),
            ntb(RuleRef::File { line: 1 })
        );
    }

    #[test]
    fn file_rules_filter_by_role() {
        let config = file_config("use ntb server 7000\nuse ntb client 7001\nuse ntb both 7002");
        assert_eq!(
            config.decide(Role::Server, 7000, None, "x"),
            ntb(RuleRef::File { line: 1 })
        );
        assert_eq!(
            config.decide(Role::Client, 7000, None, "x"),
            tcp(RuleRef::FileDefault)
        );
        assert_eq!(
            config.decide(Role::Client, 7001, None, "x"),
            ntb(RuleRef::File { line: 2 })
        );
        assert_eq!(
            config.decide(Role::Server, 7001, None, "x"),
            tcp(RuleRef::FileDefault)
        );
        assert_eq!(
            config.decide(Role::Server, 7002, None, "x"),
            ntb(RuleRef::File { line: 3 })
        );
        assert_eq!(
            config.decide(Role::Client, 7002, None, "x"),
            ntb(RuleRef::File { line: 3 })
        );
        // Excluding the client side only of a default port.
        let config = file_config("use tcp client 5001");
        assert_eq!(
            config.decide(Role::Client, 5001, None, "x"),
            tcp(RuleRef::File { line: 1 })
        );
        assert_eq!(
            config.decide(Role::Server, 5001, None, "x"),
            ntb(RuleRef::Default)
        );
    }

    #[test]
    fn file_rules_match_ipv4_cidrs_including_mapped_addresses() {
        let config = file_config("use ntb client 7000 10.0.0.0/8\nuse ntb client 7001 192.168.1.7");
        let at = |port, addr| config.decide(Role::Client, port, addr, "x");
        assert_eq!(at(7000, v4(10, 1, 2, 3)), ntb(RuleRef::File { line: 1 }));
        assert_eq!(
            at(7000, v4(10, 255, 255, 255)),
            ntb(RuleRef::File { line: 1 })
        );
        assert_eq!(at(7000, v4(11, 0, 0, 1)), tcp(RuleRef::FileDefault));
        assert_eq!(at(7000, v4(9, 255, 255, 255)), tcp(RuleRef::FileDefault));
        assert_eq!(
            at(7000, ip("::ffff:10.0.0.1")),
            ntb(RuleRef::File { line: 1 })
        );
        assert_eq!(at(7000, ip("::ffff:11.0.0.1")), tcp(RuleRef::FileDefault));
        assert_eq!(at(7000, ip("fd00::1")), tcp(RuleRef::FileDefault));
        // Unknown address: only `*` rules match.
        assert_eq!(at(7000, None), tcp(RuleRef::FileDefault));
        // A bare address is a /32.
        assert_eq!(at(7001, v4(192, 168, 1, 7)), ntb(RuleRef::File { line: 2 }));
        assert_eq!(at(7001, v4(192, 168, 1, 8)), tcp(RuleRef::FileDefault));
        assert_eq!(
            at(7001, ip("::ffff:192.168.1.7")),
            ntb(RuleRef::File { line: 2 })
        );
    }

    #[test]
    fn file_rules_match_ipv6_cidrs() {
        let config = file_config(
            "use ntb both 7000 fd00::/8\nuse ntb both 7001 fe80::1\nuse ntb both 7002 ::ffff:10.0.0.0/104\nuse ntb both 7003 0.0.0.0/0",
        );
        let at = |port, addr| config.decide(Role::Server, port, addr, "x");
        assert_eq!(at(7000, ip("fd12:3456::1")), ntb(RuleRef::File { line: 1 }));
        assert_eq!(at(7000, ip("fe80::1")), tcp(RuleRef::FileDefault));
        assert_eq!(at(7000, v4(10, 0, 0, 1)), tcp(RuleRef::FileDefault));
        assert_eq!(at(7001, ip("fe80::1")), ntb(RuleRef::File { line: 2 }));
        assert_eq!(at(7001, ip("fe80::2")), tcp(RuleRef::FileDefault));
        // An IPv4-mapped IPv6 network means the IPv4 network.
        assert_eq!(at(7002, v4(10, 9, 9, 9)), ntb(RuleRef::File { line: 3 }));
        assert_eq!(
            at(7002, ip("::ffff:10.9.9.9")),
            ntb(RuleRef::File { line: 3 })
        );
        assert_eq!(at(7002, v4(11, 0, 0, 0)), tcp(RuleRef::FileDefault));
        // 0.0.0.0/0 is every IPv4 address (mapped too) but no IPv6 one.
        assert_eq!(at(7003, v4(1, 2, 3, 4)), ntb(RuleRef::File { line: 4 }));
        assert_eq!(
            at(7003, ip("::ffff:1.2.3.4")),
            ntb(RuleRef::File { line: 4 })
        );
        assert_eq!(at(7003, ip("2001:db8::1")), tcp(RuleRef::FileDefault));
    }

    #[test]
    fn file_rules_match_program_globs() {
        let config = file_config(
            "use tcp client 6379 10.0.0.0/8 program=redis-*\n\
             use ntb both 6379 program=redis-*\n\
             use ntb both 7000 * program=iperf?\n\
             use ntb both 7001 program=*",
        );
        let d = |role, port, addr, prog| config.decide(role, port, addr, prog);
        assert_eq!(
            d(Role::Client, 6379, v4(10, 0, 0, 5), "redis-cli"),
            tcp(RuleRef::File { line: 1 })
        );
        assert_eq!(
            d(Role::Client, 6379, v4(172, 16, 0, 5), "redis-cli"),
            ntb(RuleRef::File { line: 2 })
        );
        assert_eq!(
            d(Role::Server, 6379, None, "redis-server"),
            ntb(RuleRef::File { line: 2 })
        );
        assert_eq!(
            d(Role::Server, 6379, None, "redis"),
            tcp(RuleRef::FileDefault)
        );
        assert_eq!(
            d(Role::Server, 6379, None, "xredis-server"),
            tcp(RuleRef::FileDefault)
        );
        assert_eq!(
            d(Role::Client, 7000, None, "iperf3"),
            ntb(RuleRef::File { line: 3 })
        );
        assert_eq!(
            d(Role::Client, 7000, None, "iperf"),
            tcp(RuleRef::FileDefault)
        );
        assert_eq!(
            d(Role::Client, 7000, None, "iperf33"),
            tcp(RuleRef::FileDefault)
        );
        assert_eq!(
            d(Role::Client, 7001, None, ""),
            ntb(RuleRef::File { line: 4 })
        );
    }

    #[test]
    fn glob_matches_star_and_question_mark() {
        let yes = [
            ("*", ""),
            ("*", "abc"),
            ("a*", "a"),
            ("a*c", "abbbc"),
            ("*b*", "abc"),
            ("a?c", "abc"),
            ("??", "ab"),
            ("a*b*c", "aXbYbZc"),
            ("*.py", "x.y.py"),
            ("é?", "éa"),
            ("exact", "exact"),
        ];
        let no = [
            ("a", ""),
            ("?", ""),
            ("a*c", "abcd"),
            ("a?c", "ac"),
            ("abc", "abd"),
            ("*.py", "x.pyc"),
            ("redis-*", "redis"),
            ("Exact", "exact"),
        ];
        for (p, s) in yes {
            assert!(glob_match(p, s), "{p:?} should match {s:?}");
        }
        for (p, s) in no {
            assert!(!glob_match(p, s), "{p:?} should not match {s:?}");
        }
    }

    #[test]
    fn file_default_applies_after_env_ports_and_defaults() {
        let config = file_config("default ntb\nuse tcp both 22");
        assert_eq!(
            config.decide(Role::Client, 22, None, "ssh"),
            tcp(RuleRef::File { line: 2 })
        );
        assert_eq!(
            config.decide(Role::Client, 5001, None, "x"),
            ntb(RuleRef::Default)
        );
        assert_eq!(
            config.decide(Role::Client, 80, None, "x"),
            ntb(RuleRef::FileDefault)
        );

        let config = file_config("default tcp");
        assert_eq!(
            config.decide(Role::Client, 80, None, "x"),
            tcp(RuleRef::FileDefault)
        );
        assert_eq!(
            config.decide(Role::Client, 5201, None, "x"),
            ntb(RuleRef::Default)
        );

        // With the file given through the environment, PCISOCK_PORTS comes before the file default.
        let file = TempFile::new("default", "default tcp\nuse tcp server 6001\n");
        let config = env_config(&[
            ("PCISOCK_CONF", file.path()),
            ("PCISOCK_PORTS", "6000-6002"),
            ("PCISOCK_DEFAULT_PORTS", "0"),
        ]);
        assert_eq!(
            config.decide(Role::Client, 6001, None, "x"),
            ntb(RuleRef::EnvPorts)
        );
        assert_eq!(
            config.decide(Role::Server, 6001, None, "x"),
            tcp(RuleRef::File { line: 2 })
        );
        assert_eq!(
            config.decide(Role::Server, 6002, None, "x"),
            ntb(RuleRef::EnvPorts)
        );
        assert_eq!(
            config.decide(Role::Server, 5001, None, "x"),
            tcp(RuleRef::FileDefault)
        );
    }

    /// The example in docs/CONFIG.md.
    #[test]
    fn documented_example_means_what_the_doc_says() {
        let config = file_config(
            "# /etc/pcisock.conf
use tcp  client  6379       10.0.0.0/8  program=redis-*   # redis clients in 10/8 stay on TCP
use ntb  both    6379       *           program=redis-*   # other redis traffic is flagged
use ntb  both    5001,5201,7000-7100 *                   # iperf and our service ports
use ntb  server  1-65535    127.0.0.0/8                   # anything listening on loopback
use tcp  both    22                                       # never ssh
default tcp
",
        );
        let d = |role, port, addr, prog| config.decide(role, port, addr, prog);
        assert_eq!(
            d(Role::Client, 6379, v4(10, 2, 0, 1), "redis-cli"),
            tcp(RuleRef::File { line: 2 })
        );
        assert_eq!(
            d(Role::Client, 6379, v4(192, 168, 0, 1), "redis-cli"),
            ntb(RuleRef::File { line: 3 })
        );
        assert_eq!(
            d(Role::Server, 6379, v4(0, 0, 0, 0), "redis-server"),
            ntb(RuleRef::File { line: 3 })
        );
        assert_eq!(
            d(Role::Client, 7100, None, "x"),
            ntb(RuleRef::File { line: 4 })
        );
        assert_eq!(
            d(Role::Server, 22, v4(127, 0, 0, 1), "sshd"),
            ntb(RuleRef::File { line: 5 })
        );
        assert_eq!(
            d(Role::Server, 22, v4(0, 0, 0, 0), "sshd"),
            tcp(RuleRef::File { line: 6 })
        );
        assert_eq!(d(Role::Client, 80, None, "curl"), tcp(RuleRef::FileDefault));

        let config = file_config("use tcp both 5201\nuse ntb client * fd00::/8\ndefault ntb\n");
        assert_eq!(
            config.decide(Role::Client, 5201, None, "iperf3"),
            tcp(RuleRef::File { line: 1 })
        );
        assert_eq!(
            config.decide(Role::Client, 443, ip("fd00::9"), "x"),
            ntb(RuleRef::File { line: 2 })
        );
        assert_eq!(
            config.decide(Role::Server, 443, None, "x"),
            ntb(RuleRef::FileDefault)
        );
    }

    #[test]
    fn file_comments_blank_lines_and_whitespace_are_ignored() {
        let text = "# pcisock rules\r\n\r\n   \t\n  use\tntb  both   7000 # trailing comment\r\n#use ntb both 7001\n\tuse ntb both *  10.0.0.0/8   program=srv # all ports from 10/8\n";
        let config = file_config(text);
        assert_eq!(
            config.decide(Role::Client, 7000, None, "x"),
            ntb(RuleRef::File { line: 4 })
        );
        assert_eq!(
            config.decide(Role::Client, 7001, None, "x"),
            tcp(RuleRef::FileDefault)
        );
        assert_eq!(
            config.decide(Role::Client, 1, v4(10, 0, 0, 1), "srv"),
            ntb(RuleRef::File { line: 6 })
        );
        assert_eq!(
            config.decide(Role::Client, 1, v4(10, 0, 0, 1), "other"),
            tcp(RuleRef::FileDefault)
        );
        // An empty file is valid: the defaults, then tcp.
        let config = file_config("");
        assert_eq!(
            config.decide(Role::Client, 5001, None, "x"),
            ntb(RuleRef::Default)
        );
        assert_eq!(
            config.decide(Role::Client, 80, None, "x"),
            tcp(RuleRef::FileDefault)
        );
    }

    #[test]
    fn file_errors_name_the_line_the_text_and_the_reason() {
        let example = file_error("# x\n\nuse ntb client 70000\n");
        assert_eq!(
            example.to_string(),
            "test.conf line 3: \"use ntb client 70000\": port 70000 out of range 1..65535"
        );
        assert_eq!(example.line(), Some(3));

        let cases: [(&str, u32, &str); 16] = [
            ("use ntb client", 1, "expected \"use ntb|tcp"),
            ("use rdma both 80", 1, "expected ntb or tcp, found \"rdma\""),
            ("use NTB both 80", 1, "expected ntb or tcp, found \"NTB\""),
            (
                "\nuse ntb peer 80",
                2,
                "expected client, server or both, found \"peer\"",
            ),
            (
                "use ntb both 80-70",
                1,
                "port range 80-70 is backwards (80 > 70)",
            ),
            ("use ntb both 0", 1, "port 0 out of range 1..65535"),
            ("use ntb both 80,", 1, "empty entry in port list"),
            (
                "use ntb both 80 10.0.0.0/33",
                1,
                "prefix /33 is not a number in 0..=32",
            ),
            (
                "use ntb both 80 fd00::/129",
                1,
                "prefix /129 is not a number in 0..=128",
            ),
            (
                "use ntb both 80 10.0.0.0/+8",
                1,
                "prefix /+8 is not a number in 0..=32",
            ),
            (
                "use ntb both 80 10.0.0/8",
                1,
                "\"10.0.0\" is not an IPv4 or IPv6 address",
            ),
            ("use ntb both 80 * program=", 1, "empty program= pattern"),
            (
                "use ntb both 80 * program=a program=b",
                1,
                "program= given twice",
            ),
            ("use ntb both 80 * extra", 1, "unexpected field \"extra\""),
            (
                "\n\ndefault tcp\ndefault ntb",
                4,
                "second default line (first on line 3)",
            ),
            (
                "allow ntb both 80",
                1,
                "unknown keyword \"allow\" (expected use or default)",
            ),
        ];
        for (text, line, reason) in cases {
            let e = file_error(text);
            assert_eq!(e.line(), Some(line), "{text:?}: {e}");
            let shown = e.to_string();
            assert!(
                shown.starts_with(&format!("test.conf line {line}: \"")),
                "{shown}"
            );
            assert!(
                shown.contains(reason),
                "{text:?}: {shown:?} lacks {reason:?}"
            );
        }
        assert!(file_error("default")
            .to_string()
            .contains("expected \"default ntb|tcp\""));
        assert!(file_error("default maybe")
            .to_string()
            .contains("expected ntb or tcp"));
        // The first bad line is reported.
        assert_eq!(file_error("use ntb both 1\nuse x\nuse y").line(), Some(2));
    }

    #[test]
    fn file_errors_from_the_environment_give_pass_through() {
        let file = TempFile::new("bad", "use ntb both 5001\nuse ntb client 70000\n");
        let (config, errors) = Config::from_env_vars(vars(&[("PCISOCK_CONF", file.path())]));
        assert_eq!(errors.len(), 1);
        assert_eq!(
            errors[0].to_string(),
            format!(
                "PCISOCK_CONF={} line 2: \"use ntb client 70000\": port 70000 out of range 1..65535",
                file.path()
            )
        );
        assert_pass_through(&config);
    }

    #[test]
    fn missing_or_unusable_file_is_an_error() {
        let path = "/nonexistent/pcisock-test/rules.conf";
        let (config, errors) = Config::from_env_vars(vars(&[("PCISOCK_CONF", path)]));
        assert_eq!(errors.len(), 1);
        let shown = errors[0].to_string();
        assert!(
            shown.starts_with("PCISOCK_CONF=/nonexistent/pcisock-test/rules.conf: cannot open: "),
            "{shown}"
        );
        assert_pass_through(&config);

        let (config, errors) = Config::from_env_vars(vars(&[("PCISOCK_CONF", "")]));
        assert_eq!(errors[0].to_string(), "PCISOCK_CONF=\"\": empty path");
        assert_pass_through(&config);

        // A directory cannot be read as a file.
        let dir = std::env::temp_dir();
        let (config, errors) =
            Config::from_env_vars(vars(&[("PCISOCK_CONF", dir.to_str().unwrap())]));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].to_string().contains("cannot read"),
            "{}",
            errors[0]
        );
        assert_pass_through(&config);

        let binary =
            std::env::temp_dir().join(format!("pcisock-config-test-{}-bin", std::process::id()));
        std::fs::write(&binary, [0xff, 0xfe, b'\n']).unwrap();
        let (config, errors) =
            Config::from_env_vars(vars(&[("PCISOCK_CONF", binary.to_str().unwrap())]));
        let _ = std::fs::remove_file(&binary);
        assert!(
            errors[0].to_string().ends_with(": not UTF-8 text"),
            "{}",
            errors[0]
        );
        assert_pass_through(&config);
    }

    #[test]
    fn good_file_from_the_environment() {
        let file = TempFile::new(
            "good",
            "use tcp both 5201\nuse ntb server 1-65535 127.0.0.0/8\n",
        );
        let config = env_config(&[("PCISOCK_CONF", file.path())]);
        assert_eq!(
            config.decide(Role::Client, 5201, None, "x"),
            tcp(RuleRef::File { line: 1 })
        );
        assert_eq!(
            config.decide(Role::Server, 8080, v4(127, 0, 0, 1), "x"),
            ntb(RuleRef::File { line: 2 })
        );
        assert_eq!(
            config.decide(Role::Client, 8080, v4(127, 0, 0, 1), "x"),
            tcp(RuleRef::FileDefault)
        );
        assert_eq!(
            config.decide(Role::Client, 5001, None, "x"),
            ntb(RuleRef::Default)
        );
    }

    #[test]
    fn strict_parsing() {
        for (value, want) in [
            ("1", true),
            ("true", true),
            ("yes", true),
            ("TRUE", true),
            (" yes ", true),
            ("0", false),
            ("false", false),
            ("no", false),
        ] {
            assert_eq!(
                env_config(&[("PCISOCK_STRICT", value)]).strict(),
                want,
                "{value:?}"
            );
        }
        assert!(!env_config(&[]).strict());
        for bad in ["2", "on", "", "y"] {
            let (config, errors) = Config::from_env_vars(vars(&[("PCISOCK_STRICT", bad)]));
            assert_eq!(
                errors[0].to_string(),
                format!("PCISOCK_STRICT={bad:?}: expected 1, true, yes, 0, false or no")
            );
            assert!(!config.strict());
            assert_pass_through(&config);
        }
    }

    #[test]
    fn strict_and_log_survive_other_errors() {
        let (config, errors) = Config::from_env_vars(vars(&[
            ("PCISOCK_PORTS", "abc"),
            ("PCISOCK_STRICT", "1"),
            ("PCISOCK_LOG", "debug"),
        ]));
        assert_eq!(errors.len(), 1);
        assert_pass_through(&config);
        assert!(config.strict());
        assert_eq!(config.log_level(), LogLevel::Debug);

        // Every bad variable is reported, in a fixed order.
        let (config, errors) = Config::from_env_vars(vars(&[
            ("PCISOCK_CONF", "/nonexistent/x.conf"),
            ("PCISOCK_PORTS", "abc"),
            ("PCISOCK_DEFAULT_PORTS", "maybe"),
            ("PCISOCK_STRICT", "yes"),
            ("PCISOCK_LOG", "loud"),
        ]));
        let origins: Vec<&str> = errors.iter().map(|e| e.origin.as_str()).collect();
        assert_eq!(
            origins,
            [
                "PCISOCK_CONF=/nonexistent/x.conf",
                "PCISOCK_PORTS",
                "PCISOCK_DEFAULT_PORTS",
                "PCISOCK_LOG"
            ]
        );
        assert!(config.strict());
        assert_eq!(config.log_level(), LogLevel::Off);
    }

    #[test]
    fn log_level_parsing() {
        for (value, want) in [
            ("off", LogLevel::Off),
            ("0", LogLevel::Off),
            ("error", LogLevel::Error),
            ("warn", LogLevel::Warn),
            ("info", LogLevel::Info),
            ("1", LogLevel::Info),
            ("debug", LogLevel::Debug),
            ("DEBUG", LogLevel::Debug),
        ] {
            assert_eq!(
                env_config(&[("PCISOCK_LOG", value)]).log_level(),
                want,
                "{value:?}"
            );
        }
        assert_eq!(env_config(&[]).log_level(), LogLevel::Off);
        for bad in ["2", "verbose", "", "warning"] {
            let (config, errors) = Config::from_env_vars(vars(&[("PCISOCK_LOG", bad)]));
            assert_eq!(
                errors[0].to_string(),
                format!("PCISOCK_LOG={bad:?}: expected off, error, warn, info, debug, 0 or 1")
            );
            assert_eq!(config.log_level(), LogLevel::Off);
            assert_pass_through(&config);
        }
        assert!(LogLevel::Info.enables(LogLevel::Warn));
        assert!(LogLevel::Info.enables(LogLevel::Info));
        assert!(!LogLevel::Info.enables(LogLevel::Debug));
        assert!(!LogLevel::Off.enables(LogLevel::Error));
        assert!(!LogLevel::Debug.enables(LogLevel::Off));
    }

    /// Whether `decide` flags `port` for any of a set of roles, addresses and programs that covers every
    /// rule of `sample_file` below.
    fn flagged_somehow(config: &Config, port: u16) -> bool {
        let addrs = [
            None,
            v4(10, 1, 1, 1),
            v4(127, 0, 0, 1),
            ip("fd00::5"),
            ip("2001:db8::1"),
        ];
        let programs = ["redis-server", "iperf3", "curl", ""];
        [Role::Client, Role::Server].iter().any(|&role| {
            addrs.iter().any(|&a| {
                programs
                    .iter()
                    .any(|p| config.decide(role, port, a, p).is_ntb())
            })
        })
    }

    const SAMPLE_FILE: &str = "\
        use tcp both 5201\n\
        use tcp client 6000-6100\n\
        use ntb both 6050-6150\n\
        use ntb client 7000-7010 10.0.0.0/8\n\
        use tcp both 7005\n\
        use ntb server 8000 * program=redis-*\n\
        use tcp both 9000-9999\n\
        use ntb both 9500 fd00::/8\n\
        use ntb both 1-65535 127.0.0.0/8 program=curl\n";

    #[test]
    fn may_flag_port_agrees_with_decide_on_every_port() {
        let file = TempFile::new("sample", SAMPLE_FILE);
        let with_file = env_config(&[
            ("PCISOCK_CONF", file.path()),
            ("PCISOCK_PORTS", "7005,9100"),
        ]);
        let plain = env_config(&[("PCISOCK_PORTS", "40000-40010")]);
        let default_ntb = file_config(
            "use tcp both 1-1000\nuse tcp client 2000\nuse tcp server 2000\ndefault ntb",
        );
        for config in [&with_file, &plain, &default_ntb] {
            for port in 0..=u16::MAX {
                let flagged = flagged_somehow(config, port);
                // Sound: may_flag_port is never false when decide can flag.
                assert!(!flagged || config.may_flag_port(port), "port {port}");
            }
        }
        // Exact for configs without several narrow `use tcp` rules shadowing a `use ntb` together.
        for config in [&with_file, &plain] {
            for port in 0..=u16::MAX {
                assert_eq!(
                    config.may_flag_port(port),
                    flagged_somehow(config, port),
                    "port {port}"
                );
            }
        }
        // Spot checks of what the sample file means.
        let f = &with_file;
        assert!(!f.may_flag_port(5201) && f.may_flag_port(5001));
        assert!(f.may_flag_port(6000)); // the server side is still open to the curl rule (line 9)
        assert_eq!(
            f.decide(Role::Server, 6000, v4(127, 0, 0, 1), "curl"),
            ntb(RuleRef::File { line: 9 })
        );
        assert_eq!(
            f.decide(Role::Client, 6000, v4(127, 0, 0, 1), "curl"),
            tcp(RuleRef::File { line: 2 })
        );
        assert!(f.may_flag_port(7005)); // through line 4, which comes before `use tcp both 7005`
        assert_eq!(
            f.decide(Role::Client, 7005, v4(10, 0, 0, 1), "x"),
            ntb(RuleRef::File { line: 4 })
        );
        assert_eq!(
            f.decide(Role::Server, 7005, None, "x"),
            tcp(RuleRef::File { line: 5 })
        );
        // Line 7 owns 9000-9999 outright: line 8 and PCISOCK_PORTS=9100 never get a say.
        assert!((9000..=9999).all(|p| !f.may_flag_port(p)));
        assert_eq!(
            f.decide(Role::Server, 9500, ip("fd00::1"), "x"),
            tcp(RuleRef::File { line: 7 })
        );
        assert_eq!(
            f.decide(Role::Server, 9100, None, "x"),
            tcp(RuleRef::File { line: 7 })
        );
        assert!(!f.may_flag_port(0));
        assert!(f.may_flag_port(12345)); // only through the curl rule
        assert_eq!(
            f.decide(Role::Client, 12345, v4(127, 0, 0, 1), "curl"),
            ntb(RuleRef::File { line: 9 })
        );
        // The default-ntb file flags everything except the ports its unconditional `use tcp` rules own.
        assert!(!default_ntb.may_flag_port(1000) && default_ntb.may_flag_port(1001));
        assert!(default_ntb.may_flag_port(0));
    }

    #[test]
    fn display_of_rules_and_decisions() {
        assert_eq!(RuleRef::Default.to_string(), "built-in defaults");
        assert_eq!(RuleRef::EnvPorts.to_string(), "PCISOCK_PORTS");
        assert_eq!(RuleRef::File { line: 7 }.to_string(), "PCISOCK_CONF line 7");
        assert_eq!(RuleRef::FileDefault.to_string(), "PCISOCK_CONF default");
        assert_eq!(
            RuleRef::PassThrough.to_string(),
            "pass-through (bad configuration)"
        );
        assert_eq!(ntb(RuleRef::EnvPorts).to_string(), "ntb (PCISOCK_PORTS)");
        assert_eq!(
            tcp(RuleRef::File { line: 2 }).to_string(),
            "tcp (PCISOCK_CONF line 2)"
        );
        assert_eq!(tcp(RuleRef::Default).rule(), RuleRef::Default);
        assert_eq!(Role::Server.to_string(), "server");
        assert_eq!(LogLevel::Warn.to_string(), "warn");
        let long = format!("use ntb both {}", "9".repeat(300));
        let shown = file_error(&long).to_string();
        assert!(shown.contains("999\"…: port 999"), "{shown}");
        assert!(shown.ends_with("9… out of range 1..65535"), "{shown}");
        assert!(shown.len() < 400, "{}", shown.len());
    }

    #[test]
    fn junk_never_panics() {
        // A deterministic stream of junk lines built from the grammar's own pieces and some noise.
        let pieces = [
            "use",
            "default",
            "ntb",
            "tcp",
            "both",
            "client",
            "server",
            "*",
            "1-",
            "-",
            ",",
            "65535",
            "65536",
            "0",
            "10.0.0.0/",
            "::ffff:",
            "/",
            "program=",
            "?",
            "#",
            "é",
            "\t",
            " ",
            "\u{0}",
            "\r",
            "1",
            "fd00::/8",
            "/0",
            "/999",
        ];
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut line = String::new();
            for _ in 0..(next() % 10) {
                line.push_str(pieces[(next() % pieces.len() as u64) as usize]);
                if next() % 2 == 0 {
                    line.push(' ');
                }
            }
            if let Ok(config) = Config::parse_file_text(&line, "junk") {
                let port = (next() % 65536) as u16;
                let _ = config.decide(Role::Client, port, v4(10, 0, 0, 1), "x");
            }
            let (_, _) =
                Config::from_env_vars(vars(&[("PCISOCK_PORTS", &line), ("PCISOCK_LOG", &line)]));
        }
    }
}
