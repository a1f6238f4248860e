//! `ivshmem`: QEMU's inter-VM shared-memory PCI device (1af4:1110, `ivshmem-doorbell`) as an NTB,
//! driven from guest user space. Must never reach the other machine by anything but BAR2 and the
//! Doorbell register: no file, futex or socket of one guest is visible to the other.
//!
//! Two virtual machines see one shared memory object as their device's BAR2 and can interrupt
//! each other through the Doorbell register in BAR0 (`(peer ID << 16) | vector`). That is all a
//! bridge gives, so this backend keeps everything that crosses between the machines in BAR2:
//! the two sides' register pages, host tables and inbound windows are laid out there in the
//! emulated device's format ([`crate::emu`] in bridge mode), and every interrupt is a pending
//! bit in the target side's mailbox in BAR2 followed by a Doorbell-register write to the target
//! machine. ivshmem revision 1 has no doorbell status register to poll, hence the mailbox (as
//! Switchtec's shared memory-window doorbells keep their state in memory).
//!
//! Receiving: the Doorbell write raises an MSI-X interrupt in the target guest. One daemon per
//! machine ([`serve_interrupts`], `ntbdrv-ivshmem-irqd`) takes it as a VFIO eventfd and kicks
//! the machine-local FIFO lines that poll/epoll wait on; without the daemon each process polls
//! its side's mailbox (a thread: every 50 µs while interrupts arrive, every 2 ms when idle) and
//! kicks the same lines. DMA: none (the device has no engine); the
//! transport copies with the CPU. Callers: [`crate::recommended::open_default`] with
//! `PCISOCK_DEVICE=ivshmem[:BDF]`, and the conformance tests in `ntbdrv/conformance/tests/ivshmem.rs`.
//!
//! # Safety
//! The only unsafe code is the volatile access to two 32-bit registers of BAR0 (IVPosition at 8,
//! Doorbell at 12), inside a mapping of the device's `resource0` file that lives as long as the
//! `Registers` value and is at least 16 bytes long (checked). BAR2 is mapped by
//! `emu::mapping::Mapping`, which hands out only bounds-checked atomics and regions. Everything
//! the other machine writes into BAR2 is untrusted: the layout is validated on attach as a
//! device file is, and the mailbox bits only select interrupt lines that exist.
#![allow(unsafe_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::emu::mapping::Mapping;
use crate::emu::{Bridge, Config, EmuDevice, Options, Topology};
use crate::{DeviceError, SideId};

/// QEMU's ivshmem device: vendor 0x1af4 (Red Hat), device 0x1110.
const VENDOR: &str = "0x1af4";
const DEVICE: &str = "0x1110";
/// BAR0 registers.
const REG_IVPOSITION: usize = 8;
const REG_DOORBELL: usize = 12;
/// The vector every interrupt uses (the mailbox says what it is for).
const VECTOR: u32 = 0;

/// Where to find the device and which side to take.
#[derive(Clone, Debug, Default)]
pub struct IvshmemOptions {
    /// PCI address (`0000:00:04.0`); `None`: the first ivshmem device.
    pub bdf: Option<String>,
    /// Side to take; `None`: the first side no other machine claimed (tests force one).
    pub side: Option<SideId>,
    /// Directory for this machine's interrupt lines (default: the emulated device's).
    pub dir: Option<PathBuf>,
}

impl IvshmemOptions {
    /// From `PCISOCK_DEVICE=ivshmem[:BDF]`, `PCISOCK_IVSHMEM_SIDE` and `PCISOCK_EMU_DIR`.
    pub fn from_env(device: &str) -> Result<Self, DeviceError> {
        let bdf = match device.strip_prefix("ivshmem") {
            Some("") => None,
            Some(rest) => match rest.strip_prefix(':') {
                Some(b) if !b.is_empty() && !b.contains('/') => Some(b.to_string()),
                _ => {
                    return Err(DeviceError::BadSetting {
                        name: "PCISOCK_DEVICE",
                        value: device.into(),
                        why: "expected ivshmem or ivshmem:<PCI address>".into(),
                    })
                }
            },
            None => None,
        };
        let side = match std::env::var("PCISOCK_IVSHMEM_SIDE") {
            Ok(v) if !v.is_empty() => {
                Some(v.parse::<u32>().map_err(|e| DeviceError::BadSetting {
                    name: "PCISOCK_IVSHMEM_SIDE",
                    value: v.clone(),
                    why: e.to_string(),
                })?)
            }
            _ => None,
        };
        let dir = std::env::var_os("PCISOCK_EMU_DIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from);
        Ok(Self { bdf, side, dir })
    }
}

/// Find the device's sysfs directory.
pub fn find(bdf: Option<&str>) -> Result<PathBuf, DeviceError> {
    let root = Path::new("/sys/bus/pci/devices");
    let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            let p = e.path();
            if read(p.join("vendor")).trim() == VENDOR && read(p.join("device")).trim() == DEVICE {
                found.push(p);
            }
        }
    }
    found.sort();
    let pick = match bdf {
        Some(b) => found
            .into_iter()
            .find(|p| p.file_name().is_some_and(|n| n == b)),
        None => found.into_iter().next(),
    };
    pick.ok_or_else(|| {
        DeviceError::NoDevice(match bdf {
            Some(b) => format!(
                "no ivshmem device (PCI 1af4:1110) at {b} in {}",
                root.display()
            ),
            None => format!("no ivshmem device (PCI 1af4:1110) in {}", root.display()),
        })
    })
}

/// The layout for a shared memory of `bar2` bytes: two windows per side, as large as fit.
pub fn config_for(bar2: u64) -> Result<Config, DeviceError> {
    // Two sides of (2 MiB registers and tables + 2 windows), after a 2 MiB header block, each
    // side rounded up to 2 MiB (see emu's Layout).
    const MIB2: u64 = 2 << 20;
    let per_side = (bar2.saturating_sub(MIB2) / 2 / MIB2) * MIB2;
    let mw_size = (per_side.saturating_sub(MIB2) / 2) & !0xFFFF;
    if mw_size < 128 << 10 {
        return Err(DeviceError::BadConfig(format!(
            "the ivshmem shared memory has {bar2} bytes: too small for two sides with windows \
             (at least 16 MiB)"
        )));
    }
    let c = Config {
        topology: Topology::TwoHost,
        n_mw: 2,
        mw_size,
        mw_align: 4096,
        n_db: 64,
        n_spad: 16,
        n_dma_ch: 0,
    };
    c.validate()?;
    Ok(c)
}

/// Open the ivshmem device as an NTB.
pub fn open(opts: &IvshmemOptions) -> Result<EmuDevice, DeviceError> {
    let dev = find(opts.bdf.as_deref())?;
    let bdf = dev
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let io = |what: String| move |err| DeviceError::Io { what, err };
    // Without a driver the device's memory decoding may be off: `enable` turns it on.
    let enable = dev.join("enable");
    if std::fs::read_to_string(&enable).is_ok_and(|v| v.trim() == "0") {
        std::fs::write(&enable, "1").map_err(io(format!("write 1 to {}", enable.display())))?;
    }
    let open_rw = |name: &str| {
        let p = dev.join(name);
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .map_err(io(format!("open {} (needs root)", p.display())))
    };
    let regs = Registers::map(&open_rw("resource0")?, &bdf)?;
    let bar2 = Mapping::new(&open_rw("resource2")?)
        .map_err(io(format!("mmap {}/resource2", dev.display())))?;
    let config = config_for(bar2.len() as u64)?;
    let dir = opts.dir.clone().unwrap_or_else(Options::default_dir);
    let path = dir.join(format!("ivshmem-{bdf}.ntb"));
    EmuDevice::on_bridge(bar2, path, &config, opts.side, Arc::new(regs))
}

/// Attach to the emulated layout in `bar`, a file that stands for a bridge's shared memory (the
/// host side of an ivshmem memory backend, or a plain file in tests), laying it out if it is
/// fresh, with `bridge` carrying the interrupts to the other machine. `lines` names the device on
/// this machine: its interrupt lines (FIFOs) live beside it. `side` as in [`IvshmemOptions`].
pub fn open_shared_file(
    bar: &File,
    lines: PathBuf,
    side: Option<SideId>,
    bridge: Arc<dyn Bridge>,
) -> Result<EmuDevice, DeviceError> {
    let map = Mapping::new(bar).map_err(|err| DeviceError::Io {
        what: format!("mmap the shared memory for {}", lines.display()),
        err,
    })?;
    let config = config_for(map.len() as u64)?;
    EmuDevice::on_bridge(map, lines, &config, side, bridge)
}

/// BAR0 of the device: IVPosition (our ID) and the Doorbell register.
struct Registers {
    map: memmap2::MmapRaw,
    id: u32,
    bdf: String,
}

impl Registers {
    fn map(file: &File, bdf: &str) -> Result<Self, DeviceError> {
        let map = memmap2::MmapOptions::new()
            .map_raw(file)
            .map_err(|err| DeviceError::Io {
                what: format!("mmap BAR0 of {bdf}"),
                err,
            })?;
        if map.len() < 16 {
            return Err(DeviceError::NoDevice(format!(
                "BAR0 of {bdf} has {} bytes, not ivshmem's 256",
                map.len()
            )));
        }
        // SAFETY: offset 8 + 4 <= len (checked above), aligned (mmap is page-aligned); a
        // volatile read of the read-only IVPosition register.
        let id = unsafe { std::ptr::read_volatile(map.as_ptr().add(REG_IVPOSITION) as *const u32) };
        Ok(Self {
            map,
            id,
            bdf: bdf.to_string(),
        })
    }
}

impl Bridge for Registers {
    fn describe(&self) -> String {
        format!("ivshmem:{} (ID {})", self.bdf, self.id)
    }

    fn id(&self) -> u32 {
        self.id
    }

    fn kick(&self, id: u32) {
        // SAFETY: offset 12 + 4 <= len (checked in `map`), aligned; a volatile write of the
        // write-only Doorbell register. An uncached MMIO store: x86 orders it after our earlier
        // stores to BAR2 (the mailbox bits it announces).
        unsafe {
            std::ptr::write_volatile(
                self.map.as_mut_ptr().add(REG_DOORBELL) as *mut u32,
                (id & 0xFFFF) << 16 | VECTOR,
            )
        }
    }
}

// ---- interrupts through VFIO ------------------------------------------------------------------

/// Receive the device's MSI-X interrupt through VFIO and deliver this side's pending interrupts
/// on this machine, until killed: the interrupt daemon `ntbdrv-ivshmem-irqd` runs this, one per
/// machine (only one process can hold a VFIO device). `ready` is called once interrupts are
/// wired up. The device must be bound to vfio-pci (this binds it if it has no driver) in an
/// IOMMU group, which in a guest means a virtual IOMMU (QEMU `-machine q35 -device
/// intel-iommu`, kernel `intel_iommu=on`; without interrupt remapping also
/// `vfio_iommu_type1 allow_unsafe_interrupts=1`): the Debian kernel has no no-IOMMU mode.
/// Processes mapping the BARs through sysfs are unaffected.
pub fn serve_interrupts(
    opts: &IvshmemOptions,
    ready: impl FnOnce(),
) -> Result<std::convert::Infallible, DeviceError> {
    let sys = find(opts.bdf.as_deref())?;
    let bdf = sys
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let vfio = Vfio::open(&sys, &bdf)?;
    let dev = open(opts)?;
    let marker = dev.irqd_marker();
    std::fs::write(&marker, format!("{}\n", std::process::id())).map_err(|err| {
        DeviceError::Io {
            what: format!("write {}", marker.display()),
            err,
        }
    })?;
    ready();
    loop {
        // On the interrupt, or after 100 ms anyway (a safety net, as the transport's sleeps are).
        vfio.wait(100);
        dev.deliver_bridge_interrupts();
    }
}

/// The device opened through VFIO with its MSI-X vector 0 wired to an eventfd.
struct Vfio {
    // Kept open: closing the container, group or device fd tears the interrupt down.
    _container: std::os::fd::OwnedFd,
    _group: std::os::fd::OwnedFd,
    _device: std::os::fd::OwnedFd,
    eventfd: std::os::fd::OwnedFd,
}

impl Vfio {
    fn open(sys: &Path, bdf: &str) -> Result<Vfio, DeviceError> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let no = |why: String| DeviceError::NoDevice(format!("VFIO for {bdf}: {why}"));
        let io = |what: String| move |err| DeviceError::Io { what, err };
        // Bind to vfio-pci if the device has no driver.
        let driver = std::fs::read_link(sys.join("driver")).ok();
        match driver.as_ref().and_then(|d| d.file_name()) {
            Some(d) if d == "vfio-pci" => {}
            Some(d) => {
                return Err(no(format!(
                    "bound to {}, not vfio-pci",
                    d.to_string_lossy()
                )))
            }
            None => {
                std::fs::write(sys.join("driver_override"), "vfio-pci")
                    .map_err(io(format!("write {}/driver_override", sys.display())))?;
                let _ = std::fs::write("/sys/bus/pci/drivers_probe", bdf);
                let bound = std::fs::read_link(sys.join("driver"))
                    .ok()
                    .is_some_and(|d| d.file_name().is_some_and(|n| n == "vfio-pci"));
                if !bound {
                    return Err(no(
                        "vfio-pci did not take the device (modprobe vfio-pci)".into()
                    ));
                }
            }
        }
        let group = std::fs::read_link(sys.join("iommu_group")).map_err(|_| {
            no(
                "no IOMMU group: this kernel needs an IOMMU (in a guest: a virtual IOMMU and \
                intel_iommu=on)"
                    .into(),
            )
        })?;
        let group = group
            .file_name()
            .map(|g| g.to_string_lossy().into_owned())
            .unwrap_or_default();
        let open = |p: String| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&p)
                .map(OwnedFd::from)
                .map_err(io(format!("open {p}")))
        };
        let container = open("/dev/vfio/vfio".into())?;
        let group_fd = open(format!("/dev/vfio/{group}"))?;
        let ioctl = |fd: &OwnedFd, req: u32, arg: usize, what: &str| {
            // SAFETY: each request below is passed the argument its uapi definition takes: a
            // plain integer, or a pointer to a live, correctly sized and initialised struct
            // or buffer on our stack that outlives the call.
            let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg) };
            if r < 0 {
                Err(DeviceError::Io {
                    what: format!("VFIO {what} for {bdf}"),
                    err: std::io::Error::last_os_error(),
                })
            } else {
                Ok(r)
            }
        };
        if ioctl(
            &container,
            ntb_sys::VFIO_GET_API_VERSION,
            0,
            "GET_API_VERSION",
        )? != ntb_sys::VFIO_API_VERSION as i32
        {
            return Err(no("unknown VFIO API version".into()));
        }
        let mut status = ntb_sys::vfio_group_status {
            argsz: std::mem::size_of::<ntb_sys::vfio_group_status>() as u32,
            flags: 0,
        };
        ioctl(
            &group_fd,
            ntb_sys::VFIO_GROUP_GET_STATUS,
            &mut status as *mut _ as usize,
            "GROUP_GET_STATUS",
        )?;
        if status.flags & ntb_sys::VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(no(format!(
                "IOMMU group {group} is not viable (another device in it has a driver)"
            )));
        }
        let cfd: i32 = container.as_raw_fd();
        ioctl(
            &group_fd,
            ntb_sys::VFIO_GROUP_SET_CONTAINER,
            &cfd as *const i32 as usize,
            "GROUP_SET_CONTAINER",
        )?;
        ioctl(
            &container,
            ntb_sys::VFIO_SET_IOMMU,
            ntb_sys::VFIO_TYPE1v2_IOMMU as usize,
            "SET_IOMMU (without interrupt remapping: vfio_iommu_type1 allow_unsafe_interrupts=1)",
        )?;
        let name = std::ffi::CString::new(bdf.as_bytes()).map_err(|_| no("bad name".into()))?;
        let device = ioctl(
            &group_fd,
            ntb_sys::VFIO_GROUP_GET_DEVICE_FD,
            name.as_ptr() as usize,
            "GROUP_GET_DEVICE_FD",
        )?;
        // SAFETY: the ioctl returned a new fd that nothing else owns.
        let device = unsafe { OwnedFd::from_raw_fd(device) };
        // MSI-X messages are memory writes by the device: they need Bus Master on.
        let cfg = sys.join("config");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&cfg)
            .map_err(io(format!("open {}", cfg.display())))?;
        let mut cmd = [0u8; 2];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut cmd, ntb_sys::PCI_COMMAND as u64)
            .map_err(io(format!("read {}", cfg.display())))?;
        let cmd = u16::from_le_bytes(cmd) | ntb_sys::PCI_COMMAND_MASTER as u16;
        std::os::unix::fs::FileExt::write_all_at(
            &f,
            &cmd.to_le_bytes(),
            ntb_sys::PCI_COMMAND as u64,
        )
        .map_err(io(format!("write {}", cfg.display())))?;
        // SAFETY: plain integer flags; returns a new fd or -1.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(DeviceError::Io {
                what: "eventfd".into(),
                err: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: a new fd that nothing else owns.
        let eventfd = unsafe { OwnedFd::from_raw_fd(efd) };
        // struct vfio_irq_set followed by one eventfd (the flexible `data` array).
        let mut set = [0u8; std::mem::size_of::<ntb_sys::vfio_irq_set>() + 4];
        let words = [
            set.len() as u32,
            ntb_sys::VFIO_IRQ_SET_DATA_EVENTFD | ntb_sys::VFIO_IRQ_SET_ACTION_TRIGGER,
            ntb_sys::VFIO_PCI_MSIX_IRQ_INDEX,
            0,
            1,
            efd as u32,
        ];
        for (i, w) in words.iter().enumerate() {
            set[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        ioctl(
            &device,
            ntb_sys::VFIO_DEVICE_SET_IRQS,
            set.as_ptr() as usize,
            "DEVICE_SET_IRQS (MSI-X vector 0)",
        )?;
        Ok(Vfio {
            _container: container,
            _group: group_fd,
            _device: device,
            eventfd,
        })
    }

    /// Wait up to `ms` for the interrupt; true if it came (the eventfd is then drained).
    fn wait(&self, ms: i32) -> bool {
        use std::os::fd::AsRawFd;
        let mut p = libc::pollfd {
            fd: self.eventfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd on the stack, count 1.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        if n == 1 {
            crate::drain_vector(&self.eventfd);
            true
        } else {
            false
        }
    }
}
