//! `pcisock dc copy` end to end, running the built binary: exact bytes for many sizes, every
//! queue depth and every DC buffer this machine has, ranges with unaligned heads and tails,
//! `--verify` and `--json`, and every bad input with its exit code and message. Block devices are
//! loop devices over files made here (root only: without root, or without losetup, those tests
//! say so and return). Each test has its own emulated device (under /dev/shm, like the default)
//! and its own data directory (under the temp dir, a filesystem that takes O_DIRECT).

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

const BIN: &str = env!("CARGO_BIN_EXE_pcisock");

/// A directory removed (after unmounting whatever the test mounted there) on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(base: &Path, tag: &str) -> Dir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = base.join(format!(
            "pcisock-dc-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&p)
            .expect("create dir");
        Dir(p)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One test's world: data files and a private emulated NTB device.
struct World {
    data: Dir,
    emu: Dir,
}

impl World {
    fn new(tag: &str) -> World {
        let shm = Path::new("/dev/shm");
        let emu_base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        World {
            data: Dir::new(&std::env::temp_dir(), tag),
            emu: Dir::new(&emu_base, &format!("{tag}-emu")),
        }
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.data.path(name);
        std::fs::write(&p, bytes).expect("write test file");
        p
    }

    /// Run `pcisock dc copy ARGS`.
    fn dc(&self, args: &[&str]) -> Output {
        self.dc_env(&[], args)
    }

    /// Run `pcisock dc copy ARGS` with `env` set too.
    fn dc_env(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.arg("dc").arg("copy").args(args);
        for (k, _) in std::env::vars_os() {
            if k.to_str().is_some_and(|k| k.starts_with("PCISOCK_")) {
                cmd.env_remove(&k);
            }
        }
        cmd.env_remove("LD_PRELOAD")
            .env("PCISOCK_EMU_DIR", &self.emu.0)
            .envs(env.iter().copied())
            .output()
            .expect("run pcisock")
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_exit(o: &Output, code: i32, stderr_has: &str) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        out(o),
        err(o)
    );
    assert!(
        err(o).contains(stderr_has),
        "stderr lacks {stderr_has:?}:\n{}",
        err(o)
    );
}

/// `len` pseudo-random bytes (xorshift), different for each seed.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[track_caller]
fn assert_same(a: &[u8], b: &[u8], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    if let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) {
        panic!("{what}: first difference at byte {i}");
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// A loop device over `file` (optionally a part of it), detached on drop.
struct Loop(String);

impl Loop {
    fn new(file: &Path, offset: u64, sizelimit: Option<u64>) -> Option<Loop> {
        let mut cmd = Command::new("losetup");
        cmd.args(["-f", "--show", "--offset", &offset.to_string()]);
        if let Some(n) = sizelimit {
            cmd.args(["--sizelimit", &n.to_string()]);
        }
        let o = cmd.arg(file).output().ok()?;
        let dev = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        (o.status.success() && dev.starts_with("/dev/")).then_some(Loop(dev))
    }

    fn read(&self) -> Vec<u8> {
        std::fs::read(&self.0).expect("read loop device")
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// A world for a test that needs root (loop devices, mounts), or a note that it is skipped.
fn root_world(tag: &str) -> Option<World> {
    if !is_root() {
        eprintln!("{tag}: skipped (needs root for loop devices and mounts)");
        return None;
    }
    Some(World::new(tag))
}

#[test]
fn exact_bytes_for_every_size_queue_depth_and_buffer() {
    let w = World::new("sizes");
    // Around the O_DIRECT block (512), the chunk (64 KiB) and the page: empty, one byte, an
    // unaligned tail, several chunks and a partial one.
    let sizes = [0usize, 1, 511, 4096, 3 * 65536 + 777, (1 << 20) + 12345];
    for (n, &len) in sizes.iter().enumerate() {
        let data = pattern(len, n as u64 + 1);
        let src = w.file(&format!("src{n}"), &data);
        for buffer in ["window", "host"] {
            for qd in ["1", "2", "3", "8"] {
                let dst = w.data.path(&format!("dst{n}-{buffer}-{qd}"));
                let o = w.dc(&[
                    "--chunk",
                    "64K",
                    "--qd",
                    qd,
                    "--buffer",
                    buffer,
                    s(&src),
                    s(&dst),
                ]);
                assert_exit(&o, 0, "");
                assert!(out(&o).starts_with("copied "), "{}", out(&o));
                let got = std::fs::read(&dst).unwrap();
                assert_same(&got, &data, &format!("size {len}, {buffer}, qd {qd}"));
                let _ = std::fs::remove_file(&dst);
            }
        }
    }
}

#[test]
fn json_is_one_object_and_verify_compares_both_sides() {
    let w = World::new("json");
    let data = pattern(300_000, 9);
    let src = w.file("src", &data);
    let dst = w.data.path("dst");
    let o = w.dc(&[
        "--json",
        "--verify",
        "--qd",
        "2",
        "--chunk",
        "64K",
        s(&src),
        s(&dst),
    ]);
    assert_exit(&o, 0, "");
    let v: serde_json::Value = serde_json::from_str(out(&o).trim()).expect("one JSON object");
    assert_eq!(v["bytes"], 300_000);
    assert_eq!(v["qd"], 2);
    assert_eq!(v["chunk"], 65536);
    assert_eq!(v["buffer"], "window");
    assert_eq!(v["src"]["kind"], "file");
    assert_eq!(v["src"]["direct"], true);
    assert_eq!(v["dst"]["direct"], true);
    assert_eq!(v["verify"]["identical"], true);
    assert_eq!(v["verify"]["src_checksum"], v["verify"]["dst_checksum"]);
    // 300000 = 585 blocks of 512 + 480: the tail goes through the page cache.
    assert_eq!(v["buffered_bytes"], 480);
    assert!(v["mb_per_s"].as_f64().unwrap() > 0.0);
    assert_same(&std::fs::read(&dst).unwrap(), &data, "json copy");

    // A refused copy with --json still prints one object, with the reason.
    let o = w.dc(&["--json", s(&src), s(&src)]);
    assert_exit(&o, 1, "are the same file");
    let e: serde_json::Value = serde_json::from_str(out(&o).trim()).expect("an error object");
    assert!(e["error"].as_str().unwrap().contains("are the same file"));

    // Text mode says the same.
    let o = w.dc(&["--verify", s(&src), s(&dst)]);
    assert_exit(&o, 0, "");
    assert!(out(&o).contains("SRC and DST are identical"), "{}", out(&o));
}

#[test]
fn ranges_with_unaligned_offsets_and_lengths_touch_only_the_range() {
    let w = World::new("ranges");
    let data = pattern(2 << 20, 3);
    let before = pattern(2 << 20, 4);
    let src = w.file("src", &data);
    for (offset, length) in [
        (1000u64, 300_000u64),
        (4096, 65536),
        (512, 511),
        (100, 50),
        (0, 1),
    ] {
        let dst = w.file("dst", &before);
        let o = w.dc(&[
            "--offset",
            &offset.to_string(),
            "--length",
            &length.to_string(),
            "--chunk",
            "64K",
            "--qd",
            "3",
            s(&src),
            s(&dst),
        ]);
        assert_exit(&o, 0, "");
        let got = std::fs::read(&dst).unwrap();
        let (a, b) = (offset as usize, (offset + length) as usize);
        assert_same(&got[..a], &before[..a], "before the range");
        assert_same(&got[a..b], &data[a..b], "the range");
        assert_same(&got[b..], &before[b..], "after the range");
        let unaligned = offset % 512 != 0 || length % 512 != 0;
        assert_eq!(
            out(&o).contains("through the page cache"),
            unaligned,
            "{}",
            out(&o)
        );
    }
}

#[test]
fn a_destination_file_is_extended_or_made_exactly_the_source_size() {
    let w = World::new("extend");
    let data = pattern(100_000, 5);
    let src = w.file("src", &data);
    // A range past the end of a short DST extends it (like dd), zeros before the range.
    let dst = w.file("short", b"abc");
    let o = w.dc(&["--offset", "5000", "--length", "10000", s(&src), s(&dst)]);
    assert_exit(&o, 0, "");
    let got = std::fs::read(&dst).unwrap();
    assert_eq!(got.len(), 15_000);
    assert_eq!(&got[..3], b"abc");
    assert!(got[3..5000].iter().all(|&b| b == 0));
    assert_same(&got[5000..], &data[5000..15_000], "extended range");
    // A whole-file copy over a longer DST leaves exactly SRC, like cp.
    let dst = w.file("long", &pattern(300_000, 6));
    let o = w.dc(&[s(&src), s(&dst)]);
    assert_exit(&o, 0, "");
    assert_same(
        &std::fs::read(&dst).unwrap(),
        &data,
        "whole copy over a longer file",
    );
}

#[test]
fn bad_inputs_are_refused_with_a_reason() {
    let w = World::new("bad");
    let src = w.file("src", &pattern(10_000, 7));
    let dst = w.data.path("dst");
    // Missing source, missing device, missing destination directory.
    let missing = w.data.path("nope");
    assert_exit(&w.dc(&[s(&missing), s(&dst)]), 1, "no such file or device");
    assert_exit(
        &w.dc(&["/dev/pcisock-no-such-disk", s(&dst)]),
        1,
        "SRC /dev/pcisock-no-such-disk: no such file or device",
    );
    assert_exit(
        &w.dc(&["pcisock-no-such-disk", s(&dst)]),
        1,
        "no such file or device",
    );
    let nodir = w.data.path("nodir/dst");
    assert_exit(&w.dc(&[s(&src), s(&nodir)]), 1, "does not exist");
    // Not files or block devices.
    assert_exit(&w.dc(&[s(&w.data.0), s(&dst)]), 1, "a directory");
    assert_exit(&w.dc(&["/dev/null", s(&dst)]), 1, "a character device");
    assert_exit(&w.dc(&[s(&src), "/dev/null"]), 1, "a character device");
    // The same file, by name, through a symlink, through a hard link.
    assert_exit(&w.dc(&[s(&src), s(&src)]), 1, "are the same file");
    let sym = w.data.path("sym");
    std::os::unix::fs::symlink(&src, &sym).unwrap();
    assert_exit(&w.dc(&[s(&src), s(&sym)]), 1, "are the same file");
    let hard = w.data.path("hard");
    std::fs::hard_link(&src, &hard).unwrap();
    assert_exit(&w.dc(&[s(&hard), s(&src)]), 1, "are the same file");
    // Ranges outside the source.
    assert_exit(
        &w.dc(&["--offset", "10001", s(&src), s(&dst)]),
        1,
        "beyond the end of SRC",
    );
    assert_exit(
        &w.dc(&["--offset", "5000", "--length", "5001", s(&src), s(&dst)]),
        1,
        "has 10000 bytes",
    );
    // None of the refusals created the destination.
    assert!(!dst.exists());
    // Usage errors: exit 2.
    for bad in [
        &["--qd", "0"][..],
        &["--qd", "65"],
        &["--chunk", "1000"],
        &["--chunk", "128M"],
        &["--buffer", "gpu"],
        &["--length", "x"],
        &["--bogus"],
    ] {
        let mut args = bad.to_vec();
        args.extend([s(&src), s(&dst)]);
        assert_exit(&w.dc(&args), 2, "pcisock dc --help");
    }
    assert_exit(&w.dc(&[s(&src)]), 2, "takes SRC and DST");
}

#[test]
fn p2pmem_is_used_only_where_the_kernel_offers_it() {
    let w = World::new("p2p");
    let src = w.file("src", &pattern(8192, 8));
    let dst = w.data.path("dst");
    let offered = std::fs::read_dir("/sys/bus/pci/devices")
        .map(|d| {
            d.filter_map(Result::ok)
                .any(|e| e.path().join("p2pmem").is_dir())
        })
        .unwrap_or(false);
    let o = w.dc(&["--buffer", "p2pmem", s(&src), s(&dst)]);
    if offered {
        eprintln!("p2pmem offered here: {}", err(&o));
        return;
    }
    assert_exit(&o, 1, "no PCI device on this machine publishes p2pmem");
    assert!(err(&o).contains("--buffer window"), "{}", err(&o));
    assert!(!dst.exists(), "a refused copy created DST");
}

#[test]
fn block_devices_copy_exactly_and_are_never_extended() {
    let Some(w) = root_world("blk") else {
        return;
    };
    let data = pattern(4 << 20, 10);
    let src = w.file("src", &data);
    let a_img = w.file("a.img", &vec![0u8; 4 << 20]);
    let b_img = w.file("b.img", &vec![0u8; 4 << 20]);
    let small_img = w.file("small.img", &vec![7u8; 1 << 20]);
    let (Some(a), Some(b), Some(small)) = (
        Loop::new(&a_img, 0, None),
        Loop::new(&b_img, 0, None),
        Loop::new(&small_img, 0, None),
    ) else {
        eprintln!("block_devices: skipped (losetup does not work here)");
        return;
    };
    // file -> block device, block -> block (by bare name too), block -> file.
    assert_exit(&w.dc(&["--qd", "4", "--verify", s(&src), &a.0]), 0, "");
    assert_same(&a.read(), &data, "file to loop device");
    let bare = a.0.trim_start_matches("/dev/");
    let o = w.dc(&["--buffer", "host", bare, &b.0]);
    assert_exit(&o, 0, "");
    assert!(out(&o).contains("block device"), "{}", out(&o));
    assert_same(&b.read(), &data, "loop device to loop device");
    let back = w.data.path("back");
    assert_exit(&w.dc(&[&b.0, s(&back)]), 0, "");
    assert_same(&std::fs::read(&back).unwrap(), &data, "loop device to file");
    // An unaligned range on block devices.
    let o = w.dc(&["--offset", "1001", "--length", "70000", s(&src), &small.0]);
    assert_exit(&o, 0, "");
    let got = small.read();
    assert!(got[..1001].iter().all(|&x| x == 7));
    assert_same(
        &got[1001..71_001],
        &data[1001..71_001],
        "unaligned block range",
    );
    assert!(got[71_001..].iter().all(|&x| x == 7));
    // A block device smaller than the copy is refused, and left untouched.
    let before = small.read();
    assert_exit(&w.dc(&[s(&src), &small.0]), 1, "is smaller than the copy");
    assert_same(&small.read(), &before, "refused DST");
    // The same device twice.
    assert_exit(&w.dc(&[&a.0, &a.0]), 1, "are the same block device");
}

#[test]
fn overlapping_storage_is_refused() {
    let Some(w) = root_world("overlap") else {
        return;
    };
    let disk = w.file("disk.img", &pattern(4 << 20, 11));
    // A loop device over SRC itself.
    let (Some(over_src), Some(p1), Some(p2), Some(p3)) = (
        Loop::new(&disk, 0, None),
        // Two "partitions" of one backing file that overlap (1..3 MiB and 2..4 MiB) and one
        // that does not (0..1 MiB).
        Loop::new(&disk, 1 << 20, Some(2 << 20)),
        Loop::new(&disk, 2 << 20, Some(2 << 20)),
        Loop::new(&disk, 0, Some(1 << 20)),
    ) else {
        eprintln!("overlap: skipped (losetup does not work here)");
        return;
    };
    assert_exit(&w.dc(&[s(&disk), &over_src.0]), 1, "overlap");
    assert_exit(&w.dc(&[&over_src.0, s(&disk)]), 1, "overlap");
    // p1 bytes 0..1 MiB are disk bytes 1..2 MiB: p2's bytes 0..1 MiB are 2..3 MiB; copying
    // p1 -> p2 at offset 0 over 1 MiB does not overlap, over 2 MiB it does.
    assert_exit(&w.dc(&["--length", "2M", &p1.0, &p2.0]), 1, "overlap");
    let before = std::fs::read(&disk).unwrap();
    assert_exit(&w.dc(&["--length", "1M", &p1.0, &p2.0]), 0, "");
    let after = std::fs::read(&disk).unwrap();
    assert_same(
        &after[2 << 20..3 << 20],
        &before[1 << 20..2 << 20],
        "p1 -> p2",
    );
    // p3 (disk 0..1 MiB) and p1 (1..3 MiB) do not overlap.
    assert_exit(&w.dc(&[&p3.0, &p1.0]), 0, "");
}

/// Mount `fstype` (with `opts`) on a fresh directory; unmounted when the guard drops.
struct Mount(Dir);

impl Mount {
    fn new(fstype: &str, opts: &str) -> Option<Mount> {
        let d = Dir::new(&std::env::temp_dir(), fstype);
        let ok = Command::new("mount")
            .args(["-t", fstype, "-o", opts, fstype, s(&d.0)])
            .status()
            .is_ok_and(|st| st.success());
        ok.then_some(Mount(d))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0 .0).status();
    }
}

#[test]
fn a_filesystem_that_refuses_o_direct_falls_back_with_a_notice_or_is_refused() {
    let Some(w) = root_world("ramfs") else {
        return;
    };
    // ramfs refuses O_DIRECT (EINVAL on open); tmpfs takes it since Linux 6.6.
    let Some(m) = Mount::new("ramfs", "mode=0700") else {
        eprintln!("no_o_direct: skipped (cannot mount ramfs)");
        return;
    };
    let data = pattern(200_000, 12);
    let src = w.file("src", &data);
    let dst = m.0.path("dst");
    let o = w.dc(&["--verify", s(&src), s(&dst)]);
    assert_exit(&o, 0, "");
    assert!(
        out(&o).contains("the filesystem refuses O_DIRECT; writing it through the page cache"),
        "{}",
        out(&o)
    );
    assert_same(&std::fs::read(&dst).unwrap(), &data, "into ramfs");
    // And out of it.
    let back = w.data.path("back");
    let o = w.dc(&[s(&dst), s(&back)]);
    assert_exit(&o, 0, "");
    assert!(out(&o).contains("reading it through the page cache"));
    assert_same(&std::fs::read(&back).unwrap(), &data, "out of ramfs");
    // --direct-only refuses instead.
    let o = w.dc(&["--direct-only", s(&src), s(&m.0.path("dst2"))]);
    assert_exit(
        &o,
        1,
        "refuses O_DIRECT (EINVAL on open), and --direct-only was given",
    );
}

#[test]
fn a_failure_in_the_middle_is_an_error_never_a_success() {
    let Some(w) = root_world("enospc") else {
        return;
    };
    // A 1 MiB tmpfs: the DST file is extended (sparse), then the writes run out of space.
    let Some(m) = Mount::new("tmpfs", "size=1m,mode=0700") else {
        eprintln!("enospc: skipped (cannot mount tmpfs)");
        return;
    };
    let src = w.file("src", &pattern(4 << 20, 13));
    let o = w.dc(&["--chunk", "64K", "--qd", "4", s(&src), s(&m.0.path("dst"))]);
    assert_exit(&o, 1, "FAILED");
    assert!(err(&o).contains("incomplete copy"), "{}", err(&o));
    assert!(!out(&o).contains("copied"), "{}", out(&o));
}

#[test]
fn unreadable_source_and_unwritable_destination() {
    let Some(w) = root_world("perm") else {
        return;
    };
    if Command::new("setpriv").arg("--help").output().is_err() {
        eprintln!("permissions: skipped (no setpriv)");
        return;
    }
    let src = w.file("src", &pattern(5000, 14));
    let open = w.file("open", &pattern(5000, 15));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&w.data.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                BIN,
                "dc",
                "copy",
            ])
            .args(["--buffer", "host"])
            .args(args)
            .output()
            .expect("setpriv")
    };
    let o = as_nobody(&[s(&src), "/tmp/pcisock-dc-nobody-never"]);
    assert_exit(&o, 1, "permission denied");
    // nobody cannot create files in the (root-owned, 0755) data directory.
    let o = as_nobody(&[s(&open), s(&w.data.path("dst"))]);
    assert_exit(&o, 1, "DST");
    assert!(err(&o).contains("permission denied"), "{}", err(&o));
}

#[test]
fn a_mounted_block_device_is_refused() {
    let Some(w) = root_world("mounted") else {
        return;
    };
    let img = w.file("fs.img", &[]);
    std::fs::File::options()
        .write(true)
        .open(&img)
        .and_then(|f| f.set_len(16 << 20))
        .unwrap();
    let Some(dev) = Loop::new(&img, 0, None) else {
        eprintln!("mounted: skipped (losetup does not work here)");
        return;
    };
    let mkfs = Command::new("mkfs.ext4").args(["-q", &dev.0]).status();
    if !mkfs.is_ok_and(|s| s.success()) {
        eprintln!("mounted: skipped (no mkfs.ext4)");
        return;
    }
    let mnt = Dir::new(&std::env::temp_dir(), "mnt");
    let mounted = Command::new("mount").args([&dev.0, s(&mnt.0)]).status();
    if !mounted.is_ok_and(|s| s.success()) {
        eprintln!("mounted: skipped (cannot mount)");
        return;
    }
    let src = w.file("src", &pattern(8192, 16));
    let o = w.dc(&[s(&src), &dev.0]);
    let _ = Command::new("umount").arg(&mnt.0).status();
    assert_exit(&o, 1, "the device is in use (mounted");
}

#[test]
fn the_cli_doc_shows_the_help_text() {
    let help = Command::new(BIN).args(["dc", "--help"]).output().unwrap();
    assert_exit(&help, 0, "");
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/CLI.md")).unwrap();
    assert!(
        doc.contains(&format!("```text\n{}```", out(&help))),
        "docs/CLI.md does not show `pcisock dc --help` as it is"
    );
}

#[test]
fn a_window_on_a_huge_page_tmpfs_is_in_huge_pages() {
    let Some(w) = root_world("hugewin") else {
        return;
    };
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled");
    if thp.is_err() || thp.is_ok_and(|t| t.contains("[deny]")) {
        eprintln!("hugewin: skipped (no shmem transparent huge pages)");
        return;
    }
    let Some(m) = Mount::new("tmpfs", "huge=always,mode=0700,size=64m") else {
        eprintln!("hugewin: skipped (cannot mount tmpfs)");
        return;
    };
    let data = pattern(3 << 20, 17);
    let src = w.file("src", &data);
    let dst = w.data.path("dst");
    let o = Command::new(BIN)
        .args(["dc", "copy", "--json", "--qd", "2", s(&src), s(&dst)])
        .env("PCISOCK_EMU_DIR", &m.0 .0)
        .env_remove("PCISOCK_EMU_DEVICE")
        .env_remove("PCISOCK_DEVICE")
        .output()
        .unwrap();
    assert_exit(&o, 0, "");
    let v: serde_json::Value = serde_json::from_str(out(&o).trim()).unwrap();
    // The kernel may fall back to small pages (memory fragmented): then the report must say so.
    let said_small = out(&o).contains("4 KiB pages");
    match v["huge_pages"].as_bool() {
        Some(true) => assert!(!said_small, "{}", out(&o)),
        Some(false) => assert!(said_small, "{}", out(&o)),
        None => panic!("huge_pages unknown: {}", out(&o)),
    }
    assert_same(&std::fs::read(&dst).unwrap(), &data, "huge window copy");
}

#[test]
fn a_window_on_plain_shared_memory_is_collapsed_into_huge_pages() {
    // The default machine: the device in /dev/shm, a tmpfs without huge=, nothing mounted. dc
    // copy collapses its DC buffer into 2 MiB pages (MADV_COLLAPSE) where the kernel can.
    let w = World::new("collapse");
    let data = pattern(3 << 20, 19);
    let src = w.file("src", &data);
    let dst = w.data.path("dst");
    let o = w.dc(&["--json", "--qd", "2", s(&src), s(&dst)]);
    assert_exit(&o, 0, "");
    assert_same(
        &std::fs::read(&dst).unwrap(),
        &data,
        "collapsed window copy",
    );
    let v: serde_json::Value = serde_json::from_str(out(&o).trim()).unwrap();
    let notes = v["notices"].to_string();
    match (ntbdrv::emu::collapse_probe(), v["huge_pages"].as_bool()) {
        (_, Some(true)) => assert!(!notes.contains("4 KiB pages"), "{notes}"),
        // No huge page for the probe either: the report says why the buffer has none.
        (Err(_), Some(false)) => {
            assert!(
                notes.contains("collapsing it into 2 MiB pages failed"),
                "{notes}"
            )
        }
        // The kernel collapses shared memory, but found no free 2 MiB of memory this time.
        (Ok(()), Some(false)) => assert!(
            notes.contains("Cannot allocate memory")
                || notes.contains("Resource temporarily unavailable"),
            "the kernel collapses shared memory, yet the DC buffer is in 4 KiB pages: {notes}"
        ),
        (_, None) => panic!("huge_pages unknown: {}", out(&o)),
    }
}

#[test]
fn the_window_must_hold_the_dc_buffer() {
    let w = World::new("smallwin");
    let data = pattern(9 << 20, 18);
    let src = w.file("src", &data);
    let dst = w.data.path("dst");
    let small = [("PCISOCK_EMU_WINDOW_SIZE", "4M")];
    // 8 x 1 MiB does not fit a 4 MiB window: refused, with what to do instead.
    let o = w.dc_env(&small, &["--qd", "8", s(&src), s(&dst)]);
    assert_exit(&o, 1, "no room for 8 MiB in the NTB device's windows");
    assert!(err(&o).contains("--buffer host"), "{}", err(&o));
    assert!(!dst.exists(), "a refused copy created DST");
    // 4 x 1 MiB fills it exactly (no room to align it to 2 MiB: it is leased unaligned).
    let o = w.dc_env(&small, &["--qd", "4", s(&src), s(&dst)]);
    assert_exit(&o, 0, "");
    assert_same(&std::fs::read(&dst).unwrap(), &data, "a full window");
}
