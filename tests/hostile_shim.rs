//! A hostile peer against a real program under the real shim: `tests/hostile/victim.c` (a
//! server reading blocking with SO_RCVTIMEO, non-blocking, with poll, with epoll, asking FIONREAD
//! before every read) runs under libpcisock.so; this test is its client, speaking the real
//! protocol through the transport's own API, and then writes adversarial values into the
//! victim's endpoint block. The victim must neither crash nor hang (its alarm, and this test's
//! watchdog, catch that), FIONREAD must stay sane, and a bystander pair of processes (writeloop
//! server and client under the shim on the same device) must get every byte. One summary line
//! goes to stderr.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;

use iperf_tests::net::free_port;
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering::Release;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ntbdrv::emu::{Config, EmuDevice, Options};
use ntbdrv::{NtbDevice, Region};
use socket2::{Domain, Socket, Type};
use transport::{Endpoint, Outcome, Settings, Transport};

const RING: u64 = 64 << 10;
const MODES: [&str; 4] = ["block", "nonblock", "poll", "epoll"];

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// libpcisock.so: `$PCISOCK_LIB` if set (another build, for comparison), else this build's, next
/// to the pcisock binary or in its deps/ (the newer).
fn library() -> PathBuf {
    if let Some(p) = std::env::var_os("PCISOCK_LIB").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_pcisock"));
    let dir = bin.parent().expect("the binary's directory");
    [dir.join("libpcisock.so"), dir.join("deps/libpcisock.so")]
        .into_iter()
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
        .expect("libpcisock.so is built with the pcisock binary")
}

fn compile(src: &Path, out: &Path) {
    let st = Command::new("gcc")
        .args(["-O2", "-Wall", "-o"])
        .arg(out)
        .arg(src)
        .status()
        .expect("gcc (apt-get install -y gcc)");
    assert!(st.success(), "gcc {}", src.display());
}

fn under_shim(cmd: &mut Command, lib: &Path, emu: &Path) {
    cmd.env("LD_PRELOAD", lib)
        .env("PCISOCK_EMU_DIR", emu)
        .env("PCISOCK_EMU_DEVICE", "loopback")
        .env("PCISOCK_PORTS", "*")
        .env("PCISOCK_STRICT", "1")
        .env("PCISOCK_RING_SIZE", RING.to_string())
        .env_remove("PCISOCK_LOG");
}

/// Wait for `child` at most `limit`; kill it and fail if it is still running.
fn finish(mut child: Child, what: &str, limit: Duration) -> (std::process::ExitStatus, String) {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut out = String::new();
            if let Some(mut o) = child.stdout.take() {
                let _ = std::io::Read::read_to_string(&mut o, &mut out);
            }
            return (st, out);
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {limit:?} (hangs)");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One adversarial write into the victim's block (offsets as in docs/PROTOCOL.md §2).
#[derive(Clone, Copy, Debug)]
enum Poke {
    U32(usize, u32),
    U64(usize, u64),
    /// A frame header (length, flags, sequence) at a ring position.
    Header(u64, u32, u16, u64),
}

fn poke(block: &Region, p: Poke) {
    match p {
        Poke::U32(off, v) => block.atomic_u32(off).unwrap().store(v, Release),
        Poke::U64(off, v) => block.atomic_u64(off).unwrap().store(v, Release),
        Poke::Header(pos, len, flags, seq) => {
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&len.to_le_bytes());
            h[4..6].copy_from_slice(&flags.to_le_bytes());
            h[8..16].copy_from_slice(&seq.to_le_bytes());
            block
                .write((transport::proto::RING_START + pos % RING) as usize, &h)
                .unwrap();
        }
    }
}

/// The cases: written after the client sent a 1000-byte frame (sequence 0, at 0) and a
/// 200-byte one (sequence 1, at 1024); the tail is then 1248.
fn cases() -> Vec<(&'static str, Vec<Poke>)> {
    use Poke::*;
    vec![
        ("nothing (control)", vec![]),
        ("length 0", vec![Header(0, 0, 0, 0)]),
        ("length u32::MAX", vec![Header(0, u32::MAX, 0, 0)]),
        (
            "length ring size + 1",
            vec![Header(1024, RING as u32 + 1, 0, 1)],
        ),
        ("header shrunk", vec![Header(0, 100, 0, 0)]),
        ("sequence replayed", vec![Header(1024, 200, 0, 0)]),
        ("sequence jumps", vec![Header(1024, 200, 0, 9)]),
        ("offset word past the frame", vec![U64(0x88, 5000)]),
        ("consumer counter far ahead", vec![U64(0x80, 1 << 40)]),
        ("tail backwards", vec![U64(0x00, 16)]),
        ("tail beyond the ring", vec![U64(0x00, 3 * RING)]),
        ("tail u64::MAX", vec![U64(0x00, u64::MAX)]),
        ("tail mid-frame", vec![U64(0x00, 1024 + 16 + 64)]),
        (
            "pad over the ring",
            vec![
                Header(1248, (RING - 1248 - 16) as u32, 1, 2),
                U64(0x00, RING),
            ],
        ),
        ("credits beyond what was sent", vec![U64(0x40, 1 << 20)]),
        ("GONE alone", vec![U32(0x54, 4)]),
        ("forged RST", vec![U32(0x54, 2)]),
        ("send cursor at u64::MAX", vec![U64(0xC0, !15)]),
    ]
}

#[test]
fn a_hostile_peer_cannot_crash_or_hang_a_program_under_the_shim() {
    let lib = library();
    let base = std::env::temp_dir().join(format!("pcisock-hostile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&base)
        .unwrap();
    let dir = Dir(base.clone());
    let emu = dir.0.join("emu");
    std::fs::DirBuilder::new().mode(0o700).create(&emu).unwrap();
    let victim = dir.0.join("victim");
    let writeloop = dir.0.join("writeloop");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    compile(&root.join("tests/hostile/victim.c"), &victim);
    compile(&root.join("benches/writeloop.c"), &writeloop);

    let dev: Arc<dyn NtbDevice> = Arc::new(
        EmuDevice::open(&Options {
            dir: emu.clone(),
            name: "loopback".into(),
            side: 0,
            config: Config::default(),
        })
        .unwrap(),
    );
    let t = Transport::open(
        dev.clone(),
        Settings {
            ring_bytes: RING,
            ..Settings::default()
        },
    )
    .unwrap();

    // The bystander: two other processes on the same device, streaming all along.
    let bport = free_port();
    let mut bs = Command::new(&writeloop);
    bs.args(["server", &bport.to_string()])
        .stdout(Stdio::piped());
    under_shim(&mut bs, &lib, &emu);
    let bserver = bs.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let writes = 400_000u64;
    let mut bc = Command::new(&writeloop);
    bc.args(["client", &bport.to_string(), "64", &writes.to_string()])
        .stdout(Stdio::null());
    under_shim(&mut bc, &lib, &emu);
    let bclient = bc.spawn().unwrap();

    let mut outcomes: std::collections::BTreeMap<String, u32> = Default::default();
    let mut runs = 0;
    for (name, pokes) in cases() {
        for mode in MODES {
            let what = format!("{name}, {mode}");
            let port = free_port();
            let mut v = Command::new(&victim);
            v.args([&port.to_string(), mode])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped());
            under_shim(&mut v, &lib, &emu);
            let mut child = v.spawn().unwrap();
            let mut out = BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            assert_eq!(line, "listening\n", "{what}");
            // The client: offer, connect, take the victim's answer.
            let server: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
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
                .unwrap_or_else(|r| panic!("{what}: no offer: {r}"));
            s.connect(&server.into()).unwrap();
            let c = match t.complete(pending, s.as_raw_fd(), true, 0) {
                Outcome::Connected(c) => c,
                Outcome::Tcp(r) => panic!("{what}: the victim stayed on TCP: {r}"),
                Outcome::Waiting(_) => panic!("{what}: no answer"),
            };
            c.send(&[&[1u8; 1000]], false, None).unwrap();
            c.send(&[&[2u8; 200]], false, None).unwrap();
            // The victim read half of the first frame and waits for our go.
            line.clear();
            out.read_line(&mut line).unwrap();
            assert_eq!(line, "read 500\n", "{what}");
            let loc = c.peer_ring();
            let block = dev
                .outbound(loc.mw)
                .unwrap()
                .slice(loc.offset as usize, loc.len as usize)
                .unwrap();
            for p in &pokes {
                poke(&block, *p);
            }
            child.stdin.take().unwrap().write_all(b"g").unwrap();
            std::thread::sleep(Duration::from_millis(150));
            drop(c);
            drop(s);
            let (st, _) = finish(child, &what, Duration::from_secs(15));
            let mut rest = String::new();
            let _ = std::io::Read::read_to_string(&mut out, &mut rest);
            let out = rest;
            assert!(
                st.signal().is_none(),
                "{what}: the victim died of signal {:?} (SIGALRM: it hung)",
                st.signal()
            );
            assert_eq!(st.code(), Some(0), "{what}: the victim said {out:?}");
            let kind = out
                .split_whitespace()
                .next()
                .unwrap_or("nothing")
                .to_string();
            *outcomes.entry(kind).or_default() += 1;
            runs += 1;
        }
    }

    let (st, _) = finish(bclient, "the bystander client", Duration::from_secs(60));
    assert!(st.success(), "the bystander client failed: {st}");
    let (st, out) = finish(bserver, "the bystander server", Duration::from_secs(10));
    assert!(st.success(), "the bystander server failed: {st}");
    assert_eq!(
        out.trim(),
        (64 * writes).to_string(),
        "the bystander's bytes"
    );
    let summary: Vec<String> = outcomes.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let _ = writeln!(
        std::io::stderr(),
        "hostile-peer harness (shim): {} cases x {} modes = {runs} victim runs: {}; 0 crashes, 0 hangs, FIONREAD sane; bystander got all {} bytes",
        cases().len(),
        MODES.len(),
        summary.join(", "),
        64 * writes
    );
    assert!(
        outcomes.contains_key("error"),
        "no case was detected as a broken protocol"
    );
}
