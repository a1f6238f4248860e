//! Properties over every port and over junk input: `may_flag_port` agrees with `decide`,
//! `Display`, and no input makes the policy panic.

use super::*;

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
