//! The lines (and their tally pages) a process receives from the service, kept once each: a
//! line the service names again (another connection with the same peer process) is the copy
//! this process has. Called by the service link as pairings arrive; it never keeps two copies
//! of one line, nor more than a few lines past their last connection.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Weak};

use super::{Link, RECENT_LINES};
use crate::conn::Tally;
use crate::lock;

impl Link {
    /// The one copy of a line the service `service` named `l.id` (`l.fd` closed if this
    /// process has it already: the service connection shares a line among the replies it
    /// receives, but this process's copies outlive its service connections).
    pub(super) fn line(&self, service: u32, l: fabric::Line) -> Arc<OwnedFd> {
        let mut lines = lock(&self.lines);
        if let Some(have) = lines.get(&(service, l.id)).and_then(Weak::upgrade) {
            return have;
        }
        if lines.len() >= 64 && lines.len().is_power_of_two() {
            lines.retain(|_, w| w.strong_count() > 0);
        }
        let fd = l.fd;
        lines.insert((service, l.id), Arc::downgrade(&fd));
        fd
    }

    /// The line the service `service` named `id`, if this process has it (no descriptor came:
    /// `fabric::Again`).
    pub(super) fn named_line(&self, service: u32, id: u64) -> Option<Arc<OwnedFd>> {
        lock(&self.lines)
            .get(&(service, id))
            .and_then(Weak::upgrade)
    }

    /// The mapping of the tally page of the line `service` named `line`, if this process has it.
    pub(super) fn named_tally(&self, service: u32, line: u64) -> Option<Arc<Tally>> {
        lock(&self.tallies)
            .get(&(service, line))
            .and_then(Weak::upgrade)
    }

    /// The one mapping of the tally page of the line the service `service` named `line`
    /// (`fd` closed if this process has it mapped already, else kept open with the mapping;
    /// `None` if it cannot be mapped).
    pub(super) fn tally(&self, service: u32, line: u64, fd: Arc<OwnedFd>) -> Option<Arc<Tally>> {
        let mut tallies = lock(&self.tallies);
        if let Some(have) = tallies.get(&(service, line)).and_then(Weak::upgrade) {
            return Some(have);
        }
        if tallies.len() >= 64 && tallies.len().is_power_of_two() {
            tallies.retain(|_, w| w.strong_count() > 0);
        }
        let t = Tally::map_keeping(fd)?;
        tallies.insert((service, line), Arc::downgrade(&t));
        Some(t)
    }

    /// Keep a peer line (and its tally page) open after its connections end (`recent`).
    pub(super) fn keep_recent(&self, line: &Arc<OwnedFd>, tally: &Option<Arc<Tally>>) {
        let mut recent = lock(&self.recent);
        if recent.iter().any(|(l, _)| Arc::ptr_eq(l, line)) {
            return;
        }
        if recent.len() >= RECENT_LINES {
            recent.pop_front();
        }
        recent.push_back((line.clone(), tally.clone()));
    }
}
