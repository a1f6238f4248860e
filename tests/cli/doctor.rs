//! `pcisock doctor`: the library's exports, stale state and its reclaim, other versions and
//! stale service sockets.

use super::*;

#[test]
fn doctor_checks_the_library_exports() {
    // A library that defines none of the hooks: every one must be reported (they resolve only to
    // libc, which the check must not count).
    let libm = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
        "/lib64/libm.so.6",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists());
    if let Some(libm) = libm {
        let o = pcisock(&["doctor"], &[("PCISOCK_LIB", libm)]);
        assert_code(&o, 1);
        assert!(
            stdout(&o).contains("[FAIL] exports") && stdout(&o).contains("connect"),
            "{}",
            stdout(&o)
        );
    }
    if built_library().is_some() {
        let o = pcisock(&["doctor"], &[]);
        assert_code(&o, 0);
        assert!(
            stdout(&o).contains("[ ok ] exports       all"),
            "{}",
            stdout(&o)
        );
    } else {
        println!(
            "note: libpcisock.so is not built next to {BIN}; skipping the real-library doctor run"
        );
    }
}
/// `doctor` flags what dead processes and closed connections leave behind (a lease whose owner
/// is gone, an interrupt line no lease holds) and names the fix; `emu reclaim` then frees the
/// lease and removes that line, and only that line (a leased vector's line stays).
#[test]
fn doctor_flags_stale_state_and_reclaim_clears_it() {
    let dir = TempDir::new("stale");
    let dev = make_device(&dir.0);
    // A lease handed to a process that then dies.
    let mut child = Command::new("sleep").arg("60").spawn().unwrap();
    let lease = dev.lease_window(0, 4096, 0x7465_7374).expect("lease");
    dev.transfer(ntbdrv::Lease::Window(lease), child.id())
        .expect("transfer");
    child.kill().unwrap();
    child.wait().unwrap();
    // An interrupt line with no lease (a closed connection's), and a leased one.
    drop(dev.vector_fd(5).expect("line"));
    let held = dev.lease_vector(0x7465_7374).expect("vector");
    let _held_line = dev.vector_fd(held.vector).expect("line");
    let idle = dir.0.join("loopback.s0.v5");
    let busy = dir.0.join(format!("loopback.s0.v{}", held.vector));
    assert!(idle.exists() && busy.exists());

    let stale_line = |o: &Output| {
        stdout(o)
            .lines()
            .find(|l| l.contains(" stale "))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no stale check: {}", stdout(o)))
    };
    let o = pcisock_in(&dir.0, &["doctor"], &[]);
    let line = stale_line(&o);
    assert!(line.starts_with("[warn] stale"), "{line}");
    assert!(
        line.contains(&format!(
            "1 lease(s) of 1 process(es) that are gone (pids {})",
            child.id()
        )),
        "{line}"
    );
    assert!(line.contains("1 interrupt line(s) (FIFOs)"), "{line}");
    assert!(line.contains("'pcisock emu reclaim' frees them"), "{line}");

    let o = pcisock_in(&dir.0, &["emu", "reclaim"], &[]);
    assert_code(&o, 0);
    assert!(
        stdout(&o).contains("freed 1 lease(s) of processes that are gone; removed 1 interrupt"),
        "{}",
        stdout(&o)
    );
    assert!(!idle.exists(), "the idle line is still there");
    assert!(busy.exists(), "reclaim removed a leased vector's line");
    let o = pcisock_in(&dir.0, &["doctor"], &[]);
    assert!(stale_line(&o).starts_with("[ ok ] stale"), "{}", stdout(&o));
}
/// `pcisock doctor` over a service: the service it would use answers (ok); beside it, a service
/// of another protocol version (a warning naming it) and a socket file nobody answers on
/// (stale, a warning); pointed at the other version's service, the check fails and says why.
#[test]
fn doctor_names_other_versions_and_stale_service_sockets() {
    use socket2::{Domain, SockAddr, Socket, Type};
    let dir =
        std::env::temp_dir().join(format!("pcisock-cli-doctor-fabric-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ours = dir.join(format!("fabric-v{}.sock", fabric_wire_version()));
    let ours_s = ours.to_str().unwrap().to_string();
    assert_code(&pcisock(&["fabric", "start", "--socket", &ours_s], &[]), 0);
    // Another version's service: answers every message with a header of protocol 1.
    let old = dir.join("fabric-v1.sock");
    let l = Socket::new(Domain::UNIX, Type::from(libc::SOCK_SEQPACKET), None).unwrap();
    l.bind(&SockAddr::unix(&old).unwrap()).unwrap();
    l.listen(8).unwrap();
    std::thread::spawn(move || {
        while let Ok((c, _)) = l.accept() {
            let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 256];
            let _ = c.recv(&mut buf);
            let mut m = Vec::new();
            m.extend_from_slice(b"PCFB");
            m.extend_from_slice(&1u16.to_le_bytes());
            m.extend_from_slice(&0x88u16.to_le_bytes());
            m.extend_from_slice(&0u64.to_le_bytes());
            m.extend_from_slice(&1u64.to_le_bytes());
            let _ = c.send(&m);
        }
    });
    // A socket file with nobody behind it.
    let stale = dir.join("fabric.sock");
    drop({
        let s = Socket::new(Domain::UNIX, Type::from(libc::SOCK_SEQPACKET), None).unwrap();
        s.bind(&SockAddr::unix(&stale).unwrap()).unwrap();
        s
    });
    let o = pcisock(&["doctor"], &[("PCISOCK_FABRIC", &ours_s)]);
    let text = stdout(&o);
    assert_code(&o, 0);
    let line_of = |what: &str| {
        text.lines()
            .find(|l| l.contains(what))
            .unwrap_or("")
            .to_string()
    };
    assert!(line_of(&ours_s).starts_with("[ ok ] fabric"), "{text}");
    let o1 = line_of(old.to_str().unwrap());
    assert!(
        o1.starts_with("[warn] fabric") && o1.contains("protocol 1"),
        "{text}"
    );
    let st = line_of(stale.to_str().unwrap());
    assert!(st.starts_with("[warn] stale"), "{text}");
    let old_s = old.to_str().unwrap().to_string();
    let o = pcisock(&["doctor"], &[("PCISOCK_FABRIC", &old_s)]);
    assert_code(&o, 1);
    let text = stdout(&o);
    assert!(
        text.lines()
            .any(|l| l.starts_with("[FAIL] fabric") && l.contains("speaks protocol 1")),
        "{text}"
    );
    let _ = pcisock(&["fabric", "stop", "--socket", &ours_s], &[]);
    let _ = std::fs::remove_dir_all(&dir);
}
