//! Idle rings give their memory back (`Connection::release_idle_tx`, docs/PROTOCOL.md §2, *Idle
//! rings*): a ring filled and then left idle has its pages released, as the file that backs the
//! window shows (its allocated blocks: an independent signal, not our own count), and the stream
//! afterwards is byte-exact across many laps of random sizes, released again and again at random
//! ring positions (the pad frame at the ring's end included). And a sender's reach (docs/
//! PROTOCOL.md §2, *Reach*): small messages lap the ring's first page only, a burst grows it.

mod common;
use common::*;

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

use transport::{Connection, IdleRelease, RecvFlags};

/// Bytes the filesystem holds for the files of the device's directory (its windows).
fn allocated(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.blocks() * 512)
        .sum()
}

/// A small seeded generator (xorshift64*): each case says its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const NB: RecvFlags = RecvFlags {
    nonblock: true,
    peek: false,
    waitall: false,
};

/// Where a stream stands: bytes sent and bytes received.
#[derive(Default)]
struct Stream {
    sent: u64,
    got: u64,
}

/// Move `n` bytes of the pattern (from stream offset `*sent`) from `c` to `s`, in writes of
/// random sizes up to `max`, reading on `s` in random sizes and checking every byte.
fn stream(
    c: &Connection,
    s: &Connection,
    rng: &mut Rng,
    n: u64,
    max: u64,
    at: &mut Stream,
    seed: u64,
) {
    let Stream { sent, got } = at;
    let end = *sent + n;
    let mut buf = vec![0u8; max as usize];
    while *got < end {
        if *sent < end {
            let len = (1 + rng.below(max)).min(end - *sent) as usize;
            let data: Vec<u8> = (*sent..*sent + len as u64).map(pattern).collect();
            if let Ok(k) = c.send(&[&data], true, None) {
                *sent += k as u64;
            }
        }
        let want = 1 + rng.below(max) as usize;
        match s.recv(&mut [&mut buf[..want]], NB, None) {
            Ok(k) => {
                for (i, &b) in buf[..k].iter().enumerate() {
                    let at = *got + i as u64;
                    assert_eq!(b, pattern(at), "seed {seed}: byte {at} of the stream");
                }
                *got += k as u64;
            }
            Err(transport::IoError::WouldBlock) => {}
            Err(e) => panic!("seed {seed}: recv: {e:?}"),
        }
    }
}

/// Look at `c`'s sending direction twice, `idle` ms apart: the second look releases the ring.
fn release(c: &Connection, s: &Connection, now: &mut u64) -> IdleRelease {
    // The receiver's looks return its credits (as its sweep, or its arming, does).
    let _ = s.release_idle_tx(*now, 1000);
    let first = c.release_idle_tx(*now, 1000);
    *now += 1000;
    let second = c.release_idle_tx(*now, 1000);
    assert!(
        matches!(first, IdleRelease::Watching) || first == second,
        "a first look at an idle direction watches it: {first:?} then {second:?}"
    );
    second
}

#[test]
fn an_idle_ring_gives_its_pages_back_and_the_stream_stays_exact_across_laps() {
    let cap: u64 = 64 << 10;
    let (dir, dev) = device("idle");
    let t = transport(&dev, cap);
    let (c, s, _cs, _ss) = pair(&t);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut at, mut now) = (Stream::default(), 1u64);

    // Nothing sent yet: nothing to release.
    assert_eq!(c.release_idle_tx(now, 1000), IdleRelease::Unused);
    // Three laps of the ring: every page of it touched.
    stream(&c, &s, &mut rng, 3 * cap, 8192, &mut at, 0);
    let full = allocated(&dir.0);
    // A look while bytes are unconsumed does nothing.
    c.send(&[b"unread"], true, None).unwrap();
    assert_eq!(c.release_idle_tx(now, 0), IdleRelease::Busy);
    assert_eq!(c.release_idle_tx(now + 5000, 0), IdleRelease::Busy);
    let mut six = [0u8; 6];
    assert_eq!(s.recv(&mut [&mut six], NB, None).unwrap(), 6);
    assert_eq!(&six, b"unread");
    // Consumed: the first look watches, one before the idle time too, then it is released.
    let _ = s.release_idle_tx(now, 1000);
    assert_eq!(c.release_idle_tx(now, 1000), IdleRelease::Watching);
    assert_eq!(c.release_idle_tx(now + 999, 1000), IdleRelease::Watching);
    let r = c.release_idle_tx(now + 1000, 1000);
    now += 1000;
    let IdleRelease::Released(bytes) = r else {
        panic!("an idle, consumed ring is released: {r:?}");
    };
    // Every page of the block but its first (the header's, with the ring's first bytes) and
    // the one of the next header slot, if that is another.
    assert!(
        [cap, cap - 4096].contains(&(bytes as u64)),
        "all but the header's page and the page of the next header slot: {bytes}"
    );
    // The block's pages the ring lapped went: all but the header's, the one of the next header
    // slot, and the block's last, where the ring has only its last 1 KiB, which a sender whose
    // reach grew to the block's first 64 KiB (63 KiB of ring) need never have written.
    let after = allocated(&dir.0);
    assert!(
        after + (cap - 2 * 4096) <= full,
        "the window's file gave the ring's pages back: {full} bytes allocated before, {after} after"
    );
    // Where the next header slot was past the block's first page, the sender moved it to
    // position 0 behind a pad frame: once the receiver passed that (its own look), the next
    // looks release the slot's old page too. Else the ring is kept as it is.
    let second = match release(&c, &s, &mut now) {
        IdleRelease::Released(b) => b,
        IdleRelease::Kept => 0,
        other => panic!("the second release: {other:?}"),
    };
    assert!([0, cap as usize].contains(&second), "{second}");
    assert_eq!(c.release_idle_tx(now + 5000, 1000), IdleRelease::Kept);
    let counters = t.counters();
    assert_eq!(
        counters
            .ring_releases
            .load(std::sync::atomic::Ordering::Relaxed),
        1 + u64::from(second > 0)
    );
    assert_eq!(
        counters
            .ring_bytes_released
            .load(std::sync::atomic::Ordering::Relaxed),
        (bytes + second) as u64
    );
    // The released pages read as zeros through the sender's window: every page of the block
    // but the first.
    let block = victims_block(&dev, &c);
    let mut ring = vec![0u8; cap as usize];
    block.read(4096, &mut ring).unwrap();
    let zeros = ring
        .chunks(4096)
        .filter(|p| p.iter().all(|&b| b == 0))
        .count();
    assert_eq!(zeros, (cap / 4096) as usize, "zero pages");

    // Many laps of random sizes, released at random ring positions: byte-exact throughout.
    let mut released = 1;
    for round in 0..200u64 {
        let max = [16, 100, 1000, 5000, 16 << 10, 40 << 10][rng.below(6) as usize];
        let n = 1 + rng.below(cap + cap / 2);
        stream(&c, &s, &mut rng, n, max, &mut at, round);
        // Sometimes land the producer counter within a frame or two of the ring's end, so that
        // the next frame after the release starts with a pad frame.
        if rng.below(4) == 0 {
            let to_end = cap - at.sent % cap;
            if to_end > 48 {
                stream(&c, &s, &mut rng, to_end - 40, to_end, &mut at, round);
            }
        }
        match release(&c, &s, &mut now) {
            IdleRelease::Released(_) => released += 1,
            other => panic!(
                "round {round}: an idle ring after {} bytes: {other:?}",
                at.sent
            ),
        }
    }
    assert_eq!(at.got, at.sent);
    assert!(released > 100);
    // And the other direction, which the receiver's looks never released, is intact too.
    let mut b = [0u8; 5];
    s.send(&[b"hello"], false, None).unwrap();
    assert_eq!(
        c.recv(&mut [&mut b], RecvFlags::default(), None).unwrap(),
        5
    );
    assert_eq!(&b, b"hello");
}

/// The service's segments (a memfd sealed against shrinking, growing and more seals) can punch
/// holes: the seals forbid neither `MADV_REMOVE` nor a later write.
#[test]
fn a_segment_sealed_as_the_service_seals_it_gives_pages_back() {
    let len = 64 << 10;
    let fd = fabric::sys::segment(len as u64).unwrap();
    let r = ntbdrv::Region::map_segment(&fd, 0, len).unwrap();
    r.fill(0, len, 0x5A).unwrap();
    let blocks = |fd: &std::os::fd::OwnedFd| {
        let f = std::fs::File::from(fd.try_clone().unwrap());
        f.metadata().unwrap().blocks() * 512
    };
    let full = blocks(&fd);
    assert!(full >= len as u64, "{full}");
    assert_eq!(r.release(4096, len - 8192).unwrap(), len - 8192);
    let after = blocks(&fd);
    assert!(after <= 8192, "{after} bytes still allocated");
    let mut b = vec![0u8; len];
    r.read(0, &mut b).unwrap();
    assert!(b[..4096].iter().all(|&x| x == 0x5A));
    assert!(b[4096..len - 4096].iter().all(|&x| x == 0));
    assert!(b[len - 4096..].iter().all(|&x| x == 0x5A));
    r.write(8192, b"again").unwrap();
    r.read(8192, &mut b[..5]).unwrap();
    assert_eq!(&b[..5], b"again");
    assert!(fabric::sys::seals(fd.as_raw_fd()).unwrap() & libc::F_SEAL_SHRINK != 0);
}

/// Send `msg` on `from` and take it whole on `to`, checking it.
fn exchange(from: &Connection, to: &Connection, msg: &[u8]) {
    assert_eq!(from.send(&[msg], true, None).unwrap(), msg.len());
    let mut b = vec![0u8; msg.len()];
    let mut got = 0;
    while got < msg.len() {
        got += to.recv(&mut [&mut b[got..]], NB, None).unwrap();
    }
    assert_eq!(&b[..], msg);
}

/// Send `burst` from `from` in writes of 1,000 bytes, which `to` reads only when the sender
/// cannot go on (the pad frame behind a small reach holds the rest of the ring until it is
/// read), checking every byte: the sender's reach grows.
fn send_in_a_burst(from: &Connection, to: &Connection, burst: &[u8]) {
    let (mut sent, mut got) = (0, 0);
    let mut b = vec![0u8; burst.len()];
    while got < burst.len() {
        let chunk = &burst[sent..(sent + 1000).min(burst.len())];
        match from.send(&[chunk], true, None) {
            Ok(n) if sent < burst.len() => {
                sent += n;
                continue;
            }
            Ok(_) | Err(transport::IoError::WouldBlock) => {}
            Err(e) => panic!("send: {e:?}"),
        }
        got += to.recv(&mut [&mut b[got..]], NB, None).unwrap();
    }
    assert_eq!(b, burst);
}

/// Request/response traffic of small messages (a request of 100 bytes, an answer of 200) laps
/// the first page of each ring, 400 times over, and the window's file (an independent signal)
/// allocates not one page more for it; a burst the receiver leaves unread makes the sender's
/// reach grow onto the ring's other pages, and the stream stays exact.
#[test]
fn small_messages_stay_in_the_first_page_of_the_ring_and_a_burst_grows_it() {
    let cap: u64 = 64 << 10;
    let (dir, dev) = device("reach");
    let t = transport(&dev, cap);
    let (c, s, _cs, _ss) = pair(&t);
    let request: Vec<u8> = (0..100).map(pattern).collect();
    let answer: Vec<u8> = (0..200).map(pattern).collect();
    exchange(&c, &s, &request);
    exchange(&s, &c, &answer);
    let first = allocated(&dir.0);
    // 4096 / (16 + 112) requests a lap of the first page: 400 laps.
    for _ in 0..400 * 32 {
        exchange(&c, &s, &request);
        exchange(&s, &c, &answer);
    }
    let lapped = allocated(&dir.0);
    assert!(
        lapped <= first,
        "small messages touched more of the rings: {first} bytes allocated, then {lapped}"
    );
    // Bursts of 40 KiB that the receiver reads only when the sender cannot go on (the pad
    // frame behind the small reach holds the rest of the ring until it is read): the reach
    // grows past the first page, and the stream stays exact.
    let burst: Vec<u8> = (0..40 << 10).map(pattern).collect();
    for _ in 0..4 {
        send_in_a_burst(&c, &s, &burst);
    }
    let grown = allocated(&dir.0);
    assert!(
        grown >= lapped + (32 << 10),
        "bursts are held in more of the ring: {lapped} bytes allocated, then {grown}"
    );
    exchange(&c, &s, &request);
}

/// A connection of small messages holds one page of each endpoint block, the header's: the
/// ring starts inside it (docs/PROTOCOL.md §2, version 5), and a sender's smallest reach is the
/// ring's part of that page. The window's file (an independent signal) allocates not one page
/// more than the connection's set-up did, under request/response traffic and once it idles;
/// with the ring after the header's page (version 4) it allocated each ring's first page too.
/// A burst grows the reach onto other pages, and the idle release gives them back: all but the
/// header's page and the one holding the next header slot.
#[test]
fn a_small_message_connection_holds_only_its_header_pages() {
    let cap: u64 = 16 << 10;
    let (dir, dev) = device("header-pages");
    let t = transport(&dev, cap);
    let (c, s, _cs, _ss) = pair(&t);
    let made = allocated(&dir.0);
    let request: Vec<u8> = (0..100).map(pattern).collect();
    let answer: Vec<u8> = (0..200).map(pattern).collect();
    for _ in 0..10_000 {
        exchange(&c, &s, &request);
        exchange(&s, &c, &answer);
    }
    let busy = allocated(&dir.0);
    assert_eq!(
        busy, made,
        "small messages allocated pages beyond the blocks' first: {made} bytes after the \
         set-up, {busy} after 10,000 requests"
    );
    // Idle: both directions released, nothing was allocated to give back.
    let mut now = 1;
    for (from, to) in [(&c, &s), (&s, &c)] {
        let r = release(from, to, &mut now);
        assert!(matches!(r, IdleRelease::Released(_)), "{r:?}");
    }
    assert_eq!(allocated(&dir.0), made, "idle");
    // A burst the receiver reads only when the sender cannot go on grows the reach.
    let burst: Vec<u8> = (0..12 << 10).map(pattern).collect();
    send_in_a_burst(&c, &s, &burst);
    let grown = allocated(&dir.0);
    assert!(
        grown > made,
        "the burst grew the ring: {made}, then {grown}"
    );
    // Released; the burst left the next header slot past the first page, so the sender moved
    // it to position 0 behind a pad frame, which the receiver's next look passes; the looks
    // after that release the slot's old page.
    let r = release(&c, &s, &mut now);
    assert!(matches!(r, IdleRelease::Released(_)), "{r:?}");
    assert!(allocated(&dir.0) <= made + 4096);
    let r = release(&c, &s, &mut now);
    assert!(
        matches!(r, IdleRelease::Released(_)),
        "the slot's old page: {r:?}"
    );
    let idle = allocated(&dir.0);
    assert_eq!(
        idle, made,
        "idle again: the header's pages only: {made} after the set-up, {grown} after the burst"
    );
    assert_eq!(release(&c, &s, &mut now), IdleRelease::Kept);
    // And small messages go on from position 0, in the header's page.
    exchange(&c, &s, &request);
    exchange(&s, &c, &answer);
}
