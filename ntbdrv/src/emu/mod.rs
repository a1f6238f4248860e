//! `emu`: the emulated NTB device, pcisock's default backend.
//!
//! A device is one file under a per-user directory (mode 0700), mapped `MAP_SHARED` by every
//! process of every host that uses it, laid out by `ntbemu.h` (through `ntb-sys`): a header, and
//! per side an NT register page at PLX offsets, a PLX DMA function page, DMA descriptor rings, the
//! host resource table and the arena holding the side's inbound memory windows. A *loopback*
//! device has one side whose peer is itself; a *two-host* device has two.
//!
//! The emulation keeps what real hardware gives and nothing more: fixed windows, a few doorbell
//! bits whose interrupts reach sleepers through a futex or a per-bit FIFO (the stand-in for a
//! VFIO MSI-X eventfd), scratchpads, an asynchronous DMA engine whose IN_PROGRESS bit clears only
//! after the bytes are visible, link up/down — and fault injection. It must never offer a
//! shortcut a bridge could not (like reading a peer's private memory).
#![allow(unsafe_code)]

mod dma;
pub mod fault;
pub(crate) mod mapping;
mod table;

use std::fs::File;
use std::mem::offset_of;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ntb_sys as sys;

use crate::error::*;
use crate::region::Region;
use crate::{futex, sysutil};
use crate::{DmaChannel, DoorbellLease, Lease, LinkState, MwAlign, NtbDevice, SideId, WindowLease};

pub use fault::Fault;
use mapping::Mapping;

/// Link topology of an emulated device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// One host through its own bridge: side 0's peer is side 0.
    Loopback,
    /// Two hosts (sides 0 and 1) joined by the link.
    TwoHost,
}

impl Topology {
    fn code(self) -> u32 {
        match self {
            Self::Loopback => sys::NTBEMU_TOPO_LOOPBACK,
            Self::TwoHost => sys::NTBEMU_TOPO_TWO_HOST,
        }
    }
    fn sides(self) -> u32 {
        match self {
            Self::Loopback => 1,
            Self::TwoHost => 2,
        }
    }
}

/// Hardware limits of an emulated device, fixed when the device file is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub topology: Topology,
    pub n_mw: u32,
    pub mw_size: u64,
    pub mw_align: u64,
    pub n_db: u32,
    pub n_spad: u32,
    pub n_dma_ch: u32,
}

impl Default for Config {
    /// Two 256 MiB windows (room for about 250 connections with 1 MiB rings on a loopback
    /// link; the file is sparse, so unused window space costs nothing), 64 doorbell bits, 16
    /// scratchpads and one DMA channel per side (a PEX87xx has one DMA channel), on a loopback
    /// link.
    fn default() -> Self {
        Self {
            topology: Topology::Loopback,
            n_mw: 2,
            mw_size: 256 << 20,
            mw_align: 4096,
            n_db: 64,
            n_spad: 16,
            n_dma_ch: 1,
        }
    }
}

impl Config {
    /// Check the configuration against the layout's hard limits.
    pub fn validate(&self) -> Result<(), DeviceError> {
        let bad = |why: String| Err(DeviceError::BadConfig(why));
        if self.n_mw == 0 || self.n_mw > sys::NTBEMU_MAX_MW {
            return bad(format!(
                "{} memory windows (1..={})",
                self.n_mw,
                sys::NTBEMU_MAX_MW
            ));
        }
        if !self.mw_align.is_power_of_two() || self.mw_align < 64 || self.mw_align > 1 << 21 {
            return bad(format!(
                "window alignment {} (a power of two, 64..=2 MiB)",
                self.mw_align
            ));
        }
        if self.mw_size == 0
            || !self.mw_size.is_multiple_of(self.mw_align)
            || self.mw_size > 1 << 34
        {
            return bad(format!(
                "window size {} (a non-zero multiple of the alignment {}, at most 16 GiB)",
                self.mw_size, self.mw_align
            ));
        }
        if self.n_db == 0 || self.n_db > sys::NTBEMU_MAX_DB {
            return bad(format!(
                "{} doorbell bits (1..={})",
                self.n_db,
                sys::NTBEMU_MAX_DB
            ));
        }
        if self.n_spad == 0 || self.n_spad > sys::NTBEMU_MAX_SPAD {
            return bad(format!(
                "{} scratchpads (1..={})",
                self.n_spad,
                sys::NTBEMU_MAX_SPAD
            ));
        }
        if self.n_dma_ch > sys::NTBEMU_MAX_DMA_CH {
            return bad(format!(
                "{} DMA channels (0..={})",
                self.n_dma_ch,
                sys::NTBEMU_MAX_DMA_CH
            ));
        }
        Ok(())
    }

    /// Read the configuration from `PCISOCK_EMU_*` variables, starting from the defaults.
    pub fn from_env() -> Result<Self, DeviceError> {
        let mut c = Self::default();
        if let Some(v) = env("PCISOCK_EMU_TOPOLOGY") {
            c.topology = match v.as_str() {
                "loopback" => Topology::Loopback,
                "two-host" => Topology::TwoHost,
                _ => {
                    return Err(DeviceError::BadSetting {
                        name: "PCISOCK_EMU_TOPOLOGY",
                        value: v,
                        why: "expected loopback or two-host".into(),
                    })
                }
            };
        }
        if let Some(v) = parse_env::<u32>("PCISOCK_EMU_WINDOWS")? {
            c.n_mw = v;
        }
        if let Some(v) = parse_size_env("PCISOCK_EMU_WINDOW_SIZE")? {
            c.mw_size = v;
        }
        if let Some(v) = parse_env::<u32>("PCISOCK_EMU_DOORBELLS")? {
            c.n_db = v;
        }
        if let Some(v) = parse_env::<u32>("PCISOCK_EMU_SCRATCHPADS")? {
            c.n_spad = v;
        }
        if let Some(v) = parse_env::<u32>("PCISOCK_EMU_DMA_CHANNELS")? {
            c.n_dma_ch = v;
        }
        c.validate()?;
        Ok(c)
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn parse_env<T: std::str::FromStr>(name: &'static str) -> Result<Option<T>, DeviceError>
where
    T::Err: std::fmt::Display,
{
    env(name)
        .map(|v| {
            v.parse::<T>().map_err(|e| DeviceError::BadSetting {
                name,
                value: v.clone(),
                why: e.to_string(),
            })
        })
        .transpose()
}

/// Parse a size such as `4096`, `64K`, `64M`, `1G` (binary units).
pub fn parse_size(v: &str) -> Result<u64, String> {
    let v = v.trim();
    let (num, mul) = match v.char_indices().last() {
        Some((i, 'k' | 'K')) => (&v[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&v[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&v[..i], 1 << 30),
        _ => (v, 1),
    };
    let n: u64 = num.parse().map_err(|e| format!("{e}"))?;
    n.checked_mul(mul).ok_or_else(|| "too large".to_string())
}

fn parse_size_env(name: &'static str) -> Result<Option<u64>, DeviceError> {
    env(name)
        .map(|v| {
            parse_size(&v).map_err(|why| DeviceError::BadSetting {
                name,
                value: v.clone(),
                why,
            })
        })
        .transpose()
}

/// Where and how to open an emulated device.
#[derive(Clone, Debug)]
pub struct Options {
    /// The per-user device directory (created mode 0700 if absent).
    pub dir: PathBuf,
    /// Device name: the file is `<dir>/<name>.ntb`.
    pub name: String,
    /// Which side (host) of the link this process is.
    pub side: SideId,
    /// Limits used if the device file does not exist yet; an existing device keeps its own.
    pub config: Config,
}

impl Options {
    /// The default directory: `$XDG_RUNTIME_DIR/pcisock` when set, else `/dev/shm/pcisock-<uid>`.
    pub fn default_dir() -> PathBuf {
        match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(d) if !d.is_empty() => Path::new(&d).join("pcisock"),
            _ => PathBuf::from(format!("/dev/shm/pcisock-{}", sysutil::uid())),
        }
    }

    /// Options from the environment: `PCISOCK_EMU_DIR`, `PCISOCK_EMU_DEVICE` (default
    /// `loopback`), `PCISOCK_EMU_HOST` (the side, default 0) and the `Config` variables.
    pub fn from_env() -> Result<Self, DeviceError> {
        let dir = env("PCISOCK_EMU_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(Self::default_dir);
        let name = env("PCISOCK_EMU_DEVICE").unwrap_or_else(|| "loopback".into());
        if name.is_empty() || name.contains('/') || name.starts_with('.') || name.len() > 64 {
            return Err(DeviceError::BadSetting {
                name: "PCISOCK_EMU_DEVICE",
                value: name,
                why: "a plain file name of at most 64 characters".into(),
            });
        }
        let side = parse_env::<u32>("PCISOCK_EMU_HOST")?.unwrap_or(0);
        let mut config = Config::from_env()?;
        if side > 0 && env("PCISOCK_EMU_TOPOLOGY").is_none() {
            config.topology = Topology::TwoHost;
        }
        Ok(Self {
            dir,
            name,
            side,
            config,
        })
    }

    /// The device file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(format!("{}.ntb", self.name))
    }
}

/// Byte layout of a device file for a configuration.
#[derive(Clone, Copy, Debug)]
struct Layout {
    side_base: u64,
    side_stride: u64,
    file_size: u64,
}

const SIDE_ALIGN: u64 = 2 << 20;

impl Layout {
    fn of(c: &Config) -> Layout {
        let arena = c.n_mw as u64 * c.mw_size;
        let stride = (sys::NTBEMU_SIDE_ARENA as u64 + arena).div_ceil(SIDE_ALIGN) * SIDE_ALIGN;
        let base = SIDE_ALIGN;
        Layout {
            side_base: base,
            side_stride: stride,
            file_size: base + c.topology.sides() as u64 * stride,
        }
    }
}

/// An open emulated device, as one side sees it.
pub struct EmuDevice {
    map: Arc<Mapping>,
    path: PathBuf,
    config: Config,
    layout: Layout,
    side: SideId,
    peer: SideId,
    /// Set when the layout lives in a PCI BAR shared by two machines (see [`Bridge`]).
    bridge: Option<Arc<dyn Bridge>>,
}

/// A device whose layout lives in memory that two *machines* share through a real bridge (a PCI
/// BAR, such as QEMU ivshmem's BAR2), rather than in a file both "hosts" of one kernel map.
///
/// What one kernel gave the emulation for free is then gone: a futex on the BAR is not shared
/// with the other kernel (and the kernel refuses futexes on a BAR mapping at all), and a FIFO
/// path names a file on one machine only. So in bridge mode an interrupt is a *message*: the
/// ringer sets the pending bit in the target side's mailbox in the BAR, bumps the mailbox
/// sequence, and asks the bridge to send the target machine an interrupt
/// ([`Bridge::kick`]); on the target machine a per-process poller thread takes the pending bits
/// and kicks that machine's own FIFO lines. Sleepers in `db_wait` and `link_wait` poll the
/// status words with short naps instead of futex waits.
pub(crate) trait Bridge: Send + Sync {
    /// "ivshmem 0000:00:04.0 (ID 1)", for `describe`.
    fn describe(&self) -> String;
    /// This machine's ID on the bridge.
    fn id(&self) -> u32;
    /// Send an interrupt to the machine with bridge ID `id` (the ivshmem Doorbell register).
    fn kick(&self, id: u32);
}

// Bridge-mode additions to the layout (they sit in space `ntbemu.h` leaves unused).
/// Header: per side, the bridge ID + 1 of the machine that claimed it (0 = unclaimed).
const BRIDGE_CLAIM: usize = 0xF00;
/// Per side, between the host table and the arena: the interrupt mailbox.
const MAILBOX: usize = 0x10_0000;
/// Mailbox: bumped (SeqCst) after pending bits are set.
const MB_SEQ: usize = MAILBOX;
/// Mailbox: doorbell bits whose interrupt is pending (two words).
const MB_DB: usize = MAILBOX + 0x40;
/// Mailbox: vectors whose interrupt is pending (a 2048-bit map).
const MB_VEC: usize = MAILBOX + 0x80;
const _: () = {
    assert!(
        sys::NTBEMU_SIDE_HOST_TABLE as usize + std::mem::size_of::<sys::ntbemu_host_table>()
            <= MAILBOX
    );
    assert!(MB_VEC + sys::NTBEMU_MAX_VECTORS as usize / 8 <= sys::NTBEMU_SIDE_ARENA as usize);
    assert!(BRIDGE_CLAIM + 8 <= HDR_SIZE);
};
/// A bridge-mode sleeper's nap between two looks at the words it waits on.
const BRIDGE_NAP: Duration = Duration::from_micros(50);
/// The same for link events.
const BRIDGE_LINK_NAP: Duration = Duration::from_millis(2);

const HDR_SIZE: usize = sys::NTBEMU_HEADER_SIZE as usize;

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
    fn validate(
        map: Mapping,
        path: PathBuf,
        side: SideId,
        file_len: Option<u64>,
        bridge: Option<Arc<dyn Bridge>>,
    ) -> Result<Self, DeviceError> {
        let h = |f: usize| map.u32_at(f).load(Acquire);
        let h64 = |f: usize| map.u64_at(f).load(Acquire);
        type H = sys::ntbemu_header;
        // A creator publishes init_done last (Release); a file still being made is not ours to read.
        if h(offset_of!(H, init_done)) != 1 {
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

    /// Lay a two-host device out in `map`, memory a bridge shares between two machines (all
    /// zeros when fresh), or attach to the layout the other machine already made there, and
    /// claim `side` (or the first side not claimed by another machine). `path` names the
    /// device on this machine: its interrupt lines (FIFOs) live beside it.
    pub(crate) fn on_bridge(
        map: Mapping,
        path: PathBuf,
        config: &Config,
        side: Option<SideId>,
        bridge: Arc<dyn Bridge>,
    ) -> Result<Self, DeviceError> {
        config.validate()?;
        let layout = Layout::of(config);
        if layout.file_size > map.len() as u64 {
            return Err(DeviceError::BadConfig(format!(
                "the shared memory has {} bytes; this layout needs {}",
                map.len(),
                layout.file_size
            )));
        }
        if let Some(dir) = path.parent() {
            ensure_private_dir(dir)?;
        }
        let done = map.u32_at(offset_of!(sys::ntbemu_header, init_done));
        // SYNC POINT (bridge device creation): the machine whose CAS 0 → 2 wins writes the
        // layout and publishes init_done = 1 with Release (`init`); the other waits for it with
        // Acquire loads. The BAR is coherent memory shared by both machines (ivshmem's BAR2).
        if done.compare_exchange(0, 2, Acquire, Relaxed).is_ok() {
            init(&map, config, &layout);
        } else {
            let t0 = Instant::now();
            while done.load(Acquire) == 2 {
                if t0.elapsed() > Duration::from_secs(5) {
                    return Err(DeviceError::Corrupt {
                        path,
                        why: "the other machine never finished laying out the device".into(),
                    });
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let me = bridge.id() + 1;
        let claim = |s: SideId| map.u32_at(BRIDGE_CLAIM + 4 * s as usize);
        let side = match side {
            Some(s) if s < 2 => {
                claim(s).store(me, SeqCst);
                s
            }
            Some(s) => return Err(DeviceError::NoSuchSide { side: s, sides: 2 }),
            None => (0..2)
                .find(
                    |&s| match claim(s).compare_exchange(0, me, SeqCst, SeqCst) {
                        Ok(_) => true,
                        Err(cur) => cur == me,
                    },
                )
                .ok_or_else(|| {
                    DeviceError::BadConfig(format!(
                    "both sides of the shared memory are claimed by other machines (IDs {} and {})",
                    claim(0).load(Acquire).wrapping_sub(1),
                    claim(1).load(Acquire).wrapping_sub(1)
                ))
                })?,
        };
        Self::validate(map, path, side, None, Some(bridge))
    }

    /// A second handle on the same mapping (for the DMA engine thread).
    fn view(&self) -> EmuDevice {
        EmuDevice {
            map: self.map.clone(),
            path: self.path.clone(),
            config: self.config,
            layout: self.layout,
            side: self.side,
            peer: self.peer,
            bridge: self.bridge.clone(),
        }
    }

    /// Leases held on this side's host table: (kind, pid, index, offset, len), for diagnostics.
    pub fn leases(&self) -> Vec<LeaseInfo> {
        self.table()
            .leases()
            .into_iter()
            .map(|s| LeaseInfo {
                kind: match s.kind {
                    k if k == sys::NTBEMU_LEASE_WINDOW => "window",
                    k if k == sys::NTBEMU_LEASE_DOORBELL => "doorbell",
                    k if k == sys::NTBEMU_LEASE_DMA => "dma",
                    k if k == sys::NTBEMU_LEASE_VECTOR => "vector",
                    _ => "unknown",
                },
                pid: s.pid,
                start: s.start,
                index: s.index,
                tag: s.tag,
                offset: s.offset,
                len: s.len,
            })
            .collect()
    }

    /// This side's interrupt-vector lines (FIFOs) that no lease holds: a closed connection's
    /// line stays for the next lease of its vector to reuse. Their paths.
    pub fn idle_lines(&self) -> Vec<PathBuf> {
        self.table()
            .with_leases(|leases| self.idle_lines_given(leases))
    }

    /// Remove this side's idle interrupt-vector lines (see [`EmuDevice::idle_lines`]); returns
    /// how many. Under the host table's lock, so a vector leased meanwhile keeps its line (a
    /// new lease makes its line after the lease). Not on a bridge, whose lines the interrupt
    /// daemon may hold.
    pub fn remove_idle_lines(&self) -> usize {
        if self.bridge.is_some() {
            return 0;
        }
        self.table().with_leases(|leases| {
            self.idle_lines_given(leases)
                .iter()
                .filter(|p| std::fs::remove_file(p).is_ok())
                .count()
        })
    }

    fn idle_lines_given(&self, leases: &[table::Slot]) -> Vec<PathBuf> {
        let held: std::collections::HashSet<u32> = leases
            .iter()
            .filter(|s| s.kind == sys::NTBEMU_LEASE_VECTOR)
            .map(|s| s.index)
            .collect();
        let Some(stem) = self.path.file_stem().and_then(|s| s.to_str()) else {
            return Vec::new();
        };
        let prefix = format!("{stem}.s{}.v", self.side);
        let Some(dir) = self.path.parent() else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        use std::os::unix::fs::FileTypeExt;
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_fifo()))
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix(&prefix))
                    .and_then(|v| v.parse::<u32>().ok())
                    .is_some_and(|v| !held.contains(&v))
            })
            .map(|e| e.path())
            .collect()
    }

    /// The device file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device's fixed configuration.
    pub fn config(&self) -> Config {
        self.config
    }

    /// Fault injection on this device (shared by every attached process).
    pub fn faults(&self) -> fault::Faults<'_> {
        fault::Faults { dev: self }
    }

    // ---- layout helpers ----------------------------------------------------------------------

    fn side_off(&self, side: SideId) -> usize {
        (self.layout.side_base + side as u64 * self.layout.side_stride) as usize
    }

    /// A 32-bit register of `side`'s NT page.
    fn nt_reg(&self, side: SideId, off: u32) -> &AtomicU32 {
        self.map
            .u32_at(self.side_off(side) + sys::NTBEMU_SIDE_NT_PAGE as usize + off as usize)
    }

    /// A 32-bit register of `side`'s DMA page.
    fn dma_reg(&self, side: SideId, off: u32) -> &AtomicU32 {
        self.map
            .u32_at(self.side_off(side) + sys::NTBEMU_SIDE_DMA_PAGE as usize + off as usize)
    }

    fn header_u32(&self, field: usize) -> &AtomicU32 {
        self.map.u32_at(field)
    }

    fn arena_off(&self, side: SideId, mw: u32) -> usize {
        self.side_off(side)
            + sys::NTBEMU_SIDE_ARENA as usize
            + (mw as u64 * self.config.mw_size) as usize
    }

    fn window_region(&self, side: SideId, mw: u32) -> Result<Region, WindowError> {
        if mw >= self.config.n_mw {
            return Err(WindowError::NoSuchWindow {
                mw,
                count: self.config.n_mw,
            });
        }
        let len = self.config.mw_size as usize;
        let off = self.arena_off(side, mw);
        let ptr = self.map.ptr(off, len).ok_or(WindowError::OutOfRange {
            offset: off as u64,
            len: len as u64,
            size: self.map.len() as u64,
        })?;
        // SAFETY: `ptr..ptr+len` is inside the mapping (checked by `Mapping::ptr`), and the
        // region holds an Arc to the mapping, so it stays mapped for the region's life.
        Ok(unsafe { Region::new(ptr, len, self.map.clone()) })
    }

    fn check_bits(&self, bits: u64) -> Result<(), DoorbellError> {
        let valid = self.db_valid_mask();
        if bits & !valid != 0 {
            return Err(DoorbellError::InvalidBits { bits, valid });
        }
        Ok(())
    }

    fn db_status_words(&self, side: SideId) -> (&AtomicU32, &AtomicU32) {
        (
            self.nt_reg(side, sys::PLX_NT_DB_SET),
            self.nt_reg(side, sys::NTBEMU_REG_DB_STATUS_HI),
        )
    }

    fn db_mask_words(&self, side: SideId) -> (&AtomicU32, &AtomicU32) {
        (
            self.nt_reg(side, sys::PLX_NT_DB_MASK_SET),
            self.nt_reg(side, sys::NTBEMU_REG_DB_MASK_HI),
        )
    }

    fn vector_path(&self, side: SideId, bit: u32) -> PathBuf {
        let stem = self
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.path.with_file_name(format!("{stem}.s{side}.db{bit}"))
    }

    fn msi_path(&self, side: SideId, v: u32) -> PathBuf {
        let stem = self
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.path.with_file_name(format!("{stem}.s{side}.v{v}"))
    }

    fn vector_armed(&self, side: SideId) -> (&AtomicU32, &AtomicU32) {
        (
            self.nt_reg(side, sys::NTBEMU_REG_VEC_ARMED_LO),
            self.nt_reg(side, sys::NTBEMU_REG_VEC_ARMED_HI),
        )
    }

    /// Deliver the interrupt for newly pending, unmasked `bits` on `side` (what the MSI-X
    /// message does on hardware): bump the sequence word, wake futex sleepers, kick the FIFOs of
    /// bits that have a listener.
    fn raise_db_interrupt(&self, side: SideId, bits: u64) {
        if self.bridge.is_some() {
            self.nt_reg(side, sys::NTBEMU_REG_DB_SEQ)
                .fetch_add(1, SeqCst);
            // As below: only bits whose line has a listener interrupt (a line armed later must
            // not see an old ring).
            let (lo, hi) = self.vector_armed(side);
            let armed = lo.load(SeqCst) as u64 | (hi.load(SeqCst) as u64) << 32;
            if bits & armed != 0 {
                self.post_interrupt(side, bits & armed, None);
            }
            return;
        }
        let seq = self.nt_reg(side, sys::NTBEMU_REG_DB_SEQ);
        // SYNC POINT (doorbell): pairs with `db_wait`'s SeqCst WAITERS increment and SEQ load —
        // either the waiter sees the new SEQ/status, or we see WAITERS > 0 and wake it.
        seq.fetch_add(1, SeqCst);
        if self.nt_reg(side, sys::NTBEMU_REG_DB_WAITERS).load(SeqCst) > 0 {
            futex::wake_all(seq);
        }
        let (lo, hi) = self.vector_armed(side);
        let armed = lo.load(SeqCst) as u64 | (hi.load(SeqCst) as u64) << 32;
        let mut kick = bits & armed;
        if kick == 0 {
            return;
        }
        while kick != 0 {
            let bit = kick.trailing_zeros();
            kick &= kick - 1;
            kick_line(&self.vector_path(side, bit));
        }
    }

    /// Bridge mode: post an interrupt for doorbell `bits` and/or `vector` to `side`'s mailbox
    /// and send its machine the bridge's interrupt.
    fn post_interrupt(&self, side: SideId, bits: u64, vector: Option<u32>) {
        let mb = self.side_off(side);
        if bits != 0 {
            self.map.u32_at(mb + MB_DB).fetch_or(bits as u32, SeqCst);
            self.map
                .u32_at(mb + MB_DB + 4)
                .fetch_or((bits >> 32) as u32, SeqCst);
        }
        if let Some(v) = vector {
            self.map
                .u32_at(mb + MB_VEC + 4 * (v as usize / 32))
                .fetch_or(1 << (v % 32), SeqCst);
        }
        // SYNC POINT (bridge interrupt): the pending bits (SeqCst RMW, after the data the
        // interrupt announces) come before the SEQ bump, and both before the doorbell-register
        // write (an uncached MMIO store, ordered after them); pairs with the target's poller,
        // which loads SEQ with Acquire and then takes the pending bits by swap.
        self.map.u32_at(mb + MB_SEQ).fetch_add(1, SeqCst);
        if let Some(b) = &self.bridge {
            let id = self
                .map
                .u32_at(BRIDGE_CLAIM + 4 * side as usize)
                .load(Acquire);
            if id != 0 {
                b.kick((id - 1) & 0xFFFF);
            }
        }
    }

    /// Bridge mode: take this side's pending interrupts and kick their lines on this machine.
    fn deliver_interrupts(&self) {
        let mb = self.side_off(self.side);
        let lo = self.map.u32_at(mb + MB_DB).swap(0, SeqCst) as u64;
        let hi = self.map.u32_at(mb + MB_DB + 4).swap(0, SeqCst) as u64;
        let (alo, ahi) = self.vector_armed(self.side);
        let armed = alo.load(SeqCst) as u64 | (ahi.load(SeqCst) as u64) << 32;
        let mut bits = (lo | hi << 32) & armed & self.db_valid_mask();
        while bits != 0 {
            let bit = bits.trailing_zeros();
            bits &= bits - 1;
            kick_line(&self.vector_path(self.side, bit));
        }
        for w in 0..sys::NTBEMU_MAX_VECTORS / 32 {
            let mut v = self
                .map
                .u32_at(mb + MB_VEC + 4 * w as usize)
                .swap(0, SeqCst);
            while v != 0 {
                let b = v.trailing_zeros();
                v &= v - 1;
                kick_line(&self.msi_path(self.side, w * 32 + b));
            }
        }
    }

    /// Bridge mode: the interrupt daemon's marker file (it holds the daemon's pid). While a
    /// live daemon receives the bridge's interrupts on this machine (VFIO MSI-X) and delivers
    /// them, the per-process pollers only look every 20 ms, as a safety net.
    pub(crate) fn irqd_marker(&self) -> PathBuf {
        self.path.with_extension("irqd")
    }

    /// Bridge mode, for the interrupt daemon: take this side's pending interrupts and kick
    /// their lines on this machine (what the per-process pollers do when no daemon runs).
    pub(crate) fn deliver_bridge_interrupts(&self) {
        self.deliver_interrupts();
    }

    fn irqd_alive(&self) -> bool {
        std::fs::read_to_string(self.irqd_marker())
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .is_some_and(sysutil::pid_exists)
    }

    /// Bridge mode: make sure this process runs a poller for this side's mailbox. The bridge
    /// raises a real interrupt on this machine, but without a driver no process can wait on it;
    /// the interrupt daemon (`ntbdrv-ivshmem-irqd`, VFIO MSI-X) can, when one runs. Otherwise
    /// one thread per process polls the mailbox: every 50 µs for 20 ms after the last
    /// interrupt, then every 2 ms; with a live daemon, every 20 ms.
    fn start_poller(&self) {
        static STARTED: std::sync::Mutex<Vec<(u32, PathBuf)>> = std::sync::Mutex::new(Vec::new());
        let key = (sysutil::pid(), self.path.clone());
        let mut started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
        if started.contains(&key) {
            return; // (a forked child's pid differs: it starts its own)
        }
        let dev = self.view();
        let spawned = std::thread::Builder::new()
            .name("pcisock-bridge-irq".into())
            .spawn(move || {
                let seq = dev.map.u32_at(dev.side_off(dev.side) + MB_SEQ);
                let mut seen = seq.load(Acquire).wrapping_sub(1);
                let mut last = Instant::now();
                let (mut daemon, mut checked) = (dev.irqd_alive(), Instant::now());
                loop {
                    // SYNC POINT (bridge interrupt): Acquire pairs with the ringer's SeqCst
                    // SEQ bump in `post_interrupt`; the pending bits are then taken by swap.
                    let now = seq.load(Acquire);
                    if now != seen {
                        seen = now;
                        last = Instant::now();
                        dev.deliver_interrupts();
                    }
                    if checked.elapsed() > Duration::from_millis(100) {
                        (daemon, checked) = (dev.irqd_alive(), Instant::now());
                    }
                    std::thread::sleep(if daemon {
                        Duration::from_millis(20)
                    } else if last.elapsed() < Duration::from_millis(20) {
                        BRIDGE_NAP
                    } else {
                        Duration::from_millis(2)
                    });
                }
            });
        if spawned.is_ok() {
            started.push(key);
        }
    }

    fn link_generation(&self) -> &AtomicU32 {
        self.header_u32(offset_of!(sys::ntbemu_header, link_generation))
    }

    fn bump_link(&self) {
        let g = self.link_generation();
        // SYNC POINT (link event): pairs with the Acquire load in `link_wait`.
        g.fetch_add(1, SeqCst);
        if self.bridge.is_none()
            && self
                .header_u32(offset_of!(sys::ntbemu_header, link_waiters))
                .load(SeqCst)
                > 0
        {
            futex::wake_all(g);
        }
    }

    fn link_up(&self) -> bool {
        if fault::active(self, sys::NTBEMU_FAULT_LINK_DOWN) {
            return false;
        }
        let me = self
            .nt_reg(self.side, sys::NTBEMU_REG_LINK_CTRL)
            .load(Acquire)
            & 1
            == 1;
        let peer = self
            .nt_reg(self.peer, sys::NTBEMU_REG_LINK_CTRL)
            .load(Acquire)
            & 1
            == 1;
        me && peer
    }

    fn table(&self) -> table::HostTable<'_> {
        table::HostTable::new(
            &self.map,
            self.side_off(self.side) + sys::NTBEMU_SIDE_HOST_TABLE as usize,
        )
    }
}

/// One lease in a host table, for diagnostics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    pub kind: &'static str,
    pub pid: u32,
    /// The owner's start time (with the pid, tells a live owner from a recycled pid).
    pub start: u64,
    pub index: u32,
    pub tag: u32,
    pub offset: u64,
    pub len: u64,
}

/// Kick an interrupt line (FIFO) by path. Opened for each kick and closed at once: an fd kept
/// open here would be one the application does not know about (and might close or count).
/// O_RDWR, not O_WRONLY: a FIFO whose reader is gone answers a write with EPIPE and a SIGPIPE to
/// the application; holding both ends, it always has a reader. Only a FIFO is written
/// (`sysutil::open_fifo`).
fn kick_line(path: &Path) {
    if let Ok(fd) = sysutil::open_fifo(path) {
        sysutil::kick(&fd);
    }
}

fn ensure_private_dir(dir: &Path) -> Result<(), DeviceError> {
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
fn init(map: &Mapping, c: &Config, l: &Layout) {
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
    // SYNC POINT (device creation): pairs with the Acquire load of init_done in `attach`.
    map.u32_at(offset_of!(H, init_done)).store(1, Release);
}

impl NtbDevice for EmuDevice {
    fn describe(&self) -> String {
        if let Some(b) = &self.bridge {
            return format!("{}, side {}", b.describe(), self.side);
        }
        let topo = match self.config.topology {
            Topology::Loopback => "loopback",
            Topology::TwoHost => "two-host",
        };
        format!("emu:{} ({topo}, side {})", self.path.display(), self.side)
    }

    fn side(&self) -> SideId {
        self.side
    }

    fn peer_side(&self) -> SideId {
        self.peer
    }

    fn link_state(&self) -> LinkState {
        let up = self.link_up();
        let status = if up { 1 | 3 << 16 | 8 << 20 } else { 0 };
        self.nt_reg(self.side, sys::NTBEMU_REG_LINK_STATUS)
            .store(status, Relaxed);
        LinkState {
            up,
            speed_gen: 3,
            width: 8,
            generation: self.link_generation().load(Acquire),
        }
    }

    fn link_enable(&self) -> Result<(), LinkError> {
        let prev = self
            .nt_reg(self.side, sys::NTBEMU_REG_LINK_CTRL)
            .fetch_or(1, SeqCst);
        if prev & 1 == 0 {
            self.bump_link();
        }
        if fault::active(self, sys::NTBEMU_FAULT_LINK_DOWN) {
            return Err(LinkError::HeldDown);
        }
        Ok(())
    }

    fn link_disable(&self) -> Result<(), LinkError> {
        let prev = self
            .nt_reg(self.side, sys::NTBEMU_REG_LINK_CTRL)
            .fetch_and(!1, SeqCst);
        if prev & 1 == 1 {
            self.bump_link();
        }
        Ok(())
    }

    fn link_wait(&self, seen: u32, timeout: Duration) -> LinkState {
        let deadline = Instant::now() + timeout;
        let waiters = self.header_u32(offset_of!(sys::ntbemu_header, link_waiters));
        loop {
            let g = self.link_generation().load(Acquire);
            if g != seen {
                return self.link_state();
            }
            let now = Instant::now();
            if now >= deadline {
                return self.link_state();
            }
            if self.bridge.is_some() {
                // Link events are rare and not urgent: a waiter (a listener waiting for the
                // other machine) must not cost a wake-up every 50 µs while the link is down.
                std::thread::sleep(BRIDGE_LINK_NAP.min(deadline - now));
                continue;
            }
            waiters.fetch_add(1, SeqCst);
            if self.link_generation().load(SeqCst) == seen {
                futex::wait(self.link_generation(), seen, Some(deadline - now));
            }
            waiters.fetch_sub(1, SeqCst);
        }
    }

    fn mw_count(&self) -> u32 {
        self.config.n_mw
    }

    fn mw_align(&self, mw: u32) -> Result<MwAlign, WindowError> {
        if mw >= self.config.n_mw {
            return Err(WindowError::NoSuchWindow {
                mw,
                count: self.config.n_mw,
            });
        }
        Ok(MwAlign {
            addr_align: self.config.mw_align,
            size_align: self.config.mw_align,
            size_max: self.config.mw_size,
        })
    }

    fn inbound(&self, mw: u32) -> Result<Region, WindowError> {
        self.window_region(self.side, mw)
    }

    fn outbound(&self, mw: u32) -> Result<Region, WindowError> {
        self.window_region(self.peer, mw)
    }

    fn db_valid_mask(&self) -> u64 {
        if self.config.n_db >= 64 {
            u64::MAX
        } else {
            (1u64 << self.config.n_db) - 1
        }
    }

    fn db_read(&self) -> u64 {
        let (lo, hi) = self.db_status_words(self.side);
        // SYNC POINT (doorbell status): Acquire pairs with the peer's SeqCst fetch_or in
        // `peer_db_set`, which follows its writes of the data the doorbell announces.
        lo.load(Acquire) as u64 | (hi.load(Acquire) as u64) << 32
    }

    fn db_clear(&self, bits: u64) -> Result<(), DoorbellError> {
        self.check_bits(bits)?;
        let (lo, hi) = self.db_status_words(self.side);
        lo.fetch_and(!(bits as u32), SeqCst);
        hi.fetch_and(!((bits >> 32) as u32), SeqCst);
        Ok(())
    }

    fn db_read_mask(&self) -> u64 {
        let (lo, hi) = self.db_mask_words(self.side);
        lo.load(Acquire) as u64 | (hi.load(Acquire) as u64) << 32
    }

    fn db_set_mask(&self, bits: u64) -> Result<(), DoorbellError> {
        self.check_bits(bits)?;
        let (lo, hi) = self.db_mask_words(self.side);
        lo.fetch_or(bits as u32, SeqCst);
        hi.fetch_or((bits >> 32) as u32, SeqCst);
        Ok(())
    }

    fn db_clear_mask(&self, bits: u64) -> Result<(), DoorbellError> {
        self.check_bits(bits)?;
        let (lo, hi) = self.db_mask_words(self.side);
        lo.fetch_and(!(bits as u32), SeqCst);
        hi.fetch_and(!((bits >> 32) as u32), SeqCst);
        // Unmasking a pending bit raises its interrupt, as the hardware does.
        let pending = self.db_read() & bits;
        if pending != 0 {
            self.raise_db_interrupt(self.side, pending);
        }
        Ok(())
    }

    fn peer_db_set(&self, bits: u64) -> Result<(), DoorbellError> {
        self.check_bits(bits)?;
        if !self.link_up() {
            return Err(DoorbellError::LinkDown);
        }
        if fault::take(self, sys::NTBEMU_FAULT_LOST_DB) {
            return Ok(()); // the posted write vanished on the link
        }
        let (lo, hi) = self.db_status_words(self.peer);
        // SYNC POINT (doorbell status): SeqCst RMW publishes everything written before it (the
        // ring data the doorbell announces); pairs with the Acquire in `db_read` / `db_wait`.
        lo.fetch_or(bits as u32, SeqCst);
        hi.fetch_or((bits >> 32) as u32, SeqCst);
        let (mlo, mhi) = self.db_mask_words(self.peer);
        let mask = mlo.load(SeqCst) as u64 | (mhi.load(SeqCst) as u64) << 32;
        let fire = bits & !mask;
        if fire != 0 {
            self.raise_db_interrupt(self.peer, fire);
        }
        Ok(())
    }

    fn db_wait(&self, bits: u64, timeout: Option<Duration>) -> Result<u64, DoorbellError> {
        self.check_bits(bits)?;
        let deadline = timeout.map(|t| Instant::now() + t);
        let seq = self.nt_reg(self.side, sys::NTBEMU_REG_DB_SEQ);
        let waiters = self.nt_reg(self.side, sys::NTBEMU_REG_DB_WAITERS);
        loop {
            let pending = self.db_read() & bits;
            if pending != 0 {
                return Ok(pending);
            }
            let remaining = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(r) if !r.is_zero() => Some(r),
                    _ => return Ok(0),
                },
                None => None,
            };
            if self.bridge.is_some() {
                // Poll the status word (the peer machine cannot wake a futex here).
                std::thread::sleep(remaining.map_or(BRIDGE_NAP, |r| r.min(BRIDGE_NAP)));
                continue;
            }
            // SYNC POINT (doorbell sleep): the SeqCst WAITERS increment and SEQ load pair with
            // `raise_db_interrupt`'s SeqCst SEQ increment and WAITERS load (no lost wake-up).
            waiters.fetch_add(1, SeqCst);
            let s = seq.load(SeqCst);
            if self.db_read() & bits == 0 {
                futex::wait(seq, s, remaining);
            }
            waiters.fetch_sub(1, SeqCst);
        }
    }

    fn db_vector_fd(&self, bit: u32) -> Result<OwnedFd, DoorbellError> {
        if bit >= self.config.n_db {
            return Err(DoorbellError::InvalidBits {
                bits: 1u64.checked_shl(bit).unwrap_or(0),
                valid: self.db_valid_mask(),
            });
        }
        let path = self.vector_path(self.side, bit);
        sysutil::mkfifo(&path).map_err(|e| DoorbellError::line("mkfifo", &path, e))?;
        // O_RDWR keeps a writer on the FIFO, so poll never reports a hang-up.
        let fd = sysutil::open_fifo(&path).map_err(|e| DoorbellError::line("open", &path, e))?;
        if self.bridge.is_some() {
            // A ring posted before this line had its listener is not this listener's interrupt
            // (on a device file it would have kicked no FIFO). Cleared before arming: a ring
            // after the arming is.
            let mb = self.side_off(self.side) + MB_DB + 4 * (bit as usize / 32);
            self.map.u32_at(mb).fetch_and(!(1 << (bit % 32)), SeqCst);
        }
        let (lo, hi) = self.vector_armed(self.side);
        if bit < 32 {
            lo.fetch_or(1 << bit, SeqCst);
        } else {
            hi.fetch_or(1 << (bit - 32), SeqCst);
        }
        if self.bridge.is_some() {
            self.start_poller();
        }
        Ok(fd)
    }

    fn vector_count(&self) -> u32 {
        sys::NTBEMU_MAX_VECTORS
    }

    fn lease_vector(&self, tag: u32) -> Result<crate::VectorLease, LeaseError> {
        let t = self.table();
        let n = sys::NTBEMU_MAX_VECTORS;
        let (vector, slot) = match t.lease_index(sys::NTBEMU_LEASE_VECTOR, n, tag) {
            Err(_) if t.reclaim() > 0 => t.lease_index(sys::NTBEMU_LEASE_VECTOR, n, tag),
            r => r,
        }
        .map_err(|e| match e {
            LeaseError::TableFull => LeaseError::TableFull,
            _ => LeaseError::DoorbellsExhausted { count: n },
        })?;
        Ok(crate::VectorLease { vector, slot })
    }

    fn vector_fd(&self, v: u32) -> Result<OwnedFd, DoorbellError> {
        if v >= sys::NTBEMU_MAX_VECTORS {
            return Err(DoorbellError::Vector(format!(
                "vector {v} does not exist (the side has {})",
                sys::NTBEMU_MAX_VECTORS
            )));
        }
        let path = self.msi_path(self.side, v);
        sysutil::mkfifo(&path).map_err(|e| DoorbellError::line("mkfifo", &path, e))?;
        if self.bridge.is_some() {
            self.start_poller();
        }
        // O_RDWR keeps a writer on the FIFO, so poll never reports a hang-up.
        sysutil::open_fifo(&path).map_err(|e| DoorbellError::line("open", &path, e))
    }

    fn peer_vector_trigger(&self, v: u32) -> Result<(), DoorbellError> {
        if v >= sys::NTBEMU_MAX_VECTORS {
            return Err(DoorbellError::Vector(format!(
                "vector {v} does not exist (the side has {})",
                sys::NTBEMU_MAX_VECTORS
            )));
        }
        if !self.link_up() {
            return Err(DoorbellError::LinkDown);
        }
        if fault::take(self, sys::NTBEMU_FAULT_LOST_DB) {
            return Ok(()); // the message write vanished on the link
        }
        if self.bridge.is_some() {
            self.post_interrupt(self.peer, 0, Some(v));
        } else {
            // The MSI message: a kick on the vector's line.
            kick_line(&self.msi_path(self.peer, v));
        }
        Ok(())
    }

    fn spad_count(&self) -> u32 {
        self.config.n_spad
    }

    fn spad_read(&self, idx: u32) -> Result<u32, ScratchpadError> {
        self.spad_check(idx)?;
        Ok(self
            .nt_reg(self.side, sys::ntbemu_reg_spad(idx))
            .load(Acquire))
    }

    fn spad_write(&self, idx: u32, val: u32) -> Result<(), ScratchpadError> {
        self.spad_check(idx)?;
        self.nt_reg(self.side, sys::ntbemu_reg_spad(idx))
            .store(val, Release);
        Ok(())
    }

    fn peer_spad_read(&self, idx: u32) -> Result<u32, ScratchpadError> {
        self.spad_check(idx)?;
        if !self.link_up() {
            return Err(ScratchpadError::LinkDown);
        }
        Ok(self
            .nt_reg(self.peer, sys::ntbemu_reg_spad(idx))
            .load(Acquire))
    }

    fn peer_spad_write(&self, idx: u32, val: u32) -> Result<(), ScratchpadError> {
        self.spad_check(idx)?;
        if !self.link_up() {
            return Err(ScratchpadError::LinkDown);
        }
        // SYNC POINT (scratchpad): Release pairs with the Acquire in the peer's `spad_read`.
        self.nt_reg(self.peer, sys::ntbemu_reg_spad(idx))
            .store(val, Release);
        Ok(())
    }

    fn dma_channel_count(&self) -> u32 {
        self.config.n_dma_ch
    }

    fn dma_channel(&self) -> Result<Box<dyn DmaChannel>, DmaError> {
        dma::EmuDma::acquire(self).map(|c| Box::new(c) as Box<dyn DmaChannel>)
    }

    fn lease_window(&self, mw: u32, len: u64, tag: u32) -> Result<WindowLease, LeaseError> {
        if mw >= self.config.n_mw {
            return Err(LeaseError::Window(WindowError::NoSuchWindow {
                mw,
                count: self.config.n_mw,
            }));
        }
        if len == 0 || len > self.config.mw_size {
            return Err(LeaseError::Window(WindowError::OutOfRange {
                offset: 0,
                len,
                size: self.config.mw_size,
            }));
        }
        let len = len.div_ceil(self.config.mw_align) * self.config.mw_align;
        let t = self.table();
        match t.lease_window(mw, len, self.config.mw_size, tag) {
            Err(LeaseError::WindowFull { .. }) if t.reclaim() > 0 => {
                t.lease_window(mw, len, self.config.mw_size, tag)
            }
            r => r,
        }
    }

    fn reserve_window(
        &self,
        mw: u32,
        offset: u64,
        len: u64,
        tag: u32,
    ) -> Result<WindowLease, LeaseError> {
        if mw >= self.config.n_mw {
            return Err(LeaseError::Window(WindowError::NoSuchWindow {
                mw,
                count: self.config.n_mw,
            }));
        }
        let al = self.config.mw_align;
        if !offset.is_multiple_of(al) || len == 0 || !len.is_multiple_of(al) {
            return Err(LeaseError::Window(WindowError::Misaligned {
                offset,
                align: al,
            }));
        }
        if offset
            .checked_add(len)
            .is_none_or(|end| end > self.config.mw_size)
        {
            return Err(LeaseError::Window(WindowError::OutOfRange {
                offset,
                len,
                size: self.config.mw_size,
            }));
        }
        let t = self.table();
        match t.reserve(mw, offset, len, tag) {
            Err(LeaseError::WindowFull { .. }) if t.reclaim() > 0 => {
                t.reserve(mw, offset, len, tag)
            }
            r => r,
        }
    }

    fn lease_doorbell(&self, tag: u32) -> Result<DoorbellLease, LeaseError> {
        let t = self.table();
        let r = match t.lease_index(sys::NTBEMU_LEASE_DOORBELL, self.config.n_db, tag) {
            Err(LeaseError::DoorbellsExhausted { .. }) if t.reclaim() > 0 => {
                t.lease_index(sys::NTBEMU_LEASE_DOORBELL, self.config.n_db, tag)
            }
            r => r,
        }?;
        // A fresh lease starts with its bit clear, whatever the previous holder left.
        let _ = self.db_clear(1u64 << r.0);
        Ok(DoorbellLease {
            bit: r.0,
            slot: r.1,
        })
    }

    fn release(&self, lease: Lease) -> Result<(), LeaseError> {
        match lease {
            Lease::Window(w) => self.table().release(w.slot, sys::NTBEMU_LEASE_WINDOW),
            Lease::Vector(v) => self.table().release(v.slot, sys::NTBEMU_LEASE_VECTOR),
            Lease::Doorbell(d) => {
                let (lo, hi) = self.vector_armed(self.side);
                if d.bit < 32 {
                    lo.fetch_and(!(1 << d.bit), SeqCst);
                } else {
                    hi.fetch_and(!(1 << (d.bit - 32)), SeqCst);
                }
                self.table().release(d.slot, sys::NTBEMU_LEASE_DOORBELL)
            }
        }
    }

    fn transfer(&self, lease: Lease, pid: u32) -> Result<(), LeaseError> {
        let (slot, kind) = match lease {
            Lease::Window(w) => (w.slot, sys::NTBEMU_LEASE_WINDOW),
            Lease::Doorbell(d) => (d.slot, sys::NTBEMU_LEASE_DOORBELL),
            Lease::Vector(v) => (v.slot, sys::NTBEMU_LEASE_VECTOR),
        };
        self.table().transfer(slot, kind, pid)
    }

    fn reclaim(&self) -> usize {
        self.table().reclaim()
    }

    fn window_leases(&self, tag: u32) -> Vec<WindowLease> {
        self.table()
            .leases_with_slots()
            .into_iter()
            .filter(|(_, s)| s.kind == sys::NTBEMU_LEASE_WINDOW && s.tag == tag)
            .map(|(slot, s)| WindowLease {
                mw: s.index,
                offset: s.offset,
                len: s.len,
                slot,
            })
            .collect()
    }
}

impl EmuDevice {
    fn spad_check(&self, idx: u32) -> Result<(), ScratchpadError> {
        if idx >= self.config.n_spad {
            return Err(ScratchpadError::NoSuchScratchpad {
                idx,
                count: self.config.n_spad,
            });
        }
        Ok(())
    }
}
