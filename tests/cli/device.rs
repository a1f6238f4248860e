//! `pcisock stats` and `pcisock emu` against a private emulated device.

use super::*;

#[test]
fn stats_and_emu_on_a_private_device() {
    let dir = TempDir::new("dev");
    let o = pcisock_in(&dir.0, &["stats"], &[]);
    assert_code(&o, 0);
    assert!(
        stdout(&o).contains("no pcisock device on this host yet"),
        "{}",
        stdout(&o)
    );
    assert!(
        !dir.0.join("loopback.ntb").exists(),
        "stats created a device"
    );
    let o = pcisock_in(
        &dir.0,
        &["stats"],
        &[("PCISOCK_EMU_DIR", "/nonexistent/pcisock-dir")],
    );
    assert!(
        stdout(&o).contains("no pcisock device on this host yet (/nonexistent/pcisock-dir/"),
        "{}",
        stdout(&o)
    );
    let o = pcisock_in(&dir.0, &["emu", "info"], &[]);
    assert_code(&o, 1);
    assert!(stderr(&o).contains("no pcisock device"), "{}", stderr(&o));

    let dev = make_device(&dir.0);
    let lease = dev.lease_window(0, 4096, 0x7465_7374).expect("lease");
    let o = pcisock_in(&dir.0, &["stats", "--json"], &[]);
    assert_code(&o, 0);
    let json = stdout(&o);
    assert!(
        json.trim_start().starts_with('{') && json.trim_end().ends_with('}'),
        "{json}"
    );
    assert!(json.contains("\"connections\":["), "{json}");
    assert!(
        json.contains(&format!(
            "{{\"pid\":{},\"owner\":\"alive\",\"window\":1",
            std::process::id()
        )),
        "{json}"
    );
    let o = pcisock_in(&dir.0, &["stats"], &[]);
    assert!(
        stdout(&o).contains("topology:   loopback") && stdout(&o).contains("2 x 1 MiB"),
        "{}",
        stdout(&o)
    );

    let o = pcisock_in(&dir.0, &["emu", "fault", "link-down"], &[]);
    assert_code(&o, 0);
    assert!(!dev.link_state().up, "link-down did not reach the device");
    let o = pcisock_in(&dir.0, &["emu", "info"], &[]);
    assert_code(&o, 0);
    assert!(
        stdout(&o).contains("faults:     link-down"),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("link:       down"), "{}", stdout(&o));
    let o = pcisock_in(&dir.0, &["emu", "fault", "dma-error", "--count", "3"], &[]);
    assert_code(&o, 0);
    let o = pcisock_in(&dir.0, &["emu", "clear"], &[]);
    assert_code(&o, 0);
    assert!(
        stdout(&o).contains("link-down, dma-error"),
        "{}",
        stdout(&o)
    );
    assert_eq!(dev.faults().flags(), 0);
    let o = pcisock_in(&dir.0, &["emu", "info"], &[]);
    assert!(stdout(&o).contains("faults:     none"), "{}", stdout(&o));

    let o = pcisock_in(&dir.0, &["emu", "reclaim"], &[]);
    assert_code(&o, 0);
    assert!(stdout(&o).contains("freed 0 lease"), "{}", stdout(&o));

    // We hold a lease: remove refuses and names us.
    let o = pcisock_in(&dir.0, &["emu", "remove"], &[]);
    assert_code(&o, 1);
    assert!(
        stderr(&o).contains(&std::process::id().to_string()),
        "{}",
        stderr(&o)
    );
    assert!(dir.0.join("loopback.ntb").exists());
    dev.release(ntbdrv::Lease::Window(lease)).expect("release");
    drop(dev);
    std::fs::write(dir.0.join("loopback.s0.db3"), b"").unwrap();
    std::fs::write(dir.0.join("keep.s0.db3"), b"").unwrap();
    let o = pcisock_in(&dir.0, &["emu", "remove"], &[]);
    assert_code(&o, 0);
    assert!(!dir.0.join("loopback.ntb").exists() && !dir.0.join("loopback.s0.db3").exists());
    assert!(
        dir.0.join("keep.s0.db3").exists(),
        "removed another device's FIFO"
    );
}

/// A device left by a build with another layout version cannot be read for its leases: `emu
/// remove` deletes it (and its interrupt lines) when no process has it mapped, and refuses while
/// one does.
#[test]
fn emu_remove_takes_a_device_of_another_version() {
    use std::os::unix::fs::FileExt;
    let dir = TempDir::new("oldversion");
    let dev = make_device(&dir.0);
    let _line = dev
        .vector_fd(3)
        .expect("an interrupt line (a FIFO beside the device)");
    let path = dir.0.join("loopback.ntb");
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&(ntb_sys::NTBEMU_VERSION + 7).to_le_bytes(), 8)
        .unwrap();
    let o = pcisock_in(&dir.0, &["emu", "remove"], &[]);
    assert_code(&o, 1);
    assert!(stderr(&o).contains("have it mapped"), "{}", stderr(&o));
    drop(dev);
    let o = pcisock_in(&dir.0, &["emu", "remove"], &[]);
    assert_code(&o, 0);
    assert!(!path.exists());
    let left: Vec<_> = std::fs::read_dir(&dir.0).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
