//! iperf3 (3.12) runners and the parser of its JSON reports (`-J`). The server runs as `iperf3 -s -1` and exits
//! after one test, printing its JSON then.

/// The largest iperf3 write block the tests use (`-l`, default 128 KiB).
const BLOCK_MAX: u64 = 128 << 10;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::iperf2::Amount;
use crate::proc::{command, Proc};
use crate::PreloadEnv;

/// A `sum_sent` / `sum_received` (or one stream's `sender` / `receiver`) summary.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Iperf3Sum {
    /// Bytes.
    pub bytes: u64,
    /// Bits per second.
    pub bits_per_second: f64,
    /// Seconds.
    pub seconds: f64,
}

/// One data stream's end summary.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Iperf3Stream {
    /// The sender's figures.
    pub sender: Iperf3Sum,
    /// The receiver's figures.
    pub receiver: Iperf3Sum,
}

/// What one iperf3 process reported.
///
/// The client's JSON carries both sides' figures (the server sends its results back). The server's JSON only
/// carries its own side: `sum_received` when it received (forward), `sum_sent` when it sent (`-R`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Iperf3Output {
    /// `start.test_start.num_streams`.
    pub num_streams: u32,
    /// `start.test_start.reverse`.
    pub reverse: bool,
    /// `end.sum_sent`.
    pub sum_sent: Iperf3Sum,
    /// `end.sum_received`.
    pub sum_received: Iperf3Sum,
    /// `end.streams[]`.
    pub streams: Vec<Iperf3Stream>,
    /// `(local_port, remote_port)` of each data connection, from `start.connected[]`.
    pub connected: Vec<(u16, u16)>,
}

fn sum_of(v: &Value, what: &str) -> Result<Iperf3Sum, String> {
    let num = |k: &str| {
        v.get(k)
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("iperf3 JSON: {what}.{k} missing"))
    };
    let bytes = v
        .get("bytes")
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("iperf3 JSON: {what}.bytes missing"))?;
    Ok(Iperf3Sum {
        bytes,
        bits_per_second: num("bits_per_second")?,
        seconds: num("seconds")?,
    })
}

/// Parses `iperf3 -J` output. A JSON `"error"` (iperf3's way of failing) is returned as `Err`.
pub fn parse_iperf3_json(text: &str) -> Result<Iperf3Output, String> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| format!("iperf3 output is not JSON ({e}): {text:.500}"))?;
    if let Some(err) = v.get("error").and_then(Value::as_str) {
        return Err(format!("iperf3 reported an error: {err}"));
    }
    let test_start = &v["start"]["test_start"];
    let end = &v["end"];
    let mut streams = Vec::new();
    for (i, s) in end["streams"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        streams.push(Iperf3Stream {
            sender: sum_of(&s["sender"], &format!("end.streams[{i}].sender"))?,
            receiver: sum_of(&s["receiver"], &format!("end.streams[{i}].receiver"))?,
        });
    }
    let mut connected = Vec::new();
    for c in v["start"]["connected"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let port = |k: &str| c[k].as_u64().and_then(|p| u16::try_from(p).ok());
        if let (Some(l), Some(r)) = (port("local_port"), port("remote_port")) {
            connected.push((l, r));
        }
    }
    Ok(Iperf3Output {
        num_streams: test_start["num_streams"]
            .as_u64()
            .ok_or("iperf3 JSON: start.test_start.num_streams missing")?
            as u32,
        reverse: test_start["reverse"].as_u64().unwrap_or(0) != 0,
        sum_sent: sum_of(&end["sum_sent"], "end.sum_sent")?,
        sum_received: sum_of(&end["sum_received"], "end.sum_received")?,
        streams,
        connected,
    })
}

impl Iperf3Output {
    /// Checks a client's report: `streams` streams, the sender's total `bytes` (up to one block more per stream,
    /// see below), the receiver's total
    /// positive and no more than that, per-stream figures adding up to the totals.
    ///
    /// The receiver's total is not required to equal `bytes`: iperf3 (3.12) stops counting when the sender's
    /// TEST_END arrives on the control connection, so bytes still in flight (in socket buffers, or in a ring)
    /// are not counted, and a fast run can show tens of MiB fewer received than sent, even over plain TCP.
    /// Exactness is the echo test's job.
    pub fn check_client(&self, streams: u32, bytes: u64) -> Result<(), String> {
        let mut errors = Vec::new();
        if self.num_streams != streams || self.streams.len() != streams as usize {
            errors.push(format!(
                "{} streams ({} summaries), expected {streams}",
                self.num_streams,
                self.streams.len()
            ));
        }
        // iperf3 (3.12) checks `-n` once per pass over its streams, so with several streams the
        // last pass may overshoot by up to one block (128 KiB by default) per extra stream; and
        // `iperf_send` skips the check on the last send of a batch (`multisend > 1 && …`), so a
        // batch that reaches the limit one send early sends one block more, even with one
        // stream (seen when the sends never block, as on the NTB path).
        let slack = streams.max(1) as u64 * BLOCK_MAX;
        if self.sum_sent.bytes < bytes || self.sum_sent.bytes > bytes + slack {
            errors.push(format!(
                "sum_sent.bytes {} not in {bytes}..={}",
                self.sum_sent.bytes,
                bytes + slack
            ));
        }
        if self.sum_received.bytes == 0 || self.sum_received.bytes > self.sum_sent.bytes {
            errors.push(format!(
                "sum_received.bytes {} not in 1..={}",
                self.sum_received.bytes, self.sum_sent.bytes
            ));
        }
        let sent: u64 = self.streams.iter().map(|s| s.sender.bytes).sum();
        let received: u64 = self.streams.iter().map(|s| s.receiver.bytes).sum();
        if sent != self.sum_sent.bytes || received != self.sum_received.bytes {
            errors.push(format!(
                "per-stream sums {sent}/{received} != totals {}/{}",
                self.sum_sent.bytes, self.sum_received.bytes
            ));
        }
        if self.sum_received.bits_per_second <= 0.0 {
            errors.push("receive rate is 0".to_owned());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!("iperf3 client: {}", errors.join("; ")))
        }
    }

    /// Checks that the server's own side agrees with the client's report of it: what it received (forward) or
    /// sent (`-R`).
    pub fn check_server_agrees(&self, client: &Iperf3Output) -> Result<(), String> {
        if self.reverse != client.reverse {
            return Err(format!(
                "iperf3 server: reverse = {}, client: {}",
                self.reverse, client.reverse
            ));
        }
        let (own, theirs, what) = if self.reverse {
            (self.sum_sent, client.sum_sent, "sum_sent")
        } else {
            (self.sum_received, client.sum_received, "sum_received")
        };
        if own.bytes != theirs.bytes {
            return Err(format!(
                "iperf3 server: {what}.bytes {} != the client's {}",
                own.bytes, theirs.bytes
            ));
        }
        Ok(())
    }
}

/// An `iperf3 -s -1 -J -p PORT` process.
#[derive(Debug)]
pub struct Iperf3Server {
    /// The server process.
    pub proc: Proc,
    /// Its port.
    pub port: u16,
}

impl Iperf3Server {
    /// Starts the server (preloaded or plain) with logs in `dir` and waits until it listens.
    pub fn start(
        port: u16,
        preload: Option<&PreloadEnv>,
        dir: &Path,
    ) -> Result<Iperf3Server, String> {
        let port_s = port.to_string();
        let cmd = command("iperf3", &["-s", "-1", "-J", "-p", &port_s], preload);
        let mut proc = Proc::spawn("iperf3-server", cmd, dir)?;
        proc.wait_listening(port, Duration::from_secs(10))?;
        Ok(Iperf3Server { proc, port })
    }

    /// Waits (at most `timeout`) for the one-off server to exit 0 and returns its report.
    pub fn finish(&mut self, timeout: Duration) -> Result<Iperf3Output, String> {
        self.proc.wait_success(timeout)?;
        parse_iperf3_json(&self.proc.stdout()).map_err(|e| format!("{e}\n{}", self.proc.describe()))
    }
}

/// An `iperf3 -c 127.0.0.1 -J …` client.
#[derive(Debug, Clone)]
pub struct Iperf3Client {
    /// Server port.
    pub port: u16,
    /// `-n` (in total over all streams) or `-t`.
    pub amount: Amount,
    /// `-P`.
    pub parallel: u32,
    /// `-R`: the server sends.
    pub reverse: bool,
    /// `-Z`: the sender uses sendfile.
    pub zerocopy: bool,
    /// `-l`.
    pub len: Option<u64>,
    /// Extra arguments.
    pub extra: Vec<String>,
}

impl Iperf3Client {
    /// A one-stream forward client sending `bytes`.
    pub fn new(port: u16, bytes: u64) -> Iperf3Client {
        Iperf3Client {
            port,
            amount: Amount::Bytes(bytes),
            parallel: 1,
            reverse: false,
            zerocopy: false,
            len: None,
            extra: Vec::new(),
        }
    }

    /// The command-line arguments.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = ["-c", "127.0.0.1", "-p", &self.port.to_string(), "-J"]
            .map(String::from)
            .into();
        match self.amount {
            Amount::Bytes(n) => a.extend(["-n".into(), n.to_string()]),
            Amount::Secs(s) => a.extend(["-t".into(), s.to_string()]),
        }
        if self.parallel > 1 {
            a.extend(["-P".into(), self.parallel.to_string()]);
        }
        if self.reverse {
            a.push("-R".into());
        }
        if self.zerocopy {
            a.push("-Z".into());
        }
        if let Some(len) = self.len {
            a.extend(["-l".into(), len.to_string()]);
        }
        a.extend(self.extra.iter().cloned());
        a
    }

    /// Runs the client to completion (at most `timeout`); it must exit 0 and report no error.
    pub fn run(
        &self,
        preload: Option<&PreloadEnv>,
        dir: &Path,
        timeout: Duration,
    ) -> Result<(Proc, Iperf3Output), String> {
        let mut proc = Proc::spawn(
            "iperf3-client",
            command("iperf3", &self.args(), preload),
            dir,
        )?;
        proc.wait_success(timeout)?;
        let out =
            parse_iperf3_json(&proc.stdout()).map_err(|e| format!("{e}\n{}", proc.describe()))?;
        Ok((proc, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed from a real `iperf3 -c … -n 16M -P 2 -R -J` run on this machine (client side).
    const CLIENT_R_P2: &str = r#"{
 "start": {"connected": [
    {"socket": 5, "local_host": "127.0.0.1", "local_port": 58906, "remote_host": "127.0.0.1", "remote_port": 5394},
    {"socket": 7, "local_host": "127.0.0.1", "local_port": 58916, "remote_host": "127.0.0.1", "remote_port": 5394}],
  "version": "iperf 3.12",
  "test_start": {"protocol": "TCP", "num_streams": 2, "blksize": 131072, "omit": 0, "duration": 0, "bytes": 16777216, "blocks": 0, "reverse": 1, "tos": 0, "target_bitrate": 0}},
 "intervals": [],
 "end": {
  "streams": [
   {"sender": {"socket": 5, "start": 0, "end": 0.006446, "seconds": 0.006446, "bytes": 8912896, "bits_per_second": 11061614644.740925, "retransmits": 0, "sender": false},
    "receiver": {"socket": 5, "start": 0, "end": 0.006085, "seconds": 0.006085, "bytes": 8912896, "bits_per_second": 11717858340.180773, "sender": false}},
   {"sender": {"socket": 7, "start": 0, "end": 0.006446, "seconds": 0.006446, "bytes": 7864320, "bits_per_second": 9760247964.0, "retransmits": 0, "sender": false},
    "receiver": {"socket": 7, "start": 0, "end": 0.006085, "seconds": 0.006085, "bytes": 7864320, "bits_per_second": 10339286770.7, "sender": false}}],
  "sum_sent": {"start": 0, "end": 0.006446, "seconds": 0.006446, "bytes": 16777216, "bits_per_second": 20821862860.6888, "retransmits": 0, "sender": false},
  "sum_received": {"start": 0, "end": 0.006085, "seconds": 0.006085, "bytes": 16777216, "bits_per_second": 22057145110.928513, "sender": false}}}"#;

    /// The matching server side: it sent, so its `sum_received` is 0.
    const SERVER_R: &str = r#"{"start": {"test_start": {"num_streams": 2, "reverse": 1}},
 "end": {"streams": [],
  "sum_sent": {"start": 0, "end": 0.006446, "seconds": 0.006446, "bytes": 16777216, "bits_per_second": 20821862860.6888, "retransmits": 0, "sender": true},
  "sum_received": {"start": 0, "end": 0.006446, "seconds": 0.006446, "bytes": 0, "bits_per_second": 0, "sender": true}}}"#;

    #[test]
    fn parses_client_json() {
        let out = parse_iperf3_json(CLIENT_R_P2).unwrap();
        assert_eq!(out.num_streams, 2);
        assert!(out.reverse);
        assert_eq!(out.sum_received.bytes, 16777216);
        assert_eq!(out.streams.len(), 2);
        assert_eq!(out.streams[1].receiver.bytes, 7864320);
        assert_eq!(out.connected, vec![(58906, 5394), (58916, 5394)]);
        out.check_client(2, 16 << 20).unwrap();
        assert!(out.check_client(1, 16 << 20).is_err());
        assert!(out.check_client(2, 1 << 20).is_err());
        // At most one block per stream beyond `-n`.
        out.check_client(2, (16 << 20) - 2 * 131072).unwrap();
        assert!(out.check_client(2, (16 << 20) - 2 * 131072 - 1).is_err());
    }

    #[test]
    fn server_side_checks_its_own_direction() {
        let client = parse_iperf3_json(CLIENT_R_P2).unwrap();
        let server = parse_iperf3_json(SERVER_R).unwrap();
        server.check_server_agrees(&client).unwrap();
        let mut forward = client.clone();
        forward.reverse = false;
        assert!(server.check_server_agrees(&forward).is_err());
    }

    #[test]
    fn receiver_may_count_less_than_sent() {
        // Real 3.12 behaviour over TCP: bytes in flight at TEST_END are not counted by the receiver.
        let mut out = parse_iperf3_json(CLIENT_R_P2).unwrap();
        out.sum_received.bytes = 16777216 - 4 * 131072;
        out.streams[1].receiver.bytes -= 4 * 131072;
        out.check_client(2, 16 << 20).unwrap();
        out.sum_received.bytes = 16777216 + 1;
        assert!(out.check_client(2, 16 << 20).is_err());
    }

    #[test]
    fn errors_and_garbage() {
        let err = parse_iperf3_json(r#"{"start": {}, "intervals": [], "end": {}, "error": "unable to connect to server: Connection refused"}"#).unwrap_err();
        assert!(err.contains("Connection refused"));
        assert!(parse_iperf3_json("iperf3: error").is_err());
        assert!(
            parse_iperf3_json(r#"{"start": {"test_start": {"num_streams": 1}}, "end": {}}"#)
                .is_err()
        );
    }

    #[test]
    fn client_arguments() {
        let mut c = Iperf3Client::new(7000, 1 << 20);
        assert_eq!(c.args().join(" "), "-c 127.0.0.1 -p 7000 -J -n 1048576");
        c.parallel = 4;
        c.reverse = true;
        c.zerocopy = true;
        assert_eq!(
            c.args().join(" "),
            "-c 127.0.0.1 -p 7000 -J -n 1048576 -P 4 -R -Z"
        );
    }
}
