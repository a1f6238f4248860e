//! The one place that picks the default device: `PCISOCK_DEVICE` names the backend (`emu`, the
//! default; `ivshmem` or `ivshmem:<PCI address>` for QEMU's ivshmem device between two virtual
//! machines). Called by `transport` and the CLI; nothing else may choose a backend (the default,
//! `emu`, is named only here), and it never falls back to another backend than the one asked for.

use std::sync::Arc;

use crate::emu::EmuDevice;
use crate::{DeviceError, NtbDevice};

/// Open the device this process should use, as configured by the environment.
pub fn open_default() -> Result<Arc<dyn NtbDevice>, DeviceError> {
    match std::env::var("PCISOCK_DEVICE")
        .ok()
        .filter(|v| !v.is_empty())
        .as_deref()
    {
        None | Some("emu") => Ok(Arc::new(EmuDevice::open_from_env()?)),
        Some(v) if v == "ivshmem" || v.starts_with("ivshmem:") => Ok(Arc::new(
            crate::ivshmem::open(&crate::ivshmem::IvshmemOptions::from_env(v)?)?,
        )),
        Some(other) => Err(DeviceError::BadSetting {
            name: "PCISOCK_DEVICE",
            value: other.to_string(),
            why: "unknown backend (known: emu, ivshmem[:<PCI address>])".into(),
        }),
    }
}
