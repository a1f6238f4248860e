//! SA_RESTART for blocking ring calls. The kernel restarts a socket call that a signal handler
//! interrupted if the handler was installed with SA_RESTART, unless the socket has a timeout for
//! that direction (SO_RCVTIMEO/SO_SNDTIMEO): then the call fails with EINTR (`man 7 signal`,
//! "Interruption of system calls by signal handlers"). Called by the data hooks and `splice`
//! when a ring wait ends with EINTR; never installs or changes a handler.
//!
//! The ring wait sleeps in `ppoll`, which only says EINTR, not which signal's handler ran. So the
//! call is restarted unless some signal that could have interrupted it (not blocked in this
//! thread, with a handler installed) lacks SA_RESTART. The compromise: a program that also has a
//! handler without SA_RESTART for another signal gets EINTR even from an SA_RESTART signal,
//! where the kernel would restart (that is what every interruption gave before). Knowing the
//! signal exactly would take wrapping the application's handlers (hooking `sigaction`).
//!
//! # Safety
//! The calls pass pointers to live stack values.
#![allow(unsafe_code)]

use std::time::Duration;

use libc::c_int;

/// Run `call` again each time it fails with EINTR and the kernel would have restarted it:
/// `timeout` is the socket's timeout for the direction (a timeout means EINTR, as the kernel).
pub fn restarting<T>(
    timeout: Option<Duration>,
    mut call: impl FnMut() -> Result<T, c_int>,
) -> Result<T, c_int> {
    loop {
        match call() {
            Err(libc::EINTR) if timeout.is_none() && restartable() => continue,
            r => return r,
        }
    }
}

/// Would every handler that could have interrupted this thread's wait have it restarted?
fn restartable() -> bool {
    // SAFETY: sigset_t is plain old data; zero is a valid (empty) value.
    let mut blocked: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: reads this thread's mask into a live sigset_t.
    if unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut blocked) } != 0 {
        return false;
    }
    (1..=libc::SIGRTMAX()).all(|sig| {
        // SAFETY: a live sigset_t.
        if unsafe { libc::sigismember(&blocked, sig) } == 1 {
            return true;
        }
        // SAFETY: `sigaction` is plain old data; zero is a valid value.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: only reads the disposition into a live struct. glibc refuses its internal
        // signals (EINVAL) and SIGKILL/SIGSTOP cannot have handlers: those are skipped.
        if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } != 0 {
            return true;
        }
        old.sa_sigaction == libc::SIG_DFL
            || old.sa_sigaction == libc::SIG_IGN
            || old.sa_flags & libc::SA_RESTART != 0
    })
}
