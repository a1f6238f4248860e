//! The rules file (`PCISOCK_CONF`) and the variables' values: parsing and matching, pure. What a
//! rule means and the precedence between sources are [`crate::Config::decide`]'s (docs/CONFIG.md).
//! Used by `Config::from_env_vars` and `decide` only; like the crate it must never panic on input
//! or do I/O beyond reading the rules file it is given.

use super::*;

/// Reads an optional variable with `parse`, recording an error (and returning `unset`) if it is bad.
pub(super) fn parse_var<T>(
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

pub(super) fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        _ => Err("expected 1, true, yes, 0, false or no".to_owned()),
    }
}

pub(super) fn parse_log_level(value: &str) -> Result<LogLevel, String> {
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
pub(super) fn read_rules_file(path: &str) -> Result<RulesFile, ConfigError> {
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
pub(super) enum Action {
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

    pub(super) fn decision(self, rule: RuleRef) -> Decision {
        match self {
            Action::Ntb => Decision::Ntb { rule },
            Action::Tcp => Decision::Tcp { rule },
        }
    }
}

/// `client`, `server` or `both`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RoleSet {
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

    pub(super) fn has(self, role: Role) -> bool {
        matches!(
            (self, role),
            (RoleSet::Both, _) | (RoleSet::Client, Role::Client) | (RoleSet::Server, Role::Server)
        )
    }
}

/// A port selector: `*` or a list of ports and inclusive ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Ports {
    Any,
    List(Vec<RangeInclusive<u16>>),
}

impl Ports {
    /// Parses `*` or `5001,6000-6010`; the reason on error.
    pub(super) fn parse(text: &str) -> Result<Ports, String> {
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

    pub(super) fn from_list(ports: &[u16]) -> Ports {
        Ports::List(ports.iter().map(|&p| p..=p).collect())
    }

    pub(super) fn contains(&self, port: u16) -> bool {
        match self {
            Ports::Any => true,
            Ports::List(ranges) => ranges.iter().any(|r| r.contains(&port)),
        }
    }

    /// Every port selected (`*` includes 0, so this agrees with `contains`).
    pub(super) fn iter(&self) -> Box<dyn Iterator<Item = u16> + '_> {
        match self {
            Ports::Any => Box::new(0..=u16::MAX),
            Ports::List(ranges) => Box::new(ranges.iter().flat_map(Clone::clone)),
        }
    }
}

pub(super) fn parse_port(text: &str) -> Result<u16, String> {
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
pub(super) enum AddrMatch {
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
pub(super) struct Cidr {
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
pub(super) fn glob_match(pattern: &str, name: &str) -> bool {
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
pub(super) struct Rule {
    pub(super) line: u32,
    pub(super) action: Action,
    pub(super) roles: RoleSet,
    pub(super) ports: Ports,
    addr: AddrMatch,
    program: Option<String>,
}

impl Rule {
    pub(super) fn matches(
        &self,
        role: Role,
        port: u16,
        addr: Option<IpAddr>,
        program: &str,
    ) -> bool {
        self.roles.has(role)
            && self.ports.contains(port)
            && self.addr.matches(addr)
            && self
                .program
                .as_deref()
                .is_none_or(|g| glob_match(g, program))
    }

    /// Matches every address and program (so it decides its ports for its roles outright).
    pub(super) fn is_unconditional(&self) -> bool {
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
pub(super) struct RulesFile {
    pub(super) rules: Vec<Rule>,
    /// What an unmatched connection gets (after `PCISOCK_PORTS` and the defaults); `tcp` unless a
    /// `default` line says otherwise.
    pub(super) default: Action,
}

impl RulesFile {
    /// Parses the file; the error names `origin` and the first bad line.
    pub(super) fn parse(text: &str, origin: &str) -> Result<RulesFile, ConfigError> {
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
pub(super) struct PortBitmap(Box<[u64]>);

impl PortBitmap {
    pub(super) fn empty() -> PortBitmap {
        PortBitmap(vec![0; 65536 / 64].into_boxed_slice())
    }

    pub(super) fn get(&self, port: u16) -> bool {
        self.0[usize::from(port / 64)] & (1 << (port % 64)) != 0
    }

    pub(super) fn set(&mut self, port: u16) {
        self.0[usize::from(port / 64)] |= 1 << (port % 64);
    }
}

impl fmt::Debug for PortBitmap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count: u32 = self.0.iter().map(|w| w.count_ones()).sum();
        write!(f, "PortBitmap({count} ports)")
    }
}
