//! The device client's answer wait, transition by transition: plain times and observations in,
//! the action out.

use super::*;

const T: Duration = Duration::from_secs(2);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn quiet(peer_accepts: u32) -> Observed {
    Observed {
        answer: Seen::Nothing,
        peer_accepts,
        tcp: TcpSays::Quiet,
    }
}

#[test]
fn our_answer_finishes_a_foreign_one_is_a_bad_peer() {
    let t0 = Instant::now();
    let mut w = AnswerWait::new(t0, 0, T);
    let ours = Observed {
        answer: Seen::Ours,
        ..quiet(0)
    };
    assert_eq!(w.step(t0 + ms(1), ours, true), Action::Finish);
    // Even past the deadline and with the peer talking: an answer that is there wins.
    let late = Observed {
        tcp: TcpSays::TalksOrHungUp,
        ..ours
    };
    assert_eq!(w.step(t0 + T * 10, late, false), Action::Finish);
    let foreign = Observed {
        answer: Seen::Foreign,
        ..quiet(0)
    };
    assert_eq!(w.step(t0 + ms(1), foreign, true), Action::BadPeer);
}

#[test]
fn no_answer_within_the_timeout_withdraws() {
    let t0 = Instant::now();
    let mut w = AnswerWait::new(t0, 7, T);
    assert_eq!(w.step(t0 + T - ms(1), quiet(7), true), Action::Nap(ms(1)));
    assert_eq!(w.step(t0 + T, quiet(7), true), Action::Withdraw);
    assert_eq!(
        w.withdrawn(t0 + T, true, true),
        Action::GiveUp { quarantine: false }
    );
}

#[test]
fn other_accepts_on_the_servers_host_extend_the_deadline() {
    let t0 = Instant::now();
    let mut w = AnswerWait::new(t0, 0, T);
    // An accept seen at 1.5 s: the deadline moves to 3.5 s.
    assert_eq!(w.step(t0 + ms(1500), quiet(1), true), Action::Nap(NAP_MAX));
    assert_eq!(w.step(t0 + ms(2500), quiet(1), true), Action::Nap(NAP_MAX));
    assert_eq!(w.step(t0 + ms(3490), quiet(1), true), Action::Nap(ms(10)));
    assert_eq!(w.step(t0 + ms(3500), quiet(1), true), Action::Withdraw);
    // A count that does not change is no progress.
    let mut w = AnswerWait::new(t0, 5, T);
    assert_eq!(w.step(t0 + ms(1500), quiet(5), true), Action::Nap(NAP_MAX));
    assert_eq!(w.step(t0 + T, quiet(5), true), Action::Withdraw);
}

#[test]
fn progress_extends_the_wait_only_up_to_the_cap() {
    let t0 = Instant::now();
    let mut w = AnswerWait::new(t0, 0, T);
    let mut accepts = 0;
    let mut at = Duration::ZERO;
    // The server's host accepts another connection every second, for ever.
    while at < ANSWER_PATIENCE_MAX - ms(1) {
        accepts += 1;
        assert_eq!(
            w.step(t0 + at, quiet(accepts), true),
            Action::Nap(NAP_MAX),
            "at {at:?}"
        );
        at += Duration::from_secs(1);
    }
    assert_eq!(
        w.step(t0 + ANSWER_PATIENCE_MAX - ms(1), quiet(accepts + 1), true),
        Action::Nap(ms(1))
    );
    assert_eq!(
        w.step(t0 + ANSWER_PATIENCE_MAX, quiet(accepts + 2), true),
        Action::Withdraw
    );
}

#[test]
fn a_timeout_longer_than_the_cap_is_the_cap() {
    let t0 = Instant::now();
    let long = ANSWER_PATIENCE_MAX * 2;
    let mut w = AnswerWait::new(t0, 0, long);
    assert_eq!(
        w.step(t0 + ANSWER_PATIENCE_MAX, quiet(0), true),
        Action::Nap(NAP_MAX)
    );
    assert_eq!(
        w.step(t0 + long - ms(1), quiet(0), true),
        Action::Nap(ms(1))
    );
    assert_eq!(w.step(t0 + long, quiet(0), true), Action::Withdraw);
}

#[test]
fn a_peer_that_talks_or_hangs_up_is_not_upgrading() {
    let t0 = Instant::now();
    let mut w = AnswerWait::new(t0, 0, T);
    let talks = Observed {
        tcp: TcpSays::TalksOrHungUp,
        ..quiet(0)
    };
    assert_eq!(w.step(t0 + ms(1), talks, true), Action::Withdraw);
    assert_eq!(
        w.withdrawn(t0 + ms(1), true, true),
        Action::GiveUp { quarantine: false }
    );
}

#[test]
fn a_server_that_took_the_offer_gets_the_grace_then_the_ring_is_quarantined() {
    let t0 = Instant::now();
    let mut w = AnswerWait::new(t0, 0, T);
    assert_eq!(w.step(t0 + T, quiet(0), true), Action::Withdraw);
    // The withdraw lost the race: wait for the answer being written.
    assert_eq!(w.withdrawn(t0 + T, false, true), Action::Nap(NAP_MIN));
    assert_eq!(w.withdrawn(t0 + T, false, false), Action::Pending);
    let before = t0 + T + TAKEN_GRACE - ms(1);
    assert_eq!(w.step(before, quiet(0), true), Action::Withdraw);
    assert_eq!(w.withdrawn(before, false, true), Action::Nap(NAP_MIN));
    // The answer arrives within the grace: finish.
    let ours = Observed {
        answer: Seen::Ours,
        ..quiet(0)
    };
    assert_eq!(w.step(before, ours, true), Action::Finish);
    // It does not: give up, and the server may still write into our ring.
    let end = t0 + T + TAKEN_GRACE;
    assert_eq!(w.step(end, quiet(0), true), Action::Withdraw);
    assert_eq!(
        w.withdrawn(end, false, true),
        Action::GiveUp { quarantine: true }
    );
}

#[test]
fn the_grace_counts_from_a_deadline_that_progress_moved() {
    let t0 = Instant::now();
    let mut w = AnswerWait::new(t0, 0, T);
    // The peer talks at 1 s (before the deadline); the withdraw loses.
    let talks = Observed {
        tcp: TcpSays::TalksOrHungUp,
        ..quiet(0)
    };
    assert_eq!(w.step(t0 + ms(1000), talks, true), Action::Withdraw);
    assert_eq!(
        w.withdrawn(t0 + ms(1000), false, true),
        Action::Nap(NAP_MAX)
    );
    // Another accept at 5 s moves the deadline to 7 s, the grace's end to 17 s.
    assert_eq!(w.step(t0 + ms(5000), quiet(1), true), Action::Nap(NAP_MAX));
    let t = t0 + ms(16_999);
    assert_eq!(w.step(t, quiet(1), true), Action::Withdraw);
    assert_eq!(w.withdrawn(t, false, true), Action::Nap(NAP_MIN));
    let t = t0 + ms(17_000);
    assert_eq!(w.step(t, quiet(1), true), Action::Withdraw);
    assert_eq!(
        w.withdrawn(t, false, true),
        Action::GiveUp { quarantine: true }
    );
}

#[test]
fn a_non_blocking_completion_returns_pending_where_a_blocking_one_naps() {
    let t0 = Instant::now();
    let mut w = AnswerWait::new(t0, 0, T);
    assert_eq!(w.step(t0, quiet(0), false), Action::Pending);
    assert_eq!(w.step(t0 + ms(1990), quiet(0), false), Action::Pending);
    // The timeout holds for a non-blocking completion too.
    assert_eq!(w.step(t0 + T, quiet(0), false), Action::Withdraw);
    assert_eq!(
        w.withdrawn(t0 + T, true, false),
        Action::GiveUp { quarantine: false }
    );
}

#[test]
fn naps_are_clamped_to_the_time_left() {
    let t0 = Instant::now();
    let mut w = AnswerWait::new(t0, 0, T);
    assert_eq!(w.step(t0, quiet(0), true), Action::Nap(NAP_MAX));
    assert_eq!(w.step(t0 + T - ms(30), quiet(0), true), Action::Nap(ms(30)));
    assert_eq!(
        w.step(t0 + T - Duration::from_micros(40), quiet(0), true),
        Action::Nap(NAP_MIN)
    );
    let tiny = Duration::from_micros(300);
    let mut w = AnswerWait::new(t0, 0, tiny);
    assert_eq!(w.step(t0, quiet(0), true), Action::Nap(tiny));
}
