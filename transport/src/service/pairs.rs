//! A pairing's descriptors resolved to this process's copies: the lines (and tally pages) it
//! keeps once each, the segment mapped or taken from the mappings it kept (`segcache`), or,
//! for a pairing named `Again` whose parts this process let go of, asked for again. Called by
//! the service link as pairings arrive; it never takes a kept mapping for a segment other than
//! the one the service named.

use fabric::Pairing;

use super::Link;
use crate::conn::ServicePair;

impl Link {
    /// A pairing the service `service` sent, with its lines resolved to our copies and its
    /// segment mapped (`None`: it cannot be).
    pub(super) fn pair(&self, service: u32, p: fabric::Paired) -> Option<ServicePair> {
        let peer_id = p.peer_line.id;
        let peer_line = self.line(service, p.peer_line);
        let peer_tally = self.tally(service, peer_id, p.peer_tally);
        self.keep_recent(&peer_line, &peer_tally);
        let (segment, identity) = self.segments.map(&p.segment, p.offset, p.ring_bytes)?;
        Some(ServicePair {
            conn: p.conn,
            ring_bytes: p.ring_bytes,
            server: p.server,
            segment,
            identity,
            own_line: self.line(service, p.own_line),
            peer_line,
            own_tally: self.own_tally(),
            peer_tally,
        })
    }

    /// A pairing named `Again`: this process's kept mapping of the segment and the lines it
    /// has; else (it let go of one meanwhile: a full segment cache, a line past its last
    /// connection) the descriptors, asked for.
    fn pair_again(&self, service: u32, a: fabric::Again) -> Option<ServicePair> {
        if let Some(p) = self.kept_pair(service, &a) {
            return Some(p);
        }
        let p = self.with(|c| c.refetch(a.conn, a.server)).ok()?;
        self.pair(service, p)
    }

    fn kept_pair(&self, service: u32, a: &fabric::Again) -> Option<ServicePair> {
        let own_line = self.named_line(service, a.own_line)?;
        let peer_line = self.named_line(service, a.peer_line)?;
        let peer_tally = Some(self.named_tally(service, a.peer_line)?);
        let (segment, identity) = self.segments.take_named(a)?;
        self.keep_recent(&peer_line, &peer_tally);
        Some(ServicePair {
            conn: a.conn,
            ring_bytes: a.ring_bytes,
            server: a.server,
            segment,
            identity,
            own_line,
            peer_line,
            own_tally: self.own_tally(),
            peer_tally,
        })
    }

    /// A pairing's plain count (`Request::Plain`) and its segment and lines (`None`: they
    /// cannot be had); any other answer given back.
    pub(super) fn resolve(
        &self,
        service: u32,
        p: Pairing,
    ) -> Result<(u64, Option<ServicePair>), Pairing> {
        match p {
            Pairing::Paired(p) => Ok((p.plain, self.pair(service, p))),
            Pairing::Again(a) => Ok((a.plain, self.pair_again(service, a))),
            other => Err(other),
        }
    }
}
