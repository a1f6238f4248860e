//! Looking for the service's answer to an offer without waiting for it: whether it arrived
//! (a close or a readiness check asks), and a blocking connect's looks before it sleeps. Called
//! by the service link's completion; it never sleeps.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::{Duration, Instant};

use super::{link, Link, Offered};
use crate::ProcessState;

/// Has the service's final answer to offer `o` arrived (taken in now, never waiting)? `false`
/// when the service connection is busy — in this very thread too: a close inside
/// [`Link::with`] (the service connection closing a descriptor it received) runs the
/// application's close path, which asks this — or is not this process's (after a fork).
pub(crate) fn answer_arrived(shared: &ProcessState, o: &Offered) -> bool {
    let Ok(l) = link(shared) else {
        return false;
    };
    let Ok(mut g) = l.client.try_lock() else {
        return false;
    };
    match g.as_mut() {
        Some((pid, c)) if *pid == ntbdrv::process::pid() => {
            c.take_replies().is_ok() && c.answered(&o.offer)
        }
        _ => false,
    }
}

/// Before a blocking `connect` sleeps for its answer (not a completion at first use, where the
/// application's other connections may need the CPU): look for it, yielding the CPU before each
/// look, for up to the adaptive spin (`Settings::spin`; none in doorbell mode) and at most
/// `left`; true once it arrived. Sharing a CPU with the server and the service, the client lets
/// them run first; on a CPU of its own it need not be woken (a sleeper on an idle CPU took
/// 15-90 µs to wake here: benches/results/connsetup-session13.md). A yield that gave the CPU
/// away for longer than [`LONG_YIELD`] means other programs want it: the next [`QUIET_SKIPS`]
/// connects of the process sleep at once (a sleeper woken by its ring runs before a program
/// that used its time; one that yields waits behind it).
pub(super) fn look_before_sleep(
    shared: &ProcessState,
    link: &Link,
    o: &Offered,
    left: Duration,
) -> bool {
    let spin = match shared.settings.completion {
        crate::CompletionMode::Doorbell => return false,
        crate::CompletionMode::Adaptive => shared.settings.spin.min(left),
        crate::CompletionMode::Poll => left,
    };
    let skip = SKIPS.load(Relaxed);
    if skip > 0 {
        SKIPS.store(skip - 1, Relaxed);
        return false;
    }
    let start = Instant::now();
    while start.elapsed() < spin {
        let before = Instant::now();
        std::thread::yield_now();
        let gone = before.elapsed();
        let arrived = link.with(|c| {
            c.take_replies()?;
            Ok(c.answered(&o.offer))
        });
        if !matches!(arrived, Ok(false)) {
            return true;
        }
        if gone > LONG_YIELD {
            SKIPS.store(QUIET_SKIPS, Relaxed);
            return false;
        }
    }
    false
}

/// Longer than the service's or a server's turn for a connection (tens of µs): a yield that
/// took this long ran another program.
const LONG_YIELD: Duration = Duration::from_micros(200);

/// Connects that sleep at once after a [`LONG_YIELD`].
const QUIET_SKIPS: u32 = 256;

/// Connects left to sleep at once (a count shared by the process's threads; a lost update only
/// moves when looking starts again).
static SKIPS: AtomicU32 = AtomicU32::new(0);
