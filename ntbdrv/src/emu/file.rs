//! The device file: create it (under a temporary name, linked into place only once laid out),
//! open an existing one, and check a mapped header before anything trusts it.
//!
//! Owns: the per-user directory's permissions, the creation race, `init` (the first write of
//! the header and registers) and `validate`. Must never hand out an `EmuDevice` whose header was
//! not checked, nor follow a symlink or accept a file or directory another user owns.

use std::fs::File;
use std::mem::offset_of;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::sync::Arc;

use ntb_sys as sys;

use super::bridge::Bridge;
use super::config::{Config, Layout, Options, Topology};
use super::mapping::Mapping;
use super::sync;
use super::{EmuDevice, HDR_SIZE};
use crate::error::DeviceError;
use crate::{sysutil, SideId};

impl EmuDevice {
    /// Open the device named by the environment (see [`Options::from_env`]), creating it if absent.
    pub fn open_from_env() -> Result<Self, DeviceError> {
        Self::open(&Options::from_env()?)
    }

    /// Open (creating if absent) the device described by `opts`.
    pub fn open(opts: &Options) -> Result<Self, DeviceError> {
        opts.config.validate()?;
        ensure_private_dir(&opts.dir)?;
        let path = opts.path();
        let file = match open_existing(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                create(&opts.dir, &path, &opts.config)?
            }
            Err(err) => {
                return Err(DeviceError::Io {
                    what: format!("open {}", path.display()),
                    err,
                })
            }
        };
        Self::attach(file, path, opts.side)
    }

    /// Open an existing device file without creating it.
    pub fn open_existing(path: &Path, side: SideId) -> Result<Self, DeviceError> {
        let file = open_existing(path).map_err(|err| DeviceError::Io {
            what: format!("open {}", path.display()),
            err,
        })?;
        Self::attach(file, path.to_path_buf(), side)
    }

    fn attach(file: File, path: PathBuf, side: SideId) -> Result<Self, DeviceError> {
        let meta = file.metadata().map_err(|err| DeviceError::Io {
            what: format!("stat {}", path.display()),
            err,
        })?;
        if meta.uid() != sysutil::uid() {
            return Err(DeviceError::ForeignFile {
                path,
                owner: meta.uid(),
            });
        }
        if meta.len() < HDR_SIZE as u64 {
            return Err(DeviceError::Corrupt {
                path,
                why: format!("{} bytes, shorter than the header", meta.len()),
            });
        }
        let map = Mapping::new(&file).map_err(|err| DeviceError::Io {
            what: format!("mmap {}", path.display()),
            err,
        })?;
        Self::validate(map, path, side, Some(meta.len()), None)
    }

    /// Check a mapped device's header and make the device. `file_len` is the file's length for
    /// a device file (it must match the header); a bridge's BAR may be larger than the layout.
    pub(super) fn validate(
        map: Mapping,
        path: PathBuf,
        side: SideId,
        file_len: Option<u64>,
        bridge: Option<Arc<dyn Bridge>>,
    ) -> Result<Self, DeviceError> {
        let h = |f: usize| map.u32_at(f).load(Acquire);
        let h64 = |f: usize| map.u64_at(f).load(Acquire);
        type H = sys::ntbemu_header;
        // A creator publishes init_done last; a file still being made is not ours to read.
        if !sync::device_ready(map.u32_at(offset_of!(H, init_done))) {
            return Err(DeviceError::Corrupt {
                path,
                why: "initialisation never finished".into(),
            });
        }
        if h64(offset_of!(H, magic)) != sys::NTBEMU_MAGIC {
            return Err(DeviceError::NotADevice(path));
        }
        let version = h(offset_of!(H, version));
        if version != sys::NTBEMU_VERSION {
            return Err(DeviceError::VersionMismatch {
                path,
                ours: sys::NTBEMU_VERSION,
                theirs: version,
            });
        }
        let cfg_off = offset_of!(H, config);
        type C = sys::ntbemu_config;
        let topology = match h(cfg_off + offset_of!(C, topology)) {
            t if t == sys::NTBEMU_TOPO_LOOPBACK => Topology::Loopback,
            t if t == sys::NTBEMU_TOPO_TWO_HOST => Topology::TwoHost,
            t => {
                return Err(DeviceError::Corrupt {
                    path,
                    why: format!("unknown topology {t}"),
                })
            }
        };
        let config = Config {
            topology,
            n_mw: h(cfg_off + offset_of!(C, n_mw)),
            mw_size: h64(cfg_off + offset_of!(C, mw_size)),
            mw_align: h64(cfg_off + offset_of!(C, mw_align)),
            n_db: h(cfg_off + offset_of!(C, n_db)),
            n_spad: h(cfg_off + offset_of!(C, n_spad)),
            n_dma_ch: h(cfg_off + offset_of!(C, n_dma_ch)),
        };
        config.validate().map_err(|e| DeviceError::Corrupt {
            path: path.clone(),
            why: e.to_string(),
        })?;
        let layout = Layout::of(&config);
        let corrupt = |why: String| DeviceError::Corrupt {
            path: path.clone(),
            why,
        };
        if h(offset_of!(H, header_size)) != sys::NTBEMU_HEADER_SIZE
            || h(cfg_off + offset_of!(C, n_sides)) != topology.sides()
            || h64(offset_of!(H, side_base)) != layout.side_base
            || h64(offset_of!(H, side_stride)) != layout.side_stride
            || h64(offset_of!(H, file_size)) != layout.file_size
        {
            return Err(corrupt(
                "header fields disagree with the configuration".into(),
            ));
        }
        let fits = match file_len {
            Some(len) => len == layout.file_size && map.len() as u64 == layout.file_size,
            None => map.len() as u64 >= layout.file_size,
        };
        if !fits {
            return Err(corrupt(format!(
                "{} bytes, the header says {}",
                map.len(),
                layout.file_size
            )));
        }
        if h(offset_of!(H, owner_uid)) != sysutil::uid() {
            return Err(DeviceError::ForeignFile {
                path,
                owner: h(offset_of!(H, owner_uid)),
            });
        }
        let sides = topology.sides();
        if side >= sides {
            return Err(DeviceError::NoSuchSide { side, sides });
        }
        let peer = if topology == Topology::Loopback {
            side
        } else {
            1 - side
        };
        let dev = EmuDevice {
            map: Arc::new(map),
            path,
            config,
            layout,
            side,
            peer,
            bridge,
        };
        Ok(dev)
    }
}

pub(super) fn ensure_private_dir(dir: &Path) -> Result<(), DeviceError> {
    match std::fs::symlink_metadata(dir) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|err| DeviceError::Io {
                    what: format!("create {}", dir.display()),
                    err,
                })?;
        }
        Err(err) => {
            return Err(DeviceError::Io {
                what: format!("stat {}", dir.display()),
                err,
            })
        }
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|err| DeviceError::Io {
        what: format!("stat {}", dir.display()),
        err,
    })?;
    if !meta.file_type().is_dir() {
        return Err(DeviceError::NotADirectory(dir.to_path_buf()));
    }
    let mode = meta.mode() & 0o7777;
    if meta.uid() != sysutil::uid() || mode & 0o077 != 0 {
        return Err(DeviceError::ForeignDirectory {
            path: dir.to_path_buf(),
            owner: meta.uid(),
            mode,
        });
    }
    Ok(())
}

fn open_existing(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Create the device file: build it under a temporary name, then link it into place so no
/// process ever sees a half-made device; if another process won the race, use its file.
fn create(dir: &Path, path: &Path, config: &Config) -> Result<File, DeviceError> {
    let io = |what: String| move |err| DeviceError::Io { what, err };
    let layout = Layout::of(config);
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        sysutil::pid(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(io(format!("create {}", tmp.display())))?;
    let result = (|| {
        file.set_len(layout.file_size)?;
        let map = Mapping::new(&file)?;
        init(&map, config, &layout);
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    match result {
        Ok(()) => Ok(file),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            open_existing(path).map_err(io(format!("open {}", path.display())))
        }
        Err(err) => Err(DeviceError::Io {
            what: format!("create {}", path.display()),
            err,
        }),
    }
}

/// Write a fresh device's header and registers. The file is private to us until linked.
pub(super) fn init(map: &Mapping, c: &Config, l: &Layout) {
    type H = sys::ntbemu_header;
    type C = sys::ntbemu_config;
    let w32 = |off: usize, v: u32| map.u32_at(off).store(v, Relaxed);
    let w64 = |off: usize, v: u64| map.u64_at(off).store(v, Relaxed);
    w64(offset_of!(H, magic), sys::NTBEMU_MAGIC);
    w32(offset_of!(H, version), sys::NTBEMU_VERSION);
    w32(offset_of!(H, header_size), sys::NTBEMU_HEADER_SIZE);
    w64(offset_of!(H, file_size), l.file_size);
    w64(offset_of!(H, side_stride), l.side_stride);
    w64(offset_of!(H, side_base), l.side_base);
    w32(offset_of!(H, owner_uid), sysutil::uid());
    let cfg = offset_of!(H, config);
    w32(cfg + offset_of!(C, topology), c.topology.code());
    w32(cfg + offset_of!(C, n_sides), c.topology.sides());
    w32(cfg + offset_of!(C, n_mw), c.n_mw);
    w32(cfg + offset_of!(C, n_db), c.n_db);
    w32(cfg + offset_of!(C, n_spad), c.n_spad);
    w32(cfg + offset_of!(C, n_dma_ch), c.n_dma_ch);
    w64(cfg + offset_of!(C, mw_size), c.mw_size);
    w64(cfg + offset_of!(C, mw_align), c.mw_align);
    for side in 0..c.topology.sides() {
        let nt = (l.side_base + side as u64 * l.side_stride) as usize
            + sys::NTBEMU_SIDE_NT_PAGE as usize;
        w32(nt + sys::NTBEMU_REG_EMU_ID as usize, 0x4542_544E);
        w32(nt + sys::NTBEMU_REG_EMU_VER as usize, sys::NTBEMU_VERSION);
        w32(
            nt + sys::NTBEMU_REG_CAPS as usize,
            c.n_mw | c.n_spad << 8 | c.n_db << 16 | c.n_dma_ch << 24,
        );
        w32(nt + sys::NTBEMU_REG_MW_ALIGN as usize, c.mw_align as u32);
        w32(
            nt + sys::PLX_NT_PORT_ID as usize,
            if side == 1 { 1 << 31 } else { 0 },
        );
        for mw in 0..c.n_mw {
            let x = nt + sys::ntbemu_reg_mw_xlat(mw) as usize;
            let off = mw as u64 * c.mw_size;
            w32(x, off as u32);
            w32(x + 4, (off >> 32) as u32);
            w32(x + 8, c.mw_size as u32);
            w32(x + 12, (c.mw_size >> 32) as u32);
        }
        let tbl = (l.side_base + side as u64 * l.side_stride) as usize
            + sys::NTBEMU_SIDE_HOST_TABLE as usize;
        w32(
            tbl + offset_of!(sys::ntbemu_host_table, n_slots),
            sys::NTBEMU_HOST_SLOTS,
        );
    }
    sync::publish_device(map.u32_at(offset_of!(H, init_done)));
}
