//! Why the service refuses a request, and why a message does not decode. Pure values: must never
//! carry anything a sender wrote beyond the codes and counts that name the error.

use super::*;

/// Why the service refused a request (counted per kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum Refusal {
    /// Not a well-formed message (see [`WireError`]).
    Malformed = 1,
    /// A request before `Hello`, or a second `Hello`.
    OutOfOrder = 2,
    /// `Hello`'s pid is not the sender's (the kernel's credentials say otherwise).
    NotYou = 3,
    /// The descriptor is not what the request needs (not a TCP socket, not listening, …).
    BadSocket = 4,
    /// The named listener or connection is not this process's.
    NotYours = 5,
    /// Too many listeners or offers held by one process.
    Limit = 6,
    /// Only the service's owner or root may do that.
    Forbidden = 7,
    /// A `Cancel` that asked for stalled offers only: servers accepted since, wait on.
    Progressing = 8,
    /// A `Cancel` that asked for stalled offers only: the connection has not reached a server
    /// (no server side exists in the kernel: the listener's queue overflowed); the offer
    /// stands, and the client's first bytes (`Plain`) reach it (since version 9).
    Unreached = 9,
}

impl Refusal {
    pub const ALL: [Refusal; 9] = [
        Refusal::Malformed,
        Refusal::OutOfOrder,
        Refusal::NotYou,
        Refusal::BadSocket,
        Refusal::NotYours,
        Refusal::Limit,
        Refusal::Forbidden,
        Refusal::Progressing,
        Refusal::Unreached,
    ];

    pub fn code(self) -> u32 {
        self as u32
    }

    pub fn from_code(c: u32) -> Option<Refusal> {
        Refusal::ALL.into_iter().find(|r| r.code() == c)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Malformed => "malformed message",
            Refusal::OutOfOrder => "request out of order",
            Refusal::NotYou => "pid does not match the sender's credentials",
            Refusal::BadSocket => "the descriptor is not the socket the request needs",
            Refusal::NotYours => "not this process's listener or connection",
            Refusal::Limit => "too many listeners or offers held",
            Refusal::Forbidden => "only the service's owner or root may do that",
            Refusal::Progressing => "the host's servers are accepting: not stalled",
            Refusal::Unreached => "the connection has not reached a server yet: send to reach it",
        })
    }
}

/// A message that is not well formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    Short(usize),
    Long(usize),
    Magic(u32),
    Version(u16),
    Kind(u16),
    /// The body's length is not the kind's.
    Body {
        kind: u16,
        len: usize,
    },
    /// The kind carries `want` descriptors; `got` came.
    Fds {
        kind: u16,
        want: usize,
        got: usize,
    },
    /// A field holds a value the kind does not allow.
    Value {
        kind: u16,
        word: usize,
    },
    /// The reply did not arrive whole: its descriptors dropped by the kernel (the receiving
    /// process at its open-file limit) or its bytes cut.
    Truncated,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Short(n) => write!(f, "{n} bytes: shorter than a header"),
            WireError::Long(n) => write!(f, "{n} bytes: longer than {MAX_MESSAGE}"),
            WireError::Magic(m) => write!(f, "bad magic {m:#x}"),
            WireError::Version(v) => {
                write!(f, "protocol version {v}, this build speaks {VERSION}")
            }
            WireError::Kind(k) => write!(f, "unknown kind {k}"),
            WireError::Body { kind, len } => write!(f, "kind {kind}: body of {len} bytes"),
            WireError::Fds { kind, want, got } => {
                write!(f, "kind {kind}: {got} descriptors, expected {want}")
            }
            WireError::Value { kind, word } => write!(f, "kind {kind}: bad value in word {word}"),
            WireError::Truncated => write!(f, "the reply did not arrive whole"),
        }
    }
}
