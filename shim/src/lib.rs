//! `libpcisock.so`: the LD_PRELOAD interposer.
//!
//! It only intercepts libc socket calls, keeps the fd side table, and delegates: `ops` decides
//! what a call does for a tracked fd, `transport` carries the bytes. Untracked fds pay one table
//! load and go to the real function. The shim never writes to the application's stdout or
//! stderr unless `PCISOCK_LOG` asks (or the configuration is bad: one message at start).
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
// The unit-test build (and the loom build, for `tests/loom_table.rs`) leaves the hooks out, so
// the code they call looks unused there.
#![cfg_attr(any(test, loom), allow(dead_code))]

/// The flagging policy (its own crate, shared with the CLI).
pub use policy as config;
mod epoll;
mod fork;
mod global;
// The fd table's hazard-pointer sequences; public to the loom model (`tests/loom_table.rs`).
#[cfg(loom)]
pub mod hazard;
#[cfg(not(loom))]
mod hazard;
#[cfg(not(any(test, loom)))]
mod hooks;
mod late;
mod ops;
mod real;
mod signals;
mod sock;
mod splice;
mod sys;
mod table;
