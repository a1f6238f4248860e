//! The conformance suite in bridge mode without a guest: the emulated layout in a plain shared
//! file standing in for ivshmem's BAR2, and a bridge whose "Doorbell register" only counts. The
//! receiving side's pollers must deliver every interrupt from the mailbox alone, so the suite
//! checks the bridge-mode paths (claims, layout by CAS, mailbox, pollers, polled waits) on every
//! build, not only in the two-guest test bed (tests/ivshmem.rs).

use std::fs::File;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;

use ntbdrv::emu::Bridge;
use ntbdrv::{ivshmem, NtbDevice, SideId};
use ntbdrv_conformance::{self as conformance, Fixture};

struct CountingBridge {
    id: u32,
    kicks: Arc<AtomicU32>,
}

impl Bridge for CountingBridge {
    fn describe(&self) -> String {
        format!("test bridge (ID {})", self.id)
    }
    fn id(&self) -> u32 {
        self.id
    }
    fn kick(&self, _id: u32) {
        self.kicks.fetch_add(1, Relaxed);
    }
}

struct FileBar {
    dir: PathBuf,
    kicks: Arc<AtomicU32>,
}

impl FileBar {
    const SIZE: u64 = 64 << 20;
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "ntbdrv-bridge-{tag}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let f = File::create(dir.join("bar2")).unwrap();
        f.set_len(Self::SIZE).unwrap();
        FileBar {
            dir,
            kicks: Arc::new(AtomicU32::new(0)),
        }
    }
}

impl Drop for FileBar {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Fixture for FileBar {
    fn open(&self, side: SideId) -> Arc<dyn NtbDevice> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.dir.join("bar2"))
            .unwrap();
        let bridge = CountingBridge {
            id: 10 + side,
            kicks: self.kicks.clone(),
        };
        let lines = self.dir.join("lines").join(format!("side{side}.ntb"));
        Arc::new(ivshmem::open_shared_file(&f, lines, Some(side), Arc::new(bridge)).unwrap())
    }
    fn sides(&self) -> (SideId, SideId) {
        (0, 1)
    }
    fn peer(&self, _side: SideId, _args: &[&str]) -> Command {
        unreachable!("the process-based checks run in the guests (iperf-tests/twohost.sh)")
    }
}

macro_rules! bridge_check {
    (windows_across_processes) => {
        #[test]
        #[ignore = "needs the peer process binary: runs in the twohost.sh guests"]
        fn windows_across_processes() {}
    };
    (reclaim_after_kill) => {
        #[test]
        #[ignore = "needs the peer process binary: runs in the twohost.sh guests"]
        fn reclaim_after_kill() {}
    };
    ($name:ident) => {
        #[test]
        fn $name() {
            conformance::$name(&FileBar::new(stringify!($name)));
        }
    };
}
macro_rules! bridge_checks {
    ($($name:ident),* $(,)?) => { $(bridge_check!($name);)* };
}
ntbdrv_conformance::conformance_checks!(bridge_checks);

#[test]
fn interrupts_ring_the_bridge_and_sides_are_claimed_by_id() {
    let f = FileBar::new("kicks");
    let (a, b) = (f.open(0), f.open(1));
    a.link_enable().unwrap();
    b.link_enable().unwrap();
    let v = b.lease_vector(1).unwrap();
    let _line = b.vector_fd(v.vector).unwrap();
    let before = f.kicks.load(Relaxed);
    a.peer_vector_trigger(v.vector).unwrap();
    assert_eq!(
        f.kicks.load(Relaxed),
        before + 1,
        "one Doorbell write per interrupt"
    );
    assert!(a.describe().contains("ID 10") && b.describe().contains("side 1"));
}

/// A link event on a bridge interrupts as it does on the emulated device (and as a
/// link-state-change interrupt does on hardware): when the peer takes the link down, and when
/// it brings it back, each machine's poller kicks the line of every vector leased on its side,
/// so a sleeper on one (a connection's reader, an epoll set) looks at the link at once rather
/// than at the end of its nap; a line no lease holds is left alone.
#[test]
fn a_link_event_kicks_every_leased_vector_line_of_this_machine() {
    use std::time::Duration;
    let f = FileBar::new("link_kick");
    let (a, b) = (f.open(0), f.open(1));
    // Side 0 is the peer of side 1 (whose machine only reads the link from the shared memory).
    conformance::link_events_kick_leased_lines(
        &*a,
        &*b,
        "bridge",
        Duration::from_millis(100),
        Duration::from_millis(20),
        |down| {
            if down {
                a.link_disable().unwrap();
            } else {
                a.link_enable().unwrap();
            }
            assert_eq!(b.link_state().up, !down);
        },
    );
}
