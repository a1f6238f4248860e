//! A hostile peer against the real `Connection` state machine (the fuzzed counterpart of
//! `transport/tests/hostile.rs`): each input is a script of steps on a fresh connected pair over
//! the emulated device. Steps interleave what an honest peer does (sends), what a hostile one
//! does (writes into any word of the victim's endpoint block, frame headers anywhere in its
//! ring) and the victim's own calls (non-blocking and short-timeout receives, peeks, FIONREAD,
//! readiness, sends). Whatever the peer writes, the victim must not panic, must return from
//! every call (libFuzzer's -timeout catches a hang), must never report more bytes than the call
//! could take, and FIONREAD must stay within the ring.
#![no_main]

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering::Release;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use ntbdrv::emu::{Config, EmuDevice, Options};
use ntbdrv::{NtbDevice, Region};
use socket2::{Domain, Socket, Type};
use transport::{Connection, Endpoint, Outcome, RecvFlags, Settings, Transport};

/// The rings' size: small, so that wrap-around and a full ring are a few steps away.
const CAP: u64 = 16 << 10;
/// Where the ring starts in an endpoint block (docs/PROTOCOL.md §2).
const RING_START: usize = transport::proto::RING_START as usize;
/// The block's first page: the endpoint header and the ring's first bytes.
const HDR: usize = transport::proto::BLOCK_OVERHEAD as usize;

struct World {
    dev: Arc<dyn NtbDevice>,
    t: Transport,
    l: TcpListener,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("transport-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("fuzz device dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("0700");
        let dev: Arc<dyn NtbDevice> = Arc::new(
            EmuDevice::open(&Options {
                dir,
                name: "lo".into(),
                side: 0,
                config: Config {
                    mw_size: 32 << 20,
                    ..Config::default()
                },
            })
            .expect("emulated device"),
        );
        let t = Transport::open(
            dev.clone(),
            Settings {
                ring_bytes: CAP,
                ..Settings::default()
            },
        )
        .expect("transport");
        let l = TcpListener::bind("127.0.0.1:0").expect("listener");
        World { dev, t, l }
    })
}

/// A connected pair: the honest-then-hostile peer (client) and the victim (server).
struct Pair {
    peer: Connection,
    victim: Connection,
    block: Region,
    _k: (Socket, std::net::TcpStream),
}

fn pair(w: &World) -> Option<Pair> {
    let server = w.l.local_addr().ok()?;
    let listener = w.t.listen(w.l.as_raw_fd(), Endpoint::from_std(server)).ok()?;
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).ok()?;
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().ok()?.into()).ok()?;
    let local = s.local_addr().ok()?.as_socket()?;
    let pending = w
        .t
        .offer(Endpoint::from_std(local), Endpoint::from_std(server), s.as_raw_fd())
        .ok()?;
    s.connect(&server.into()).ok()?;
    let (k, from) = w.l.accept().ok()?;
    let victim = w
        .t
        .accept(k.as_raw_fd(), Endpoint::from_std(server), Endpoint::from_std(from))
        .ok();
    let done = w.t.complete(pending, s.as_raw_fd(), true, 0);
    w.t.unlisten(listener);
    let (Some(victim), Outcome::Connected(peer)) = (victim, done) else {
        return None;
    };
    let loc = peer.peer_ring();
    let block = w
        .dev
        .outbound(loc.mw)
        .ok()?
        .slice(loc.offset as usize, loc.len as usize)
        .ok()?;
    Some(Pair {
        peer,
        victim,
        block,
        _k: (s, k),
    })
}

fn u16_at(d: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([d[i], d[i + 1]])
}

fn u64_at(d: &[u8], i: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[i..i + 8]);
    u64::from_le_bytes(b)
}

/// Values a hostile peer likes: the edges of the ring and of the integers, or the raw input.
fn value(sel: u8, raw: u64) -> u64 {
    match sel % 8 {
        0 => 0,
        1 => 1,
        2 => CAP,
        3 => CAP + 1,
        4 => u32::MAX as u64,
        5 => u64::MAX,
        6 => raw % (4 * CAP),
        _ => raw,
    }
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let Some(p) = pair(w) else {
        return;
    };
    let nb = RecvFlags {
        nonblock: true,
        ..Default::default()
    };
    let mut buf = vec![0u8; 4096];
    // Each step: an opcode, a value selector, a 16-bit argument, a 64-bit raw value.
    for step in data.chunks_exact(12) {
        let (op, sel, arg, raw) = (step[0], step[1], u16_at(step, 2), u64_at(step, 4));
        let v = value(sel, raw);
        match op % 10 {
            // The hostile peer writes a word of the victim's endpoint header (or of the ring's
            // first bytes, in the same page).
            0 => {
                let off = (arg as usize % (HDR / 4)) * 4;
                if let Ok(a) = p.block.atomic_u32(off) {
                    a.store(v as u32, Release);
                }
            }
            1 => {
                let off = (arg as usize % (HDR / 8)) * 8;
                if let Ok(a) = p.block.atomic_u64(off) {
                    a.store(v, Release);
                }
            }
            // A frame header anywhere in the victim's ring (length, flags, sequence).
            2 => {
                let pos = (arg as u64 * 16) % CAP;
                let mut h = [0u8; 16];
                h[0..4].copy_from_slice(&(v as u32).to_le_bytes());
                h[4..6].copy_from_slice(&(raw >> 32).to_le_bytes()[..2]);
                h[8..16].copy_from_slice(&(raw >> 8).to_le_bytes());
                let _ = p.block.write(RING_START + pos as usize, &h);
            }
            // The peer sends honestly (never waiting).
            3 => {
                let n = 1 + arg as usize % 3000;
                let _ = p.peer.send(&[&vec![sel; n][..]], true, None);
            }
            // The victim receives: non-blocking, peeking, or for at most 1 ms.
            4 | 5 | 6 => {
                let want = 1 + arg as usize % buf.len();
                let flags = match op % 10 {
                    4 => nb,
                    5 => RecvFlags { peek: true, ..nb },
                    _ => RecvFlags::default(),
                };
                let timeout = Some(Duration::from_millis(1));
                if let Ok(n) = p.victim.recv(&mut [&mut buf[..want]], flags, timeout) {
                    assert!(n <= want, "recv returned {n} bytes into {want}");
                }
            }
            // FIONREAD and readiness.
            7 => {
                let n = p.victim.readable_bytes();
                assert!(n as u64 <= CAP, "FIONREAD says {n} with a {CAP}-byte ring");
                let _ = p.victim.readiness();
            }
            // The victim sends: the small-write fast path, then the general one.
            8 => {
                let n = 1 + arg as usize % 2000;
                if let Some(k) = p.victim.try_send(&buf[..n]) {
                    assert_eq!(k, n, "try_send is all or nothing");
                }
            }
            _ => {
                let n = 1 + arg as usize % buf.len();
                if let Ok(k) = p.victim.send(&[&buf[..n]], true, None) {
                    assert!(k <= n, "send took {k} of {n} bytes");
                }
            }
        }
    }
});
