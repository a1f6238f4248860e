//! The codec's message kinds (requests below 0x80, replies above) and each kind's shape: how
//! many body words and descriptors it has. It never admits a kind it does not list: such a
//! message is refused.

use super::END_COUNTERS;

// Kinds: requests below 0x80, replies above.
pub(super) const K_HELLO: u16 = 1;
pub(super) const K_LISTEN: u16 = 2;
pub(super) const K_UNLISTEN: u16 = 3;
pub(super) const K_CONNECT: u16 = 4;
pub(super) const K_CANCEL: u16 = 5;
pub(super) const K_ACCEPT: u16 = 6;
pub(super) const K_CLOSE: u16 = 7;
pub(super) const K_STATUS: u16 = 8;
pub(super) const K_STOP: u16 = 9;
pub(super) const K_HOLD: u16 = 10;
pub(super) const K_LIST: u16 = 11;
pub(super) const K_FALLBACK: u16 = 12;
pub(super) const K_HISTORY: u16 = 13;
pub(super) const K_NAMESPACE: u16 = 14;
pub(super) const K_PLAIN: u16 = 15;
pub(super) const K_REFETCH: u16 = 16;
pub(super) const K_FORKED: u16 = 17;
pub(super) const K_WELCOME: u16 = 0x81;
pub(super) const K_LISTENING: u16 = 0x82;
pub(super) const K_OFFERED: u16 = 0x83;
pub(super) const K_PAIRED: u16 = 0x84;
pub(super) const K_DECLINED: u16 = 0x85;
pub(super) const K_DONE: u16 = 0x86;
pub(super) const K_STATUS_REPLY: u16 = 0x87;
pub(super) const K_REFUSED: u16 = 0x88;
pub(super) const K_REOFFERED: u16 = 0x89;
pub(super) const K_ENTRY: u16 = 0x8A;
pub(super) const K_FALLEN: u16 = 0x8B;
pub(super) const K_BRIDGED: u16 = 0x8C;
pub(super) const K_AGAIN: u16 = 0x8D;

/// Words of an `Entry`: its 9, a word of flags (bit 0: the client end is on TCP, bit 1: the
/// server end), each end's counters.
pub(super) const ENTRY_WORDS: usize = 10 + 2 * END_COUNTERS;

/// (body words, descriptors) of each kind; `None` for an unknown kind.
pub(super) fn shape(kind: u16) -> Option<(usize, usize)> {
    Some(match kind {
        K_HELLO => (1, 2),
        K_LISTEN | K_HOLD | K_NAMESPACE => (0, 1),
        K_ACCEPT => (2, 1),
        K_CONNECT => (5, 1),
        K_UNLISTEN => (1, 0),
        K_CANCEL => (3, 0),
        K_CLOSE => (3, 0),
        K_PLAIN | K_REFETCH => (2, 0),
        K_STATUS | K_STOP | K_LIST | K_HISTORY | K_FORKED => (0, 0),
        K_FALLBACK => (2, 1),
        K_FALLEN => (8, 0),
        K_ENTRY => (ENTRY_WORDS, 0),
        K_WELCOME => (4, 0),
        K_LISTENING | K_OFFERED => (1, 0),
        K_REOFFERED => (2, 1),
        K_PAIRED => (7, 4),
        K_BRIDGED => (9, 0),
        K_AGAIN => (9, 0),
        K_DECLINED | K_REFUSED => (1, 0),
        K_DONE => (0, 0),
        K_STATUS_REPLY => (11, 0),
        _ => return None,
    })
}
