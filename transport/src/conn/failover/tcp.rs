//! Failover's I/O while a direction is off the ring: records on the TCP socket (sending them,
//! taking them in, readiness and FIONREAD from them), and the bytes a close drains. The state and
//! the decisions to leave and return are the parent module's. It never writes a record on a
//! connection whose peer is not pcisock (it runs only once the ring was in use).

use super::*;

impl Connection {
    // ---- sending on TCP -------------------------------------------------------------------

    /// `send` while our sending direction is on TCP: DATA records.
    pub(in crate::conn) fn send_switched(
        &self,
        bufs: &[&[u8]],
        nonblock: bool,
        timeout: Option<Duration>,
    ) -> Result<usize, IoError> {
        if self.fo.broken.load(Relaxed) {
            return Err(IoError::Reset);
        }
        {
            let _g = self.tx_lock.lock();
            if !self.fo.tx_off() {
                drop(_g);
                return self.send(bufs, nonblock, timeout);
            }
            if self.try_back_to_ring() {
                drop(_g);
                return self.send(bufs, nonblock, timeout);
            }
            if let Some(e) = self.send_blocked() {
                return Err(e);
            }
            let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
            let total: usize = bufs.iter().map(|b| b.len()).sum();
            let mut sent = 0usize;
            while sent < total {
                let rest = skip(bufs, sent);
                let want = total.saturating_sub(sent).min(MAX_RECORD as usize);
                let mut next = side(&self.fo.tx).sw;
                let Some(rec) = next.data(want) else { break };
                let hdr = rec.encode();
                let mut parts: Vec<&[u8]> = vec![&hdr];
                parts.extend(take(&rest, rec.len as usize));
                // The first byte of a record commits it: the rest follows even if we must
                // wait for it (a record is never left half sent).
                let n = loop {
                    match sys::send_nowait(self.tcp_fd(), &parts) {
                        Ok(n) if n > 0 => break Ok(n),
                        Ok(_) | Err(libc::EAGAIN) => {
                            if nonblock {
                                break Err(IoError::WouldBlock);
                            }
                            match self.wait_tcp(libc::POLLOUT, deadline) {
                                Ok(()) => continue,
                                Err(e) => break Err(e),
                            }
                        }
                        Err(e) => break Err(tcp_error(e)),
                    }
                };
                let n = match n {
                    Ok(n) => n,
                    Err(e) => {
                        if sent > 0 {
                            break;
                        }
                        return Err(e);
                    }
                };
                side(&self.fo.tx).sw = next;
                self.publish_tx_view(next.sent_on_tcp());
                let whole = hdr.len().saturating_add(rec.len as usize);
                if n < whole {
                    self.write_rest(&parts, n, whole)?;
                }
                sent = sent.saturating_add(rec.len as usize);
            }
            self.count(Counter::TcpTxBytes, sent as u64);
            if sent > 0 {
                self.note_sent();
            }
            Ok(sent)
        }
    }

    /// Write the rest of a record the kernel took `done` of `whole` bytes of, waiting as long
    /// as it takes (the peer reads, or its socket ends).
    fn write_rest(&self, parts: &[&[u8]], mut done: usize, whole: usize) -> Result<(), IoError> {
        while done < whole {
            let rest = skip(parts, done);
            match sys::send_nowait(self.tcp_fd(), &rest) {
                Ok(n) if n > 0 => done = done.saturating_add(n),
                Ok(_) | Err(libc::EAGAIN) | Err(libc::EINTR) => {
                    match self.wait_tcp(libc::POLLOUT, None) {
                        Ok(()) | Err(IoError::Interrupted) => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(tcp_error(e)),
            }
        }
        Ok(())
    }

    /// Write a whole control record (or any bytes) to the TCP socket.
    pub(super) fn write_all_tcp(&self, parts: &[&[u8]]) -> Result<(), IoError> {
        let whole = parts.iter().map(|p| p.len()).sum();
        self.write_rest(parts, 0, whole)
    }

    /// Wait for `events` on the TCP socket (bounded naps, so a deadline is honoured).
    fn wait_tcp(&self, events: i16, deadline: Option<Instant>) -> Result<(), IoError> {
        let nap = Duration::from_millis(100);
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            return Err(IoError::TimedOut);
        }
        match sys::poll1(
            self.tcp_fd(),
            events,
            Some(left.map_or(nap, |l| l.min(nap))),
        ) {
            Ok(r) if r & (libc::POLLERR | libc::POLLNVAL) != 0 && r & events == 0 => {
                Err(IoError::Reset)
            }
            Ok(_) => Ok(()),
            Err(libc::EINTR) => Err(IoError::Interrupted),
            Err(_) => Err(IoError::Reset),
        }
    }

    /// `sendfile` while on TCP: read the file, send it as records.
    pub(in crate::conn) fn send_file_switched(
        &self,
        fd: std::os::fd::RawFd,
        offset: Option<&mut i64>,
        count: usize,
        nonblock: bool,
        timeout: Option<Duration>,
    ) -> Result<usize, Result<i32, IoError>> {
        let mut buf = vec![0u8; count.min(MAX_RECORD as usize)];
        let off = offset.as_ref().map(|o| **o);
        let n = sys::read_file(fd, &mut buf, off).map_err(Ok)?;
        if n == 0 {
            return Ok(0);
        }
        let sent = self
            .send_switched(&[buf.get(..n).unwrap_or_default()], nonblock, timeout)
            .map_err(Err)?;
        match offset {
            Some(o) => *o = o.saturating_add(sent as i64),
            None if sent < n => {
                // The file position moved past what went out: put it back.
                let _ = sys::seek_back(fd, n.saturating_sub(sent) as i64);
            }
            None => {}
        }
        Ok(sent)
    }

    // ---- receiving --------------------------------------------------------------------------

    /// `recv` while our receiving direction is off the plain ring: drain the ring up to the
    /// END, then the bytes of DATA records, and back to the ring after a BACK.
    pub(in crate::conn) fn recv_switched(
        &self,
        bufs: &mut [&mut [u8]],
        flags: RecvFlags,
        timeout: Option<Duration>,
    ) -> Result<usize, IoError> {
        if self.fo.broken.load(Relaxed) {
            return Err(IoError::Reset);
        }
        self.back_if_idle();
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        if want == 0 {
            return Ok(0);
        }
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut drain_since: Option<Instant> = None;
        loop {
            let mut rx = side(&self.fo.rx);
            let cap = self.rx_ring.cap();
            let mode = rx.sw.get_or_insert_with(|| RxSwitch::new(cap)).mode();
            match mode {
                RxMode::Drain { end } => {
                    drop(rx);
                    let f = RecvFlags {
                        nonblock: true,
                        ..flags
                    };
                    let r = self.recv_ring(bufs, f, None, end);
                    let RxPos { head, off, .. } = self.rx_pos();
                    let mut rx = side(&self.fo.rx);
                    let done = match rx.sw.as_mut().map(|s| s.drained(head, off)) {
                        Some(Ok(d)) => d,
                        Some(Err(e)) => return Err(self.protocol_error("failover", e)),
                        None => false,
                    };
                    match r {
                        Ok(n) if n > 0 => return Ok(n),
                        Err(e) if e != IoError::WouldBlock => return Err(e),
                        _ => {}
                    }
                    if !done {
                        // Ring bytes the END announced that have not landed (yet).
                        let t0 = *drain_since.get_or_insert_with(Instant::now);
                        if t0.elapsed() > DRAIN_PATIENCE {
                            let e = ProtoError::BadRecord("ring bytes before the END never landed");
                            return Err(self.protocol_error("failover", e));
                        }
                        drop(rx);
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    continue;
                }
                RxMode::Ring if rx.deliver.is_empty() => {
                    // Between switches: the ring, unless a record waits (an END).
                    match self.pump(&mut rx) {
                        Ok(true) => continue,
                        Ok(false) => {}
                        Err(e) => return Err(e),
                    }
                    if !matches!(rx.sw.map(|s| s.mode()), Some(RxMode::Ring))
                        || !rx.deliver.is_empty()
                    {
                        continue;
                    }
                    // Nothing waits on TCP: back to the plain ring.
                    self.fo.rx_off.store(false, Relaxed);
                    drop(rx);
                    match self.recv_ring(bufs, flags, timeout, u64::MAX) {
                        // It stopped at the sender's next epoch again, whose END has not
                        // arrived on TCP yet: wait for it there.
                        Ok(0) if self.fo.rx_off() => {
                            if flags.nonblock {
                                return Err(IoError::WouldBlock);
                            }
                            self.wait_tcp(libc::POLLIN | libc::POLLRDHUP, deadline)?;
                        }
                        r => return r,
                    }
                    continue;
                }
                RxMode::Ring | RxMode::Tcp => {
                    if !rx.deliver.is_empty() {
                        let n = serve(&mut rx.deliver, bufs, flags.peek);
                        if !flags.peek {
                            self.count(Counter::TcpRxBytes, n as u64);
                            self.note_read();
                        }
                        rx.shed();
                        return Ok(n);
                    }
                    if mode == RxMode::Ring {
                        continue;
                    }
                    match self.pump(&mut rx) {
                        Ok(true) => continue,
                        Ok(false) => {}
                        Err(e) => return Err(e),
                    }
                    if rx.sw.is_some_and(|s| s.fin()) {
                        return Ok(0);
                    }
                    if let Some(end) = rx.end {
                        return end.map(|()| 0);
                    }
                    drop(rx);
                    if flags.nonblock {
                        return Err(IoError::WouldBlock);
                    }
                    match self.wait_tcp(libc::POLLIN | libc::POLLRDHUP, deadline) {
                        Ok(()) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    /// Take what the TCP socket has and parse it. Returns whether anything changed (bytes to
    /// deliver, a mode change); ends of the socket are recorded in `rx.end`.
    fn pump(&self, rx: &mut RxSide) -> Result<bool, IoError> {
        let r = self.pump_buffers(rx);
        rx.shed();
        r
    }

    /// [`Self::pump`]'s work.
    fn pump_buffers(&self, rx: &mut RxSide) -> Result<bool, IoError> {
        let mut changed = false;
        // Parse what we have first.
        loop {
            let Some(sw) = rx.sw.as_mut() else {
                return Ok(changed);
            };
            let mode = sw.mode();
            // Nothing is parsed while draining (TCP bytes never overtake ring bytes), nor an
            // END while bytes of the last TCP spell are still to deliver.
            if matches!(mode, RxMode::Drain { .. })
                || (mode == RxMode::Ring && !rx.deliver.is_empty())
            {
                return Ok(changed);
            }
            let RxPos { head, off, .. } = self.rx_pos();
            match rx.reader.step(&rx.raw, sw, head, off) {
                Err(e) => return Err(self.protocol_error("failover", e)),
                Ok(Step::Payload(n)) => {
                    rx.deliver.extend(rx.raw.drain(..n));
                    changed = true;
                }
                Ok(Step::RendezvousArea(ev)) => {
                    rx.raw.drain(..RECORD_HDR);
                    changed = true;
                    match ev {
                        RxEvent::Switched { .. } => {
                            if self.settings.strict {
                                return Err(self.trip());
                            }
                            // The peer left the ring: so do we, for our direction (unless
                            // its BACK is already behind the END: a stale END read late).
                            if !back_follows(&rx.raw) {
                                self.leave_ring_soon();
                            }
                        }
                        RxEvent::Back => {
                            // The ring goes on in the sender's next epoch; give it every
                            // credit now (one returned while the link was down may be lost).
                            let RxPos { head, off, seq } = self.rx_pos();
                            self.cur.rx_returned.store(u64::MAX, Relaxed);
                            self.return_credits(head, off, next_epoch(seq), true);
                        }
                        RxEvent::Data { .. } | RxEvent::Shut => {}
                    }
                }
                Ok(Step::NeedMore) => {
                    if rx.end.is_some() {
                        return Ok(changed);
                    }
                    let at = rx.raw.len();
                    let room = read_room(&rx.raw, TCP_CHUNK);
                    rx.raw.resize(at.saturating_add(room), 0);
                    let r =
                        sys::recv_nowait(self.tcp_fd(), rx.raw.get_mut(at..).unwrap_or_default());
                    match r {
                        Ok(0) => {
                            rx.raw.truncate(at);
                            rx.end = Some(Ok(()));
                            return Ok(true);
                        }
                        Ok(n) => {
                            rx.raw.truncate(at.saturating_add(n));
                            grow_room(&mut rx.raw, room, n);
                            // Taken off the socket outside the application's read (readiness):
                            // the kernel drops the edge-triggered event of bytes already read,
                            // so this is the edge.
                            self.fo.note_event();
                            changed = true;
                        }
                        Err(e) => {
                            rx.raw.truncate(at);
                            if e == libc::EAGAIN || e == libc::EINTR {
                                self.fo.spoke.store(false, Relaxed);
                                return Ok(changed);
                            }
                            rx.end = Some(Err(tcp_error(e)));
                            return Ok(true);
                        }
                    }
                }
            }
        }
    }

    /// A sending side on TCP that no send is using comes back when it may (an application
    /// that only reads on this connection never sends to bring it back).
    pub(in crate::conn) fn back_if_idle(&self) {
        if self.fo.tx_off() && self.tx_view_current() {
            if let Some(_g) = self.tx_lock.try_lock() {
                if self.fo.tx_off() {
                    self.try_back_to_ring();
                }
            }
        }
    }

    /// Readiness while either direction is off the ring, or about to leave it (a switch
    /// was asked for while a send held the lock), or the peer spoke on the TCP socket. The
    /// records waiting there are taken in first: a socket that holds only an END or a BACK is
    /// not a byte to read (a blocking reader told otherwise would sleep in its read).
    pub(in crate::conn) fn readiness_switched(&self) -> Readiness {
        self.back_if_idle();
        let broken = self.fo.broken.load(Relaxed);
        let ev = sys::poll1(
            self.tcp_fd(),
            libc::POLLIN | libc::POLLOUT | libc::POLLRDHUP,
            Some(Duration::ZERO),
        )
        .unwrap_or(libc::POLLERR);
        if !self.fo.rx_off() && ev & libc::POLLIN != 0 {
            // Bytes on the socket: the peer's records (it switched), or its end.
            let _ = self.tcp_gone();
        }
        if self.fo.spoke() {
            self.fo.engage_rx();
        }
        let readable = if self.fo.rx_off() {
            self.readable_off_ring()
        } else {
            // The ring, or the peer's kernel closing the socket (it died: EOF or reset).
            self.data_ready()
                || self.peer_flags() & (FLAG_FIN | FLAG_RST) != 0
                || ev & (libc::POLLRDHUP | libc::POLLHUP) != 0
        };
        let writable = if self.fo.tx_off() {
            ev & libc::POLLOUT != 0
        } else {
            self.ready_ring(false)
        };
        let st = self.shared_state();
        let reset = broken || ev & libc::POLLERR != 0;
        let rdhup = ev & libc::POLLRDHUP != 0;
        Readiness {
            readable: readable || reset,
            writable: writable || reset,
            rdhup,
            hup: reset || (rdhup || st & ST_SHUT_RD != 0) && st & ST_SHUT_WR != 0,
            error: reset,
        }
    }

    /// Would a read return now (bytes, the end of the stream, an error) while our receiving
    /// side is off the plain ring? Takes in what the TCP socket holds and parses what may be
    /// parsed (as `recv_switched` would), and notices a drain that is complete.
    fn readable_off_ring(&self) -> bool {
        let mut rx = side(&self.fo.rx);
        let cap = self.rx_ring.cap();
        loop {
            let mode = rx.sw.get_or_insert_with(|| RxSwitch::new(cap)).mode();
            if !rx.deliver.is_empty() || rx.end.is_some() {
                return true;
            }
            match mode {
                RxMode::Drain { .. } => {
                    let RxPos { head, off, .. } = self.rx_pos();
                    match rx.sw.as_mut().map(|s| s.drained(head, off)) {
                        Some(Ok(true)) => continue,
                        Some(Ok(false)) => {
                            return self.data_ready() || self.peer_flags() & FLAG_RST != 0
                        }
                        // The read reports it.
                        Some(Err(_)) | None => return true,
                    }
                }
                RxMode::Tcp => match self.pump(&mut rx) {
                    Ok(true) => continue,
                    Ok(false) => return rx.sw.is_some_and(|s| s.fin()),
                    Err(_) => return true,
                },
                RxMode::Ring => match self.pump(&mut rx) {
                    Ok(true) => continue,
                    Ok(false) => {
                        // Nothing waits on TCP: back to the plain ring (as `recv_switched`
                        // does; a side that never reads comes back too).
                        self.fo.rx_off.store(false, Relaxed);
                        return self.data_ready() || self.peer_flags() & (FLAG_FIN | FLAG_RST) != 0;
                    }
                    Err(_) => return true,
                },
            }
        }
    }

    /// Bytes ready to read (FIONREAD) while our receiving side is off the plain ring (or the
    /// peer spoke on the TCP socket): the stream bytes taken from DATA records, the ring's
    /// bytes up to the END while draining (and all of them between switches), and the payload
    /// of the DATA records already taken in that follow the END. Headers are not stream bytes.
    pub(in crate::conn) fn readable_switched(&self) -> usize {
        if self.fo.spoke() {
            self.fo.engage_rx();
        }
        // Take in and parse what may be parsed now (a finished drain moves on to TCP).
        self.readable_off_ring();
        let (queued, limit) = {
            let mut rx = side(&self.fo.rx);
            let mut n = rx.deliver.len();
            let limit = match rx.sw.map(|s| s.mode()) {
                Some(RxMode::Drain { end }) => {
                    self.take_in_raw(&mut rx);
                    n = n.saturating_add(payload_after_drain(&rx, end));
                    Some(end)
                }
                Some(RxMode::Ring) | None => Some(u64::MAX),
                Some(RxMode::Tcp) => None,
            };
            (n, limit)
        };
        // The ring is counted under its own lock, after ours (a waiting reader holds the
        // ring's and may take ours).
        queued.saturating_add(limit.map_or(0, |l| self.ring_bytes(l)))
    }

    /// While draining, take what the TCP socket holds without parsing it (the records follow
    /// the ring's bytes), up to one chunk in all.
    fn take_in_raw(&self, rx: &mut RxSide) {
        let at = rx.raw.len();
        if at >= TCP_CHUNK || rx.end.is_some() {
            return;
        }
        let room = read_room(&rx.raw, TCP_CHUNK.saturating_sub(at));
        rx.raw.resize(at.saturating_add(room), 0);
        let r = sys::recv_nowait(self.tcp_fd(), rx.raw.get_mut(at..).unwrap_or_default());
        match r {
            Ok(0) => {
                rx.raw.truncate(at);
                rx.end = Some(Ok(()));
            }
            Ok(n) => {
                rx.raw.truncate(at.saturating_add(n));
                grow_room(&mut rx.raw, room, n);
                self.fo.note_event();
            }
            Err(e) => {
                rx.raw.truncate(at);
                if e != libc::EAGAIN && e != libc::EINTR {
                    rx.end = Some(Err(tcp_error(e)));
                }
            }
        }
    }

    /// Is there something for a waiter (`read`: to read; else room to send) off the ring?
    pub(in crate::conn) fn ready_switched(&self, read: bool) -> bool {
        let r = self.readiness_switched();
        if read {
            r.readable
        } else {
            r.writable
        }
    }

    /// Before the last close: bytes left on the TCP socket by a switch the application never
    /// read up to (an END after the ring's FIN) would make the kernel reset the peer.
    pub(in crate::conn) fn drain_tcp_at_close(&self) {
        if !(self.fo.rx_off() || self.fo.spoke() || self.fo.tx_off()) {
            return;
        }
        // Only our own socket: the application may have closed the fd already, and the number
        // may name another file now.
        let ours = atomic_u64_at(&self.own_block, L_SOCK_INODE).load(Relaxed);
        if ours == 0 || sys::inode(self.tcp_fd()) != Some(ours) {
            return;
        }
        let mut buf = [0u8; 4096];
        for _ in 0..64 {
            if !matches!(sys::recv_nowait(self.tcp_fd(), &mut buf), Ok(n) if n > 0) {
                break;
            }
        }
        if let Some(s) = peek(&self.fo.tx, |tx| tx.since) {
            self.count(Counter::TcpMicros, s.elapsed().as_micros() as u64);
        }
    }

    /// Time on TCP so far, with the current spell, in microseconds.
    pub fn tcp_micros(&self) -> u64 {
        let spell = peek(&self.fo.tx, |tx| tx.since).map_or(0, |s| s.elapsed().as_micros() as u64);
        self.counter(Counter::TcpMicros).saturating_add(spell)
    }

    /// Do our sends go to the TCP socket now (a waiting writer waits for room there)?
    pub fn sending_on_tcp(&self) -> bool {
        self.fo.tx_off()
    }

    /// Is the connection carried over TCP now (either direction)?
    pub fn on_tcp(&self) -> bool {
        self.fo.tx_off() || self.fo.rx_off()
    }

    fn note_read(&self) {
        if self.sent_since_read.load(Relaxed) {
            self.sent_since_read.store(false, Relaxed);
        }
    }
}

/// The payload bytes of the DATA records in `rx.raw` that follow an END at `end` whose ring
/// part is still being drained (up to a BACK, after which the stream goes on in the ring).
fn payload_after_drain(rx: &RxSide, end: u64) -> usize {
    let Some(mut sw) = rx.sw else { return 0 };
    if sw.drained(end, 0) != Ok(true) {
        return 0;
    }
    let mut reader = rx.reader;
    let (mut at, mut n) = (0usize, 0usize);
    loop {
        let input = rx.raw.get(at..).unwrap_or_default();
        match reader.step(input, &mut sw, end, 0) {
            Ok(Step::Payload(k)) => {
                at = at.saturating_add(k);
                n = n.saturating_add(k);
            }
            Ok(Step::RendezvousArea(RxEvent::Data { .. })) => at = at.saturating_add(RECORD_HDR),
            _ => return n,
        }
    }
}

/// Copy stream bytes out of `q` into `bufs` (leaving them with `peek`).
fn serve(q: &mut VecDeque<u8>, bufs: &mut [&mut [u8]], peek: bool) -> usize {
    let mut n = 0usize;
    let (a, b) = q.as_slices();
    let mut src = a.iter().chain(b.iter());
    'out: for buf in bufs.iter_mut() {
        for d in buf.iter_mut() {
            match src.next() {
                Some(s) => {
                    *d = *s;
                    n = n.saturating_add(1);
                }
                None => break 'out,
            }
        }
    }
    if !peek {
        q.drain(..n);
    }
    n
}

/// The slices of `bufs` after the first `n` bytes.
pub(in crate::conn) fn skip<'a>(bufs: &[&'a [u8]], mut n: usize) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(bufs.len());
    for b in bufs {
        if n >= b.len() {
            n = n.saturating_sub(b.len());
        } else {
            out.push(b.get(n..).unwrap_or_default());
            n = 0;
        }
    }
    out
}

/// `bufs` (receive buffers) without their first `n` bytes.
pub(in crate::conn) fn skip_mut<'a>(bufs: &'a mut [&mut [u8]], mut n: usize) -> Vec<&'a mut [u8]> {
    let mut out = Vec::with_capacity(bufs.len());
    for b in bufs.iter_mut() {
        if n >= b.len() {
            n = n.saturating_sub(b.len());
        } else {
            out.push(b.get_mut(n..).unwrap_or_default());
            n = 0;
        }
    }
    out
}

/// The first `n` bytes of `bufs`.
fn take<'a>(bufs: &[&'a [u8]], mut n: usize) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(bufs.len());
    for b in bufs {
        if n == 0 {
            break;
        }
        let k = b.len().min(n);
        out.push(b.get(..k).unwrap_or_default());
        n = n.saturating_sub(k);
    }
    out
}

fn tcp_error(e: i32) -> IoError {
    match e {
        libc::EPIPE => IoError::BrokenPipe,
        libc::EAGAIN => IoError::WouldBlock,
        libc::EINTR => IoError::Interrupted,
        _ => IoError::Reset,
    }
}

/// The room of the next read off the TCP socket into `raw`: the buffer's spare capacity (what
/// earlier reads grew it to, `grow_room`), at least `TCP_FIRST`, at most `most` (a chunk).
fn read_room(raw: &Vec<u8>, most: usize) -> usize {
    raw.capacity()
        .saturating_sub(raw.len())
        .max(TCP_FIRST)
        .min(most)
}

/// A read of `n` bytes filled its `room`: the socket holds more, so the next read gets twice
/// the room (up to a chunk), as a stream on TCP needs.
fn grow_room(raw: &mut Vec<u8>, room: usize, n: usize) {
    if n >= room {
        raw.reserve(room.saturating_mul(2).min(TCP_CHUNK));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_off_the_socket_start_small_and_grow_to_a_chunk_while_they_fill() {
        let mut raw = Vec::new();
        assert_eq!(read_room(&raw, TCP_CHUNK), TCP_FIRST);
        // A request (a late start): the buffer stays small.
        raw.resize(TCP_FIRST, 0);
        raw.truncate(100);
        grow_room(&mut raw, TCP_FIRST, 100);
        raw.clear();
        assert_eq!(read_room(&raw, TCP_CHUNK), TCP_FIRST);
        // A stream: each read fills its room, and the room doubles up to a chunk.
        let mut rooms = Vec::new();
        for _ in 0..10 {
            let room = read_room(&raw, TCP_CHUNK);
            rooms.push(room);
            raw.resize(room, 0);
            grow_room(&mut raw, room, room);
            raw.clear();
        }
        assert!(rooms.windows(2).all(|w| w.first() <= w.last()), "{rooms:?}");
        assert_eq!(rooms.last(), Some(&TCP_CHUNK), "{rooms:?}");
        // Never more than asked for (a drain's rest of its chunk).
        assert_eq!(read_room(&raw, 1000), 1000);
    }
}
