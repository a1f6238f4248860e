//! The boundary between the application and our code: every hook's handling runs in `guard`
//! (a panic becomes EIO), errno is set in one place (`finish`), `nested` tells a hook that the
//! call comes from pcisock itself, and `call_real!` forwards to the libc function. It must never
//! let a panic unwind into the application or change errno on a path we do not handle.

use std::panic::AssertUnwindSafe;

use libc::{c_int, ssize_t};

use crate::sys;

thread_local! {
    /// This thread is inside our handling of a call (see `guard`).
    static INSIDE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run our handling of a call, catching panics (→ EIO). While it runs, the libc calls pcisock
/// makes itself on this thread come back into these hooks (closing its own doorbell lines when
/// an offer settles inside `epoll_wait`, …); `nested` tells the hooks that take locks to pass
/// those straight to the kernel.
pub(super) fn guard<T>(f: impl FnOnce() -> Result<T, c_int>) -> Result<T, c_int> {
    let outer = INSIDE.with(|c| c.replace(true));
    let r = std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or(Err(libc::EIO));
    if !outer {
        INSIDE.with(|c| c.set(false));
    }
    r
}

/// Bookkeeping after a call that already succeeded (fd flags, timeouts, dups): inside the
/// guard like everything else, and a failure there changes nothing for the application.
pub(super) fn quietly(f: impl FnOnce()) {
    let _ = guard(|| {
        f();
        Ok(())
    });
}

/// The call comes from pcisock's own handling of another call on this thread.
pub(super) fn nested() -> bool {
    INSIDE.with(|c| c.get())
}

/// Turn our result into the C convention: the value, or -1 with errno.
pub(super) fn finish<T: From<i8>>(r: Result<T, c_int>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => {
            sys::set_errno(e);
            T::from(-1)
        }
    }
}

pub(super) fn finish_ssize(r: Result<usize, c_int>) -> ssize_t {
    finish(r.map(|n| n as ssize_t))
}

macro_rules! call_real {
    ($name:ident ( $($a:expr),* )) => {
        match real::$name() {
            // SAFETY: forwarding the application's own arguments to the real function.
            Some(f) => unsafe { f($($a),*) },
            None => {
                sys::set_errno(libc::ENOSYS);
                -1
            }
        }
    };
}
