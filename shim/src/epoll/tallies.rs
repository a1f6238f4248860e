//! Which of an epoll set's registrations a ring of a shared line was for: the transport's tally
//! pages (`transport::Tally`, docs/HOST-SERVICE.md *Tallies*). A peer counts each ring in the
//! word of the connection it rings for, and in the word of that word's group, before it rings;
//! a wait that wakes for the line looks at the group words of its registrations and, where one
//! moved, at the words of its registrations in that group, and evaluates those whose word moved,
//! instead of every registration of the set. The words are hints (a peer writes them): a moved
//! word costs a look at one of our own connections, and a ring its peer could not name (counted
//! in word 0) is looked for everywhere, as without tallies. It never reports a registration
//! because its word moved: the connection's readiness decides.

use std::sync::Arc;

use libc::c_int;
use transport::{Connection, Tally};

use super::fdmap::FdMap;

/// A registration's word: the count seen when it was listed or last found moved.
struct Entry {
    fd: c_int,
    slot: u32,
    seen: u32,
}

/// The registrations with a word in one group of slots.
struct Group {
    seen: u32,
    entries: Vec<Entry>,
}

/// The registrations with a word on one page (one per process whose connections the set holds:
/// usually its own, and its parent's after a fork).
struct Page {
    tally: Arc<Tally>,
    /// Word 0's count when last looked at.
    unnamed: u32,
    groups: FdMap<u32, Group>,
}

/// The words of a set's registrations.
#[derive(Default)]
pub(super) struct Tallies {
    pages: Vec<Page>,
    /// While a full look lists the registrations again: the counts seen before, by fd.
    before: FdMap<c_int, u32>,
}

impl Tallies {
    /// Forget every entry: a full look lists them again ([`Tallies::list`] then says which
    /// words moved since they were last seen).
    pub(super) fn relist(&mut self) {
        self.before.clear();
        for p in self.pages.drain(..) {
            for g in p.groups.into_values() {
                self.before.extend(g.entries.iter().map(|e| (e.fd, e.seen)));
            }
        }
    }

    /// Does any registration have a word?
    pub(super) fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// List registration `fd` of `c` (being evaluated now: its word counts from here). True if
    /// its word moved since it was seen before a [`Tallies::relist`]: a ring nobody was told.
    pub(super) fn list(&mut self, fd: c_int, c: &Connection) -> bool {
        let Some(t) = c.tally() else {
            return false;
        };
        let tally = t.tally();
        let i = match self.pages.iter().position(|p| Arc::ptr_eq(&p.tally, tally)) {
            Some(i) => i,
            None => {
                self.pages.push(Page {
                    tally: tally.clone(),
                    unnamed: tally.count(0),
                    groups: FdMap::default(),
                });
                self.pages.len() - 1
            }
        };
        let page = &mut self.pages[i];
        let g = Tally::group_of(t.slot());
        // The group's count first: a ring between the two reads shows as a moved group next
        // time (a look at its words), never as a group that did not move.
        let group = page.groups.entry(g).or_insert_with(|| Group {
            seen: tally.group_count(g),
            entries: Vec::new(),
        });
        let seen = tally.count(t.slot());
        group.entries.push(Entry {
            fd,
            slot: t.slot(),
            seen,
        });
        self.before.remove(&fd).is_some_and(|b| b != seen)
    }

    /// A shared line rang: put the registrations whose word moved in `found`. False when the
    /// ring cannot be told this way (word 0 moved: a ring its peer could not name): every
    /// registration is then to be looked at. A ring that moved no word of ours was for no
    /// registration of this set: another set's, a blocking waiter's, a second wake-up for a
    /// ring already told, or the service's answer to a pending offer (`settle` looks for those
    /// on every wait); a registration not listed yet is a candidate anyway.
    /// `ours(fd, page, slot)`: is registration `fd` still that connection's? (A registration
    /// that went, or whose number now names another connection, leaves.)
    pub(super) fn rung(
        &mut self,
        found: &mut Vec<c_int>,
        ours: impl Fn(c_int, &Arc<Tally>, u32) -> bool,
    ) -> bool {
        let mut named = true;
        for page in &mut self.pages {
            let n = page.tally.count(0);
            if n != page.unnamed {
                page.unnamed = n;
                named = false;
            }
            let tally = &page.tally;
            for (&g, group) in page.groups.iter_mut() {
                let n = tally.group_count(g);
                if n == group.seen {
                    continue;
                }
                group.seen = n;
                group.entries.retain_mut(|e| {
                    let n = tally.count(e.slot);
                    if n == e.seen {
                        return true;
                    }
                    e.seen = n;
                    if !ours(e.fd, tally, e.slot) {
                        return false;
                    }
                    found.push(e.fd);
                    true
                });
            }
        }
        named
    }
}
