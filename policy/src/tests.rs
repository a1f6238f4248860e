//! The policy's unit tests: the helpers every topic uses are here; the tests, by topic, in
//! `tests/`.

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

mod env;
mod file;
mod properties;
