//! CPU copy (PIO) against the DMA engine on the emulated device: the time for one copy of N
//! bytes into the peer's memory window until the bytes are visible there.
//!
//! Run by `cargo bench --bench device`; the results and the CPU-copy/DMA threshold they suggest
//! are in `benches/results/device.md`. The device lives in a private directory under
//! `std::env::temp_dir()` that is removed at the end; nothing here touches a real bridge.
//!
//! Groups (all `Throughput::Bytes`), one benchmark per size:
//! - `pio_copy/<size>`: `outbound(0).write(0, &src[..size])`, a CPU `memcpy` into the window.
//! - `dma_poll/<size>`: one descriptor, `submit(.., false)` then `wait(Completion::Poll)`.
//! - `dma_interrupt/<size>`: one descriptor, `submit(.., true)` then `wait(Completion::Interrupt)`.
//! - `dma_poll_split/4x1MiB`: a 4 MiB copy as four 1 MiB descriptors in one batch.
//! - `dma_poll_cold/<size>`: as `dma_poll`, but each copy is submitted after a 200 µs pause, so
//!   the engine thread has gone to sleep and the submit pays its futex wake-up.
//!
//! The three main kinds are interleaved per size (pio, poll, interrupt for 64 B, then for 256 B,
//! …) so that the VM's slow drifts hit them alike. Source and destination offsets are fixed and
//! both buffers are touched before measuring, so the numbers are copies, not page faults.

use std::hint::black_box;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use ntbdrv::emu::{Config, EmuDevice, Options, Topology};
use ntbdrv::{BusAddr, Completion, DmaChannel, DmaDesc, NtbDevice, Region};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const SIZES: [usize; 9] = [
    64,
    256,
    KIB,
    4 * KIB,
    16 * KIB,
    64 * KIB,
    256 * KIB,
    MIB,
    4 * MIB,
];
/// Sizes for the cold-engine group (each costs several seconds of wall time).
const COLD_SIZES: [usize; 3] = [4 * KIB, 64 * KIB, MIB];
const MAX: usize = 4 * MIB;
/// Long enough for the engine's 20 µs spin to run out, so it sleeps on its futex.
const ENGINE_NAP: Duration = Duration::from_micros(200);
const TIMEOUT: Duration = Duration::from_secs(5);

/// A private (0700) device directory, removed on drop.
struct DeviceDir(PathBuf);

impl DeviceDir {
    fn new() -> Self {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p =
            std::env::temp_dir().join(format!("pcisock-bench-device-{}-{n}", std::process::id()));
        std::fs::create_dir(&p).expect("create the device directory");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).expect("chmod 0700");
        DeviceDir(p)
    }
}

impl Drop for DeviceDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Two hosts joined by an emulated link, side 0 sending into side 1's window 0.
struct Bench {
    // Field order is drop order: the channel (and its engine thread) and the regions go before
    // the devices, the devices before their directory.
    ch: Box<dyn DmaChannel>,
    out: Region,
    inb: Region,
    src: Vec<u8>,
    src_bus: BusAddr,
    dst_bus: BusAddr,
    _a: EmuDevice,
    _b: EmuDevice,
    _dir: DeviceDir,
}

impl Bench {
    fn new() -> Self {
        let dir = DeviceDir::new();
        let config = Config {
            topology: Topology::TwoHost,
            mw_size: 64 << 20,
            ..Config::default()
        };
        let opts = |side| Options {
            dir: dir.0.clone(),
            name: "bench".into(),
            side,
            config,
        };
        let a = EmuDevice::open(&opts(0)).expect("open side 0");
        let b = EmuDevice::open(&opts(1)).expect("open side 1");
        a.link_enable().expect("link_enable side 0");
        b.link_enable().expect("link_enable side 1");
        assert!(a.link_state().up && b.link_state().up, "link up");

        let out = a.outbound(0).expect("outbound window");
        let inb = b.inbound(0).expect("inbound window");
        // Touch the destination once so no measured copy takes a page fault.
        out.fill(0, MAX, 0).expect("touch the window");
        let src: Vec<u8> = (0..MAX).map(|i| (i * 7 + 1) as u8).collect();

        let ch = a.dma_channel().expect("DMA channel");
        // Registered once, as a transport would register its send buffers.
        let src_bus = ch
            .map_host(src.as_ptr(), src.len())
            .expect("map the source");
        let dst_bus = ch.peer_window_addr(0, 0).expect("peer window address");
        Bench {
            ch,
            out,
            inb,
            src,
            src_bus,
            dst_bus,
            _a: a,
            _b: b,
            _dir: dir,
        }
    }

    fn pio(&self, len: usize) {
        self.out
            .write(0, black_box(&self.src[..len]))
            .expect("PIO write");
    }

    fn dma(&self, len: usize, how: Completion) {
        let desc = DmaDesc {
            src: self.src_bus,
            dst: self.dst_bus,
            len: len as u32,
        };
        self.ch
            .submit(black_box(&[desc]), how == Completion::Interrupt)
            .expect("DMA submit");
        black_box(self.ch.wait(how, Some(TIMEOUT)).expect("DMA wait"));
    }

    /// `len` bytes as `len / piece` descriptors of `piece` bytes in one batch.
    fn dma_split(&self, len: usize, piece: usize) {
        let descs: Vec<DmaDesc> = (0..len / piece)
            .map(|i| DmaDesc {
                src: BusAddr(self.src_bus.0 + (i * piece) as u64),
                dst: BusAddr(self.dst_bus.0 + (i * piece) as u64),
                len: piece as u32,
            })
            .collect();
        self.ch
            .submit(black_box(&descs), false)
            .expect("DMA submit");
        black_box(
            self.ch
                .wait(Completion::Poll, Some(TIMEOUT))
                .expect("DMA wait"),
        );
    }

    /// Check that a copy of `len` bytes landed in the peer's inbound window, then clear it.
    fn check(&self, what: &str, len: usize) {
        let mut got = vec![0u8; len];
        self.inb.read(0, &mut got).expect("read the inbound window");
        assert!(got == self.src[..len], "{what}: {len} bytes did not arrive");
        self.out.fill(0, len, 0).expect("clear the window");
    }
}

fn device(c: &mut Criterion) {
    let bench = Bench::new();
    // Every path must deliver the bytes before its timing means anything.
    for &size in &SIZES {
        bench.pio(size);
        bench.check("pio", size);
        bench.dma(size, Completion::Poll);
        bench.check("dma poll", size);
        bench.dma(size, Completion::Interrupt);
        bench.check("dma interrupt", size);
    }
    bench.dma_split(MAX, MIB);
    bench.check("dma split", MAX);

    for &size in &SIZES {
        let id = || BenchmarkId::from_parameter(size);
        let mut g = c.benchmark_group("pio_copy");
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(id(), |b| b.iter(|| bench.pio(size)));
        g.finish();

        let mut g = c.benchmark_group("dma_poll");
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(id(), |b| b.iter(|| bench.dma(size, Completion::Poll)));
        g.finish();

        let mut g = c.benchmark_group("dma_interrupt");
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(id(), |b| b.iter(|| bench.dma(size, Completion::Interrupt)));
        g.finish();
    }

    let mut g = c.benchmark_group("dma_poll_split");
    g.throughput(Throughput::Bytes(MAX as u64));
    g.bench_function("4x1MiB", |b| b.iter(|| bench.dma_split(MAX, MIB)));
    g.finish();

    // The engine asleep at every submit: the pause is outside the timed part.
    let mut g = c.benchmark_group("dma_poll_cold");
    g.measurement_time(Duration::from_millis(500));
    for &size in &COLD_SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    std::thread::sleep(ENGINE_NAP);
                    let t = Instant::now();
                    bench.dma(size, Completion::Poll);
                    total += t.elapsed();
                }
                total
            })
        });
    }
    g.finish();
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500))
        .configure_from_args();
    device(&mut c);
    c.final_summary();
}
