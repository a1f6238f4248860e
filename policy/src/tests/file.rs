//! The rules file (`PCISOCK_CONF`): matching by role, address, program; its errors.

use super::*;

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
