//! `ntbdrv-peer`: a second process on a device, driven by the conformance suite. A test tool of the
//! test-only conformance package: nothing of the product may run it, and it never repairs what it
//! finds (a wrong pattern or a timeout is reported and the exit status says so).
//!
//! Usage: `ntbdrv-peer DIR NAME SIDE COMMAND [ARGS]` (an emulated device `DIR/NAME.ntb`), or
//! `ntbdrv-peer ivshmem BDF SIDE COMMAND [ARGS]` (the ivshmem device at PCI address BDF)
//!   (SIDE may be `auto` on ivshmem: the side this machine claims)
//!   describe                         print the device and whether the link is up
//!   write-window MW OFFSET LEN BIT   write a pattern through outbound window MW, ring BIT
//!   wait-window MW OFFSET LEN BIT    clear BIT, say "waiting", wait for it (10 s), then check
//!                                    the pattern in inbound window MW and say "ok LEN bytes"
//!   hold                             lease window space, a doorbell and a DMA channel; say
//!                                    "holding" and wait to be killed
//!   link-down                        disable this side's link (as the NTB driver of a machine
//!                                    that goes away does): the link is down for both sides
//!                                    until this side enables it again
//!   link-up                          enable this side's link again
//! Every command but `link-down` enables this side's link first.
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use ntbdrv::emu::{EmuDevice, Options};
use ntbdrv::ivshmem::{self, IvshmemOptions};
use ntbdrv::NtbDevice;

fn run(args: &[String]) -> Result<(), String> {
    let [dir, name, side, cmd, rest @ ..] = args else {
        return Err("usage: ntbdrv-peer DIR NAME SIDE COMMAND [ARGS]".into());
    };
    let num = |s: &str| s.parse::<u64>().map_err(|e| format!("{s:?}: {e}"));
    let dev = if dir == "ivshmem" {
        ivshmem::open(&IvshmemOptions {
            bdf: Some(name.clone()),
            side: match side.as_str() {
                "auto" => None,
                s => Some(num(s)? as u32),
            },
            dir: None,
        })
    } else {
        let mut opts = Options::from_env().map_err(|e| e.to_string())?;
        opts.dir = PathBuf::from(dir);
        opts.name = name.clone();
        opts.side = num(side)? as u32;
        EmuDevice::open_existing(&opts.path(), opts.side)
    }
    .map_err(|e| e.to_string())?;
    if cmd == "link-down" && rest.is_empty() {
        dev.link_disable().map_err(|e| e.to_string())?;
        println!("link up: {}", dev.link_state().up);
        return Ok(());
    }
    dev.link_enable().map_err(|e| e.to_string())?;
    match (cmd.as_str(), rest) {
        ("link-up", []) => {
            println!("link up: {}", dev.link_state().up);
            Ok(())
        }
        ("write-window", [mw, off, len, bit]) => {
            let (mw, off, len, bit) = window_args(mw, off, len, bit)?;
            dev.outbound(mw)
                .map_err(|e| e.to_string())?
                .write(off, &pattern(len))
                .map_err(|e| e.to_string())?;
            dev.peer_db_set(1 << bit).map_err(|e| e.to_string())?;
            Ok(())
        }
        ("wait-window", [mw, off, len, bit]) => {
            let (mw, off, len, bit) = window_args(mw, off, len, bit)?;
            dev.db_clear(1 << bit).map_err(|e| e.to_string())?;
            println!("waiting");
            std::io::stdout().flush().map_err(|e| e.to_string())?;
            let got = dev
                .db_wait(1 << bit, Some(std::time::Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            if got == 0 {
                return Err(format!("doorbell {bit} did not ring within 10 s"));
            }
            let mut buf = vec![0u8; len as usize];
            dev.inbound(mw)
                .map_err(|e| e.to_string())?
                .read(off, &mut buf)
                .map_err(|e| e.to_string())?;
            if buf != pattern(len) {
                return Err(format!(
                    "the {len} bytes in window {mw} are not the pattern"
                ));
            }
            println!("ok {len} bytes");
            Ok(())
        }
        ("describe", []) => {
            println!("{} (link up: {})", dev.describe(), dev.link_state().up);
            Ok(())
        }
        ("hold", []) => {
            let _w = dev
                .lease_window(0, 1 << 20, 42)
                .map_err(|e| e.to_string())?;
            let _d = dev.lease_doorbell(42).map_err(|e| e.to_string())?;
            let _c = if dev.dma_channel_count() > 0 {
                Some(dev.dma_channel().map_err(|e| e.to_string())?)
            } else {
                None
            };
            println!("holding");
            std::io::stdout().flush().map_err(|e| e.to_string())?;
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        _ => Err(format!("unknown command {cmd:?} {rest:?}")),
    }
}

/// The MW OFFSET LEN BIT arguments of `write-window` and `wait-window`.
fn window_args(
    mw: &str,
    off: &str,
    len: &str,
    bit: &str,
) -> Result<(u32, usize, u32, u64), String> {
    let num = |s: &str| s.parse::<u64>().map_err(|e| format!("{s:?}: {e}"));
    Ok((
        num(mw)? as u32,
        num(off)? as usize,
        num(len)? as u32,
        num(bit)?,
    ))
}

/// The bytes `write-window` writes and `wait-window` expects.
fn pattern(len: u32) -> Vec<u8> {
    (0..len).map(|i| (i % 253) as u8 ^ 0x5A).collect()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ntbdrv-peer: {e}");
            ExitCode::FAILURE
        }
    }
}
