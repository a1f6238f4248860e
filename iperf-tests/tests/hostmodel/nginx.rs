//! nginx as Debian ships it, over the host fabric service.

use super::*;

/// A file under the stock web root, removed again when the test ends.
struct WebFile(PathBuf);

impl Drop for WebFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// nginx as Debian ships it: /etc/nginx/nginx.conf unchanged (root master, `user www-data`
/// workers, daemon on, port 80 from sites-enabled/default, sendfile on), curl and wrk as
/// clients: every byte on the NTB path, through the service, with the workers' privileges.
#[test]
fn nginx_with_the_stock_config_serves_over_ntb() {
    let nginx = iperf_tests::apps::require_bin("nginx", "nginx");
    let curl = iperf_tests::apps::require_bin("curl", "curl");
    let wrk = iperf_tests::apps::require_bin("wrk", "wrk");
    assert!(
        !iperf_tests::is_listening(80).unwrap(),
        "port 80 is taken: this test runs Debian's stock nginx, which listens there"
    );
    let f = Fixture::new("hm_nginx_stock");
    open_up(f.dir());
    let svc = Service::start(&f);
    let file = WebFile(PathBuf::from(format!(
        "/var/www/html/pcisock-{}.bin",
        std::process::id()
    )));
    iperf_tests::apps::write_payload(&file.0, 16 * MIB, 0x5eed).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&file.0, fs::Permissions::from_mode(0o644)).unwrap();

    let env = svc.env(&f, "nginx", 80);
    let mut master = check(
        Proc::spawn(
            "nginx",
            command(&nginx, &[] as &[&str], Some(&env)),
            f.dir(),
        ),
        &[],
    );
    // Daemon mode: the process we started exits once the master is running.
    check(master.wait_success(Duration::from_secs(20)), &[&master]);
    iperf_tests::wait_listening(80, Duration::from_secs(10)).unwrap();
    let stop = || {
        let _ = Command::new(&nginx).args(["-s", "quit"]).status();
        let t0 = Instant::now();
        while iperf_tests::is_listening(80).unwrap_or(false)
            && t0.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    struct Stop<F: Fn()>(F);
    impl<F: Fn()> Drop for Stop<F> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    let _stop = Stop(stop);
    let pid: u32 = fs::read_to_string("/run/nginx.pid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let t0 = Instant::now();
    let workers = loop {
        let w = iperf_tests::apps::descendants(pid);
        if !w.is_empty() || t0.elapsed() > Duration::from_secs(10) {
            break w;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!workers.is_empty(), "nginx has no workers");
    // Each worker drops to www-data right after the master forks it.
    let www = Command::new("id")
        .args(["-u", "www-data"])
        .output()
        .unwrap();
    let www = String::from_utf8_lossy(&www.stdout).trim().to_string();
    let uid_of = |w: u32| {
        let status = fs::read_to_string(format!("/proc/{w}/status")).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("")
            .to_string()
    };
    let t0 = Instant::now();
    while workers.iter().any(|(w, _)| uid_of(*w) != www) && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for (w, _) in &workers {
        assert_eq!(uid_of(*w), www, "worker {w} does not run as www-data");
    }

    let url = format!("http://127.0.0.1/pcisock-{}.bin", std::process::id());
    let cenv = svc.env(&f, "curl", 80);
    let lo = LoWindow::open(LoExpect::Quiet).unwrap();
    for i in 0..4 {
        let mut c = check(
            Proc::spawn(
                &format!("curl{i}"),
                command(
                    &curl,
                    &[
                        "-sS",
                        "-f",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{size_download}",
                        &url,
                    ],
                    Some(&cenv),
                ),
                f.dir(),
            ),
            &[],
        );
        check(c.wait_success(Duration::from_secs(60)), &[&c]);
        assert_eq!(
            c.stdout().trim(),
            (16 * MIB).to_string(),
            "curl{i} got a short file"
        );
    }
    let delta = lo.delta().unwrap();
    drop(lo);
    assert!(
        delta.tx_bytes < QUIET,
        "{} bytes crossed lo while curl fetched 64 MiB from nginx: not the NTB path",
        delta.tx_bytes
    );
    // wrk: keep-alive connections to the index page, every request answered.
    let wenv = svc.env(&f, "wrk", 80);
    let mut w = check(
        Proc::spawn(
            "wrk",
            command(
                &wrk,
                &["-c", "16", "-t", "2", "-d", "2s", "http://127.0.0.1/"],
                Some(&wenv),
            ),
            f.dir(),
        ),
        &[],
    );
    check(w.wait_success(Duration::from_secs(30)), &[&w]);
    let out = w.stdout();
    assert!(!out.contains("Socket errors"), "wrk saw errors:\n{out}");
    assert!(!out.contains("Non-2xx"), "wrk saw errors:\n{out}");
    assert!(svc.count("paired") >= 4 + 16, "{:?}", svc.status());
}
