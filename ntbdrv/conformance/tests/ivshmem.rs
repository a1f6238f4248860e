//! The conformance suite on the `ivshmem` backend: QEMU's ivshmem-doorbell PCI device, inside a
//! guest. Both sides of the device are opened from this one guest (the other guest's share of
//! the bridge is exercised by `iperf-tests/twohost.sh`, which runs this file in a guest).
//!
//! Ignored by default (a build machine has no ivshmem device); run inside a guest as root:
//! `PCISOCK_IVSHMEM_TEST=<PCI address> ivshmem-<hash> --ignored --test-threads=1`. The tests
//! share one device, so they run one at a time.

use std::process::Command;
use std::sync::Arc;

use ntbdrv::ivshmem::{self, IvshmemOptions};
use ntbdrv::{NtbDevice, SideId};
use ntbdrv_conformance::{self as conformance, Fixture};

struct Ivshmem {
    bdf: String,
}

impl Ivshmem {
    fn new() -> Self {
        let bdf = std::env::var("PCISOCK_IVSHMEM_TEST")
            .expect("PCISOCK_IVSHMEM_TEST=<PCI address of the ivshmem device to test>");
        Ivshmem { bdf }
    }
}

impl Fixture for Ivshmem {
    fn open(&self, side: SideId) -> Arc<dyn NtbDevice> {
        Arc::new(
            ivshmem::open(&IvshmemOptions {
                bdf: Some(self.bdf.clone()),
                side: Some(side),
                dir: None,
            })
            .expect("open the ivshmem device"),
        )
    }
    fn sides(&self) -> (SideId, SideId) {
        (0, 1)
    }
    fn peer(&self, side: SideId, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ntbdrv-peer"));
        c.arg("ivshmem")
            .arg(&self.bdf)
            .arg(side.to_string())
            .args(args);
        c
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        $(#[test] #[ignore = "needs an ivshmem device: run inside a twohost.sh guest"]
          fn $name() { conformance::$name(&Ivshmem::new()); })*
    };
}

ntbdrv_conformance::conformance_checks!(conformance);

#[test]
fn layout_fits_the_shared_memory() {
    for bar2 in [16u64 << 20, 64 << 20, 256 << 20, 1 << 30] {
        let c = ivshmem::config_for(bar2).unwrap();
        assert!(c.mw_size >= 128 << 10, "{bar2}: {c:?}");
    }
    assert!(ivshmem::config_for(8 << 20).is_err(), "8 MiB is too small");
}
