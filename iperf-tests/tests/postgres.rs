//! PostgreSQL as it is deployed: a cluster owned by the `postgres` user, started in daemon mode
//! by `pg_ctl`, the postmaster forking one backend per connection (it accepts, forks, and closes
//! its own copy), clients run by another user. Every connection must be carried over the NTB
//! path through the host fabric service: strict mode (a fallback fails the client), the
//! backends' own statistics, and the kernel's loopback counter while pgbench loads its tables.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use iperf_tests::apps::{as_user, number_after};
use iperf_tests::fabric::Service;
use iperf_tests::{check, free_port, Fixture, LoExpect, LoWindow, Proc, Stats};

const MIB: u64 = 1 << 20;
/// At most this much may cross lo while pgbench loads its tables over the NTB path (the
/// handshakes and closes of its connections).
const QUIET: u64 = 256 << 10;

/// A PostgreSQL program of the newest installed major version.
fn pg_bin(name: &str) -> PathBuf {
    let mut bins: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path().join("bin").join(name)))
        .filter(|p| p.is_file())
        .collect();
    bins.sort_by_key(|p| {
        p.components()
            .nth(4)
            .and_then(|c| c.as_os_str().to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    bins.pop().unwrap_or_else(|| {
        panic!(
            "`{name}` not found under /usr/lib/postgresql: install postgresql (scripts/setup.sh)"
        )
    })
}

/// A directory every user may write (the cluster's socket directory, the statistics).
fn open_dir(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dir).unwrap();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o1777)).unwrap();
    dir.to_path_buf()
}

/// Stops the cluster when the test ends, however it ends.
struct Cluster {
    pg_ctl: PathBuf,
    data: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data.display().to_string();
        let _ = as_user(
            "postgres",
            &self.pg_ctl,
            &["-D", &data, "-m", "fast", "-w", "-t", "30", "stop"],
            None,
        )
        .status();
    }
}

#[test]
fn postgres_forks_a_backend_per_connection_over_ntb() {
    let (initdb, pg_ctl, pgbench) = (pg_bin("initdb"), pg_bin("pg_ctl"), pg_bin("pgbench"));
    let f = Fixture::new("pg");
    open_dir(f.dir());
    let svc = Service::start(&f);
    let port = free_port();
    let data = f.dir().join("pgdata");
    let sockets = open_dir(&f.dir().join("sockets"));
    let server_stats = open_dir(&f.dir().join("server-stats"));
    let client_stats = open_dir(&f.dir().join("client-stats"));

    // The cluster, as `postgres` (initdb and the server refuse root), without the library.
    let d = data.display().to_string();
    let mut init = check(
        Proc::spawn(
            "initdb",
            as_user(
                "postgres",
                &initdb,
                &[
                    "-D",
                    &d,
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ],
                None,
            ),
            f.dir(),
        ),
        &[],
    );
    check(init.wait_success(Duration::from_secs(120)), &[&init]);

    // Daemon mode: pg_ctl returns once the postmaster accepts connections. Per-process
    // statistics: each backend writes its own file when its connection ends.
    let mut senv = svc.env(&f, "postgres", port);
    senv.stats_file = server_stats.join("");
    let opts = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=40 -c fsync=off",
        sockets.display()
    );
    let log = f.dir().join("postgres.log").display().to_string();
    let cluster = Cluster {
        pg_ctl: pg_ctl.clone(),
        data: data.clone(),
    };
    let mut start = check(
        Proc::spawn(
            "pg_ctl",
            as_user(
                "postgres",
                &pg_ctl,
                &["-D", &d, "-l", &log, "-o", &opts, "-w", "-t", "60", "start"],
                Some(&senv),
            ),
            f.dir(),
        ),
        &[],
    );
    check(start.wait_success(Duration::from_secs(90)), &[&start]);

    // The client, as `nobody`: load the tables (about 8 MB of COPY for scale 5) with lo quiet.
    let mut cenv = svc.env(&f, "pgbench", port);
    cenv.stats_file = client_stats.join("");
    let p = port.to_string();
    let conn = ["-h", "127.0.0.1", "-p", &p, "-U", "postgres"];
    let mut args: Vec<&str> = vec!["-i", "-s", "5", "-q"];
    args.extend(conn);
    args.push("postgres");
    let lo = LoWindow::open(LoExpect::Quiet).unwrap();
    let mut load = check(
        Proc::spawn(
            "pgbench-init",
            as_user("nobody", &pgbench, &args, Some(&cenv)),
            f.dir(),
        ),
        &[],
    );
    check(load.wait_success(Duration::from_secs(180)), &[&load]);
    let delta = lo.delta().unwrap();
    drop(lo);
    assert!(
        delta.tx_bytes < QUIET,
        "{} bytes crossed lo while pgbench loaded its tables: not the NTB path",
        delta.tx_bytes
    );

    // A new connection per transaction: a backend forked for each.
    let mut args: Vec<&str> = vec!["-C", "-S", "-c", "4", "-j", "2", "-T", "3"];
    args.extend(conn);
    args.push("postgres");
    let mut bench = check(
        Proc::spawn(
            "pgbench",
            as_user("nobody", &pgbench, &args, Some(&cenv)),
            f.dir(),
        ),
        &[],
    );
    check(bench.wait_success(Duration::from_secs(60)), &[&bench]);
    let out = bench.stdout();
    let done = number_after(&out, "number of transactions actually processed:")
        .unwrap_or_else(|| panic!("no transaction count in pgbench's report:\n{out}"));
    assert!(done >= 20, "only {done} transactions:\n{out}");
    if let Some(failed) = number_after(&out, "number of failed transactions:") {
        assert_eq!(failed, 0, "pgbench saw failures:\n{out}");
    }

    // The server's own account, once it has stopped (the postmaster writes its final counts
    // at exit): every connection it accepted on NTB and none on TCP, each handed to a backend
    // that recorded it on NTB, with the tables' bytes among them.
    drop(cluster);
    let all = Stats::load_dir(&server_stats).unwrap();
    let ntb: u64 = all.iter().map(|s| s.ntb_connections).sum();
    let tcp: u64 = all.iter().map(|s| s.tcp_connections).sum();
    let rx: u64 = all.iter().map(|s| s.ntb_rx_bytes).sum();
    let served: usize = all
        .iter()
        .flat_map(|s| &s.connections)
        .filter(|c| c.role == "server" && c.path == "ntb")
        .count();
    let backends = all.iter().filter(|s| s.ntb_connections == 0).count();
    assert_eq!(tcp, 0, "connections on TCP in the server's statistics");
    assert!(
        ntb > done,
        "{ntb} NTB connections accepted for {done} transactions"
    );
    assert!(
        backends as u64 >= ntb,
        "{backends} backends wrote statistics for {ntb} connections"
    );
    assert!(
        served as u64 >= 2 * ntb,
        "{served} connection records for {ntb} connections (the postmaster's and its backends')"
    );
    assert!(
        rx > 4 * MIB,
        "the backends received only {rx} bytes over NTB"
    );
    let clients = Stats::load_dir(&client_stats).unwrap();
    assert!(
        clients.iter().all(|s| s.tcp_connections == 0),
        "pgbench fell back: {clients:?}"
    );
    assert!(svc.count("paired") > done, "{:?}", svc.status());
}
