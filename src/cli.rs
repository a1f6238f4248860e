//! Command-line plumbing shared by the subcommands: the error type that decides the exit code,
//! and [`Args`], one subcommand's arguments read by `lexopt` (`--name VALUE`, `--name=VALUE`,
//! `-h`, flags, `--`) with its errors worded as usage errors of that subcommand. It never panics
//! on bad input: everything unexpected becomes [`CliError::Usage`].

use std::ffi::OsString;
use std::fmt;

pub use lexopt::Arg;

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

/// The remaining arguments of one subcommand.
pub struct Args {
    command: &'static str,
    parser: lexopt::Parser,
}

impl Args {
    pub fn new(command: &'static str, items: impl IntoIterator<Item = OsString>) -> Args {
        Args {
            command,
            parser: lexopt::Parser::from_args(items),
        }
    }

    pub fn usage(&self, message: impl Into<String>) -> CliError {
        CliError::usage(self.command, message)
    }

    fn error(&self, e: lexopt::Error) -> CliError {
        usage_error(self.command, e)
    }

    /// The next item, or `None` at the end. After `--` every item is a [`Arg::Value`].
    pub fn next(&mut self) -> Result<Option<Arg<'_>>, CliError> {
        let command = self.command;
        self.parser.next().map_err(|e| usage_error(command, e))
    }

    /// The value of the option just read: its `=value`, else the next argument (even one that
    /// starts with `-`), as UTF-8.
    pub fn value(&mut self) -> Result<String, CliError> {
        let v = self.parser.value().map_err(|e| self.error(e))?;
        self.string(v)
    }

    /// A word as UTF-8.
    pub fn string(&self, v: OsString) -> Result<String, CliError> {
        v.into_string()
            .map_err(|v| self.usage(format!("argument {v:?} is not valid UTF-8")))
    }

    /// Everything not read yet, as given (for a program and its arguments).
    pub fn rest(&mut self) -> Result<Vec<OsString>, CliError> {
        match self.parser.raw_args() {
            Ok(raw) => Ok(raw.collect()),
            Err(e) => Err(self.error(e)),
        }
    }
}

/// A lexopt error as a usage error of `command`, in our words.
fn usage_error(command: &'static str, e: lexopt::Error) -> CliError {
    use lexopt::Error as E;
    CliError::usage(
        command,
        match e {
            E::MissingValue { option: Some(name) } => format!("{name} needs a value"),
            E::MissingValue { option: None } => "a value is missing".to_owned(),
            E::UnexpectedOption(name) => format!("unknown option {name}"),
            E::UnexpectedArgument(v) => format!("unexpected argument {v:?}"),
            E::UnexpectedValue { option, value } => {
                format!(
                    "{option} takes no value (got {option}={})",
                    value.to_string_lossy()
                )
            }
            E::NonUnicodeValue(v) => format!("argument {v:?} is not valid UTF-8"),
            e @ (E::ParsingFailed { .. } | E::Custom(_)) => e.to_string(),
        },
    )
}

/// An option or word `command` does not take.
pub fn unexpected(command: &'static str, arg: Arg<'_>) -> CliError {
    usage_error(command, arg.unexpected())
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
        assert_eq!(a.next().unwrap(), Some(Arg::Long("port")));
        assert_eq!(a.value().unwrap(), "80");
        assert_eq!(a.next().unwrap(), Some(Arg::Long("role")));
        assert_eq!(a.value().unwrap(), "client");
        assert_eq!(a.next().unwrap(), Some(Arg::Short('h')));
        assert_eq!(a.next().unwrap(), Some(Arg::Value("NoListener".into())));
        assert_eq!(a.next().unwrap(), Some(Arg::Value("-x".into())));
        assert_eq!(a.next().unwrap(), None);
    }

    #[test]
    fn bad_arguments_are_usage_errors_in_our_words() {
        let mut a = args(&["--port"]);
        a.next().unwrap();
        let e = a.value().unwrap_err();
        assert_eq!(e.exit_code(), EXIT_USAGE);
        assert!(e.to_string().starts_with("--port needs a value"), "{e}");
        let mut a = args(&["--strict=1"]);
        assert_eq!(a.next().unwrap(), Some(Arg::Long("strict")));
        let e = a.next().unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--strict takes no value (got --strict=1)"),
            "{e}"
        );
        let mut a = args(&["--bogus"]);
        let arg = a.next().unwrap().unwrap();
        let e = unexpected("test", arg);
        assert!(e.to_string().starts_with("unknown option --bogus"), "{e}");
        assert!(parse_number::<u16>("t", "--port", "70000").is_err());
        assert_eq!(parse_number::<u16>("t", "--port", "80").unwrap(), 80);
    }

    #[test]
    fn non_utf8_is_a_usage_error() {
        use std::os::unix::ffi::OsStringExt;
        let mut a = Args::new("test", [OsString::from_vec(vec![0xff, 0xfe])]);
        let Some(Arg::Value(v)) = a.next().unwrap() else {
            panic!()
        };
        assert_eq!(a.string(v).unwrap_err().exit_code(), EXIT_USAGE);
    }

    #[test]
    fn a_program_and_its_arguments_stay_as_given() {
        let mut a = args(&["prog", "--flag", "-x"]);
        assert_eq!(a.next().unwrap(), Some(Arg::Value("prog".into())));
        assert_eq!(
            a.rest().unwrap(),
            vec![OsString::from("--flag"), OsString::from("-x")]
        );
    }
}
