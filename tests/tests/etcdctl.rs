//! ironcd driven by the real `etcdctl` for what the differential test can't
//! compare byte for byte (IDs, sizes), and the process behaviour operators
//! rely on: flags, env vars, restart, port conflicts, foreign data dirs.

use std::process::Command;

use ironcd_tests::{etcdctl, fails, free_port, ironcd_bin, ok, Kind, Scratch, Server};

#[test]
fn endpoint_status_and_health_fill_every_column() {
    let dir = Scratch::new("status");
    let srv = Server::ironcd(dir.path());
    let ep = srv.endpoint();
    ok(&ep, &["put", "k", "v"]);
    let table = ok(&ep, &["endpoint", "status", "-w", "table"]);
    let row = table.lines().find(|l| l.contains(&ep)).unwrap_or_else(|| panic!("no row for {ep}:\n{table}"));
    let cells: Vec<&str> = row.split('|').map(str::trim).filter(|c| !c.is_empty()).collect();
    // ENDPOINT ID VERSION DB SIZE IS LEADER IS LEARNER RAFT TERM RAFT INDEX RAFT APPLIED INDEX (ERRORS empty)
    assert_eq!(cells.len(), 9, "{row}");
    assert_eq!(cells[0], ep);
    // etcdctl prints IDs with %x: no zero padding, so compare with member list.
    let member_id = ok(&ep, &["member", "list"]).split(", ").next().unwrap().trim().to_string();
    assert_eq!(cells[1], member_id, "member id in hex: {row}");
    assert!(u64::from_str_radix(cells[1], 16).is_ok(), "{row}");
    assert_eq!(cells[2], "3.4.23");
    assert!(cells[3].ends_with("kB") || cells[3].ends_with("MB"), "db size: {row}");
    assert_eq!(cells[4], "true", "single member is the leader: {row}");
    assert_eq!(cells[5], "false");
    assert!(cells[6].parse::<u64>().unwrap() >= 1);
    let index: u64 = cells[7].parse().unwrap();
    let applied: u64 = cells[8].parse().unwrap();
    assert!(index >= 2 && applied == index, "raft index {index}, applied {applied}");

    let health = etcdctl(&ep, &["endpoint", "health"]);
    assert!(health.status.success());
    let text = String::from_utf8_lossy(&health.stderr).to_string() + &String::from_utf8_lossy(&health.stdout);
    assert!(text.contains(&format!("{ep} is healthy")), "{text}");

    let json = ok(&ep, &["endpoint", "status", "-w", "json"]);
    for field in ["\"version\":\"3.4.23\"", "\"dbSize\":", "\"leader\":", "\"raftIndex\":", "\"raftAppliedIndex\":"] {
        assert!(json.contains(field), "{field} missing from {json}");
    }
}

#[test]
fn member_list_shows_the_member_as_etcd_ids_it() {
    let dir = Scratch::new("members");
    let srv = Server::ironcd(dir.path());
    let out = ok(&srv.endpoint(), &["member", "list"]);
    // id, status, name, peer urls, client urls, is learner
    let fields: Vec<&str> = out.trim().split(", ").collect();
    assert_eq!(fields.len(), 6, "{out}");
    assert_eq!(fields[1], "started");
    assert_eq!(fields[2], "default");
    assert_eq!(fields[3], format!("http://127.0.0.1:{}", srv.peer_port));
    assert_eq!(fields[4], format!("http://127.0.0.1:{}", srv.client_port));
    assert_eq!(fields[5], "false");
    // etcd derives the same member ID from the same peer URL and token
    // (ironcd is stopped first: both listen on that peer port).
    let mut srv = srv;
    assert!(srv.stop(), "clean stop");
    let etcd_dir = Scratch::new("members-etcd");
    let mut etcd = Server::new(Kind::Etcd, etcd_dir.path(), &[]);
    etcd.peer_port = srv.peer_port;
    etcd.launch();
    let etcd_out = ok(&etcd.endpoint(), &["member", "list"]);
    assert_eq!(etcd_out.split(", ").next(), Some(fields[0]), "etcd: {etcd_out} ironcd: {out}");
}

#[test]
fn data_survives_restart_and_clean_shutdown() {
    let dir = Scratch::new("restart");
    let mut srv = Server::ironcd(dir.path());
    let ep = srv.endpoint();
    for i in 0..50 {
        ok(&ep, &["put", &format!("key{i:02}"), &format!("value{i}")]);
    }
    ok(&ep, &["del", "key07"]);
    let before = ok(&ep, &["get", "--prefix", "key", "-w", "json"]);
    assert!(srv.stop(), "SIGTERM must shut down cleanly; log:\n{}", srv.log_text());
    assert!(srv.log_text().contains("stopped"));
    srv.launch();
    let ep = srv.endpoint();
    let after = ok(&ep, &["get", "--prefix", "key", "-w", "json"]);
    let strip = |s: &str| s.split("\"kvs\"").nth(1).unwrap_or_default().to_string();
    assert_eq!(strip(&before), strip(&after), "the keys must be identical after a restart");
    // Revisions continue where they were.
    let put = ok(&ep, &["put", "next", "x", "-w", "json"]);
    // 50 puts (revisions 2..=51), one delete (52): the next write is 53.
    assert!(put.contains("\"revision\":53"), "{put}");
}

#[test]
fn second_server_on_the_same_port_fails_with_address_in_use() {
    let dir = Scratch::new("port");
    let srv = Server::ironcd(dir.path());
    let other = dir.path().join("other");
    let out = Command::new(ironcd_bin())
        .args(["--data-dir", other.to_str().unwrap()])
        .args(["--listen-client-urls", &format!("http://{}", srv.endpoint())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("address in use") || err.contains("Address already in use"), "{err}");
    assert!(!other.exists(), "a server that cannot bind must not create its data dir");
}

#[test]
fn refuses_an_etcd_data_dir_and_another_members_data_dir() {
    let dir = Scratch::new("foreign");
    let mut etcd = Server::etcd(dir.path());
    ok(&etcd.endpoint(), &["put", "a", "b"]);
    etcd.stop();
    let snap_before = std::fs::read_dir(etcd.data_dir.join("member/snap")).unwrap().count();
    let port = free_port();
    let out = Command::new(ironcd_bin())
        .args(["--data-dir", etcd.data_dir.to_str().unwrap()])
        .args(["--listen-client-urls", &format!("http://127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("etcd data directory"), "{err}");
    assert_eq!(std::fs::read_dir(etcd.data_dir.join("member/snap")).unwrap().count(), snap_before);
    assert!(!etcd.data_dir.join("member/kv.db").exists(), "etcd's data dir must not be touched");

    // An ironcd data dir started with another member's identity.
    let mut srv = Server::ironcd(dir.path());
    assert!(srv.stop());
    let out = Command::new(ironcd_bin())
        .args(["--name", "someone-else"])
        .args(["--data-dir", srv.data_dir.to_str().unwrap()])
        .args(["--listen-client-urls", &format!("http://127.0.0.1:{}", free_port())])
        .args(["--initial-advertise-peer-urls", "http://127.0.0.1:1"])
        .args(["--initial-cluster", "someone-else=http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("belongs to member"), "{err}");
}

#[test]
fn flags_env_vars_version_and_unknown_flags() {
    let out = Command::new(ironcd_bin()).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("etcd Version: 3.4.23"));

    let out = Command::new(ironcd_bin()).arg("--no-such-flag").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));

    let out = Command::new(ironcd_bin()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for f in ["--initial-cluster-token", "--quota-backend-bytes", "--max-txn-ops", "--auto-compaction-retention"] {
        assert!(help.contains(f), "--help must list {f}");
    }

    // ETCD_* environment variables configure the server; flags win over them.
    let dir = Scratch::new("env");
    let port = free_port();
    let mut child = Command::new(ironcd_bin())
        .env("ETCD_NAME", "from-env")
        .env("ETCD_DATA_DIR", dir.path().join("d"))
        .env("ETCD_LISTEN_CLIENT_URLS", "http://127.0.0.1:1")
        .env("ETCD_INITIAL_ADVERTISE_PEER_URLS", format!("http://127.0.0.1:{}", free_port()))
        .env("ETCD_MAX_TXN_OPS", "2")
        .args(["--listen-client-urls", &format!("http://127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ep = format!("127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !etcdctl(&ep, &["get", "x"]).status.success() {
        assert!(std::time::Instant::now() < deadline, "server configured from env did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let members = ok(&ep, &["member", "list"]);
    assert!(members.contains("from-env"), "{members}");
    let txn = "\n\nput a 1\nput b 2\nput c 3\n\n";
    let out = ironcd_tests::etcdctl_stdin(&ep, &["txn"], Some(txn));
    assert!(String::from_utf8_lossy(&out.stderr).contains("too many operations in txn request"));
    assert!(dir.path().join("d/member/kv.db").exists());
    let _ = Command::new("kill").args(["-9", &child.id().to_string()]).status();
    let _ = child.wait();
}

#[test]
fn errors_carry_etcds_texts() {
    let dir = Scratch::new("errors");
    let srv = Server::ironcd(dir.path());
    let ep = srv.endpoint();
    ok(&ep, &["put", "a", "1"]);
    assert_eq!(fails(&ep, &["get", "a", "--rev", "99"]), "Error: etcdserver: mvcc: required revision is a future revision");
    assert_eq!(fails(&ep, &["put", "a", "v", "--lease", "1234"]), "Error: etcdserver: requested lease not found");
    // The value comes from stdin: a 1.6 MB argument exceeds the kernel's limit.
    let big = "x".repeat(1_600_000);
    let out = ironcd_tests::etcdctl_stdin(&ep, &["put", "big"], Some(&big));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Error: etcdserver: request is too large"));
    let fits = "y".repeat(1_500_000);
    let out = ironcd_tests::etcdctl_stdin(&ep, &["put", "fits"], Some(&fits));
    assert!(out.status.success(), "a 1.5 MB value is within --max-request-bytes");
    assert_eq!(ok(&ep, &["get", "fits", "--print-value-only"]).trim_end().len(), fits.len());
    let txn = "\n\nput d 1\nput d 2\n\n";
    let out = ironcd_tests::etcdctl_stdin(&ep, &["txn"], Some(txn));
    assert!(String::from_utf8_lossy(&out.stderr).contains("etcdserver: duplicate key given in txn request"));
    // The server is still up and consistent.
    assert!(ok(&ep, &["get", "a"]).contains('1'));
}

#[test]
fn snapshot_save_streams_a_consistent_copy_with_its_checksum() {
    let dir = Scratch::new("snapshot");
    let srv = Server::ironcd(dir.path());
    let ep = srv.endpoint();
    for i in 0..300 {
        ok(&ep, &["put", &format!("snap/{i:04}"), &"v".repeat(i % 97)]);
    }
    let big = "b".repeat(200_000);
    let out = ironcd_tests::etcdctl_stdin(&ep, &["put", "snap/big"], Some(&big));
    assert!(out.status.success());
    let file = dir.path().join("backup.db");
    let out = etcdctl(&ep, &["snapshot", "save", file.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Snapshot saved at"), "{text}");
    // etcdctl strips nothing: body (a multiple of 512) + 32-byte SHA-256.
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(bytes.len() % 512, 32);
    let (body, sha) = bytes.split_at(bytes.len() - 32);
    assert_eq!(&body[..8], b"ironcdSN");
    use sha2::Digest;
    assert_eq!(sha2::Sha256::digest(body).as_slice(), sha);
    // Every key is in it.
    for i in [0usize, 150, 299] {
        let key = format!("snap/{i:04}");
        assert!(body.windows(key.len()).any(|w| w == key.as_bytes()), "{key} missing from the snapshot");
    }
    assert!(body.windows(big.len()).any(|w| w == big.as_bytes()));
}

#[test]
fn periodic_auto_compaction_compacts_old_history() {
    let dir = Scratch::new("autocompact");
    let srv = Server::start(Kind::Ironcd, dir.path(), &["--auto-compaction-mode", "periodic", "--auto-compaction-retention", "2s"]);
    let ep = srv.endpoint();
    for i in 0..5 {
        ok(&ep, &["put", "k", &i.to_string()]);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = etcdctl(&ep, &["get", "k", "--rev", "2"]);
        if !out.status.success() {
            assert!(String::from_utf8_lossy(&out.stderr).contains("required revision has been compacted"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no auto compaction within 30 s; log:\n{}", srv.log_text());
        ok(&ep, &["put", "k", "more"]);
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert!(srv.log_text().contains("completed auto periodic compaction"));
    // Latest data is intact.
    assert!(ok(&ep, &["get", "k"]).contains("more"));
}

#[test]
fn space_quota_raises_nospace_until_disarmed() {
    let dir = Scratch::new("quota");
    let srv = Server::start(Kind::Ironcd, dir.path(), &["--quota-backend-bytes", "400000"]);
    let ep = srv.endpoint();
    let value = "q".repeat(60_000);
    let mut refused = None;
    for i in 0..40 {
        let out = ironcd_tests::etcdctl_stdin(&ep, &["put", &format!("big{i}")], Some(&value));
        if !out.status.success() {
            refused = Some(String::from_utf8_lossy(&out.stderr).to_string());
            break;
        }
    }
    let err = refused.expect("40 × 60 kB must exceed a 400 kB quota");
    assert!(err.contains("etcdserver: mvcc: database space exceeded"), "{err}");
    let alarms = ok(&ep, &["alarm", "list"]);
    assert!(alarms.contains("alarm:NOSPACE"), "{alarms}");
    let status = ok(&ep, &["endpoint", "status", "-w", "table"]);
    assert!(status.contains("alarm:NOSPACE"), "{status}");
    // Writes that add data fail; reads, deletes and compaction work.
    assert_eq!(fails(&ep, &["put", "small", "x"]), "Error: etcdserver: mvcc: database space exceeded");
    assert!(ok(&ep, &["get", "big0", "--print-value-only"]).starts_with("qqq"));
    ok(&ep, &["del", "--prefix", "big"]);
    let rev: String = ok(&ep, &["get", "x", "-w", "json"]).split("\"revision\":").nth(1).unwrap().chars().take_while(|c| c.is_ascii_digit()).collect();
    ok(&ep, &["compact", &rev, "--physical"]);
    let disarmed = ok(&ep, &["alarm", "disarm"]);
    assert!(disarmed.contains("alarm:NOSPACE"), "{disarmed}");
    assert_eq!(ok(&ep, &["alarm", "list"]).trim(), "");
    std::thread::sleep(std::time::Duration::from_millis(300));
    ok(&ep, &["put", "small", "x"]);
}

#[test]
fn move_leader_to_self_succeeds_and_to_a_stranger_fails() {
    for kind in [Kind::Etcd, Kind::Ironcd] {
        let dir = Scratch::new("move-leader");
        let srv = Server::start(kind, dir.path(), &[]);
        let ep = srv.endpoint();
        let id = ok(&ep, &["member", "list"]).split(", ").next().unwrap().to_string();
        let out = etcdctl(&ep, &["move-leader", &id]);
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{kind:?}: {text}");
        assert!(text.contains(&format!("Leadership transferred from {id} to {id}")), "{kind:?}: {text}");
        assert_eq!(fails(&ep, &["move-leader", "1234"]), "Error: etcdserver: bad leader transferee", "{kind:?}");
    }
}
