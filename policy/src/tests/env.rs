//! The environment variables: `PCISOCK_PORTS` and the default ports, `PCISOCK_STRICT`,
//! `PCISOCK_LOG`.

use super::*;

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
