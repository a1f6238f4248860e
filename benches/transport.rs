//! The transport layer without the shim: the pure ring/frame code, and whole connections over
//! the emulated device inside one process.
//!
//! Run by `cargo bench --bench transport`; results in `benches/results/transport.md`. The device
//! lives in a private 0700 directory under `std::env::temp_dir()`, removed at the end.
//!
//! Groups:
//! - `ring_frame/<payload>`: one frame through the pure protocol functions, producer and consumer
//!   in one thread: `Ring::place`, `FrameHeader::encode` into a ring-sized buffer (and the pad
//!   frame when one is due), then `FrameHeader::decode` and `Ring::check_frame` on the consumer
//!   side. No payload bytes are copied: this is the bookkeeping cost per frame.
//!   `Throughput::Elements(1)`, so criterion reports frames per second.
//! - `connection/<size>`: `Connection::send` of one `size`-byte message on a sender thread,
//!   `Connection::recv` of all its bytes on the bench thread; one iteration is one message
//!   end to end (the sender is a persistent thread told how many messages to send, so thread
//!   start-up is not timed). Default settings: 1 MiB ring, adaptive completion, CPU copies.
//!   `Throughput::Bytes(size)`.

use std::hint::black_box;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use ntbdrv::emu::{Config, EmuDevice, Options};
use ntbdrv::NtbDevice;
use socket2::{Domain, Socket, Type};
use transport::proto::{Frame, FrameHeader, Ring, FRAME_PAD};
use transport::{Connection, Endpoint, Outcome, RecvFlags, Settings, Transport};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const FRAME_PAYLOADS: [u64; 4] = [1, 64, 4096, 65536];
const MESSAGE_SIZES: [usize; 4] = [64, 4 * KIB, 64 * KIB, MIB];
const RING: u64 = 1 << 20;

// ---- ring_frame ---------------------------------------------------------------------------------

/// Producer and consumer state of one ring, both in this thread.
struct RingModel {
    ring: Ring,
    mem: Vec<u8>,
    tail: u64,
    head: u64,
    tx_seq: u64,
    rx_seq: u64,
}

impl RingModel {
    fn new(cap: u64) -> Self {
        RingModel {
            ring: Ring::new(cap).expect("power-of-two ring"),
            mem: vec![0u8; cap as usize],
            tail: 0,
            head: 0,
            tx_seq: 0,
            rx_seq: 0,
        }
    }

    fn put_header(&mut self, pos: u64, h: &FrameHeader) {
        let p = pos as usize;
        self.mem[p..p + 16].copy_from_slice(&h.encode());
    }

    fn header_at(&self, pos: u64) -> FrameHeader {
        let p = pos as usize;
        FrameHeader::decode(self.mem[p..p + 16].try_into().unwrap())
    }

    /// Produce one data frame of `want` payload bytes, then consume everything up to it.
    /// Returns the payload length the frame carried.
    fn one_frame(&mut self, want: u64) -> u64 {
        let pl = self
            .ring
            .place(self.tail, self.head, want)
            .expect("valid counters")
            .expect("the consumer keeps the ring empty");
        if let Some((pos, size)) = pl.pad {
            let h = FrameHeader {
                len: (size - 16) as u32,
                flags: FRAME_PAD,
                seq: self.tx_seq,
            };
            self.put_header(pos, &h);
        }
        let h = FrameHeader {
            len: pl.len as u32,
            flags: 0,
            seq: self.tx_seq,
        };
        self.put_header(pl.pos, &h);
        self.tx_seq += 1;
        self.tail = pl.new_tail;
        // Consumer.
        let mut got = 0;
        while self.head < self.tail {
            let hdr = self.header_at(self.ring.pos(self.head));
            match self
                .ring
                .check_frame(self.head, self.tail, &hdr, self.rx_seq)
                .expect("a frame we wrote is valid")
            {
                Frame::Pad { size } => self.head += size,
                Frame::Data { len, size } => {
                    self.head += size;
                    self.rx_seq += 1;
                    got += len;
                }
            }
        }
        got
    }
}

fn ring_frame(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring_frame");
    g.throughput(Throughput::Elements(1));
    for &p in &FRAME_PAYLOADS {
        let mut m = RingModel::new(RING);
        g.bench_with_input(BenchmarkId::from_parameter(p), &p, |b, &p| {
            b.iter(|| black_box(m.one_frame(black_box(p))))
        });
        assert_eq!(m.tx_seq, m.rx_seq);
    }
    g.finish();
}

// ---- connection ---------------------------------------------------------------------------------

/// A private (0700) device directory, removed on drop.
struct DeviceDir(PathBuf);

impl DeviceDir {
    fn new() -> Self {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p = std::env::temp_dir().join(format!(
            "pcisock-bench-transport-{}-{n}",
            std::process::id()
        ));
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

/// A connected pair over the device (as in transport/tests/common/mod.rs): client, server, and the
/// kernel sockets that must stay open while the pair is used.
fn pair(t: &Transport) -> (Connection, Connection, Socket, std::net::TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = l.local_addr().unwrap();
    let listener = t
        .listen(l.as_raw_fd(), Endpoint::from_std(server_addr))
        .unwrap();
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let local = s.local_addr().unwrap().as_socket().unwrap();
    let pending = t
        .offer(
            Endpoint::from_std(local),
            Endpoint::from_std(server_addr),
            s.as_raw_fd(),
        )
        .unwrap();
    s.connect(&server_addr.into()).unwrap();
    let (srv, peer) = l.accept().unwrap();
    let sc = t
        .accept(
            srv.as_raw_fd(),
            Endpoint::from_std(server_addr),
            Endpoint::from_std(peer),
        )
        .unwrap();
    let cc = match t.complete(pending, s.as_raw_fd(), true, 0) {
        Outcome::Connected(c) => c,
        Outcome::Tcp(r) => panic!("client stayed on TCP: {r}"),
        Outcome::Waiting(_) => panic!("blocking completion returned Waiting"),
    };
    t.unlisten(listener);
    (cc, sc, s, srv)
}

/// Receive exactly `n` bytes into `buf` (reused, `buf.len()` at most one message).
fn recv_exact(c: &Connection, buf: &mut [u8], mut n: usize) {
    while n > 0 {
        let want = n.min(buf.len());
        let got = c
            .recv(
                &mut [&mut buf[..want]],
                RecvFlags::default(),
                Some(Duration::from_secs(10)),
            )
            .expect("recv");
        assert!(got > 0, "unexpected EOF");
        n -= got;
    }
}

fn connection(c: &mut Criterion) {
    let dir = DeviceDir::new();
    let dev: Arc<dyn NtbDevice> = Arc::new(
        EmuDevice::open(&Options {
            dir: dir.0.clone(),
            name: "lo".into(),
            side: 0,
            config: Config {
                mw_size: 16 << 20,
                ..Config::default()
            },
        })
        .expect("open the emulated device"),
    );
    let t = Transport::open(dev.clone(), Settings::default()).expect("open the transport");
    let (client, server, _ks, _kt) = pair(&t);
    let src = vec![0x5au8; MIB];
    let mut dst = vec![0u8; MIB];
    // Check the path once before timing.
    client.send(&[&src[..4096]], false, None).unwrap();
    recv_exact(&server, &mut dst, 4096);
    assert_eq!(&dst[..4096], &src[..4096]);

    let (cmd_tx, cmd_rx) = mpsc::channel::<Option<(usize, u64)>>();
    std::thread::scope(|s| {
        let client = &client;
        let src = &src;
        s.spawn(move || {
            // (size, count) → send `count` messages of `size` bytes; None → stop.
            while let Ok(Some((size, count))) = cmd_rx.recv() {
                for _ in 0..count {
                    let n = client.send(&[&src[..size]], false, None).expect("send");
                    assert_eq!(n, size);
                }
            }
        });
        let mut g = c.benchmark_group("connection");
        for &size in &MESSAGE_SIZES {
            g.throughput(Throughput::Bytes(size as u64));
            g.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, &size| {
                b.iter_custom(|iters| {
                    let t0 = Instant::now();
                    cmd_tx.send(Some((size, iters))).unwrap();
                    let mut left = size as u64 * iters;
                    while left > 0 {
                        let chunk = left.min(dst.len() as u64) as usize;
                        recv_exact(&server, &mut dst, chunk);
                        left -= chunk as u64;
                    }
                    t0.elapsed()
                })
            });
        }
        g.finish();
        cmd_tx.send(None).unwrap();
    });
    drop((client, server));
    drop(t);
    drop(dev);
    drop(dir);
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500))
        .configure_from_args();
    ring_frame(&mut c);
    connection(&mut c);
    c.final_summary();
}
