//! An idle bridge-mode pair for `benches/bridge-poller-idle.sh`: the emulated layout in a shared
//! file standing in for ivshmem's BAR2 (as `conformance/tests/bridge.rs`), both sides in this
//! process with their link up and one leased vector whose line is open (so each side runs its
//! poller thread), then nothing for `SECS` seconds (first argument, default 15). Prints its pid.
//! Never touches anything but its own temporary directory.

use std::sync::Arc;
use std::time::Duration;

use ntbdrv::emu::Bridge;
use ntbdrv::{ivshmem, NtbDevice};

struct Quiet(u32);

impl Bridge for Quiet {
    fn describe(&self) -> String {
        format!("idle bench bridge (ID {})", self.0)
    }
    fn id(&self) -> u32 {
        self.0
    }
    fn kick(&self, _id: u32) {}
}

fn main() {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let dir = std::env::temp_dir().join(format!("ntbdrv-bridge-idle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let bar = dir.join("bar2");
    std::fs::File::create(&bar)
        .and_then(|f| f.set_len(64 << 20))
        .expect("the stand-in BAR");
    let open = |side: u32| {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&bar)
            .expect("the stand-in BAR");
        let lines = dir.join("lines").join(format!("side{side}.ntb"));
        ivshmem::open_shared_file(&f, lines, Some(side), Arc::new(Quiet(10 + side)))
            .expect("bridge-mode device")
    };
    let (a, b) = (open(0), open(1));
    a.link_enable().expect("link");
    b.link_enable().expect("link");
    let (va, vb) = (a.lease_vector(1).unwrap(), b.lease_vector(1).unwrap());
    let _lines = (
        a.vector_fd(va.vector).unwrap(),
        b.vector_fd(vb.vector).unwrap(),
    );
    println!("{}", std::process::id());
    std::thread::sleep(Duration::from_secs(secs));
    let _ = std::fs::remove_dir_all(&dir);
}
