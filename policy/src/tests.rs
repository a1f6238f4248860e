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
    let (config, errors) = Config::from_env_vars(vars(&[("PCISOCK_CONF", dir.to_str().unwrap())]));
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
    let default_ntb =
        file_config("use tcp both 1-1000\nuse tcp client 2000\nuse tcp server 2000\ndefault ntb");
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
