//! redis-server with redis-benchmark: SET/GET over NTB, and the server idle once its clients leave.

use super::*;

#[test]
fn redis_benchmark_set_get() {
    let server_bin = require_bin("redis-server", "redis-server");
    let bench_bin = require_bin("redis-benchmark", "redis-tools");
    eprintln!("{}", version_line(&server_bin, &["--version"]));
    let f = Fixture::new("app_redis");
    let port = free_port();
    let port_s = port.to_string();
    let senv = f.preload("redis-server").with_ports(&*port_s);
    let cenv = f.preload("redis-benchmark").with_ports(&*port_s);
    let dir = f.dir().display().to_string();
    let mut server = spawn(
        "redis-server",
        &server_bin,
        &redis_server_args(&port_s, &dir),
        &senv,
        f.dir(),
    );
    check(server.wait_listening(port, LISTEN_TIMEOUT), &[]);
    let lo = LoWindow::open(LoExpect::Quiet).unwrap();
    let (bench, r) = run_client(
        "redis-benchmark",
        &bench_bin,
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port_s,
            "-t",
            "set,get",
            "-n",
            "20000",
            "-q",
        ],
        &cenv,
        f.dir(),
        CLIENT_TIMEOUT,
    );
    let delta = lo.delta().unwrap();
    drop(lo);
    let _ = server.terminate();

    let mut v = Verdict::new("redis_benchmark_set_get");
    v.push("redis-benchmark", r);
    let out = bench.stdout();
    for t in ["SET:", "GET:"] {
        if !out.contains(t) || !out.contains("requests per second") {
            v.errors.push(format!(
                "redis-benchmark printed no `{t} … requests per second` line"
            ));
        }
    }
    // 20,000 SETs (45-byte commands) and 20,000 GETs (36 bytes): at least 1,000,000 bytes of requests; replies of
    // 5 (+OK) and 9 bytes: at least 200,000. 50 client connections (plus redis-benchmark's CONFIG probe).
    let (req, rep) = (1_000_000, 200_000);
    if v.errors.is_empty() {
        v.push("lo", delta.check_fast_path(req + rep));
    }
    v.push(
        "redis-benchmark stats",
        cenv.stats().and_then(|s| s.check_ntb(port, 50, req, rep)),
    );
    v.push(
        "redis-server stats",
        senv.stats().and_then(|s| s.check_ntb(port, 50, rep, req)),
    );
    v.finish(&f, &[&server, &bench]);
}

/// redis after redis-benchmark's 50 clients have gone: the server sleeps (CPU ticks over an idle window), and its
/// clients were all on NTB.
#[test]
fn redis_idle_after_benchmark() {
    let server_bin = require_bin("redis-server", "redis-server");
    let bench_bin = require_bin("redis-benchmark", "redis-tools");
    let f = Fixture::new("app_redis_idle");
    let port = free_port();
    let port_s = port.to_string();
    let senv = f.preload("redis-server").with_ports(&*port_s);
    let cenv = f.preload("redis-benchmark").with_ports(&*port_s);
    let dir = f.dir().display().to_string();
    let mut server = spawn(
        "redis-server",
        &server_bin,
        &redis_server_args(&port_s, &dir),
        &senv,
        f.dir(),
    );
    check(server.wait_listening(port, LISTEN_TIMEOUT), &[]);
    let lo = LoWindow::open(LoExpect::Quiet).unwrap();
    let (bench, r) = run_client(
        "redis-benchmark",
        &bench_bin,
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port_s,
            "-t",
            "set,get",
            "-n",
            "20000",
            "-q",
        ],
        &cenv,
        f.dir(),
        CLIENT_TIMEOUT,
    );
    let delta = lo.delta().unwrap();
    drop(lo);
    let mut v = Verdict::new("redis_idle_after_benchmark");
    let ok = r.is_ok();
    v.push("redis-benchmark", r);
    if ok {
        v.push("lo", delta.check_fast_path(1_200_000));
    }
    v.push(
        "redis-benchmark stats",
        cenv.stats()
            .and_then(|s| s.check_ntb(port, 50, 1_000_000, 200_000)),
    );
    match IdleCpu::measure(&[server.pid()], IDLE_WINDOW) {
        Ok(idle) => {
            eprintln!("redis after redis-benchmark: {idle}");
            v.push("idle redis-server", idle.check(IDLE_MAX_SHARE));
        }
        Err(e) => v.errors.push(format!("idle redis-server: {e}")),
    }
    let _ = server.terminate();
    v.finish(&f, &[&server, &bench]);
}
