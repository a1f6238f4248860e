//! A fork closes the arena generation of the forking process's pairs (docs/HOST-SERVICE.md,
//! *Arenas*): the library tells the service (`Forked`, from its fork handler's
//! `Transport::before_fork`) before its next request, so that the next connection between the
//! same processes goes into a new arena; without a fork the pair's connections share one.

mod common;

use std::time::{Duration, Instant};

use common::pair;
use common::service::{service, transport};

/// The service's arenas, and the fresh ones it made ahead: memfds `pcisock-segment` open in this
/// process (the service runs on one of its threads) of at least a GiB (the processes' tally
/// pages are such memfds too, of a few KiB).
fn arenas() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|l| l.to_string_lossy().starts_with("/memfd:pcisock-segment"))
        })
        .filter_map(|e| std::fs::metadata(e.path()).ok())
        .filter(|m| m.len() >= 1 << 30)
        .count()
}

/// The count of arenas once the service's turn made what it makes ahead (after its replies).
fn settled(want: usize) -> usize {
    let t0 = Instant::now();
    while arenas() != want && t0.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(5));
    }
    arenas()
}

#[test]
fn a_fork_puts_the_pairs_next_connection_in_a_new_arena() {
    let svc = service();
    let t = transport(&svc, 16 << 10);
    let first = pair(&t);
    std::thread::sleep(Duration::from_millis(100));
    let before = arenas();
    // Between the same two processes (this one, both ends): the same arena.
    let second = pair(&t);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(arenas(), before, "a second connection made an arena");
    // A fork (the handler's part in the parent): the next connection is in a new arena, the
    // old one stays while its connections live.
    t.before_fork();
    let third = pair(&t);
    assert_eq!(settled(before + 1), before + 1, "no new arena after a fork");
    let fourth = pair(&t);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        arenas(),
        before + 1,
        "the new generation takes the next connection"
    );
    drop((first, second, third, fourth));
}
