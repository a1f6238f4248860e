//! One small error enum per operation group, each with `Display`. Callers match on them; this
//! module holds no logic and never decides what a caller does about an error (a fallback, a retry,
//! a reason code is the caller's).

use std::fmt;
use std::path::PathBuf;

/// Opening or creating a device failed.
#[derive(Debug)]
pub enum DeviceError {
    /// The device directory belongs to another user or is open to others.
    ForeignDirectory {
        path: PathBuf,
        owner: u32,
        mode: u32,
    },
    /// The path exists but is not a directory (or is a symlink).
    NotADirectory(PathBuf),
    /// The device file belongs to another user.
    ForeignFile { path: PathBuf, owner: u32 },
    /// The file is not an NTBEMU device (bad magic).
    NotADevice(PathBuf),
    /// The file was made by another layout version.
    VersionMismatch {
        path: PathBuf,
        ours: u32,
        theirs: u32,
    },
    /// The file is shorter than its header says, or its header is inconsistent.
    Corrupt { path: PathBuf, why: String },
    /// The requested configuration breaks a hardware limit.
    BadConfig(String),
    /// The requested side does not exist on this device.
    NoSuchSide { side: u32, sides: u32 },
    /// A setting in the environment could not be parsed.
    BadSetting {
        name: &'static str,
        value: String,
        why: String,
    },
    /// An operating-system call failed.
    Io { what: String, err: std::io::Error },
    /// The hardware device is not there (or is not the device it should be).
    NoDevice(String),
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ForeignDirectory { path, owner, mode } => write!(
                f,
                "device directory {} is owned by uid {owner} with mode {mode:o}; it must be ours with mode 0700",
                path.display()
            ),
            Self::NotADirectory(p) => write!(f, "{} is not a directory", p.display()),
            Self::ForeignFile { path, owner } => {
                write!(f, "device file {} belongs to uid {owner}", path.display())
            }
            Self::NotADevice(p) => write!(f, "{} is not an NTBEMU device file (bad magic)", p.display()),
            Self::VersionMismatch { path, ours, theirs } => write!(
                f,
                "{} has layout version {theirs}, this build speaks version {ours} (a device \
                 left by another build: `pcisock emu remove` deletes it, and the next process \
                 creates a new one)",
                path.display()
            ),
            Self::Corrupt { path, why } => write!(f, "{} is corrupt: {why}", path.display()),
            Self::BadConfig(why) => write!(f, "bad device configuration: {why}"),
            Self::NoSuchSide { side, sides } => {
                write!(f, "side {side} does not exist (the device has {sides})")
            }
            Self::BadSetting { name, value, why } => write!(f, "{name}={value:?}: {why}"),
            Self::Io { what, err } => write!(f, "{what}: {err}"),
            Self::NoDevice(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for DeviceError {}

/// Link control failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkError {
    /// A fault injected on the device holds the link down.
    HeldDown,
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HeldDown => f.write_str("the link is held down by an injected fault"),
        }
    }
}

impl std::error::Error for LinkError {}

/// A memory-window operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowError {
    NoSuchWindow { mw: u32, count: u32 },
    OutOfRange { offset: u64, len: u64, size: u64 },
    Misaligned { offset: u64, align: u64 },
}

impl fmt::Display for WindowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuchWindow { mw, count } => {
                write!(
                    f,
                    "memory window {mw} does not exist (the device has {count})"
                )
            }
            Self::OutOfRange { offset, len, size } => write!(
                f,
                "range {offset:#x}+{len:#x} is outside the {size:#x}-byte window"
            ),
            Self::Misaligned { offset, align } => {
                write!(f, "offset {offset:#x} is not aligned to {align}")
            }
        }
    }
}

impl std::error::Error for WindowError {}

/// A doorbell operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DoorbellError {
    /// Bits outside `db_valid_mask`.
    InvalidBits { bits: u64, valid: u64 },
    /// Ringing the peer needs the link up.
    LinkDown,
    /// The interrupt line could not be opened.
    Vector(String),
    /// The interrupt line could not be made or opened for lack of permission (EACCES, EPERM):
    /// e.g. a process that dropped privileges after the device was opened.
    Denied(String),
}

impl DoorbellError {
    /// The interrupt line `path` could not be made or opened (`what`: "mkfifo", "open").
    pub fn line(what: &str, path: &std::path::Path, e: std::io::Error) -> DoorbellError {
        let msg = format!("{what} {}: {e}", path.display());
        match e.raw_os_error() {
            Some(libc::EACCES) | Some(libc::EPERM) => DoorbellError::Denied(msg),
            _ => DoorbellError::Vector(msg),
        }
    }
}

impl fmt::Display for DoorbellError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidBits { bits, valid } => {
                write!(
                    f,
                    "doorbell bits {bits:#x} outside the valid mask {valid:#x}"
                )
            }
            Self::LinkDown => f.write_str("the link is down"),
            Self::Vector(why) => write!(f, "doorbell interrupt line: {why}"),
            Self::Denied(why) => {
                write!(f, "doorbell interrupt line: permission denied: {why}")
            }
        }
    }
}

impl std::error::Error for DoorbellError {}

/// A scratchpad operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScratchpadError {
    NoSuchScratchpad {
        idx: u32,
        count: u32,
    },
    /// Peer scratchpads need the link up.
    LinkDown,
}

impl fmt::Display for ScratchpadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuchScratchpad { idx, count } => {
                write!(
                    f,
                    "scratchpad {idx} does not exist (the device has {count})"
                )
            }
            Self::LinkDown => f.write_str("the link is down"),
        }
    }
}

impl std::error::Error for ScratchpadError {}

/// A DMA operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DmaError {
    /// The device has no DMA channel, or all are leased.
    NoChannel { count: u32 },
    /// A batch is still in flight.
    Busy,
    /// More descriptors than the ring holds, or none.
    BadBatch { len: usize, max: usize },
    /// A descriptor longer than the hardware's 27-bit count.
    TooLong { len: u64, max: u64 },
    /// An address that no window or host mapping covers.
    BadAddress(BusAddr),
    /// A host mapping could not be made or found.
    Mapping(String),
    /// The engine reported a failed descriptor (read or write failure).
    TransferFailed { index: u32 },
    /// The link went down before the batch could start.
    LinkDown,
    /// The wait ended before the engine finished.
    Timeout,
}

use crate::BusAddr;

impl fmt::Display for DmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoChannel { count } => write!(f, "no free DMA channel (the side has {count})"),
            Self::Busy => f.write_str("the DMA channel is busy"),
            Self::BadBatch { len, max } => {
                write!(f, "a batch of {len} descriptors (1..={max} allowed)")
            }
            Self::TooLong { len, max } => write!(f, "descriptor of {len} bytes (max {max})"),
            Self::BadAddress(a) => write!(f, "bus address {:#x} is not mapped", a.0),
            Self::Mapping(why) => write!(f, "DMA mapping: {why}"),
            Self::TransferFailed { index } => write!(f, "DMA descriptor {index} failed"),
            Self::LinkDown => f.write_str("the link is down"),
            Self::Timeout => f.write_str("timed out waiting for the DMA engine"),
        }
    }
}

impl std::error::Error for DmaError {}

/// A host-table lease could not be made or returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseError {
    /// No window space of that size is free.
    WindowFull {
        mw: u32,
        len: u64,
    },
    /// All doorbell bits are leased.
    DoorbellsExhausted {
        count: u32,
    },
    /// The host table has no free slot.
    TableFull,
    Window(WindowError),
    /// The lease is not held (already released, or reclaimed).
    NotHeld {
        slot: u32,
    },
    /// The target process does not exist.
    NoSuchProcess(u32),
}

impl fmt::Display for LeaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WindowFull { mw, len } => {
                write!(f, "no {len} bytes free in memory window {mw}")
            }
            Self::DoorbellsExhausted { count } => {
                write!(f, "all {count} doorbell bits are in use")
            }
            Self::TableFull => f.write_str("the host resource table is full"),
            Self::Window(e) => e.fmt(f),
            Self::NotHeld { slot } => write!(f, "lease slot {slot} is not held"),
            Self::NoSuchProcess(pid) => write!(f, "process {pid} does not exist"),
        }
    }
}

impl std::error::Error for LeaseError {}
