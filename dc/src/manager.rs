//! The DC manager: turns the names on a `dc copy` command line into devices and files, and
//! checks a copy before a byte moves — the source exists and is readable, the destination is
//! large enough (a file is extended; a block device is not), the two are not the same storage
//! or overlapping ranges of it (a partition and its disk, a loop device and its backing file),
//! and what O_DIRECT needs: the alignment of each side, and whether its filesystem takes
//! O_DIRECT at all.
//!
//! Called by [`crate::copy`]; it never moves data (the operator does). Every refusal is a
//! [`CheckError`] with a message naming the argument.

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::sys;

/// A refused copy: the message says which argument and why.
#[derive(Debug)]
pub struct CheckError(pub String);

/// What a name resolved to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Block,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Block => "block device",
        }
    }
}

/// The storage bytes of an endpoint live in: a file (by device and inode) or a whole disk (by
/// device number), at a byte offset (a partition's start, a loop device's offset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backing {
    File { dev: u64, ino: u64 },
    Disk { rdev: u64 },
}

/// One side of a copy, resolved.
#[derive(Debug)]
pub struct CopyEnd {
    /// The argument as given.
    pub arg: String,
    /// Where it resolved to (symlinks such as /dev/disk/by-id/… followed).
    pub path: PathBuf,
    pub kind: Kind,
    /// Whether the file exists (a destination file may be created).
    pub exists: bool,
    backing: Option<(Backing, u64)>,
}

/// Which side an endpoint is, for messages.
#[derive(Clone, Copy)]
pub enum CopySide {
    Src,
    Dst,
}

impl CopySide {
    fn name(self) -> &'static str {
        match self {
            CopySide::Src => "SRC",
            CopySide::Dst => "DST",
        }
    }
}

fn os_message(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOENT) => "no such file or device".to_owned(),
        Some(libc::EACCES) | Some(libc::EPERM) => "permission denied".to_owned(),
        Some(libc::ENXIO) | Some(libc::ENODEV) => "no such device (no medium?)".to_owned(),
        _ => e.to_string(),
    }
}

/// Resolve a name: an existing path (followed through symlinks); else, for a bare name, a block
/// device /dev/NAME or /dev/disk/by-id/NAME; else (destination only) a file to create.
pub fn resolve(arg: &str, role: CopySide) -> Result<CopyEnd, CheckError> {
    let who = role.name();
    let given = Path::new(arg);
    let mut candidates = vec![given.to_path_buf()];
    if !arg.contains('/') && !arg.is_empty() {
        candidates.push(Path::new("/dev").join(arg));
        candidates.push(Path::new("/dev/disk/by-id").join(arg));
    }
    for (n, c) in candidates.iter().enumerate() {
        let md = match std::fs::metadata(c) {
            Ok(md) => md,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(CheckError(format!("{who} {arg}: {}", os_message(&e)))),
        };
        // A bare name found under /dev must be a block device, not some other node.
        if n > 0 && !md.file_type().is_block_device() {
            continue;
        }
        let path = std::fs::canonicalize(c).unwrap_or_else(|_| c.clone());
        return endpoint(arg, path, &md, role);
    }
    if let CopySide::Src = role {
        return Err(CheckError(format!("SRC {arg}: no such file or device")));
    }
    let parent = match given.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(CheckError(format!(
            "DST {arg}: directory {} does not exist",
            parent.display()
        )));
    }
    Ok(CopyEnd {
        arg: arg.to_owned(),
        path: given.to_path_buf(),
        kind: Kind::File,
        exists: false,
        backing: None,
    })
}

fn endpoint(
    arg: &str,
    path: PathBuf,
    md: &Metadata,
    role: CopySide,
) -> Result<CopyEnd, CheckError> {
    let who = role.name();
    let ft = md.file_type();
    let (kind, backing) = if ft.is_file() {
        (
            Kind::File,
            Some((
                Backing::File {
                    dev: md.dev(),
                    ino: md.ino(),
                },
                0,
            )),
        )
    } else if ft.is_block_device() {
        (Kind::Block, Some(disk_backing(md.rdev())))
    } else {
        let what = if ft.is_dir() {
            "a directory"
        } else if ft.is_char_device() {
            "a character device"
        } else if ft.is_fifo() {
            "a FIFO"
        } else {
            "not a regular file"
        };
        return Err(CheckError(format!(
            "{who} {arg}: {what}; dc copy takes regular files and block devices"
        )));
    };
    Ok(CopyEnd {
        arg: arg.to_owned(),
        path,
        kind,
        exists: true,
        backing,
    })
}

fn sysfs_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn parse_devno(s: &str) -> Option<u64> {
    let (ma, mi) = s.trim().split_once(':')?;
    Some(libc::makedev(ma.parse().ok()?, mi.parse().ok()?))
}

/// Where a block device's bytes live: its whole disk and its start on it (a partition's
/// `start`), and for a loop device the file behind it and the loop offset.
fn disk_backing(rdev: u64) -> (Backing, u64) {
    let sys = PathBuf::from(format!(
        "/sys/dev/block/{}:{}",
        libc::major(rdev),
        libc::minor(rdev)
    ));
    let (mut whole, mut start, mut whole_sys) = (rdev, 0u64, sys.clone());
    if sys.join("partition").exists() {
        start = sysfs_u64(&sys.join("start")).unwrap_or(0) * 512;
        if let Ok(real) = std::fs::canonicalize(&sys) {
            if let Some(parent) = real.parent() {
                if let Some(d) = std::fs::read_to_string(parent.join("dev"))
                    .ok()
                    .and_then(|s| parse_devno(&s))
                {
                    whole = d;
                    whole_sys = parent.to_path_buf();
                }
            }
        }
    }
    let backing_file = std::fs::read_to_string(whole_sys.join("loop/backing_file"))
        .ok()
        .map(|s| s.trim().to_owned());
    if let Some(file) = backing_file.and_then(|f| std::fs::metadata(f).ok()) {
        let off = sysfs_u64(&whole_sys.join("loop/offset")).unwrap_or(0);
        return (
            Backing::File {
                dev: file.dev(),
                ino: file.ino(),
            },
            off + start,
        );
    }
    (Backing::Disk { rdev: whole }, start)
}

/// Refuse a copy whose source and destination ranges are the same storage, or overlap on it.
pub fn check_overlap(
    src: &CopyEnd,
    dst: &CopyEnd,
    src_off: u64,
    dst_off: u64,
    len: u64,
) -> Result<(), CheckError> {
    let (Some((sb, sbase)), Some((db, dbase))) = (src.backing, dst.backing) else {
        return Ok(());
    };
    if sb != db {
        return Ok(());
    }
    let (s0, d0) = (sbase + src_off, dbase + dst_off);
    let same_object = src.kind == dst.kind && sbase == dbase;
    if same_object {
        return Err(CheckError(format!(
            "SRC {} and DST {} are the same {} ({}); refusing to copy it onto itself",
            src.arg,
            dst.arg,
            src.kind.name(),
            src.path.display()
        )));
    }
    if len > 0 && s0 < d0 + len && d0 < s0 + len {
        return Err(CheckError(format!(
            "SRC {} and DST {} overlap: they are the same storage ({} and {}), and bytes \
             {s0}..{} and {d0}..{} of it intersect; refusing",
            src.arg,
            dst.arg,
            src.path.display(),
            dst.path.display(),
            s0 + len,
            d0 + len
        )));
    }
    Ok(())
}

/// An endpoint opened for the copy.
pub struct Opened {
    /// The fd the ring uses: O_DIRECT unless the filesystem refused it.
    pub file: File,
    /// Whether `file` is O_DIRECT.
    pub direct: bool,
    /// O_DIRECT offset alignment (1 when not direct).
    pub align: u64,
    /// Size in bytes (a block device's, from BLKGETSIZE64).
    pub size: u64,
    /// Why O_DIRECT is not used, if it is not.
    pub notice: Option<String>,
}

/// Open for the role; a block device written to is claimed exclusively (`excl`: O_EXCL, which
/// the kernel refuses with EBUSY while it is mounted or claimed by someone else).
fn open_with(ep: &CopyEnd, role: CopySide, direct: bool, excl: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    let mut flags = 0;
    if direct {
        flags |= libc::O_DIRECT;
    }
    match role {
        CopySide::Src => {
            o.read(true);
        }
        CopySide::Dst => {
            o.write(true);
            if ep.kind == Kind::File {
                o.create(true).mode(0o644);
            } else if excl {
                flags |= libc::O_EXCL;
            }
        }
    }
    o.custom_flags(flags).open(&ep.path)
}

/// Open `ep` for its role: O_DIRECT if the filesystem takes it, else through the page cache
/// with a notice (or an error, with `require_direct`).
pub fn open(ep: &CopyEnd, role: CopySide, require_direct: bool) -> Result<Opened, CheckError> {
    let who = role.name();
    let fail = |e: io::Error| {
        let why = match e.raw_os_error() {
            Some(libc::EBUSY) => {
                "the device is in use (mounted, or opened exclusively by another program); \
                 refusing to write it"
                    .to_owned()
            }
            Some(libc::EROFS) => "read-only file system".to_owned(),
            _ => os_message(&e),
        };
        CheckError(format!("{who} {}: {why}", ep.arg))
    };
    let (file, direct, mut notice) = match open_with(ep, role, true, true) {
        Ok(f) => (f, true, None),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            if require_direct {
                return Err(CheckError(format!(
                    "{who} {}: the filesystem refuses O_DIRECT (EINVAL on open), and \
                     --direct-only was given",
                    ep.arg
                )));
            }
            let f = open_with(ep, role, false, true).map_err(fail)?;
            let n = format!(
                "{who} {}: the filesystem refuses O_DIRECT; {} it through the page cache",
                ep.arg,
                match role {
                    CopySide::Src => "reading",
                    CopySide::Dst => "writing",
                }
            );
            (f, false, Some(n))
        }
        Err(e) => return Err(fail(e)),
    };
    let (size, align) = match ep.kind {
        Kind::Block => {
            let (size, ssz) = sys::block_geometry(&file).map_err(fail)?;
            (size, u64::from(ssz))
        }
        Kind::File => {
            let size = file.metadata().map_err(fail)?.len();
            match sys::dio_align(&file).map_err(fail)? {
                Some((_, off)) => (size, u64::from(off)),
                // O_DIRECT opened but the kernel does not say how to align: a page is always
                // enough.
                None => (size, 4096),
            }
        }
    };
    if align > 4096 && direct {
        notice = Some(format!(
            "{who} {}: O_DIRECT alignment {align} exceeds a page; using the page cache",
            ep.arg
        ));
        let f = open_with(ep, role, false, true).map_err(fail)?;
        return Ok(Opened {
            file: f,
            direct: false,
            align: 1,
            size,
            notice,
        });
    }
    Ok(Opened {
        file,
        direct,
        align: if direct { align } else { 1 },
        size,
        notice,
    })
}

/// A second fd on the same endpoint without O_DIRECT, for the unaligned head and tail (not
/// exclusive: the copy's first fd holds the claim on a block device).
pub fn open_buffered(ep: &CopyEnd, role: CopySide) -> Result<File, CheckError> {
    open_with(ep, role, false, false)
        .map_err(|e| CheckError(format!("{} {}: {}", role.name(), ep.arg, os_message(&e))))
}

/// The p2pmem devices the kernel offers (`/sys/bus/pci/devices/<bdf>/p2pmem/`), with the bytes
/// each has available.
pub fn p2pmem_devices() -> Vec<(String, u64)> {
    let Ok(dir) = std::fs::read_dir("/sys/bus/pci/devices") else {
        return Vec::new();
    };
    let mut found: Vec<(String, u64)> = dir
        .filter_map(Result::ok)
        .filter(|e| e.path().join("p2pmem").is_dir())
        .map(|e| {
            let avail = sysfs_u64(&e.path().join("p2pmem/available")).unwrap_or(0);
            (e.file_name().to_string_lossy().into_owned(), avail)
        })
        .collect();
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(backing: Backing, base: u64, kind: Kind) -> CopyEnd {
        CopyEnd {
            arg: "x".into(),
            path: "/x".into(),
            kind,
            exists: true,
            backing: Some((backing, base)),
        }
    }

    #[test]
    fn overlap_rules() {
        let disk = Backing::Disk { rdev: 7 };
        let whole = ep(disk, 0, Kind::Block);
        let part = ep(disk, 1 << 20, Kind::Block);
        // A partition and its disk overlap where the ranges meet, not elsewhere.
        assert!(check_overlap(&whole, &part, 1 << 20, 0, 4096).is_err());
        assert!(check_overlap(&whole, &part, 0, 0, 4096).is_ok());
        assert!(check_overlap(&whole, &part, 0, 0, (1 << 20) + 1).is_err());
        // The same object is refused whatever the ranges.
        assert!(check_overlap(&whole, &whole, 0, 0, 0).is_err());
        let other = ep(Backing::Disk { rdev: 8 }, 0, Kind::Block);
        assert!(check_overlap(&whole, &other, 0, 0, 4096).is_ok());
        // A loop device over a file and the file itself.
        let f = Backing::File { dev: 1, ino: 2 };
        let file = ep(f, 0, Kind::File);
        let lo = ep(f, 0, Kind::Block);
        assert!(check_overlap(&file, &lo, 0, 0, 512).is_err());
        assert!(check_overlap(&file, &lo, 0, 512, 512).is_ok());
    }
}
