//! The processes holding a connection's ends, as `Conn::holders` keeps them: the first two
//! (the client's and the server's process, what almost every connection has) inline, any more
//! (forked children, new images that `Hold`) in a list. A `Vec` of them was a 64-byte
//! allocation per connection (benches/results/heap-session17.md). Used by the service's records
//! only; it never holds pid 0 (its mark of a free place).

/// (pid, end: 0 client, 1 server), each once.
pub(super) type Holder = (u32, usize);

/// A set of [`Holder`]s. Pid 0 marks an empty inline place (no process has pid 0).
#[derive(Default)]
pub(super) struct Holders {
    two: [Holder; 2],
    more: Vec<Holder>,
}

impl Holders {
    pub(super) fn iter(&self) -> impl Iterator<Item = &Holder> {
        self.two.iter().filter(|h| h.0 != 0).chain(self.more.iter())
    }

    pub(super) fn contains(&self, h: &Holder) -> bool {
        h.0 != 0 && self.iter().any(|x| x == h)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// Adds `h` (pid 0 is not a process: ignored).
    pub(super) fn push(&mut self, h: Holder) {
        if h.0 == 0 {
            return;
        }
        match self.two.iter_mut().find(|x| x.0 == 0) {
            Some(free) => *free = h,
            None => self.more.push(h),
        }
    }

    /// Keeps the holders `keep` says to.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&Holder) -> bool) {
        for x in &mut self.two {
            if x.0 != 0 && !keep(x) {
                *x = (0, 0);
            }
        }
        self.more.retain(&mut keep);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn holders_inline_and_beyond() {
        let mut h = Holders::default();
        assert!(h.is_empty() && !h.contains(&(0, 0)));
        h.push((10, 0));
        h.push((20, 1));
        h.push((30, 1));
        h.push((0, 1));
        assert_eq!(h.more.len(), 1, "the third goes to the list");
        let all: Vec<Holder> = h.iter().copied().collect();
        assert_eq!(all, [(10, 0), (20, 1), (30, 1)]);
        assert!(h.contains(&(20, 1)) && !h.contains(&(20, 0)));
        h.retain(|x| x.0 != 10);
        assert!(!h.contains(&(10, 0)) && h.contains(&(30, 1)));
        // A freed inline place is used again.
        h.push((40, 0));
        assert_eq!(h.more.len(), 1);
        assert_eq!(h.iter().count(), 3);
        h.retain(|_| false);
        assert!(h.is_empty());
    }
}
