//! Rendezvous records written by the peer (offers, answers, listener entries): decoding and
//! validation never panic, and a ring location that validates lies inside its window.
#![no_main]

use libfuzzer_sys::fuzz_target;
use transport::proto::{Answer, ListenerEntry, Offer, ANSWER_SIZE, LISTENER_SIZE, OFFER_SIZE};

fuzz_target!(|data: &[u8]| {
    let mut o = [0u8; OFFER_SIZE - 8];
    let n = data.len().min(o.len());
    o[..n].copy_from_slice(&data[..n]);
    const MW: u64 = 64 << 20;
    if let Ok(offer) = Offer::decode(&o) {
        if let Ok(ring) = offer.ring.check(2, MW, 64) {
            assert!(offer.ring.offset + offer.ring.len <= MW);
            assert!(offer.ring.mw < 2 && offer.ring.db_bit < 64);
            assert_eq!(ring.cap() + transport::proto::BLOCK_OVERHEAD, offer.ring.len);
        }
    }
    let mut a = [0u8; ANSWER_SIZE - 8];
    let n = data.len().min(a.len());
    a[..n].copy_from_slice(&data[..n]);
    if let Ok(ans) = Answer::decode(&a) {
        let _ = ans.ring.check(8, MW, 16);
    }
    let mut l = [0u8; LISTENER_SIZE - 8];
    let n = data.len().min(l.len());
    l[..n].copy_from_slice(&data[..n]);
    let _ = ListenerEntry::decode(&l);
});
