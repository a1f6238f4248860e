//! The rarer flags of an epoll registration (`Reg`), one bit each in one byte: with a `bool`
//! each, the registration was 64 bytes and its place in the set's table 72; with these, 56 and
//! 64 (the table keeps up to twice the room it needs: benches/results/heap-session17.md). Only
//! the epoll module's registrations use it; it never holds state of its own.

/// A one-shot registration that fired and waits for EPOLL_CTL_MOD.
pub(super) const DISABLED: u8 = 1;
/// Its connection's tally word is listed in the set's `tallies`.
pub(super) const TALLIED: u8 = 2;
/// A pending offer that has reached no server was reported writable (edge-triggered: once per
/// such spell; see `waiting::reaching_writable`).
pub(super) const TOLD_REACHING: u8 = 4;

/// A set of the flags above.
#[derive(Clone, Copy, Default)]
pub(super) struct Marks(u8);

impl Marks {
    pub(super) fn has(self, m: u8) -> bool {
        self.0 & m != 0
    }

    pub(super) fn set(&mut self, m: u8, on: bool) {
        if on {
            self.0 |= m;
        } else {
            self.0 &= !m;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_independent() {
        let mut m = Marks::default();
        assert!(!m.has(DISABLED) && !m.has(TALLIED) && !m.has(TOLD_REACHING));
        m.set(TALLIED, true);
        m.set(TOLD_REACHING, true);
        assert!(!m.has(DISABLED) && m.has(TALLIED) && m.has(TOLD_REACHING));
        m.set(TALLIED, false);
        assert!(!m.has(TALLIED) && m.has(TOLD_REACHING));
    }
}
