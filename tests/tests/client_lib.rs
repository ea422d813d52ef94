//! The KV scenarios through a real client library (the `etcd-client` crate),
//! differentially: the same calls against real etcd 3.4 and ironcd, every
//! response's revision, keys, values, versions, counts, flags and error
//! texts compared.

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, KeyValue, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse,
};
use ironcd_tests::{Scratch, Server};

fn kv(k: &KeyValue) -> String {
    format!(
        "{}={} c{} m{} v{} l{}",
        k.key_str().unwrap_or("?"),
        k.value_str().unwrap_or("?"),
        k.create_revision(),
        k.mod_revision(),
        k.version(),
        k.lease()
    )
}

fn kvs(list: &[KeyValue]) -> String {
    list.iter().map(kv).collect::<Vec<_>>().join(", ")
}

/// Runs the scenario and returns one line per call.
async fn scenario(endpoint: String) -> Vec<String> {
    let mut c = Client::connect([endpoint], None).await.expect("connect");
    let mut out = Vec::new();
    macro_rules! log {
        ($e:expr, $fmt:expr) => {
            match $e {
                Ok(r) => out.push($fmt(r)),
                Err(e) => out.push(format!("error: {e}")),
            }
        };
    }
    for (k, v) in [("a", "1"), ("b", "2"), ("c", "3"), ("a", "4"), ("d/x", "5"), ("d/y", "6")] {
        log!(c.put(k, v, Some(PutOptions::new().with_prev_key())).await, |r: etcd_client::PutResponse| format!(
            "put {k} rev={} prev=[{}]",
            r.header().unwrap().revision(),
            r.prev_key().map(kv).unwrap_or_default()
        ));
    }
    let gets: Vec<(&str, Option<GetOptions>)> = vec![
        ("a", None),
        ("a", Some(GetOptions::new().with_revision(2))),
        ("", Some(GetOptions::new().with_all_keys())),
        ("d/", Some(GetOptions::new().with_prefix())),
        ("b", Some(GetOptions::new().with_from_key())),
        ("a", Some(GetOptions::new().with_range("d").with_limit(2))),
        ("", Some(GetOptions::new().with_all_keys().with_sort(SortTarget::Mod, SortOrder::Descend))),
        ("", Some(GetOptions::new().with_all_keys().with_sort(SortTarget::Value, SortOrder::Ascend).with_limit(3))),
        ("", Some(GetOptions::new().with_all_keys().with_count_only())),
        ("", Some(GetOptions::new().with_all_keys().with_keys_only())),
        ("", Some(GetOptions::new().with_all_keys().with_min_mod_revision(4).with_max_mod_revision(6))),
        ("", Some(GetOptions::new().with_all_keys().with_min_create_revision(3))),
        ("zz", None),
        ("a", Some(GetOptions::new().with_revision(99))),
        ("a", Some(GetOptions::new().with_serializable())),
    ];
    for (k, o) in gets {
        let what = format!("{o:?}");
        log!(c.get(k, o).await, |r: etcd_client::GetResponse| format!(
            "get {k} {what} rev={} count={} more={} [{}]",
            r.header().unwrap().revision(),
            r.count(),
            r.more(),
            kvs(r.kvs())
        ));
    }
    let txns = vec![
        Txn::new()
            .when([Compare::value("a", CompareOp::Equal, "4")])
            .and_then([TxnOp::put("a", "5", None), TxnOp::get("b", None), TxnOp::delete("c", None)])
            .or_else([TxnOp::put("z", "no", None)]),
        Txn::new()
            .when([Compare::version("a", CompareOp::Greater, 5), Compare::create_revision("b", CompareOp::Equal, 3)])
            .and_then([TxnOp::put("never", "1", None)])
            .or_else([TxnOp::get("", Some(GetOptions::new().with_all_keys().with_count_only()))]),
        Txn::new().when([Compare::mod_revision("d/", CompareOp::Less, 100).with_prefix()]).and_then([TxnOp::txn(
            Txn::new().and_then([TxnOp::put("nested", "n", None)]),
        )]),
        Txn::new().and_then([TxnOp::put("dup", "1", None), TxnOp::put("dup", "2", None)]),
        Txn::new().and_then([TxnOp::get("a", None)]),
    ];
    for (i, t) in txns.into_iter().enumerate() {
        log!(c.txn(t).await, |r: etcd_client::TxnResponse| {
            let ops: Vec<String> = r
                .op_responses()
                .into_iter()
                .map(|op| match op {
                    TxnOpResponse::Put(p) => format!("put rev={}", p.header().map_or(0, |h| h.revision())),
                    TxnOpResponse::Get(g) => format!("get count={} [{}]", g.count(), kvs(g.kvs())),
                    TxnOpResponse::Delete(d) => format!("del {}", d.deleted()),
                    TxnOpResponse::Txn(t) => format!("txn succeeded={}", t.succeeded()),
                })
                .collect();
            format!("txn{i} rev={} succeeded={} {:?}", r.header().unwrap().revision(), r.succeeded(), ops)
        });
    }
    log!(c.delete("d/", Some(DeleteOptions::new().with_prefix().with_prev_key())).await, |r: etcd_client::DeleteResponse| format!(
        "del d/ rev={} deleted={} prev=[{}]",
        r.header().unwrap().revision(),
        r.deleted(),
        kvs(r.prev_kvs())
    ));
    log!(c.delete("nosuch", None).await, |r: etcd_client::DeleteResponse| format!(
        "del nosuch rev={} deleted={}",
        r.header().unwrap().revision(),
        r.deleted()
    ));
    log!(c.compact(5, None).await, |r: etcd_client::CompactionResponse| format!("compact rev={}", r.header().unwrap().revision()));
    log!(c.get("a", Some(GetOptions::new().with_revision(4))).await, |r: etcd_client::GetResponse| format!("old {}", kvs(r.kvs())));
    log!(c.get("a", Some(GetOptions::new().with_revision(5))).await, |r: etcd_client::GetResponse| format!("at5 {}", kvs(r.kvs())));
    log!(c.compact(3, None).await, |r: etcd_client::CompactionResponse| format!("compact3 rev={}", r.header().unwrap().revision()));
    out
}

#[test]
fn kv_through_etcd_client_matches_etcd() {
    let dir = Scratch::new("client-lib");
    let etcd = Server::etcd(dir.path());
    let ironcd = Server::ironcd_forwarding(dir.path());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let want = rt.block_on(scenario(etcd.endpoint()));
    let got = rt.block_on(scenario(ironcd.endpoint()));
    assert_eq!(want.len(), got.len());
    assert!(got.iter().filter(|l| l.starts_with("error")).count() <= 4, "the scenario should mostly succeed: {got:#?}");
    let diffs: Vec<String> =
        want.iter().zip(&got).filter(|(w, g)| w != g).map(|(w, g)| format!("etcd:   {w}\nironcd: {g}")).collect();
    assert!(diffs.is_empty(), "{} of {} calls differ:\n{}", diffs.len(), want.len(), diffs.join("\n"));
}
