//! The sweep of dead listeners (every process that opens the rendezvous area runs one) against
//! listeners being published meanwhile by another process: a listener that is alive, its
//! kernel socket listening, is never withdrawn, whenever it was published during the sweep.
//! Without the second look at the kernel's list (`rendezvous/liveness.rs`) 5,295 of 6,090
//! listeners were lost here; without the CLAIMING mark, 1 in about 11,000 (2 runs of 12).

mod common;

use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use transport::rendezvous::RendezvousArea;
use transport::{sockdiag, Endpoint};

/// Set in the sweeper child: the device's directory.
const CHILD_DIR: &str = "LISTENER_SWEEP_DIR";

/// How long the publisher publishes (and the sweeper sweeps).
const FOR: Duration = Duration::from_secs(2);

/// A listening kernel socket on 127.0.0.1, published the way the shim publishes it: the
/// record first (before the kernel listens), then the socket once the kernel listens.
fn publish(ctrl: &RendezvousArea) -> (Socket, Endpoint, transport::rendezvous::SlotGuard) {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    s.bind(&any.into()).unwrap();
    let ep = Endpoint::from_std(s.local_addr().unwrap().as_socket().unwrap());
    let slot = ctrl
        .add_listener(ep, sockdiag::SocketId::default())
        .expect("a free listener slot");
    s.listen(16).unwrap();
    ctrl.set_listener_socket(&slot, sockdiag::socket_id(s.as_raw_fd()).unwrap());
    (s, ep, slot)
}

#[test]
fn a_listener_published_during_another_process_sweep_stays_published() {
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        return sweeper(dir.into());
    }
    let (d, dev) = common::device("sweep");
    let ctrl = RendezvousArea::open(&*dev).unwrap();
    // One listener that lives throughout, in the first slot: a sweep judges it by the kernel's
    // list of listening sockets before it reaches the listeners published below.
    let (_first, first_ep, _first_slot) = publish(&ctrl);
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_listener_published_during_another_process_sweep_stays_published",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, &d.0)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut published, mut lost) = (0u32, 0u32);
    let t0 = Instant::now();
    while t0.elapsed() < FOR {
        let (s, ep, slot) = publish(&ctrl);
        // The listener lives (its socket listens): a client of this host must find it.
        std::thread::sleep(Duration::from_micros(50));
        if !ctrl.find_listener(&ep, true) {
            lost += 1;
        }
        published += 1;
        ctrl.remove_listener(&slot);
        drop(s);
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the sweeper failed: {}", out.status);
    let said = String::from_utf8_lossy(&out.stdout);
    let sweeps: u64 = said
        .split("sweeps ")
        .nth(1)
        .and_then(|r| r.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("the sweeper said {said:?}"));
    assert!(sweeps > 0, "the sweeper never swept");
    assert!(ctrl.find_listener(&first_ep, true), "the first listener");
    assert_eq!(
        lost, 0,
        "{lost} of {published} live listeners withdrawn by the other process's {sweeps} sweeps"
    );
}

/// The child: sweep the area over and over (a process opening it does so once) for [`FOR`].
fn sweeper(dir: std::path::PathBuf) {
    let opts = ntbdrv::emu::Options {
        dir,
        name: "lo".into(),
        side: 0,
        config: ntbdrv::emu::Config {
            mw_size: 16 << 20,
            ..ntbdrv::emu::Config::default()
        },
    };
    let dev = ntbdrv::emu::EmuDevice::open(&opts).unwrap();
    let ctrl = RendezvousArea::open(&dev).unwrap();
    let (mut sweeps, mut withdrawn) = (0u64, 0usize);
    let t0 = Instant::now();
    while t0.elapsed() < FOR {
        withdrawn += ctrl.sweep_dead_listeners();
        sweeps += 1;
    }
    println!("sweeps {sweeps} withdrew {withdrawn}");
}
