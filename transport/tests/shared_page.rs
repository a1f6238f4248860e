//! Over the host fabric service, a connection's segment holds both endpoint headers and both
//! rings' first bytes in one page (docs/PROTOCOL.md §2, *The shared page*): a connection that
//! exchanges small messages allocates that page and no other, and a burst that grows a ring
//! gives its pages back when the direction idles, and never the other ring's. The tests here
//! count the pages of every segment this process has open, so they run one at a time (`ONE`;
//! messages of every size: `shared_page_sizes.rs`).

mod common;

use common::service::{exchange, service, transport};
use common::{pair, pattern};
use transport::{Connection, IdleRelease};

/// Held by each test: a test's count of segment pages must not see another's segments.
static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The bytes allocated in each of the service's segments: the ranges, of rings of `ring`, of
/// its arenas (memfds `pcisock-segment`, open in this process: the service runs on one of its
/// threads; the processes' tally pages are such memfds too, with nothing allocated while no
/// peer rang), found by the pages that exist (`SEEK_DATA`), each counted in the range it lies in.
fn segments(ring: u64) -> Vec<u64> {
    use std::os::fd::AsRawFd;
    let seg = fabric::service::segment_bytes(ring);
    let mut held = std::collections::BTreeMap::new();
    let arenas = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|l| l.to_string_lossy().starts_with("/memfd:pcisock-segment"))
        });
    for (n, e) in arenas.enumerate() {
        let Ok(f) = std::fs::File::open(e.path()) else {
            continue;
        };
        let mut at = 0;
        while let Ok(Some((data, hole))) = fabric::sys::next_data(f.as_raw_fd(), at) {
            for page in (data..hole).step_by(4096) {
                *held.entry((n, page / seg)).or_insert(0) += 4096;
            }
            at = hole;
        }
    }
    held.into_values().collect()
}

fn release(from: &Connection, to: &Connection, now: &mut u64) -> IdleRelease {
    // The receiver's looks return its credits (as its sweep, or its arming, does).
    let _ = to.release_idle_tx(*now, 1000);
    let _ = from.release_idle_tx(*now, 1000);
    *now += 1000;
    let _ = to.release_idle_tx(*now, 1000);
    from.release_idle_tx(*now, 1000)
}

#[test]
fn a_small_message_connection_holds_one_page() {
    let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
    let svc = service();
    let t = transport(&svc, 16 << 10);
    let (c, s, _cs, _ss) = pair(&t);
    let request: Vec<u8> = (0..100).map(pattern).collect();
    let answer: Vec<u8> = (0..200).map(pattern).collect();
    for _ in 0..10_000 {
        exchange(&c, &s, &request);
        exchange(&s, &c, &answer);
    }
    // The connection's segment (and the spares the service made after it) has its shared page
    // and nothing else: both headers and both rings' laps are there.
    let held = segments(16 << 10);
    assert_eq!(
        held.iter().max(),
        Some(&4096),
        "small messages allocated more than the shared page: {held:?}"
    );
    // A burst each way grows both rings onto their own pages.
    let burst: Vec<u8> = (0..12 << 10).map(pattern).collect();
    exchange(&c, &s, &burst);
    exchange(&s, &c, &burst);
    let grown = segments(16 << 10);
    assert!(
        grown.iter().any(|&b| b > 4096),
        "the bursts grew the rings: {grown:?}"
    );
    // Idle: each direction gives its pages back; a header slot past the shared page goes to
    // position 0 first, and a later look releases its page.
    let mut now = 1;
    for _ in 0..3 {
        for (from, to) in [(&c, &s), (&s, &c)] {
            let r = release(from, to, &mut now);
            assert!(
                !matches!(r, IdleRelease::Busy | IdleRelease::Refused),
                "{r:?}"
            );
        }
    }
    let idle = segments(16 << 10);
    assert_eq!(
        idle.iter().max(),
        Some(&4096),
        "an idle connection holds its shared page only: {idle:?}"
    );
    // And the stream goes on from there, exact.
    for _ in 0..100 {
        exchange(&c, &s, &request);
        exchange(&s, &c, &answer);
    }
}

/// The client's ring has the server's whole block as its hole (the segment is one mapping):
/// when the server's direction idles and gives the client's ring pages back, the server's own
/// ring pages, holding what the client sent and the server has not read yet, stay.
#[test]
fn releasing_the_clients_ring_leaves_the_servers_alone() {
    let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
    let svc = service();
    let t = transport(&svc, 16 << 10);
    let (c, s, _cs, _ss) = pair(&t);
    // The server's answers grow the client's ring onto its own pages, past the hole.
    let burst: Vec<u8> = (0..12 << 10).map(pattern).collect();
    exchange(&s, &c, &burst);
    // The client writes into the server's ring pages; the server does not read yet.
    let waiting: Vec<u8> = (0..10 << 10).map(|i| pattern(i + 7)).collect();
    let mut sent = 0;
    while sent < waiting.len() {
        sent += c
            .send(&[&waiting[sent..]], true, None)
            .unwrap_or_else(|e| panic!("send: {e:?}"));
    }
    let held = segments(16 << 10);
    assert!(held.iter().any(|&b| b > 4096), "{held:?}");
    let mut now = 1;
    let r = release(&s, &c, &mut now);
    assert!(
        matches!(r, IdleRelease::Released(n) if n > 0),
        "the client's ring pages go: {r:?}"
    );
    let mut got = vec![0u8; waiting.len()];
    let mut n = 0;
    let t0 = std::time::Instant::now();
    while n < got.len() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(5),
            "the server's ring lost what it held: {n} bytes read"
        );
        match s.recv(&mut [&mut got[n..]], common::service::NB, None) {
            Ok(k) => n += k,
            Err(transport::IoError::WouldBlock) => {}
            Err(e) => panic!("recv: {e:?}"),
        }
    }
    assert!(got == waiting, "the server's ring was overwritten");
}
