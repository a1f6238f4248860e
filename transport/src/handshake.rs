//! A device client's wait for the server's answer to its offer, as a pure state machine (no
//! I/O, no clock reads: the caller passes the time and what it observed, and acts on the
//! [`Action`] it gets back). `DeviceTransport::complete` is the loop around it: it looks at the
//! answer slot, the peer host's accept count and the TCP socket, calls [`AnswerWait::step`],
//! and does what it is told (finish, withdraw the offer, give up, or sleep on the doorbell).
//!
//! The rules: our answer finishes the connect, an answer that is not ours stays on TCP. The
//! wait lasts `answer_timeout` from the last time the server's host accepted a connection (a
//! host working through a long backlog keeps extending it), but never past
//! [`ANSWER_PATIENCE_MAX`] (or `answer_timeout`, if longer) after the offer was posted. When
//! the deadline passes, or the peer talks over TCP or hangs up, the offer is withdrawn; if the
//! server took it first its answer is on its way, and we wait for it up to [`TAKEN_GRACE`]
//! past the deadline before the ring is quarantined.

use std::time::{Duration, Instant};

use crate::ANSWER_PATIENCE_MAX;

/// How long past its deadline a client waits for the answer of a server that took its offer
/// (the withdraw lost the race): the server is writing it.
pub(crate) const TAKEN_GRACE: Duration = Duration::from_secs(10);

/// The shortest and longest sleep between two looks (a look is cheap; a sleep longer than this
/// would answer a peer's TCP talk late).
pub(crate) const NAP_MIN: Duration = Duration::from_micros(100);
pub(crate) const NAP_MAX: Duration = Duration::from_millis(50);

/// What the answer slot of the offer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Nothing yet.
    Nothing,
    /// The answer to our offer (its cookie is ours).
    Ours,
    /// An answer that is not ours, or not readable.
    Foreign,
}

/// What the client's TCP socket says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TcpSays {
    /// Open and quiet: the peer may be upgrading.
    Quiet,
    /// The peer sent data, or hung up: it is not upgrading.
    TalksOrHungUp,
}

/// One look at the world.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Observed {
    pub answer: Seen,
    /// The peer host's count of accepted connections.
    pub peer_accepts: u32,
    /// Only read when `answer` is [`Seen::Nothing`] (the caller need not look otherwise).
    pub tcp: TcpSays,
}

/// What the caller does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Our answer is there: finish the connection with it.
    Finish,
    /// An answer that is not ours: release the ring, stay on TCP (`BadPeer`).
    BadPeer,
    /// Try to withdraw the offer and report the result to [`AnswerWait::withdrawn`].
    Withdraw,
    /// Stay on TCP (`NoAnswer`). `quarantine`: the server took the offer and may still write
    /// into our ring (retire it); otherwise the ring is ours to release.
    GiveUp { quarantine: bool },
    /// A non-blocking completion: the connect is still waiting.
    Pending,
    /// Sleep on the doorbell and the TCP socket for at most this long, then look again.
    Nap(Duration),
}

/// The wait of one offer. It lives in every pending device connect (the shim's `State::Offered`):
/// no field more than the decision needs (the deadline is computed, not stored), or that enum
/// outgrows clippy's `large_enum_variant`.
#[derive(Debug, Clone)]
pub(crate) struct AnswerWait {
    posted: Instant,
    /// The peer host's accept count when we last saw it change, and when that was.
    progress: (u32, Instant),
    timeout: Duration,
}

impl AnswerWait {
    /// An offer posted at `posted`, when the peer host had accepted `peer_accepts`
    /// connections; `timeout`: the settings' `answer_timeout`.
    pub(crate) fn new(posted: Instant, peer_accepts: u32, timeout: Duration) -> AnswerWait {
        AnswerWait {
            posted,
            progress: (peer_accepts, posted),
            timeout,
        }
    }

    /// Decide on one look. `block`: the caller may sleep (else it returns `Pending` when it
    /// would).
    pub(crate) fn step(&mut self, now: Instant, o: Observed, block: bool) -> Action {
        match o.answer {
            Seen::Ours => return Action::Finish,
            Seen::Foreign => return Action::BadPeer,
            Seen::Nothing => {}
        }
        if o.peer_accepts != self.progress.0 {
            self.progress = (o.peer_accepts, now);
        }
        if now >= self.deadline() || o.tcp == TcpSays::TalksOrHungUp {
            return Action::Withdraw;
        }
        self.idle(now, block)
    }

    /// The result of the withdraw [`step`](Self::step) asked for: `ok`, the offer is withdrawn;
    /// else the server took it and its answer is on its way.
    pub(crate) fn withdrawn(&mut self, now: Instant, ok: bool, block: bool) -> Action {
        if ok {
            return Action::GiveUp { quarantine: false };
        }
        if now >= self.deadline() + TAKEN_GRACE {
            return Action::GiveUp { quarantine: true };
        }
        self.idle(now, block)
    }

    /// When the wait ends: `timeout` after the last progress, and no later than
    /// [`ANSWER_PATIENCE_MAX`] (or `timeout`, if longer) after the offer was posted.
    fn deadline(&self) -> Instant {
        (self.progress.1 + self.timeout).min(self.posted + ANSWER_PATIENCE_MAX.max(self.timeout))
    }

    fn idle(&self, now: Instant, block: bool) -> Action {
        if !block {
            return Action::Pending;
        }
        Action::Nap(
            self.deadline()
                .saturating_duration_since(now)
                .clamp(NAP_MIN, NAP_MAX),
        )
    }
}

#[cfg(test)]
mod tests;
