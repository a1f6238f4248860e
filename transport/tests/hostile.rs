//! A hostile peer against the real `Connection` state machine: after a real exchange, the peer
//! writes adversarial values into every field of the victim's endpoint block it can reach (all
//! of it: the block is in the peer's outbound window), targeted and at random from fixed seeds.
//! The victim must see at worst an error on that connection: every call returns (a watchdog
//! fails the test otherwise), within the bounds the call promises, and a bystander connection
//! of the same process keeps carrying its bytes intact. One summary line goes to stderr.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering::{Relaxed, Release};
use std::sync::Arc;
use std::time::Duration;

use ntbdrv::emu::{Config, EmuDevice, Options};
use ntbdrv::{NtbDevice, Region};
use socket2::{Domain, Socket, Type};
use transport::{Connection, Endpoint, IoError, Outcome, RecvFlags, Settings, Transport};

const CAP: u64 = 16 << 10;
const SEEDS: std::ops::RangeInclusive<u64> = 1..=6;
const RANDOM_CASES_PER_SEED: usize = 12;

struct Dir(std::path::PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn device() -> (Dir, Arc<dyn NtbDevice>) {
    device_with("hostile", 4096)
}

/// A device of 32 MiB windows leased in multiples of `mw_align` bytes.
fn device_with(tag: &str, mw_align: u64) -> (Dir, Arc<dyn NtbDevice>) {
    let p = std::env::temp_dir().join(format!("transport-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir(&p).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
    let opts = Options {
        dir: p.clone(),
        name: "lo".into(),
        side: 0,
        config: Config {
            mw_size: 32 << 20,
            mw_align,
            ..Config::default()
        },
    };
    (Dir(p), Arc::new(EmuDevice::open(&opts).unwrap()))
}

/// A connected pair (client, server) and the kernel sockets that must stay open.
struct Pair {
    c: Arc<Connection>,
    s: Arc<Connection>,
    _k: (Socket, std::net::TcpStream),
}

fn pair(t: &Transport) -> Pair {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = l.local_addr().unwrap();
    let listener = t.listen(l.as_raw_fd(), Endpoint::from_std(server)).unwrap();
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let local = s.local_addr().unwrap().as_socket().unwrap();
    let pending = t
        .offer(
            Endpoint::from_std(local),
            Endpoint::from_std(server),
            s.as_raw_fd(),
        )
        .unwrap();
    s.connect(&server.into()).unwrap();
    let (k, peer) = l.accept().unwrap();
    let sc = t
        .accept(
            k.as_raw_fd(),
            Endpoint::from_std(server),
            Endpoint::from_std(peer),
        )
        .unwrap();
    let Outcome::Connected(cc) = t.complete(pending, s.as_raw_fd(), true, 0) else {
        panic!("no upgrade");
    };
    t.unlisten(listener);
    Pair {
        c: Arc::new(cc),
        s: Arc::new(sc),
        _k: (s, k),
    }
}

/// The victim's (the server's) block, as its peer reaches it.
fn victims_block(dev: &Arc<dyn NtbDevice>, peer: &Connection) -> Region {
    let loc = peer.peer_ring();
    dev.outbound(loc.mw)
        .unwrap()
        .slice(loc.offset as usize, loc.len as usize)
        .unwrap()
}

fn within<T: Send + 'static>(what: String, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(v) => v,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("{what}: the victim hangs"),
        Err(_) => panic!("{what}: the victim panicked"),
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One adversarial write into the victim's block.
#[derive(Clone, Copy, Debug)]
enum Write64 {
    U32(usize, u32),
    U64(usize, u64),
    /// A frame header (length, flags, sequence) at a ring position.
    Header(u64, u32, u16, u64),
}

fn apply(block: &Region, w: Write64) {
    match w {
        Write64::U32(off, v) => block.atomic_u32(off).unwrap().store(v, Release),
        Write64::U64(off, v) => block.atomic_u64(off).unwrap().store(v, Release),
        Write64::Header(pos, len, flags, seq) => {
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&len.to_le_bytes());
            h[4..6].copy_from_slice(&flags.to_le_bytes());
            h[8..16].copy_from_slice(&seq.to_le_bytes());
            block
                .write((transport::proto::RING_START + pos % CAP) as usize, &h)
                .unwrap();
        }
    }
}

// The words of the endpoint block (docs/PROTOCOL.md §2).
const RX_TAIL: usize = 0x00;
const RX_FLAGS: usize = 0x54;
const RX_TX_WAITING: usize = 0x58;
const CR_HEAD: usize = 0x40;
const CR_RX_SLEEPING: usize = 0x48;
const CR_CLOSED: usize = 0x4C;
const CR_PEER_CPU: usize = 0x50;
const L_RX_HEAD: usize = 0x80;
const L_RX_OFF: usize = 0x88;
const L_RX_SEQ: usize = 0x90;
const L_STATE: usize = 0xA0;
const L_HOLDERS: usize = 0xA4;
const L_HOLDER_PIDS: usize = 0xB0;
const L_TX_TAIL: usize = 0xC0;
const L_TX_SEQ: usize = 0xC8;

/// Values at the edges: 0, 1, the ring's size and one past it, the largest integers.
fn edge(r: &mut Rng, near: u64) -> u64 {
    let v = [
        0,
        1,
        15,
        16,
        17,
        CAP - 16,
        CAP,
        CAP + 1,
        u32::MAX as u64,
        u64::MAX,
        near.wrapping_sub(16),
        near.wrapping_add(16),
        near.wrapping_add(CAP),
        r.next(),
    ];
    v[r.below(v.len() as u64) as usize]
}

fn random_write(r: &mut Rng, tail: u64) -> Write64 {
    match r.below(14) {
        0 => Write64::U64(RX_TAIL, edge(r, tail)),
        1 => Write64::U32(RX_FLAGS, r.below(8) as u32),
        2 => Write64::U32(RX_TX_WAITING, edge(r, 1) as u32),
        3 => Write64::U64(CR_HEAD, edge(r, 0)),
        4 => Write64::U32(CR_RX_SLEEPING, edge(r, 1) as u32),
        5 => Write64::U32(CR_CLOSED, r.below(2) as u32),
        6 => Write64::U32(CR_PEER_CPU, r.next() as u32),
        7 => Write64::U64(L_RX_HEAD, edge(r, tail)),
        8 => Write64::U64(L_RX_OFF, edge(r, 500)),
        9 => Write64::U64(L_RX_SEQ, edge(r, 1)),
        10 => Write64::U32(L_STATE, r.below(8) as u32),
        11 => Write64::U64(L_TX_TAIL, edge(r, 0)),
        12 => Write64::U64(L_TX_SEQ, edge(r, 0)),
        _ => Write64::Header(
            16 * r.below(CAP / 16),
            edge(r, 1000) as u32,
            [0u16, 1, 2, u16::MAX][r.below(4) as usize],
            edge(r, 0),
        ),
    }
}

/// The targeted cases: (name, writes), applied after the victim read 500 bytes of a
/// 1000-byte frame at ring position 0 (sequence 0) and a second frame (sequence 1) follows at
/// position 1024; the producer counter is 1024 + 16 + 208 (a 200-byte frame).
fn targeted() -> Vec<(&'static str, Vec<Write64>)> {
    use Write64::*;
    let mut v: Vec<(&'static str, Vec<Write64>)> = Vec::new();
    for len in [0u32, 1, CAP as u32, CAP as u32 + 1, u32::MAX] {
        v.push(("length at an edge", vec![Header(0, len, 0, 0)]));
        v.push((
            "next frame's length at an edge",
            vec![Header(1024, len, 0, 1)],
        ));
    }
    v.push((
        "header shrunk under the read offset",
        vec![Header(0, 100, 0, 0)],
    ));
    v.push((
        "header grown past the ring's end",
        vec![Header(0, (CAP - 16) as u32, 0, 0)],
    ));
    v.push(("frame turned into a pad", vec![Header(0, 1000, 1, 0)]));
    v.push(("unknown flags", vec![Header(1024, 200, 0x8000, 1)]));
    v.push(("sequence replayed", vec![Header(1024, 200, 0, 0)]));
    v.push(("sequence jumps", vec![Header(1024, 200, 0, 7)]));
    v.push(("offset past the frame", vec![U64(L_RX_OFF, 5000)]));
    v.push(("offset far past the ring", vec![U64(L_RX_OFF, u64::MAX)]));
    v.push(("offset moved back", vec![U64(L_RX_OFF, 0)]));
    v.push((
        "consumer counter moved ahead",
        vec![U64(L_RX_HEAD, 1024), U64(L_RX_SEQ, 1)],
    ));
    v.push(("consumer counter unaligned", vec![U64(L_RX_HEAD, 1030)]));
    v.push((
        "consumer counter far ahead",
        vec![U64(L_RX_HEAD, 1 << 40), U64(L_RX_SEQ, 1 << 30)],
    ));
    v.push(("tail backwards", vec![U64(RX_TAIL, 16)]));
    v.push(("tail beyond the ring", vec![U64(RX_TAIL, CAP * 3)]));
    v.push(("tail at u64::MAX", vec![U64(RX_TAIL, u64::MAX)]));
    v.push(("tail stops mid-frame", vec![U64(RX_TAIL, 1024 + 16 + 64)]));
    v.push((
        "pad flood over a whole lap",
        vec![
            Header(1024, (CAP - 1024 - 16) as u32, 1, 1),
            U64(RX_TAIL, CAP + 1024),
            Header(0, (CAP - 16) as u32, 1, 1),
        ],
    ));
    v.push(("credits beyond what was sent", vec![U64(CR_HEAD, 4096)]));
    v.push(("credits at u64::MAX", vec![U64(CR_HEAD, u64::MAX)]));
    v.push((
        "send cursor far ahead",
        vec![U64(L_TX_TAIL, 1 << 40), U64(L_TX_SEQ, 1 << 30)],
    ));
    v.push(("send cursor unaligned", vec![U64(L_TX_TAIL, 8)]));
    v.push(("forged RST", vec![U32(RX_FLAGS, 2)]));
    v.push(("forged FIN", vec![U32(RX_FLAGS, 1)]));
    v.push(("forged closed", vec![U32(CR_CLOSED, 1)]));
    v.push(("forged shut state", vec![U32(L_STATE, 7)]));
    v.push((
        "waiting flags at u32::MAX",
        vec![U32(RX_TX_WAITING, u32::MAX), U32(CR_RX_SLEEPING, u32::MAX)],
    ));
    v
}

/// What the victim's calls returned, by kind.
#[derive(Default, Debug)]
struct Outcomes {
    data: u64,
    reset: u64,
    other_error: u64,
    empty: u64,
}

impl Outcomes {
    fn note<T>(&mut self, r: &Result<T, IoError>) {
        match r {
            Ok(_) => self.data += 1,
            Err(IoError::Protocol | IoError::Reset) => self.reset += 1,
            Err(IoError::WouldBlock | IoError::TimedOut) => self.empty += 1,
            Err(_) => self.other_error += 1,
        }
    }
}

/// Every call a victim's application could make, each under the watchdog.
fn exercise(name: &str, v: &Arc<Connection>, out: &mut Outcomes) {
    let s = v.clone();
    let (n, rd) = within(format!("{name}: readable_bytes, readiness"), move || {
        (s.readable_bytes(), s.readiness())
    });
    assert!(n as u64 <= CAP, "{name}: FIONREAD says {n}");
    let _ = rd;
    let nb = RecvFlags {
        nonblock: true,
        ..Default::default()
    };
    for flags in [
        RecvFlags { peek: true, ..nb },
        nb,
        RecvFlags::default(),
        RecvFlags {
            waitall: true,
            ..Default::default()
        },
    ] {
        let s = v.clone();
        let r = within(format!("{name}: recv {flags:?}"), move || {
            let mut b = vec![0u8; 700];
            let r = s.recv(&mut [&mut b[..]], flags, Some(Duration::from_millis(20)));
            r.inspect(|&n| assert!(n <= 700))
        });
        out.note(&r);
    }
    // The shim's fast read (its `read` and `recv` hooks call it first): nothing, or what fits.
    for blocking in [false, true] {
        let s = v.clone();
        let r = within(
            format!("{name}: try_recv, blocking {blocking}"),
            move || {
                let mut b = vec![0u8; 700];
                s.try_recv(&mut b, blocking)
            },
        );
        assert!(
            r.is_none_or(|n| n > 0 && n <= 700),
            "{name}: try_recv gave {r:?}"
        );
        if r.is_some() {
            out.data += 1;
        }
    }
    let s = v.clone();
    let r = within(format!("{name}: non-blocking send"), move || {
        s.send(&[&[9u8; 3000]], true, None)
    });
    out.note(&r);
    let s = v.clone();
    let r = within(format!("{name}: blocking send"), move || {
        s.send(&[&[9u8; 3000]], false, Some(Duration::from_millis(20)))
    });
    out.note(&r);
}

/// The bystander's bytes arrive intact.
fn bystander_intact(b: &Pair, round: u64) {
    let data: Vec<u8> = (0..1500u64).map(|i| (i * 7 + round) as u8).collect();
    let (c, s) = (b.c.clone(), b.s.clone());
    let got = within(format!("bystander round {round}"), move || {
        c.send(&[&data[..]], false, Some(Duration::from_secs(5)))
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while got.len() < 1500 {
            let n = s
                .recv(
                    &mut [&mut buf[..]],
                    RecvFlags::default(),
                    Some(Duration::from_secs(5)),
                )
                .unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        got == data
    });
    assert!(got, "the bystander's bytes changed (round {round})");
}

/// A victim that read 500 bytes of a 1000-byte frame, with a 200-byte frame behind it.
fn victim(t: &Transport) -> Pair {
    let p = pair(t);
    p.c.send(&[&[1u8; 1000]], false, None).unwrap();
    p.c.send(&[&[2u8; 200]], false, None).unwrap();
    let mut b = [0u8; 500];
    let r = p.s.recv(
        &mut [&mut b[..]],
        RecvFlags {
            nonblock: true,
            ..Default::default()
        },
        None,
    );
    assert_eq!(r, Ok(500));
    p
}

#[test]
fn a_hostile_peer_breaks_only_its_own_connection() {
    let (_d, dev) = device();
    let t = Transport::open(
        dev.clone(),
        Settings {
            ring_bytes: CAP,
            ..Settings::default()
        },
    )
    .unwrap();
    let bystander = pair(&t);
    let mut out = Outcomes::default();
    let mut cases = 0u64;
    let mut round = 0u64;
    for (name, writes) in targeted() {
        let p = victim(&t);
        let block = victims_block(&dev, &p.c);
        for w in writes {
            apply(&block, w);
        }
        exercise(name, &p.s, &mut out);
        cases += 1;
        round += 1;
        bystander_intact(&bystander, round);
    }
    // A peer that stops mid-frame: a header published, the tail short of its end.
    {
        let p = pair(&t);
        let block = victims_block(&dev, &p.c);
        apply(&block, Write64::Header(0, 1000, 0, 0));
        apply(&block, Write64::U64(RX_TAIL, 512));
        exercise("stopped mid-frame", &p.s, &mut out);
        cases += 1;
    }
    for seed in SEEDS {
        let mut r = Rng(0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED69));
        for i in 0..RANDOM_CASES_PER_SEED {
            let p = victim(&t);
            let block = victims_block(&dev, &p.c);
            let writes: Vec<Write64> = (0..1 + r.below(3))
                .map(|_| random_write(&mut r, 1024 + 16 + 208))
                .collect();
            for &w in &writes {
                apply(&block, w);
            }
            let name = format!("seed {seed} case {i} {writes:?}");
            exercise(&name, &p.s, &mut out);
            // A peer that keeps writing while the victim works.
            let s = p.s.clone();
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let stop2 = stop.clone();
            let block2 = block.clone();
            let mut r2 = Rng(r.next() | 1);
            let writer = std::thread::spawn(move || {
                while !stop2.load(Relaxed) {
                    apply(&block2, random_write(&mut r2, 1024 + 16 + 208));
                    std::thread::yield_now();
                }
            });
            exercise(&format!("{name} under fire"), &s, &mut out);
            stop.store(true, Relaxed);
            writer.join().unwrap();
            cases += 2;
            round += 1;
            bystander_intact(&bystander, round);
        }
    }
    let _ = writeln!(
        std::io::stderr(),
        "hostile-peer harness: {cases} cases ({} targeted, seeds {}..={} x {} random, alone and under fire): \
         {} calls returned data, {} reset, {} nothing yet (EAGAIN/timeout), {} other errors; \
         0 hangs, 0 panics; bystander intact after {round} rounds; protocol errors counted: {}",
        targeted().len() + 1,
        SEEDS.start(),
        SEEDS.end(),
        RANDOM_CASES_PER_SEED,
        out.data,
        out.reset,
        out.empty,
        out.other_error,
        t.counters().protocol_errors.load(Relaxed),
    );
    assert!(out.reset > 0, "no case was detected as a broken protocol");
}

/// Issue 13: the receiving ring's size was `.expect`ed from the lease's length, which the device
/// rounds up to its window alignment, read from the device's shared header when the device is
/// opened (in bridge mode the peer machine writes that header). A server that saw a 64 KiB
/// alignment where its client saw 4 KiB took a valid offer, leased 64 KiB for a 16 KiB ring, and
/// the 60 KiB left (no power of two) panicked the accept (across the C ABI under the shim). Now
/// the lease that makes no ring is refused: both sides stay on TCP.
#[test]
fn a_lease_that_makes_no_ring_is_tcp_not_a_panic() {
    use std::os::unix::fs::FileExt;
    let (d, client_dev) = device_with("hostile-align", 4096);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(d.0.join("lo.ntb"))
        .unwrap();
    // The header's configuration holds the window size and, right after it, the alignment
    // (ntbemu.h: `uint64_t mw_size, mw_align`): find that pair in the header's first page.
    let mut head = vec![0u8; 4096];
    file.read_exact_at(&mut head, 0).unwrap();
    let pair: Vec<u8> = [(32u64 << 20).to_le_bytes(), 4096u64.to_le_bytes()].concat();
    let found: Vec<usize> = (0..head.len() - 16)
        .filter(|&i| head[i..i + 16] == pair[..])
        .collect();
    assert_eq!(found.len(), 1, "the configuration in the device header");
    file.write_all_at(&(64u64 << 10).to_le_bytes(), found[0] as u64 + 8)
        .unwrap();
    let server_dev: Arc<dyn NtbDevice> = Arc::new(
        EmuDevice::open(&Options {
            dir: d.0.clone(),
            name: "lo".into(),
            side: 0,
            config: Config::default(),
        })
        .unwrap(),
    );
    let open = |dev| {
        Arc::new(
            Transport::open(
                dev,
                Settings {
                    ring_bytes: CAP,
                    ..Settings::default()
                },
            )
            .unwrap(),
        )
    };
    let (tc, ts) = (open(client_dev), open(server_dev));
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = l.local_addr().unwrap();
    let listener = ts
        .listen(l.as_raw_fd(), Endpoint::from_std(server))
        .unwrap();
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let local = s.local_addr().unwrap().as_socket().unwrap();
    let (tc2, ts2) = (tc.clone(), ts.clone());
    let (client, accepted) = within("connect and accept".into(), move || {
        let pending = tc2
            .offer(
                Endpoint::from_std(local),
                Endpoint::from_std(server),
                s.as_raw_fd(),
            )
            .unwrap();
        s.connect(&server.into()).unwrap();
        let (k, peer) = l.accept().unwrap();
        let accepted = ts2
            .accept(
                k.as_raw_fd(),
                Endpoint::from_std(server),
                Endpoint::from_std(peer),
            )
            .err();
        let client = match tc2.complete(pending, s.as_raw_fd(), true, 0) {
            Outcome::Connected(_) => "connected".to_string(),
            Outcome::Tcp(r) => format!("tcp {r:?}"),
            Outcome::Waiting(_) => "waiting".to_string(),
        };
        (client, accepted)
    });
    ts.unlisten(listener);
    assert!(
        accepted.is_some(),
        "the server upgraded over a ring that is no power of two"
    );
    assert_ne!(client, "connected", "the client upgraded without a server");
}

/// Issue 13, device mode: the holder count and pids are in the victim's block, which the peer
/// writes. A count forged high made the victim's close wait 50 ms for an heir and then leave the
/// connection open (no FIN for the peer, the leases kept); a live pid forged into the table (1)
/// was handed the leases, for good. The victim knows in its own memory that it never forked
/// with the connection: its close ends the connection at once (the peer reads EOF).
#[test]
fn forged_holders_neither_keep_a_connection_open_nor_take_its_leases() {
    let (_d, dev) = device_with("hostile-holders", 4096);
    let t = Transport::open(
        dev.clone(),
        Settings {
            ring_bytes: CAP,
            ..Settings::default()
        },
    )
    .unwrap();
    for (what, pids) in [
        ("a count of 1000", [0u32; 4]),
        ("a count of 1000 and pid 1", [1, 1, 1, 1]),
    ] {
        let Pair { c, s, _k } = pair(&t);
        let block = victims_block(&dev, &c);
        apply(&block, Write64::U32(L_HOLDERS, 1000));
        for (i, pid) in pids.into_iter().enumerate() {
            apply(&block, Write64::U32(L_HOLDER_PIDS + 4 * i, pid));
        }
        within(format!("{what}: the victim's close"), move || drop(s));
        let got = within(format!("{what}: the peer's read"), move || {
            let mut b = [0u8; 16];
            c.recv(
                &mut [&mut b[..]],
                RecvFlags::default(),
                Some(Duration::from_secs(2)),
            )
        });
        assert_eq!(
            got,
            Ok(0),
            "{what}: the victim's close left the connection open"
        );
    }
}

/// Device mode, one host: our closed block waits while a process holding the peer's end lives
/// (the pids in the peer's block). A peer whose last listed process exits right after forking (a
/// daemonizing server) leaves a moment in which its child has not recorded its pid yet: the
/// block must not be given to another connection then (the child's close would write into it).
/// Here the peer's block names only a dead process when our end closes, and the "child" records
/// itself 30 ms later: the block stays out of use until the peer really lets go (GONE). Before,
/// the first look after our close gave the block back at once.
#[test]
fn a_closed_block_waits_for_a_peer_child_that_records_itself_late() {
    const INFO_PID: usize = 0x208;
    let (_d, dev) = device_with("hostile-daemon", 4096);
    let t = Transport::open(
        dev.clone(),
        Settings {
            ring_bytes: CAP,
            ..Settings::default()
        },
    )
    .unwrap();
    let Pair { c, s, _k } = pair(&t);
    // The peer's (the client's) block, as we (the server) reach it.
    let loc = s.peer_ring();
    let peer_block = dev
        .outbound(loc.mw)
        .unwrap()
        .slice(loc.offset as usize, loc.len as usize)
        .unwrap();
    let dead = {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    };
    apply(&peer_block, Write64::U32(INFO_PID, dead));
    for i in 0..4 {
        apply(&peer_block, Write64::U32(L_HOLDER_PIDS + 4 * i, 0));
    }
    apply(&peer_block, Write64::U32(L_HOLDER_PIDS, dead));
    let reaped = || t.counters().quarantined_reaped.load(Relaxed);
    let before = reaped();
    drop(s);
    std::thread::sleep(Duration::from_millis(30));
    // The child records itself (this process holds the client's end).
    apply(
        &peer_block,
        Write64::U32(L_HOLDER_PIDS + 4, std::process::id()),
    );
    // Connections made meanwhile look at the quarantine (each pair, closed, leaves one block
    // that its own second close reaps).
    for _ in 0..3 {
        drop(pair(&t));
        std::thread::sleep(Duration::from_millis(60));
    }
    assert_eq!(
        reaped(),
        before + 3,
        "our closed block was given back while the peer's child could still write into it"
    );
    // The peer lets go: GONE, and the block goes at the next look (its close's).
    drop(c);
    assert_eq!(reaped(), before + 4, "the block never left the quarantine");
}

/// A process that forked with a connection and closes its copy at once hands the connection to
/// its child even when the child has not run yet (has not named itself in the block): the
/// parent names it as soon as `fork` returns (`add_child`). Before, the parent's close waited
/// 50 ms for the child to name itself and then took itself for the last holder, so a child the
/// scheduler ran late had its connection ended under it (behaviour `accept_nonblocking` failed
/// half its runs under load). Here the "child" is a process holding the server's TCP socket
/// (as its stdin) that never runs our code, so it never names itself.
#[test]
fn a_child_its_parent_named_keeps_the_connection_when_the_parent_closes() {
    let (_d, dev) = device_with("holders-child", 4096);
    let t = Transport::open(
        dev,
        Settings {
            ring_bytes: CAP,
            ..Settings::default()
        },
    )
    .unwrap();
    let Pair { c, s, _k } = pair(&t);
    let socket: std::os::fd::OwnedFd = _k.1.try_clone().unwrap().into();
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .stdin(socket)
        .spawn()
        .unwrap();
    s.add_holder();
    s.add_child(child.id());
    within("the parent's close".into(), move || drop(s));
    let got = within("the peer's read".into(), move || {
        let mut b = [0u8; 16];
        c.recv(
            &mut [&mut b[..]],
            RecvFlags::default(),
            Some(Duration::from_millis(300)),
        )
    });
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        got,
        Err(IoError::TimedOut),
        "the parent's close ended the connection its live child holds"
    );
}
