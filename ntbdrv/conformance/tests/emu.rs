//! The conformance suite on the emulated device (two-host and loopback links, across threads
//! and processes), plus what only `emu` has: fault injection and bad device files.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ntbdrv::emu::{Config, EmuDevice, Fault, Options, Topology};
use ntbdrv::{Completion, DeviceError, DmaDesc, DmaError, DoorbellError, NtbDevice, SideId};
use ntbdrv_conformance::{self as conformance, Fixture};

/// A private device directory per test, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p = std::env::temp_dir().join(format!("ntbdrv-test-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Emu {
    dir: TempDir,
    config: Config,
}

impl Emu {
    fn new(tag: &str, topology: Topology) -> Self {
        // Small windows keep the tests light; limits stay hardware-like.
        let config = Config {
            topology,
            mw_size: 8 << 20,
            n_db: 16,
            ..Config::default()
        };
        Emu {
            dir: TempDir::new(tag),
            config,
        }
    }

    fn opts(&self, side: SideId) -> Options {
        Options {
            dir: self.dir.0.clone(),
            name: "dev".into(),
            side,
            config: self.config,
        }
    }

    fn emu(&self, side: SideId) -> EmuDevice {
        EmuDevice::open(&self.opts(side)).expect("open emu device")
    }
}

impl Fixture for Emu {
    fn open(&self, side: SideId) -> Arc<dyn NtbDevice> {
        Arc::new(self.emu(side))
    }
    fn sides(&self) -> (SideId, SideId) {
        match self.config.topology {
            Topology::Loopback => (0, 0),
            Topology::TwoHost => (0, 1),
        }
    }
    fn peer(&self, side: SideId, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ntbdrv-peer"));
        c.arg(&self.dir.0)
            .arg("dev")
            .arg(side.to_string())
            .args(args);
        c
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod two_host {
            use super::*;
            $(#[test] fn $name() { conformance::$name(&Emu::new(stringify!($name), Topology::TwoHost)); })*
        }
        mod loopback {
            use super::*;
            $(#[test] fn $name() { conformance::$name(&Emu::new(stringify!($name), Topology::Loopback)); })*
        }
    };
}

ntbdrv_conformance::conformance_checks!(conformance);

// ---- faults --------------------------------------------------------------------------------------

fn pair(e: &Emu) -> (EmuDevice, EmuDevice) {
    let a = e.emu(0);
    let b = e.emu(1);
    a.link_enable().unwrap();
    b.link_enable().unwrap();
    (a, b)
}

#[test]
fn fault_link_down() {
    let e = Emu::new("fault_link_down", Topology::TwoHost);
    let (a, b) = pair(&e);
    let g = b.link_state().generation;
    a.faults().inject(Fault::LinkDown);
    assert!(
        !a.link_state().up && !b.link_state().up,
        "both sides see the link down"
    );
    assert_ne!(b.link_state().generation, g, "a link event");
    assert_eq!(a.peer_db_set(1), Err(DoorbellError::LinkDown));
    assert!(a.link_enable().is_err(), "enable cannot override the fault");
    // DMA into the peer window fails while the link is down.
    let ch = a.dma_channel().unwrap();
    let buf = vec![7u8; 4096];
    let bus = ch.map_host(buf.as_ptr(), buf.len()).unwrap();
    ch.submit(
        &[DmaDesc {
            src: bus,
            dst: ch.peer_window_addr(0, 0).unwrap(),
            len: 4096,
        }],
        false,
    )
    .unwrap();
    assert!(matches!(
        ch.wait(Completion::Poll, Some(Duration::from_secs(5))),
        Err(DmaError::TransferFailed { .. })
    ));
    a.faults().clear();
    assert!(a.link_state().up);
    a.peer_db_set(1).unwrap();
}

#[test]
fn fault_dma_error_then_recovery() {
    let e = Emu::new("fault_dma_error", Topology::TwoHost);
    let (a, b) = pair(&e);
    let ch = a.dma_channel().unwrap();
    let buf: Vec<u8> = (0..65536u32).map(|i| i as u8).collect();
    let bus = ch.map_host(buf.as_ptr(), buf.len()).unwrap();
    let d = [DmaDesc {
        src: bus,
        dst: ch.peer_window_addr(0, 0).unwrap(),
        len: 65536,
    }];
    a.faults().inject(Fault::DmaError { count: 1 });
    ch.submit(&d, false).unwrap();
    assert!(matches!(
        ch.wait(Completion::Poll, Some(Duration::from_secs(5))),
        Err(DmaError::TransferFailed { index: 0 })
    ));
    assert!(a.faults().hits() >= 1);
    ch.submit(&d, true).unwrap();
    ch.wait(Completion::Interrupt, Some(Duration::from_secs(5)))
        .expect("the fault was counted once");
    let mut got = vec![0u8; 65536];
    b.inbound(0).unwrap().read(0, &mut got).unwrap();
    assert_eq!(got, buf);
}

#[test]
fn fault_slow_dma_shows_in_progress() {
    let e = Emu::new("fault_slow_dma", Topology::TwoHost);
    let (a, b) = pair(&e);
    let ch = a.dma_channel().unwrap();
    let buf = vec![0xA5u8; 1 << 16];
    let bus = ch.map_host(buf.as_ptr(), buf.len()).unwrap();
    a.faults().inject(Fault::DmaSlow {
        delay: Duration::from_millis(100),
    });
    ch.submit(
        &[DmaDesc {
            src: bus,
            dst: ch.peer_window_addr(0, 4096).unwrap(),
            len: 1 << 16,
        }],
        true,
    )
    .unwrap();
    assert!(
        ch.status().in_progress,
        "IN_PROGRESS is set while the engine works"
    );
    assert!(matches!(
        ch.submit(
            &[DmaDesc {
                src: bus,
                dst: bus,
                len: 1
            }],
            false
        ),
        Err(DmaError::Busy)
    ));
    let mut first = [0u8; 1];
    b.inbound(0).unwrap().read(4096, &mut first).unwrap();
    assert_eq!(first[0], 0, "no byte lands before the engine copies");
    let st = ch
        .wait(Completion::Interrupt, Some(Duration::from_secs(5)))
        .unwrap();
    assert!(!st.in_progress);
    let mut got = vec![0u8; 1 << 16];
    b.inbound(0).unwrap().read(4096, &mut got).unwrap();
    assert_eq!(got, buf, "bytes visible once IN_PROGRESS clears");
    a.faults().clear();
}

#[test]
fn fault_lost_doorbell() {
    let e = Emu::new("fault_lost_db", Topology::TwoHost);
    let (a, b) = pair(&e);
    b.db_clear(b.db_valid_mask()).unwrap();
    a.faults().inject(Fault::LostDoorbell { count: 1 });
    a.peer_db_set(1 << 4).unwrap();
    assert_eq!(
        b.db_wait(1 << 4, Some(Duration::from_millis(50))).unwrap(),
        0,
        "the doorbell was lost"
    );
    a.peer_db_set(1 << 4).unwrap();
    assert_eq!(
        b.db_wait(1 << 4, Some(Duration::from_secs(5))).unwrap(),
        1 << 4,
        "the next one arrives"
    );
}

// ---- bad input -----------------------------------------------------------------------------------

fn expect_err(r: Result<EmuDevice, DeviceError>) -> DeviceError {
    match r {
        Ok(_) => panic!("opening must fail"),
        Err(e) => {
            assert!(!e.to_string().is_empty());
            e
        }
    }
}

#[test]
fn bad_config_is_refused() {
    let e = Emu::new("bad_config", Topology::Loopback);
    for c in [
        Config {
            n_db: 65,
            ..e.config
        },
        Config {
            n_db: 0,
            ..e.config
        },
        Config {
            n_mw: 9,
            ..e.config
        },
        Config {
            n_spad: 33,
            ..e.config
        },
        Config {
            n_dma_ch: 5,
            ..e.config
        },
        Config {
            mw_size: 4097,
            ..e.config
        },
        Config {
            mw_align: 3000,
            ..e.config
        },
    ] {
        let opts = Options {
            config: c,
            ..e.opts(0)
        };
        assert!(
            matches!(
                expect_err(EmuDevice::open(&opts)),
                DeviceError::BadConfig(_)
            ),
            "{c:?}"
        );
    }
    assert!(matches!(
        expect_err(EmuDevice::open(&e.opts(1))),
        DeviceError::NoSuchSide { side: 1, sides: 1 }
    ));
}

fn write_at(path: &Path, off: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(bytes, off)
        .unwrap();
}

#[test]
fn corrupt_truncated_and_foreign_files_are_refused() {
    let e = Emu::new("corrupt", Topology::Loopback);
    let path = e.opts(0).path();
    drop(e.emu(0));

    write_at(&path, 0, b"NOTADEVI");
    assert!(matches!(
        expect_err(EmuDevice::open(&e.opts(0))),
        DeviceError::NotADevice(_)
    ));
    write_at(&path, 0, &ntb_sys::NTBEMU_MAGIC.to_le_bytes());

    write_at(&path, 8, &99u32.to_le_bytes());
    assert!(matches!(
        expect_err(EmuDevice::open(&e.opts(0))),
        DeviceError::VersionMismatch {
            ours: ntb_sys::NTBEMU_VERSION,
            theirs: 99,
            ..
        }
    ));
    write_at(&path, 8, &ntb_sys::NTBEMU_VERSION.to_le_bytes());
    EmuDevice::open(&e.opts(0)).expect("restored header opens");

    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    assert!(matches!(
        expect_err(EmuDevice::open(&e.opts(0))),
        DeviceError::Corrupt { .. }
    ));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(100)
        .unwrap();
    assert!(matches!(
        expect_err(EmuDevice::open(&e.opts(0))),
        DeviceError::Corrupt { .. }
    ));
    std::fs::remove_file(&path).unwrap();

    // A file that is not ours: random bytes of the right size.
    std::fs::write(&path, vec![0xEEu8; 8192]).unwrap();
    assert!(matches!(
        expect_err(EmuDevice::open(&e.opts(0))),
        DeviceError::Corrupt { .. } | DeviceError::NotADevice(_)
    ));
    std::fs::remove_file(&path).unwrap();

    // A symlink planted in place of the device is not followed.
    std::os::unix::fs::symlink("/etc/passwd", &path).unwrap();
    assert!(matches!(
        expect_err(EmuDevice::open(&e.opts(0))),
        DeviceError::Io { .. }
    ));
}

#[test]
fn open_directory_is_refused() {
    let e = Emu::new("open_dir", Topology::Loopback);
    std::fs::set_permissions(&e.dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(matches!(
        expect_err(EmuDevice::open(&e.opts(0))),
        DeviceError::ForeignDirectory { mode: 0o755, .. }
    ));
    let file = e.dir.0.join("plainfile");
    std::fs::write(&file, b"x").unwrap();
    let opts = Options {
        dir: file,
        ..e.opts(0)
    };
    assert!(matches!(
        expect_err(EmuDevice::open(&opts)),
        DeviceError::NotADirectory(_)
    ));
}

#[test]
fn existing_device_keeps_its_configuration() {
    let e = Emu::new("keeps_config", Topology::Loopback);
    drop(e.emu(0));
    let other = Options {
        config: Config {
            n_db: 8,
            ..e.config
        },
        ..e.opts(0)
    };
    let d = EmuDevice::open(&other).unwrap();
    assert_eq!(
        d.config().n_db,
        e.config.n_db,
        "the device file's limits win"
    );
}

#[test]
fn concurrent_creation_yields_one_device() {
    let e = Arc::new(Emu::new("concurrent_create", Topology::TwoHost));
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let e = e.clone();
            std::thread::spawn(move || {
                let d = e.emu(i % 2);
                d.spad_write(0, 0).unwrap();
                d.path().to_path_buf()
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let a = e.emu(0);
    let b = e.emu(1);
    a.link_enable().unwrap();
    b.link_enable().unwrap();
    a.peer_spad_write(3, 42).unwrap();
    assert_eq!(
        b.spad_read(3).unwrap(),
        42,
        "all threads attached to the same device"
    );
}

/// Run `f` on another thread; fail if it does not return within a generous bound (a hang
/// detector, not a timing assertion).
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{what} did not return"))
}

#[test]
fn dma_never_writes_into_a_source_mapping() {
    // The application's send buffer is mapped for the engine to read. Whoever can write the
    // descriptors (anyone attached to the device) must not turn it into a destination.
    let e = Emu::new("dma_src_only", Topology::TwoHost);
    let (a, b) = pair(&e);
    let ch = a.dma_channel().unwrap();
    let buf = vec![0x11u8; 4096];
    let bus = ch.map_host(buf.as_ptr(), buf.len()).unwrap();
    b.outbound(0).unwrap().write(0, &[0x22u8; 4096]).unwrap();
    ch.submit(
        &[DmaDesc {
            src: ch.local_window_addr(0, 0).unwrap(),
            dst: bus,
            len: 4096,
        }],
        false,
    )
    .unwrap();
    assert!(matches!(
        ch.wait(Completion::Poll, Some(Duration::from_secs(5))),
        Err(DmaError::TransferFailed { index: 0 })
    ));
    assert!(
        buf.iter().all(|&x| x == 0x11),
        "the source buffer was written"
    );
    ch.unmap_host(bus).unwrap();
}

#[test]
fn unmapping_a_destination_waits_for_the_copy_into_it() {
    // After `unmap_host` returns the caller may free or reuse the memory: a copy the engine
    // already checked against the range must not go on writing into it. The engine checked
    // the ranges, let go of the table, then copied, so an unmap during a long copy returned at
    // once and the copy went on (here: over what the owner wrote after the unmap).
    let mut e = Emu::new("dma_unmap_in_flight", Topology::TwoHost);
    const LEN: usize = 64 << 20;
    e.config.mw_size = LEN as u64;
    let (a, b) = pair(&e);
    b.outbound(0).unwrap().write(0, &vec![0x33u8; LEN]).unwrap();
    let ch = a.dma_channel().unwrap();
    let mut dst = vec![0u8; LEN];
    let base = dst.as_mut_ptr();
    let bus = ch.map_host_mut(base, LEN).unwrap();
    ch.submit(
        &[DmaDesc {
            src: ch.local_window_addr(0, 0).unwrap(),
            dst: bus,
            len: LEN as u32,
        }],
        false,
    )
    .unwrap();
    // Wait for the copy to be under way (a byte 1 MiB in has landed: memmove writes the very
    // first and last bytes of a large copy at its end), then take the range back.
    let t0 = std::time::Instant::now();
    // SAFETY: `dst` lives for the whole test and 1 MiB is inside it; the engine writes it
    // concurrently, so every look is a volatile read of one byte.
    while unsafe { base.add(1 << 20).read_volatile() } != 0x33 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the copy never started"
        );
        std::hint::spin_loop();
    }
    ch.unmap_host(bus).unwrap();
    // The owner reuses its memory.
    let reused = LEN - (2 << 20)..LEN - (1 << 20);
    // SAFETY: as above (the range is inside `dst`); the engine must not write here any more.
    unsafe { std::ptr::write_bytes(base.add(reused.start), 0x77, reused.len()) };
    let _ = ch.wait(Completion::Poll, Some(Duration::from_secs(10)));
    assert!(
        dst[reused].iter().all(|&x| x == 0x77),
        "the engine wrote into a range after it was unmapped"
    );
}

#[test]
fn dropping_a_channel_does_not_wait_for_a_delayed_engine() {
    let e = Emu::new("dma_drop_slow", Topology::TwoHost);
    let (a, _b) = pair(&e);
    let ch = a.dma_channel().unwrap();
    let buf: &'static [u8] = Box::leak(vec![0x5Au8; 4096].into_boxed_slice());
    let bus = ch.map_host(buf.as_ptr(), buf.len()).unwrap();
    // Any process attached to the device can set the delay word: an hour per descriptor.
    a.faults().inject(Fault::DmaSlow {
        delay: Duration::from_secs(3600),
    });
    let descs: Vec<DmaDesc> = (0..4)
        .map(|i| DmaDesc {
            src: bus,
            dst: ch.peer_window_addr(0, i * 4096).unwrap(),
            len: 4096,
        })
        .collect();
    ch.submit(&descs, false).unwrap();
    assert!(ch.status().in_progress);
    within("dropping the DMA channel", move || drop(ch));
    a.faults().clear();
}

#[test]
fn a_forged_host_table_lock_is_broken() {
    // The host table's lock word holds its holder's pid; anyone attached to the device can
    // write it. A live pid (1) or a value kill(2) reads as "every process" (u32::MAX is -1)
    // must not wedge the table: the lease still comes, after a bounded wait.
    use std::os::unix::fs::FileExt;
    let e = Emu::new("forged_lock", Topology::Loopback);
    let a = Arc::new(e.emu(0));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(a.path())
        .unwrap();
    let mut b = [0u8; 8];
    file.read_exact_at(
        &mut b,
        std::mem::offset_of!(ntb_sys::ntbemu_header, side_base) as u64,
    )
    .unwrap();
    let table = u64::from_le_bytes(b) + ntb_sys::NTBEMU_SIDE_HOST_TABLE as u64;
    for forged in [1u32, u32::MAX] {
        file.write_all_at(&forged.to_le_bytes(), table).unwrap();
        let a2 = a.clone();
        let lease = within("a lease behind a forged lock", move || {
            a2.lease_window(0, 8192, 0x5445_5354)
        })
        .unwrap();
        a.release(ntbdrv::Lease::Window(lease)).unwrap();
    }
}

#[test]
fn a_symlink_in_place_of_an_interrupt_line_is_refused() {
    // The lines are FIFOs next to the device file. Something else planted at a line's path (a
    // symlink to a file) is neither opened nor written by a ring.
    let e = Emu::new("fifo_symlink", Topology::Loopback);
    let a = e.emu(0);
    a.link_enable().unwrap();
    let victim = e.dir.0.join("victim");
    std::fs::write(&victim, b"untouched").unwrap();
    let line = e.dir.0.join("dev.s0.v7");
    std::os::unix::fs::symlink(&victim, &line).unwrap();
    assert!(a.vector_fd(7).is_err(), "a symlink opened as a line");
    let _ = a.peer_vector_trigger(7);
    assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
    // A regular file in its place is no line either.
    std::fs::remove_file(&line).unwrap();
    std::fs::write(&line, b"").unwrap();
    assert!(a.vector_fd(7).is_err(), "a regular file opened as a line");
    let _ = a.peer_vector_trigger(7);
    assert_eq!(std::fs::read(&line).unwrap(), b"");
}

/// A link event interrupts, as a link-state-change interrupt does on hardware: the line of every
/// leased vector on every side becomes readable when the link goes down and again when it comes
/// back (a connection's sleeper then fails over at once, not at the end of its nap), and a
/// line no lease holds is left alone.
#[test]
fn link_events_kick_every_leased_vector_line() {
    for topology in [Topology::TwoHost, Topology::Loopback] {
        let e = Emu::new("link_events_kick", topology);
        let (sa, sb) = e.sides();
        let (a, b) = (e.emu(sa), e.emu(sb));
        conformance::link_events_kick_leased_lines(
            &a,
            &b,
            &format!("{topology:?}"),
            Duration::ZERO,
            Duration::from_millis(10),
            |down| {
                if down {
                    a.faults().inject(Fault::LinkDown);
                } else {
                    a.faults().clear();
                }
            },
        );
    }
}

/// A side that brings its link up bumps the link generation before the link reads up, so a
/// reader that sees the link up sees the generation of that event, never the one the link
/// had while down (a connection returning to the ring in that window would record a
/// generation that moves a moment later, and leave the ring again for nothing). With both
/// sides up at generation g0, a link-down leaves a generation of the other parity; one thread
/// takes side 0's link down and up while another reads the link state twice in a row: a
/// generation of a link-down in the first read, the link up in the second, and the same
/// generation there is the window.
#[test]
fn a_link_that_reads_up_has_the_generation_of_its_coming_up() {
    let e = Emu::new("link_up_generation", Topology::TwoHost);
    let (a, b) = pair(&e);
    let g0 = b.link_state().generation;
    assert!(b.link_state().up);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let bad = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut bad = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let first = b.link_state().generation;
                let then = b.link_state();
                let down_generation = first.wrapping_sub(g0) % 2 != 0;
                if down_generation && then.up && then.generation == first && bad.len() < 5 {
                    bad.push(first);
                }
            }
            bad
        });
        for _ in 0..1_000_000 {
            a.link_disable().unwrap();
            a.link_enable().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        reader.join().unwrap()
    });
    assert!(
        bad.is_empty(),
        "the link read up at generations {bad:?}, which it had while down (g0 = {g0})"
    );
}
