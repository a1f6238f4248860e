//! Looking for an answer before sleeping for it, giving the CPU away before each look: shared by
//! the blocking connect over the host fabric service (`service::answer`) and over the device
//! rendezvous (`device`). It never sleeps.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Call `look` until it says the answer arrived, yielding the CPU (`sched_yield`) before each
/// call, for up to `spin`; true once it arrived. Sharing a CPU with the server (and the service),
/// the waiter lets them run first; on a CPU of its own it need not be woken (a sleeper on an idle
/// CPU took 15-90 µs to wake here: benches/results/connsetup-session13.md). A yield that gave
/// the CPU away for longer than [`LONG_YIELD`] means other programs want it: the next
/// [`QUIET_SKIPS`] calls of the process return false at once, so their waiters sleep (a sleeper
/// woken by its ring runs before a program that used its time; one that yields waits behind it).
pub(crate) fn yielding(spin: Duration, mut look: impl FnMut() -> bool) -> bool {
    if spin.is_zero() {
        return false;
    }
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
        if look() {
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

/// Looks that return false at once after a [`LONG_YIELD`].
const QUIET_SKIPS: u32 = 256;

/// Looks left to return false at once (a count shared by the process's threads; a lost update
/// only moves when looking starts again).
static SKIPS: AtomicU32 = AtomicU32::new(0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_found_ends_the_looks() {
        // A loaded machine may stop the looks early (a long yield): then fewer than three.
        let mut n = 0;
        let found = yielding(Duration::from_secs(5), || {
            n += 1;
            n == 3
        });
        assert!(n <= 3, "looked {n} times");
        assert_eq!(found, n == 3);
    }

    #[test]
    fn no_spin_no_look() {
        assert!(!yielding(Duration::ZERO, || panic!("looked")));
    }
}
