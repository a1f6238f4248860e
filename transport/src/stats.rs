//! Reading live connections' identity and counters out of the device, for `pcisock stats`. It only
//! reads: it never writes into a block, and a block without a valid identity is skipped.
//!
//! Every endpoint keeps its identity and counters in its own lease (see `conn`), so another
//! process can list them without asking the process that owns them.

use ntbdrv::NtbDevice;

use crate::conn::{self, Info, COUNTER_NAMES};

/// One live endpoint as `pcisock stats` shows it.
#[derive(Debug, Clone)]
pub struct EndpointStats {
    pub info: Info,
    pub counters: [u64; COUNTER_NAMES.len()],
    /// Its sending side is on the TCP socket after a failover.
    pub on_tcp: bool,
}

/// Read the endpoint in the window lease `mw`/`offset`/`len` of this host, if one lives there.
pub fn read_endpoint(dev: &dyn NtbDevice, mw: u32, offset: u64, len: u64) -> Option<EndpointStats> {
    let r = dev
        .inbound(mw)
        .ok()?
        .slice(offset as usize, len as usize)
        .ok()?;
    if conn::atomic_u32_at(&r, conn::INFO_BASE).load(std::sync::atomic::Ordering::Acquire)
        != conn::INFO_MAGIC
    {
        return None;
    }
    let mut b = [0u8; 48];
    r.read(conn::INFO_BASE + 8, &mut b).ok()?;
    let mut counters = [0u64; COUNTER_NAMES.len()];
    for (i, c) in counters.iter_mut().enumerate() {
        *c = conn::atomic_u64_at(&r, conn::C_BASE + 8 * i)
            .load(std::sync::atomic::Ordering::Relaxed);
    }
    let state =
        conn::atomic_u32_at(&r, conn::L_STATE_PUB).load(std::sync::atomic::Ordering::Relaxed);
    Some(EndpointStats {
        info: Info::decode(&b),
        counters,
        on_tcp: state & conn::ST_ON_TCP != 0,
    })
}
