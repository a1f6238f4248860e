//! `ntbdrv-ivshmem-irqd`: the ivshmem backend's interrupt daemon, one per machine. It owns the VFIO
//! interrupt wiring of one machine; it must never read or write a window's bytes or any
//! connection's state, only move interrupts to lines.
//!
//! Usage: `ntbdrv-ivshmem-irqd [BDF]` (as root). Wires the ivshmem device's MSI-X vector to an
//! eventfd through VFIO and, on each interrupt, delivers this side's pending doorbells and
//! vectors to this machine's interrupt lines, so processes need not poll
//! (`ntbdrv::ivshmem::serve_interrupts`; docs/TWOHOST.md). Says "ready" once wired, then runs
//! until killed.
use std::io::Write;
use std::process::ExitCode;

use ntbdrv::ivshmem::{self, IvshmemOptions};

fn main() -> ExitCode {
    let bdf = std::env::args().nth(1);
    let opts = match IvshmemOptions::from_env("ivshmem") {
        Ok(o) => IvshmemOptions { bdf, ..o },
        Err(e) => {
            eprintln!("ntbdrv-ivshmem-irqd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = ivshmem::serve_interrupts(&opts, || {
        println!("ready");
        let _ = std::io::stdout().flush();
    });
    let Err(e) = r;
    eprintln!("ntbdrv-ivshmem-irqd: {e}");
    ExitCode::FAILURE
}
