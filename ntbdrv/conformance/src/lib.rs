//! The conformance suite: what every [`NtbDevice`] backend must do, written once over the trait.
//!
//! Backends run it from their own test files with a [`Fixture`] that opens the two sides of one
//! link and can start a peer process (the `ntbdrv-peer` binary) on a side. Each check panics
//! with a message that says what broke; it is test code, called only from tests.
//!
//! This crate is test-only (`ntbdrv-conformance`, never a dependency of the product): it owns
//! the suite, the `ntbdrv-peer` process and the backends' test files (`tests/`). It must never be
//! needed by a production crate, and it reaches a device only through ntbdrv's public API.
#![deny(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ntbdrv::{
    Completion, DmaDesc, DmaError, DoorbellError, Lease, LeaseError, NtbDevice, SideId, WindowError,
};

/// How a backend's tests give the suite its devices.
pub trait Fixture {
    /// A fresh handle on `side` of the link under test.
    fn open(&self, side: SideId) -> Arc<dyn NtbDevice>;
    /// The two sides of the link (equal on a loopback link).
    fn sides(&self) -> (SideId, SideId);
    /// A command that runs `ntbdrv-peer` with `args` on `side` of the same device.
    fn peer(&self, side: SideId, args: &[&str]) -> Command;
}

/// Every check of the suite, for a backend's test file: `ntbdrv::conformance_checks!(m)` expands
/// to `m!(check, check, …)`, so each backend runs the same list.
#[macro_export]
macro_rules! conformance_checks {
    ($m:ident) => {
        $m!(
            doorbell_set_clear_mask,
            doorbell_no_lost_wakeup,
            doorbell_vector_fd,
            vectors_trigger_lines,
            scratchpad_handshake,
            windows_visible,
            dma_transfer,
            limits_enforced,
            link_down,
            windows_across_processes,
            reclaim_after_kill,
        );
    };
}

const LONG: Duration = Duration::from_secs(10);

fn up(f: &dyn Fixture) -> (Arc<dyn NtbDevice>, Arc<dyn NtbDevice>) {
    let (sa, sb) = f.sides();
    let a = f.open(sa);
    let b = f.open(sb);
    a.link_enable().expect("link enable a");
    b.link_enable().expect("link enable b");
    assert!(
        a.link_state().up && b.link_state().up,
        "link must be up once both sides enable it"
    );
    (a, b)
}

/// Doorbells: set on the peer, read/clear locally, mask holds the interrupt but latches the bit,
/// out-of-range bits are refused.
pub fn doorbell_set_clear_mask(f: &dyn Fixture) {
    let (a, b) = up(f);
    let bit = 1u64 << 3;
    b.db_clear(b.db_valid_mask()).unwrap();
    b.db_clear_mask(b.db_valid_mask()).unwrap();
    a.peer_db_set(bit).unwrap();
    assert_eq!(
        b.db_read() & bit,
        bit,
        "rung bit must be pending on the peer"
    );
    b.db_clear(bit).unwrap();
    assert_eq!(b.db_read() & bit, 0, "cleared bit must not be pending");

    b.db_set_mask(bit).unwrap();
    assert_eq!(b.db_read_mask() & bit, bit);
    let fd = b.db_vector_fd(3).unwrap();
    ntbdrv::drain_vector(&fd);
    a.peer_db_set(bit).unwrap();
    assert_eq!(b.db_read() & bit, bit, "a masked bit still latches");
    assert!(
        !readable(&fd, Duration::from_millis(50)),
        "a masked bit must not interrupt"
    );
    b.db_clear_mask(bit).unwrap();
    assert!(
        readable(&fd, LONG),
        "unmasking a pending bit must raise its interrupt"
    );
    ntbdrv::drain_vector(&fd);
    b.db_clear(bit).unwrap();

    let valid = b.db_valid_mask();
    if valid != u64::MAX {
        let bad = valid + 1;
        assert!(matches!(
            a.peer_db_set(bad),
            Err(DoorbellError::InvalidBits { .. })
        ));
        assert!(matches!(
            b.db_clear(bad),
            Err(DoorbellError::InvalidBits { .. })
        ));
        assert!(matches!(
            b.db_set_mask(bad),
            Err(DoorbellError::InvalidBits { .. })
        ));
    }
    assert!(b.db_vector_fd(64).is_err(), "bit 64 does not exist");
}

/// Does `fd` (an interrupt line) become readable within `timeout`?
pub fn readable(fd: &std::os::fd::OwnedFd, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    #[allow(unsafe_code)]
    // SAFETY: one live pollfd on the stack, count 1.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    n == 1 && p.revents & libc::POLLIN != 0
}

/// Doorbell ping-pong between two threads, each sleeping in `db_wait`: a lost wake-up shows up
/// as a wait that times out.
pub fn doorbell_no_lost_wakeup(f: &dyn Fixture) {
    let (a, b) = up(f);
    let (ping, pong) = (1u64 << 1, 1u64 << 2);
    a.db_clear(a.db_valid_mask()).unwrap();
    b.db_clear(b.db_valid_mask()).unwrap();
    const ROUNDS: u32 = 5_000;
    let bb = b.clone();
    let t = std::thread::spawn(move || {
        for i in 0..ROUNDS {
            let got = bb.db_wait(ping, Some(LONG)).unwrap();
            assert_eq!(got, ping, "round {i}: ping lost (waited {LONG:?})");
            bb.db_clear(ping).unwrap();
            bb.peer_db_set(pong).unwrap();
        }
    });
    for i in 0..ROUNDS {
        a.peer_db_set(ping).unwrap();
        let got = a.db_wait(pong, Some(LONG)).unwrap();
        assert_eq!(got, pong, "round {i}: pong lost");
        a.db_clear(pong).unwrap();
    }
    t.join().expect("peer thread");
}

/// A doorbell's interrupt line is a pollable fd that fires when the bit is rung.
pub fn doorbell_vector_fd(f: &dyn Fixture) {
    let (a, b) = up(f);
    let bit = 5;
    b.db_clear(1 << bit).unwrap();
    let fd = b.db_vector_fd(bit).unwrap();
    ntbdrv::drain_vector(&fd);
    assert!(
        !readable(&fd, Duration::from_millis(20)),
        "no interrupt before the ring"
    );
    a.peer_db_set(1 << bit).unwrap();
    assert!(
        readable(&fd, LONG),
        "the rung bit's line must become readable"
    );
    ntbdrv::drain_vector(&fd);
    assert!(
        !readable(&fd, Duration::from_millis(20)),
        "drained line must be quiet"
    );
}

/// Message-signalled vectors: the peer triggers a leased vector and its line becomes readable;
/// leases are distinct; out-of-range vectors are refused.
pub fn vectors_trigger_lines(f: &dyn Fixture) {
    let (a, b) = up(f);
    let n = b.vector_count();
    assert!(n >= 64, "at least 64 vectors (more than doorbell bits)");
    let v1 = b.lease_vector(1).unwrap();
    let v2 = b.lease_vector(1).unwrap();
    assert_ne!(v1.vector, v2.vector, "every lease gets its own vector");
    let fd1 = b.vector_fd(v1.vector).unwrap();
    let fd2 = b.vector_fd(v2.vector).unwrap();
    ntbdrv::drain_vector(&fd1);
    ntbdrv::drain_vector(&fd2);
    a.peer_vector_trigger(v1.vector).unwrap();
    assert!(
        readable(&fd1, LONG),
        "the triggered vector's line must become readable"
    );
    assert!(
        !readable(&fd2, Duration::from_millis(20)),
        "another vector stays quiet"
    );
    ntbdrv::drain_vector(&fd1);
    assert!(
        !readable(&fd1, Duration::from_millis(20)),
        "drained line is quiet"
    );
    assert!(a.peer_vector_trigger(n).is_err());
    assert!(b.vector_fd(n).is_err());
    b.release(Lease::Vector(v1)).unwrap();
    b.release(Lease::Vector(v2)).unwrap();
    assert!(
        b.release(Lease::Vector(v2)).is_err(),
        "double release is refused"
    );
}

/// The ntb_transport-style scratchpad handshake: each side writes the peer's bank and reads its
/// own; out-of-range indices are refused.
pub fn scratchpad_handshake(f: &dyn Fixture) {
    let (a, b) = up(f);
    let n = a.spad_count();
    assert!(n >= 4, "at least 4 scratchpads");
    a.peer_spad_write(0, 0xC0FF_EE01).unwrap();
    a.peer_spad_write(1, 0x1234).unwrap();
    assert_eq!(b.spad_read(0).unwrap(), 0xC0FF_EE01);
    assert_eq!(b.spad_read(1).unwrap(), 0x1234);
    b.peer_spad_write(0, 0xC0FF_EE02).unwrap();
    assert_eq!(a.spad_read(0).unwrap(), 0xC0FF_EE02);
    assert_eq!(a.peer_spad_read(1).unwrap(), 0x1234);
    a.spad_write(2, 77).unwrap();
    assert_eq!(a.spad_read(2).unwrap(), 77);
    assert!(a.spad_read(n).is_err());
    assert!(a.peer_spad_write(n, 1).is_err());
    assert!(a.spad_write(u32::MAX, 1).is_err());
}

/// What one side writes through its outbound window appears in the peer's inbound window, and
/// window bounds and alignment are enforced.
pub fn windows_visible(f: &dyn Fixture) {
    let (a, b) = up(f);
    assert!(a.mw_count() >= 1);
    for mw in 0..a.mw_count() {
        let al = a.mw_align(mw).unwrap();
        assert!(al.addr_align.is_power_of_two() && al.size_max > 0);
        let out = a.outbound(mw).unwrap();
        let inb = b.inbound(mw).unwrap();
        assert_eq!(out.len() as u64, al.size_max);
        assert_eq!(out.len(), inb.len());
        let pat: Vec<u8> = (0..4096u32).map(|i| (i * 7 + mw) as u8).collect();
        let off = out.len() - pat.len();
        out.write(off, &pat).unwrap();
        let mut got = vec![0u8; pat.len()];
        inb.read(off, &mut got).unwrap();
        assert_eq!(
            got, pat,
            "window {mw}: bytes written through the outbound window"
        );
        assert!(matches!(
            out.write(off + 1, &pat),
            Err(WindowError::OutOfRange { .. })
        ));
        assert!(matches!(
            inb.atomic_u64(3),
            Err(WindowError::Misaligned { .. })
        ));
        assert!(out.slice(usize::MAX, 2).is_err());
    }
    let n = a.mw_count();
    assert!(matches!(
        a.inbound(n),
        Err(WindowError::NoSuchWindow { .. })
    ));
    assert!(matches!(
        a.mw_align(n),
        Err(WindowError::NoSuchWindow { .. })
    ));
}

/// DMA: a batch from host memory into the peer's window completes with its bytes visible, by
/// polling and by interrupt; bad batches and addresses are refused.
pub fn dma_transfer(f: &dyn Fixture) {
    let (a, b) = up(f);
    if a.dma_channel_count() == 0 {
        assert!(matches!(a.dma_channel(), Err(DmaError::NoChannel { .. })));
        return;
    }
    let ch = a.dma_channel().expect("a DMA channel");
    let src: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    let bus = ch.map_host(src.as_ptr(), src.len()).unwrap();
    let inb = b.inbound(0).unwrap();
    for how in [Completion::Poll, Completion::Interrupt] {
        inb.fill(0, src.len(), 0).unwrap();
        let half = (src.len() / 2) as u32;
        let descs = [
            DmaDesc {
                src: bus,
                dst: ch.peer_window_addr(0, 0).unwrap(),
                len: half,
            },
            DmaDesc {
                src: ntbdrv::BusAddr(bus.0 + half as u64),
                dst: ch.peer_window_addr(0, half as u64).unwrap(),
                len: half,
            },
        ];
        ch.submit(&descs, how == Completion::Interrupt).unwrap();
        let st = ch.wait(how, Some(LONG)).unwrap();
        assert!(!st.in_progress);
        assert_eq!(st.done, 2);
        let mut got = vec![0u8; src.len()];
        inb.read(0, &mut got).unwrap();
        assert!(
            got == src,
            "{how:?}: bytes must be visible once IN_PROGRESS clears"
        );
    }
    // Local window to host memory (the receive direction).
    let mut dst = vec![0u8; 4096];
    let dbus = ch.map_host_mut(dst.as_mut_ptr(), dst.len()).unwrap();
    a.inbound(0).unwrap().write(8192, &src[..4096]).unwrap();
    ch.submit(
        &[DmaDesc {
            src: ch.local_window_addr(0, 8192).unwrap(),
            dst: dbus,
            len: 4096,
        }],
        false,
    )
    .unwrap();
    ch.wait(Completion::Poll, Some(LONG)).unwrap();
    assert_eq!(&dst[..], &src[..4096]);
    ch.unmap_host(dbus).unwrap();

    assert!(matches!(
        ch.submit(&[], false),
        Err(DmaError::BadBatch { .. })
    ));
    assert!(matches!(
        ch.submit(
            &[DmaDesc {
                src: bus,
                dst: bus,
                len: u32::MAX
            }],
            false
        ),
        Err(DmaError::TooLong { .. })
    ));
    // An address nobody mapped fails the transfer, with the error bit, not a crash.
    let stray = ntbdrv::BusAddr(bus.0 + (64 << 20));
    ch.submit(
        &[DmaDesc {
            src: stray,
            dst: ch.peer_window_addr(0, 0).unwrap(),
            len: 64,
        }],
        false,
    )
    .unwrap();
    assert!(matches!(
        ch.wait(Completion::Poll, Some(LONG)),
        Err(DmaError::TransferFailed { index: 0 })
    ));
    assert!(ch.peer_window_addr(a.mw_count(), 0).is_err());
    ch.unmap_host(bus).unwrap();
    assert!(ch.unmap_host(bus).is_err(), "double unmap is refused");
}

/// Limits: window leases cannot exceed the window; doorbell leases run out at the valid mask;
/// released resources can be leased again.
pub fn limits_enforced(f: &dyn Fixture) {
    let (a, _b) = up(f);
    let size = a.mw_align(0).unwrap().size_max;
    assert!(matches!(
        a.lease_window(0, size + 1, 0),
        Err(LeaseError::Window(_))
    ));
    assert!(matches!(
        a.lease_window(a.mw_count(), 4096, 0),
        Err(LeaseError::Window(_))
    ));
    let whole = a.lease_window(0, size, 1).expect("the whole window");
    assert!(matches!(
        a.lease_window(0, 4096, 1),
        Err(LeaseError::WindowFull { .. })
    ));
    a.release(Lease::Window(whole)).unwrap();
    assert!(
        a.release(Lease::Window(whole)).is_err(),
        "double release is refused"
    );
    let l1 = a.lease_window(0, 100, 2).unwrap();
    let l2 = a.lease_window(0, 100, 2).unwrap();
    assert!(
        l1.offset + l1.len <= l2.offset || l2.offset + l2.len <= l1.offset,
        "leases must not overlap"
    );
    a.release(Lease::Window(l1)).unwrap();
    a.release(Lease::Window(l2)).unwrap();

    let n = a.db_valid_mask().count_ones();
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(a.lease_doorbell(3).expect("a doorbell bit"));
    }
    let mut bits: Vec<u32> = held.iter().map(|d| d.bit).collect();
    bits.sort_unstable();
    bits.dedup();
    assert_eq!(
        bits.len(),
        n as usize,
        "every doorbell lease gets its own bit"
    );
    assert!(matches!(
        a.lease_doorbell(3),
        Err(LeaseError::DoorbellsExhausted { .. })
    ));
    for d in held {
        a.release(Lease::Doorbell(d)).unwrap();
    }
    a.lease_doorbell(3)
        .map(|d| a.release(Lease::Doorbell(d)))
        .unwrap()
        .unwrap();
}

/// Link down: the peer sees it, doorbells and peer scratchpads fail, a link event wakes waiters,
/// and the link comes back.
pub fn link_down(f: &dyn Fixture) {
    let (a, b) = up(f);
    let g = a.link_state().generation;
    let aa = a.clone();
    let waiter = std::thread::spawn(move || aa.link_wait(g, LONG));
    std::thread::sleep(Duration::from_millis(20));
    b.link_disable().unwrap();
    let st = waiter.join().unwrap();
    assert!(
        !st.up && st.generation != g,
        "link_wait must return on the event"
    );
    assert!(!a.link_state().up);
    assert_eq!(a.peer_db_set(1), Err(DoorbellError::LinkDown));
    assert!(a.peer_spad_write(0, 1).is_err());
    b.link_enable().unwrap();
    assert!(a.link_state().up);
    a.peer_db_set(1).unwrap();
    b.db_clear(1).unwrap();
}

fn spawn_peer(
    f: &dyn Fixture,
    side: SideId,
    args: &[&str],
) -> (std::process::Child, BufReader<std::process::ChildStdout>) {
    let mut child = f
        .peer(side, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ntbdrv-peer");
    let out = BufReader::new(child.stdout.take().unwrap());
    (child, out)
}

fn expect_line(out: &mut BufReader<std::process::ChildStdout>, want: &str) -> String {
    let mut line = String::new();
    out.read_line(&mut line).expect("read from peer");
    assert!(
        line.starts_with(want),
        "peer said {line:?}, expected {want}"
    );
    line
}

/// A second process writes through its outbound window and rings a doorbell; this process,
/// sleeping on the doorbell, sees the bytes in its inbound window.
pub fn windows_across_processes(f: &dyn Fixture) {
    let (_a, b) = up(f);
    let (sa, sb) = f.sides();
    let bit = 7u64;
    b.db_clear(1 << bit).unwrap();
    let (mut child, _out) = spawn_peer(f, sa, &["write-window", "0", "65536", "1000000", "7"]);
    let got = b.db_wait(1 << bit, Some(LONG)).unwrap();
    assert_eq!(got, 1 << bit, "the peer process's doorbell");
    let mut buf = vec![0u8; 1_000_000];
    b.inbound(0).unwrap().read(65536, &mut buf).unwrap();
    let want: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8 ^ 0x5A).collect();
    assert!(
        buf == want,
        "bytes from the peer process (side {sa} → side {sb})"
    );
    assert!(child.wait().unwrap().success());
}

/// A process that dies holding window space, a doorbell bit and a DMA channel gives them back.
pub fn reclaim_after_kill(f: &dyn Fixture) {
    let (a, _b) = up(f);
    let (sa, _) = f.sides();
    let (mut child, mut out) = spawn_peer(f, sa, &["hold"]);
    expect_line(&mut out, "holding");
    let pid = child.id();
    let size = a.mw_align(0).unwrap().size_max;
    assert!(
        a.lease_window(0, size, 9).is_err(),
        "the peer process holds part of window 0"
    );
    // SIGKILL: no destructor runs.
    #[allow(unsafe_code)]
    // SAFETY: signalling a child process we spawned and have not reaped.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
    child.wait().unwrap();
    let t0 = Instant::now();
    let freed = a.reclaim();
    assert!(
        freed >= 2,
        "reclaim freed {freed} leases of the dead process"
    );
    let whole = a
        .lease_window(0, size, 9)
        .expect("the whole window after reclaim");
    a.release(Lease::Window(whole)).unwrap();
    if a.dma_channel_count() > 0 {
        drop(a.dma_channel().expect("the dead process's DMA channel"));
    }
    assert!(t0.elapsed() < LONG);
}

/// A link event kicks the line of every vector leased on both sides, as a link-state-change
/// interrupt does on hardware, and leaves alone a line no lease holds. `toggle(down)` takes the
/// link down (`true`) or brings it back (`false`); after each, every leased line must be
/// readable within `within`, and the released line must stay quiet for `quiet`. `label` starts
/// every message.
pub fn link_events_kick_leased_lines(
    a: &dyn NtbDevice,
    b: &dyn NtbDevice,
    label: &str,
    within: Duration,
    quiet: Duration,
    mut toggle: impl FnMut(bool),
) {
    a.link_enable().unwrap();
    b.link_enable().unwrap();
    let (va, vb) = (a.lease_vector(1).unwrap(), b.lease_vector(1).unwrap());
    let lines = [
        a.vector_fd(va.vector).unwrap(),
        b.vector_fd(vb.vector).unwrap(),
    ];
    // A line that was leased and released: no lease holds it now.
    let vc = b.lease_vector(1).unwrap();
    let idle = b.vector_fd(vc.vector).unwrap();
    b.release(ntbdrv::Lease::Vector(vc)).unwrap();
    let all_quiet = |what: &str| {
        for (i, fd) in lines.iter().chain([&idle]).enumerate() {
            ntbdrv::drain_vector(fd);
            assert!(!readable(fd, quiet), "{label}: line {i} readable {what}");
        }
    };
    all_quiet("before any link event");
    for (what, down) in [("link down", true), ("link up", false)] {
        toggle(down);
        for (i, fd) in lines.iter().enumerate() {
            assert!(
                readable(fd, within),
                "{label}: {what} did not kick side {i}'s vector line within {within:?}"
            );
        }
        assert!(
            !readable(&idle, quiet),
            "{label}: {what} kicked a line no lease holds"
        );
        all_quiet("after draining");
    }
}
