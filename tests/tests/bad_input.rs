//! Bad input gets a clear error and the server stays up: malformed
//! protobuf, oversized messages, garbage on the socket, empty keys, invalid
//! ranges, unknown leases.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use etcd_client::{Client, DeleteOptions, GetOptions, PutOptions};
use ironcd_tests::{ok, Scratch, Server};

/// Sends one gRPC call with a raw body through curl (HTTP/2 prior
/// knowledge); returns (grpc-status, grpc-message). A server may answer and
/// reset the stream before curl has sent the whole body, and curl then
/// prints no headers: such a try is repeated (at most 3 times).
fn raw_grpc(endpoint: &str, method: &str, frame: &[u8]) -> (String, String) {
    let mut last = (String::new(), String::new());
    for _ in 0..5 {
        last = raw_grpc_once(endpoint, method, frame);
        if !last.0.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    last
}

fn raw_grpc_once(endpoint: &str, method: &str, frame: &[u8]) -> (String, String) {
    let file = std::env::temp_dir().join(format!("ironcd-bad-{}-{}", std::process::id(), method.replace('/', "_")));
    std::fs::write(&file, frame).unwrap();
    let out = Command::new("curl")
        .args(["-s", "-v", "--http2-prior-knowledge", "--max-time", "10"])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("http://{endpoint}/{method}"))
        .output()
        .expect("curl");
    let _ = std::fs::remove_file(&file);
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    if !text.contains("< grpc-status:") {
        eprintln!("curl printed no grpc-status for {method}:\n{text}");
    }
    let header = |name: &str| {
        text.lines()
            .filter_map(|l| l.strip_prefix("< "))
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    (header("grpc-status:"), header("grpc-message:"))
}

fn frame(len_field: u32, body: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8];
    f.extend_from_slice(&len_field.to_be_bytes());
    f.extend_from_slice(body);
    f
}

#[test]
fn malformed_and_oversized_messages_get_errors_and_the_server_stays_up() {
    let dir = Scratch::new("bad-input");
    let srv = Server::ironcd(dir.path());
    let ep = srv.endpoint();

    // Not a protobuf message: INTERNAL with the decode error, as grpc-go does.
    let (code, msg) = raw_grpc(&ep, "etcdserverpb.KV/Put", &frame(5, &[0xff; 5]));
    assert_eq!(code, "13", "{msg}");
    assert!(msg.contains("decode"), "{msg}");

    // A frame that claims more bytes than it carries.
    let (code, _) = raw_grpc(&ep, "etcdserverpb.KV/Range", &frame(1000, b"\x0a\x01a"));
    assert!(!code.is_empty() && code != "0", "a truncated frame must fail, got status {code:?}");

    // An unknown method.
    let (code, _) = raw_grpc(&ep, "etcdserverpb.KV/NoSuchMethod", &frame(0, b""));
    assert_eq!(code, "12", "UNIMPLEMENTED");

    // Garbage that is not HTTP at all, and a plain HTTP/1.1 request.
    for junk in [&b"\x00\x01\x02 this is not http\r\n\r\n"[..], b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"] {
        let mut s = TcpStream::connect(&ep).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(junk).unwrap();
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf);
    }

    // Still serving.
    ok(&ep, &["put", "alive", "yes"]);
    assert!(ok(&ep, &["get", "alive"]).contains("yes"));
}

/// KV calls with odd bodies, on ironcd (served on the raft core and
/// forwarded from a client executor) and on etcd: the same gRPC status
/// codes, and the same data afterwards. ironcd's KV front decodes the usual
/// body itself and hands every odd one to tonic (`docs/server.md`, "The KV
/// front"); this pins both paths to etcd's codes.
#[test]
fn raw_kv_calls_get_etcds_status_codes() {
    let put = |key: &[u8], value: &[u8]| {
        let mut m = vec![0x0a, key.len() as u8];
        m.extend_from_slice(key);
        m.extend_from_slice(&[0x12, value.len() as u8]);
        m.extend_from_slice(value);
        frame(m.len() as u32, &m)
    };
    let mut compressed = put(b"c", b"v");
    compressed[0] = 1;
    let two = [put(b"t", b"1"), put(b"t", b"2")].concat();
    let range = {
        let m = [0x0a, 0x01, b'k'];
        frame(3, &m)
    };
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("a put", "etcdserverpb.KV/Put", put(b"k", b"v")),
        ("a range", "etcdserverpb.KV/Range", range),
        ("two messages", "etcdserverpb.KV/Put", two),
        ("a compressed flag with no grpc-encoding", "etcdserverpb.KV/Put", compressed),
        ("an empty body", "etcdserverpb.KV/Put", Vec::new()),
        ("half a length prefix", "etcdserverpb.KV/Put", vec![0, 0, 0]),
        ("a frame shorter than its length", "etcdserverpb.KV/Range", frame(1000, b"\x0a\x01a")),
        ("an empty key", "etcdserverpb.KV/Put", put(b"", b"v")),
    ];
    let run = |srv: &Server| -> Vec<String> {
        let ep = srv.endpoint();
        let mut got: Vec<String> =
            cases.iter().map(|(what, method, body)| format!("{what}: {}", raw_grpc(&ep, method, body).0)).collect();
        for key in ["k", "c", "t"] {
            got.push(format!("get {key}: {}", ok(&ep, &["get", key]).trim()));
        }
        got
    };
    let dirs = [Scratch::new("raw-kv-ironcd"), Scratch::new("raw-kv-fwd"), Scratch::new("raw-kv-etcd")];
    let etcd = run(&Server::etcd(dirs[2].path()));
    let ironcd = run(&Server::ironcd(dirs[0].path()));
    let forwarded = run(&Server::ironcd_forwarding(dirs[1].path()));
    assert!(etcd[0].ends_with(": 0") && etcd[1].ends_with(": 0"), "etcd: {etcd:#?}");
    assert_eq!(ironcd, etcd, "ironcd (raft core) against etcd");
    assert_eq!(forwarded, etcd, "ironcd (forwarded) against etcd");
}

#[test]
fn invalid_requests_through_a_client_library() {
    let dir = Scratch::new("bad-client");
    let srv = Server::ironcd(dir.path());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut c = Client::connect([srv.endpoint()], None).await.unwrap();
        let e = c.put("", "v", None).await.unwrap_err();
        assert!(e.to_string().contains("etcdserver: key is not provided"), "{e}");
        let e = c.get("", None).await.unwrap_err();
        assert!(e.to_string().contains("etcdserver: key is not provided"), "{e}");
        let e = c.put("k", "v", Some(PutOptions::new().with_lease(777))).await.unwrap_err();
        assert!(e.to_string().contains("etcdserver: requested lease not found"), "{e}");
        let e = c.put("k", "v", Some(PutOptions::new().with_ignore_value())).await.unwrap_err();
        assert!(e.to_string().contains("etcdserver: value is provided"), "{e}");
        let e = c.put("k", "", Some(PutOptions::new().with_ignore_value())).await.unwrap_err();
        assert!(e.to_string().contains("etcdserver: key not found"), "{e}");
        let e = c.get("k", Some(GetOptions::new().with_revision(1 << 40))).await.unwrap_err();
        assert!(e.to_string().contains("required revision is a future revision"), "{e}");

        // Over --max-request-bytes (1.5 MiB) but within gRPC's allowance:
        // etcd's own error. Beyond the allowance: gRPC's RESOURCE_EXHAUSTED.
        let e = c.put("big", vec![0u8; 1_800_000], None).await.unwrap_err();
        assert!(e.to_string().contains("etcdserver: request is too large"), "{e}");
        match c.put("huge", vec![0u8; 3 << 20], None).await.unwrap_err() {
            etcd_client::Error::GRpcStatus(st) => assert_eq!(st.code(), tonic::Code::ResourceExhausted, "{st}"),
            other => panic!("expected a gRPC status, got {other}"),
        }

        // An inverted range is empty, not an error (etcd's behaviour).
        c.put("m", "1", None).await.unwrap();
        let r = c.get("z", Some(GetOptions::new().with_range("a"))).await.unwrap();
        assert_eq!(r.count(), 0);
        let d = c.delete("z", Some(DeleteOptions::new().with_range("a"))).await.unwrap();
        assert_eq!(d.deleted(), 0);
        let r = c.get("m", None).await.unwrap();
        assert_eq!(r.kvs()[0].value(), b"1");
        assert_eq!(r.header().unwrap().revision(), 2, "nothing but the one put changed the revision");
    });
}

/// The peer port refuses what is not an ironcd member of this cluster —
/// garbage, HTTP, a handshake with another cluster's ID, a frame with a bad
/// checksum — with a log line, and the member carries on.
#[test]
fn the_peer_port_refuses_garbage_and_foreign_clusters() {

    let dir = Scratch::new("peer-garbage");
    let srv = Server::ironcd(dir.path());
    let ep = srv.endpoint();
    ok(&ep, &["put", "k", "v"]);
    let peer = format!("127.0.0.1:{}", srv.peer_port);
    let send = |bytes: &[u8]| -> Vec<u8> {
        let mut s = TcpStream::connect(&peer).expect("connect to the peer port");
        s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        let _ = s.write_all(bytes);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out
    };
    // Not the protocol at all.
    send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    send(&[0xFF; 4096]);
    // A handshake from another cluster: refused with a reason.
    let hello = |cluster: u64| {
        let mut h = b"ironcdP1".to_vec();
        h.push(1);
        h.extend_from_slice(&cluster.to_le_bytes());
        h.extend_from_slice(&42u64.to_le_bytes());
        h.extend_from_slice(&0u64.to_le_bytes());
        h
    };
    let answer = send(&hello(0x1234_5678));
    assert_eq!(answer.first(), Some(&1), "refused: {answer:?}");
    assert!(String::from_utf8_lossy(&answer).contains("cluster ID mismatch"), "{}", String::from_utf8_lossy(&answer));
    // The right cluster (0 = not known yet) but a frame with a bad checksum
    // and an absurd length.
    let mut bytes = hello(0);
    bytes.extend_from_slice(&20u32.to_le_bytes());
    bytes.extend_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
    bytes.extend_from_slice(&[7u8; 20]);
    let answer = send(&bytes);
    assert_eq!(answer.first(), Some(&0), "handshake accepted before the bad frame");
    let mut bytes = hello(0);
    bytes.extend_from_slice(&u32::MAX.to_le_bytes());
    bytes.extend_from_slice(&[0u8; 4]);
    send(&bytes);
    // The member is fine and logged what it refused.
    assert_eq!(ok(&ep, &["get", "k", "--print-value-only"]).trim(), "v");
    ok(&ep, &["put", "k2", "v2"]);
    let log = srv.log_text();
    for needle in ["not an ironcd peer", "cluster ID mismatch", "frame checksum mismatch", "out of range"] {
        assert!(log.contains(needle), "no log line with {needle:?}:\n{log}");
    }
}
