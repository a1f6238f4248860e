//! fork: which NTB connections a child shares with its parent, and which entries it must leave
//! alone.
//!
//! Before the fork ([`prepare`]) an accepted connection still waiting for the host fabric
//! service's answer is completed (`ops::settle_accepts`: the answer comes at once, to this
//! process's service connection, which a child does not share); then every NTB connection in
//! the side table gets one more holder, so that a parent that closes its copy at once does not
//! end the connection under the child. Once `fork` returns in the parent ([`parent`]) it names
//! the child's pid with each (before the program can close its copy, however late the child
//! runs); the child ([`child`]) does the same from its side.
//! Two things can happen meanwhile in the parent's other threads, and the child sees their
//! half-done work:
//! - a connection published after `prepare` looked at the table (a client's upgrade completing
//!   on its first `send`, an `accept`): its holder count does not include the child, so the
//!   child's close would be taken for the last one and end the parent's connection;
//! - an entry whose lock a thread held at the fork (a client waiting for its answer holds its
//!   entry's state): that thread does not exist in the child, and the child's first `close` of
//!   the fd would wait for it forever.
//!
//! The same goes for an accepted connection still waiting for the host fabric service's
//! answer that `prepare` did not complete (accepted by another thread after it looked): the
//! answer goes to the parent's service connection.
//!
//! The child swaps such entries for one [`State::Forsaken`] entry: it cannot tell which path the
//! connection took, so its data calls on the fd fail with EIO (logged); it never takes the old
//! entry's locks, never drops it (its contents may be half-written), and gives back the holder
//! it was counted as, if any. Real programs fork with their connections settled (or exec at
//! once); the test `fdtable_races` forks while another thread completes one.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock, TryLockError};

use transport::Endpoint;

use crate::config::Role;
use crate::sock::{Sock, State};
use crate::{global, table};

/// Forks `prepare` has begun in this process (the number of the current one).
static FORKS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The number of the fork this thread's `prepare` announced (for [`parent`]).
    static MY_FORK: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The entry a child puts in place of one it cannot use (made by `prepare`, which may allocate).
static FORSAKEN: OnceLock<Arc<Sock>> = OnceLock::new();

/// `Sock::fork_mark` of an entry the child has forsaken (its holder given back).
const MARK_FORSAKEN: u64 = u64::MAX;

/// `Sock::fork_mark` of a client's pending offer a child inherited: the offer is its parent's
/// (the answer goes to the parent), so the child's close withdraws its copy and never completes
/// it (`ops::control::retire`): a connection completed and closed there would end the parent's.
pub const MARK_INHERITED_OFFER: u64 = 1 << 63;

/// `Sock::fork_mark` of an entry the child of fork `n` has adopted.
fn mark_adopted(n: u64) -> u64 {
    !n
}

/// Before fork (in the parent): one more holder for every NTB connection of the side table
/// (once per connection, however many fds share it), each marked with this fork's number.
pub fn prepare() {
    // Accepted connections whose answer is on its way are completed first (see
    // `ops::settle_accepts`): the child never inherits one half-made.
    crate::ops::settle_accepts();
    // A late-upgrade candidate shared with a child would have two counts of its plain bytes:
    // not carried yet, so the candidacies end (`late`).
    for (_, sock) in crate::table::snapshot() {
        crate::late::end(&sock);
    }
    // Mappings kept for the next connection with the same peer are not the child's.
    global::get().before_fork();
    let n = FORKS.fetch_add(1, SeqCst) + 1;
    let _ = MY_FORK.try_with(|m| m.set(n));
    FORSAKEN.get_or_init(|| {
        Arc::new(Sock::new(
            Role::Client,
            Endpoint::default(),
            Endpoint::default(),
            false,
            State::Forsaken,
        ))
    });
    each_connection(|sock, c| {
        if sock.fork_mark.swap(n, SeqCst) != n {
            c.add_holder();
        }
    });
}

/// A child is about to be made without the fork handlers (`posix_spawn`, `posix_spawnp`,
/// `system`, `popen`: glibc clones it itself): it inherits the descriptors that are not
/// close-on-exec and runs another program, which may take over an inherited NTB connection. So
/// the service is told as for a fork (its arenas of this process's pairs take no new
/// connection: docs/HOST-SERVICE.md, *Arenas*). Nothing else: the child shares this process's
/// memory until its exec and copies no mapping (so kept mappings are not marked as at a fork,
/// which would cost every later keep an `madvise`), and the connections' holders are not
/// counted for it (its new image takes them over with `HOLD`).
pub fn spawning() {
    global::get().before_spawn();
}

/// The fork that [`prepare`] announced failed: there is no child; take the holders back.
pub fn failed() {
    let n = FORKS.load(SeqCst);
    each_connection(|sock, c| {
        if sock
            .fork_mark
            .compare_exchange(n, 0, SeqCst, SeqCst)
            .is_ok()
        {
            c.cancel_holder();
        }
    });
}

/// In the parent, once the fork this thread's [`prepare`] announced has returned child `pid`:
/// name the child as a holder of every connection that fork counted it for.
pub fn parent(pid: libc::pid_t) {
    let Ok(n) = MY_FORK.try_with(|m| m.replace(0)) else {
        return;
    };
    if n == 0 {
        return;
    }
    each_connection(|sock, c| {
        if sock.fork_mark.load(SeqCst) == n {
            c.add_child(pid as u32);
        }
    });
}

/// In the parent, around a fork: `f` on every NTB connection of the side table.
fn each_connection(f: impl Fn(&Sock, &transport::Connection)) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for (_, sock) in table::snapshot() {
            if let Some(c) = sock.conn.get() {
                f(&sock, c);
            }
        }
    }));
}

/// An accepted connection still waiting for the service's answer, which goes to the parent's
/// service connection: `prepare` completed those it could, so one here was accepted by another
/// thread after it looked (or is held by one); the child cannot complete it.
fn accepting(sock: &Sock) -> bool {
    match sock.state.try_lock() {
        Ok(st) => matches!(&*st, State::Offered(Some(p)) if p.is_accept()),
        Err(_) => false,
    }
}

/// Is `m` held by a thread that no longer exists (in a child, where only this thread runs)?
fn stuck<T>(m: &Mutex<T>) -> bool {
    matches!(m.try_lock(), Err(TryLockError::WouldBlock))
}

/// In the child after fork: record it as a holder of the connections it was counted for, and
/// forsake the entries it cannot use (see the module doc). Async-signal-safe: no allocation,
/// no lock that another thread could hold (as `_Fork`'s child requires).
pub fn child() {
    let _ = std::panic::catch_unwind(|| {
        let pid = transport::pid();
        let parent = std::os::unix::process::parent_id();
        let n = FORKS.load(SeqCst);
        global::get().forked();
        let forsaken = FORSAKEN.get();
        table::for_each_in_child(|sock| {
            let busy = stuck(&sock.state) || stuck(&sock.early) || stuck(&sock.fds);
            let mark = sock.fork_mark.load(SeqCst);
            let c = sock.conn.get();
            let keep = match c {
                _ if mark == MARK_FORSAKEN => false,
                Some(_) if mark == mark_adopted(n) => true,
                Some(c) if mark == n => {
                    if busy {
                        c.forsake(pid, parent);
                        sock.fork_mark.store(MARK_FORSAKEN, SeqCst);
                        false
                    } else {
                        c.adopt(pid);
                        sock.fork_mark.store(mark_adopted(n), SeqCst);
                        true
                    }
                }
                // Published after `prepare` counted: not ours to hold.
                Some(_) => false,
                None => {
                    let keep = !busy && !accepting(sock);
                    let offered = matches!(
                        sock.state.try_lock().as_deref(),
                        Ok(State::Offered(Some(_)))
                    );
                    if keep && offered {
                        sock.fork_mark.store(MARK_INHERITED_OFFER, SeqCst);
                    }
                    keep
                }
            };
            if keep {
                return None;
            }
            sock.fork_mark.store(MARK_FORSAKEN, SeqCst);
            forsaken.cloned()
        });
    });
}
