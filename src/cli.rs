//! Command-line plumbing shared by the subcommands: the error type that decides the exit code,
//! and a small option reader (`--name VALUE`, `--name=VALUE`, flags, `--`). It never panics on
//! bad input: everything unexpected becomes [`CliError::Usage`].

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt;

/// Exit code of a usage error (unknown command or option, bad value).
pub const EXIT_USAGE: u8 = 2;
/// Exit code of an operational failure (no device, a check failed, …).
pub const EXIT_FAILURE: u8 = 1;

/// Why a command did not succeed.
#[derive(Debug)]
pub enum CliError {
    /// The command line is wrong; `command` names the subcommand whose help to point at.
    Usage {
        command: &'static str,
        message: String,
    },
    /// The command line was fine but the operation failed.
    Failed(String),
}

impl CliError {
    pub fn usage(command: &'static str, message: impl Into<String>) -> CliError {
        CliError::Usage {
            command,
            message: message.into(),
        }
    }

    pub fn failed(message: impl Into<String>) -> CliError {
        CliError::Failed(message.into())
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage { .. } => EXIT_USAGE,
            CliError::Failed(_) => EXIT_FAILURE,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage { command, message } => {
                let help = if command.is_empty() {
                    "pcisock --help".to_owned()
                } else {
                    format!("pcisock {command} --help")
                };
                write!(f, "{message}\n(see '{help}')")
            }
            CliError::Failed(message) => f.write_str(message),
        }
    }
}

/// One item of a command line as [`Args::next`] reads it.
#[derive(Debug, PartialEq, Eq)]
pub enum Arg {
    /// `--name` or `-x`, with the value given as `--name=value`, if any.
    Option {
        name: String,
        inline: Option<String>,
    },
    /// A word that is not an option (UTF-8 only; see [`Args::rest`] for raw program arguments).
    Word(String),
    /// `--`: everything after it is positional.
    EndOfOptions,
}

/// The remaining arguments of one subcommand.
pub struct Args {
    command: &'static str,
    items: VecDeque<OsString>,
}

impl Args {
    pub fn new(command: &'static str, items: impl IntoIterator<Item = OsString>) -> Args {
        Args {
            command,
            items: items.into_iter().collect(),
        }
    }

    /// The subcommand these arguments belong to (for error messages).
    pub fn command(&self) -> &'static str {
        self.command
    }

    pub fn usage(&self, message: impl Into<String>) -> CliError {
        CliError::usage(self.command, message)
    }

    /// The next item, or `None` at the end. Non-UTF-8 options and words are usage errors.
    pub fn next(&mut self) -> Result<Option<Arg>, CliError> {
        let Some(raw) = self.items.pop_front() else {
            return Ok(None);
        };
        let Some(s) = raw.to_str() else {
            return Err(self.usage(format!("argument {raw:?} is not valid UTF-8")));
        };
        if s == "--" {
            return Ok(Some(Arg::EndOfOptions));
        }
        if s.len() > 1 && s.starts_with('-') && !is_negative_number(s) {
            let (name, inline) = match s.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
                _ => (s.to_owned(), None),
            };
            return Ok(Some(Arg::Option { name, inline }));
        }
        Ok(Some(Arg::Word(s.to_owned())))
    }

    /// The value of option `name`: its inline `=value`, else the next argument.
    pub fn value(&mut self, name: &str, inline: Option<String>) -> Result<String, CliError> {
        if let Some(v) = inline {
            return Ok(v);
        }
        match self.items.pop_front() {
            Some(v) => v
                .into_string()
                .map_err(|v| self.usage(format!("the value of {name} ({v:?}) is not valid UTF-8"))),
            None => Err(self.usage(format!("{name} needs a value"))),
        }
    }

    /// Reject an inline value on a flag that takes none (`--strict=yes`).
    pub fn no_value(&self, name: &str, inline: Option<String>) -> Result<(), CliError> {
        match inline {
            Some(v) => Err(self.usage(format!("{name} takes no value (got {name}={v})"))),
            None => Ok(()),
        }
    }

    /// Everything not read yet, as given (for a program and its arguments).
    pub fn rest(&mut self) -> Vec<OsString> {
        self.items.drain(..).collect()
    }

    /// Put a word back at the front (it starts the program's command line).
    pub fn push_front(&mut self, item: OsString) {
        self.items.push_front(item);
    }

    /// Fail unless every argument was read.
    pub fn finish(&mut self) -> Result<(), CliError> {
        match self.items.front() {
            None => Ok(()),
            Some(extra) => Err(self.usage(format!("unexpected argument {extra:?}"))),
        }
    }
}

fn is_negative_number(s: &str) -> bool {
    s.len() > 1 && s[1..].chars().all(|c| c.is_ascii_digit())
}

/// An unknown option of `command`.
pub fn unknown_option(command: &'static str, name: &str) -> CliError {
    CliError::usage(command, format!("unknown option {name}"))
}

/// Parse a number option, naming the option in the error.
pub fn parse_number<T: std::str::FromStr>(
    command: &'static str,
    name: &str,
    value: &str,
) -> Result<T, CliError>
where
    T::Err: fmt::Display,
{
    value
        .trim()
        .parse::<T>()
        .map_err(|e| CliError::usage(command, format!("{name} {value:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Args {
        Args::new("test", v.iter().map(OsString::from))
    }

    #[test]
    fn reads_options_words_and_values() {
        let mut a = args(&[
            "--port",
            "80",
            "--role=client",
            "-h",
            "NoListener",
            "--",
            "-x",
        ]);
        assert_eq!(
            a.next().unwrap(),
            Some(Arg::Option {
                name: "--port".into(),
                inline: None
            })
        );
        assert_eq!(a.value("--port", None).unwrap(), "80");
        let Some(Arg::Option { name, inline }) = a.next().unwrap() else {
            panic!()
        };
        assert_eq!(
            (name.as_str(), inline.as_deref()),
            ("--role", Some("client"))
        );
        assert_eq!(
            a.next().unwrap(),
            Some(Arg::Option {
                name: "-h".into(),
                inline: None
            })
        );
        assert_eq!(a.next().unwrap(), Some(Arg::Word("NoListener".into())));
        assert_eq!(a.next().unwrap(), Some(Arg::EndOfOptions));
        assert_eq!(a.rest(), vec![OsString::from("-x")]);
        assert!(a.finish().is_ok());
    }

    #[test]
    fn missing_value_and_extra_arguments_are_usage_errors() {
        let mut a = args(&["--port"]);
        a.next().unwrap();
        assert_eq!(a.value("--port", None).unwrap_err().exit_code(), EXIT_USAGE);
        let mut a = args(&["x"]);
        assert_eq!(a.finish().unwrap_err().exit_code(), EXIT_USAGE);
        assert!(args(&[]).no_value("--strict", Some("1".into())).is_err());
        assert!(parse_number::<u16>("t", "--port", "70000").is_err());
        assert_eq!(parse_number::<u16>("t", "--port", "80").unwrap(), 80);
    }

    #[test]
    fn non_utf8_is_a_usage_error() {
        use std::os::unix::ffi::OsStringExt;
        let mut a = Args::new("test", [OsString::from_vec(vec![0xff, 0xfe])]);
        assert_eq!(a.next().unwrap_err().exit_code(), EXIT_USAGE);
    }

    #[test]
    fn negative_numbers_are_words() {
        let mut a = args(&["-5"]);
        assert_eq!(a.next().unwrap(), Some(Arg::Word("-5".into())));
    }
}
