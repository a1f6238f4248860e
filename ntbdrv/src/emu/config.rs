//! The emulated device's configuration: its topology and hardware limits ([`Config`]), where a
//! device file lives ([`Options`]), the `PCISOCK_EMU_*` environment variables that set both, and
//! the byte layout a configuration gives the file ([`Layout`]).
//!
//! Owns: parsing and checking settings, and the arithmetic of the layout. Must never touch a
//! device file or shared memory: opening and laying out a device is `file.rs`'s job.

use std::path::{Path, PathBuf};

use ntb_sys as sys;

use crate::error::DeviceError;
use crate::units::parse_size;
use crate::{sysutil, SideId};

/// Link topology of an emulated device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// One host through its own bridge: side 0's peer is side 0.
    Loopback,
    /// Two hosts (sides 0 and 1) joined by the link.
    TwoHost,
}

impl Topology {
    pub(super) fn code(self) -> u32 {
        match self {
            Self::Loopback => sys::NTBEMU_TOPO_LOOPBACK,
            Self::TwoHost => sys::NTBEMU_TOPO_TWO_HOST,
        }
    }
    pub(super) fn sides(self) -> u32 {
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

pub(super) fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

pub(super) fn parse_env<T: std::str::FromStr>(name: &'static str) -> Result<Option<T>, DeviceError>
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
pub(super) struct Layout {
    pub(super) side_base: u64,
    pub(super) side_stride: u64,
    pub(super) file_size: u64,
}

const SIDE_ALIGN: u64 = 2 << 20;

impl Layout {
    pub(super) fn of(c: &Config) -> Layout {
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
