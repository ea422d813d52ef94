//! Specific etcd 3.4 behaviours, each checked in etcd's source and, where
//! marked "(real etcd)", against etcd 3.4.23 through its JSON gateway.

// Inside `mod mvcc` so `cargo test -p ironcd-engine mvcc` selects these.
mod mvcc {
    use ironcd_engine::kv::{ReadView, Tree};
    use ironcd_engine::mvcc::testing::MemStore;
    use ironcd_engine::mvcc::validate::check_txn_request;
    use ironcd_engine::mvcc::*;
    use std::ops::Bound;

    fn kv() -> KvStore<MemStore> {
        KvStore::open(MemStore::new(), Config::default()).unwrap()
    }

    fn put(s: &KvStore<MemStore>, k: &str, v: &str) -> i64 {
        put_lease(s, k, v, 0)
    }

    fn put_lease(s: &KvStore<MemStore>, k: &str, v: &str, lease: i64) -> i64 {
        let mut w = s.write().unwrap();
        let r = w
            .put(
                1,
                &PutRequest {
                    key: k.into(),
                    value: v.into(),
                    lease,
                    ..Default::default()
                },
            )
            .unwrap();
        w.commit().unwrap();
        r.header.revision
    }

    fn del(s: &KvStore<MemStore>, k: &str, end: &[u8]) -> DeleteRangeResponse {
        let mut w = s.write().unwrap();
        let r = w
            .delete_range(
                1,
                &DeleteRangeRequest {
                    key: k.into(),
                    range_end: end.to_vec(),
                    prev_kv: true,
                },
            )
            .unwrap();
        w.commit().unwrap();
        r
    }

    fn txn(s: &KvStore<MemStore>, t: TxnRequest) -> MvccResult<TxnResponse> {
        check_txn_request(&t, 128)?;
        let mut w = s.write().unwrap();
        let r = w.txn(1, &t);
        w.commit().unwrap();
        r
    }

    fn range(s: &KvStore<MemStore>, r: RangeRequest) -> MvccResult<RangeResponse> {
        s.read().unwrap().range(&r)
    }

    fn keys(r: &RangeResponse) -> Vec<String> {
        r.kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect()
    }

    fn all(from: &str) -> RangeRequest {
        RangeRequest {
            key: from.into(),
            range_end: vec![0],
            ..Default::default()
        }
    }

    fn op_put(k: &str) -> RequestOp {
        Request::RequestPut(PutRequest {
            key: k.into(),
            value: b"v".to_vec(),
            ..Default::default()
        })
        .into()
    }

    fn op_del(k: &str, end: &[u8]) -> RequestOp {
        Request::RequestDeleteRange(DeleteRangeRequest {
            key: k.into(),
            range_end: end.to_vec(),
            prev_kv: false,
        })
        .into()
    }

    fn op_txn(success: Vec<RequestOp>) -> RequestOp {
        Request::RequestTxn(TxnRequest {
            compare: vec![],
            success,
            failure: vec![],
        })
        .into()
    }

    fn compact(s: &KvStore<MemStore>, rev: i64) -> MvccResult<CompactionResponse> {
        let mut w = s.write().unwrap();
        let r = w.compact(
            1,
            &CompactionRequest {
                revision: rev,
                physical: false,
            },
        );
        w.commit().unwrap();
        r
    }

    fn finish_compaction(s: &KvStore<MemStore>) {
        let mut w = s.write().unwrap();
        while w.compact_step(2).unwrap() == CompactStep::More {}
        w.commit().unwrap();
    }

    #[test]
    fn revisions_start_at_1_and_only_writes_advance_them() {
        let s = kv();
        assert_eq!(range(&s, all("a")).unwrap().header.revision, 1);
        assert_eq!(put(&s, "a", "1"), 2);
        // A delete that deletes nothing does not advance, and answers the current revision.
        let d = del(&s, "zz", b"");
        assert_eq!((d.deleted, d.header.revision), (0, 2));
        // A txn with only reads, or whose writes delete nothing, does not advance.
        let r = txn(
            &s,
            TxnRequest {
                success: vec![Request::RequestRange(all("a")).into(), op_del("zz", b"")],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(r.header.revision, 2);
        assert_eq!(s.read().unwrap().revision(), 2);
        // Ops in one txn share the main revision.
        let r = txn(
            &s,
            TxnRequest {
                success: vec![op_put("b"), op_put("c")],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(r.header.revision, 3);
        let kvs = range(&s, all("b")).unwrap().kvs;
        assert_eq!(
            kvs.iter().map(|kv| kv.mod_revision).collect::<Vec<_>>(),
            [3, 3]
        );
    }

    #[test]
    fn versions_and_tombstones() {
        let s = kv();
        put(&s, "k", "1");
        put(&s, "k", "2");
        let kv1 = &range(&s, all("k")).unwrap().kvs[0];
        assert_eq!(
            (kv1.create_revision, kv1.mod_revision, kv1.version),
            (2, 3, 2)
        );
        let d = del(&s, "k", b"");
        assert_eq!((d.deleted, d.header.revision), (1, 4));
        assert_eq!(d.prev_kvs, vec![kv1.clone()]);
        put(&s, "k", "3");
        let kv2 = &range(&s, all("k")).unwrap().kvs[0];
        assert_eq!(
            (kv2.create_revision, kv2.mod_revision, kv2.version),
            (5, 5, 1)
        );
        // Old revisions still read the old generations.
        let at3 = range(
            &s,
            RangeRequest {
                revision: 3,
                ..all("k")
            },
        )
        .unwrap();
        assert_eq!(
            (at3.kvs[0].value.as_slice(), at3.header.revision),
            (&b"2"[..], 5)
        );
        assert!(range(
            &s,
            RangeRequest {
                revision: 4,
                ..all("k")
            }
        )
        .unwrap()
        .kvs
        .is_empty());
    }

    #[test]
    fn range_end_forms() {
        let s = kv();
        for k in ["a", "a\0", "ab", "b", "c"] {
            put(&s, k, "v");
        }
        assert_eq!(keys(&range(&s, all("ab")).unwrap()), ["ab", "b", "c"]); // "\0": every key >= key
        let r = RangeRequest {
            key: "a".into(),
            range_end: "b".into(),
            ..Default::default()
        };
        assert_eq!(keys(&range(&s, r).unwrap()), ["a", "a\0", "ab"]);
        let single = RangeRequest {
            key: "a".into(),
            ..Default::default()
        };
        assert_eq!(keys(&range(&s, single).unwrap()), ["a"]);
        // range_end <= key: nothing, as etcd's index walk stops at once.
        let inverted = RangeRequest {
            key: "b".into(),
            range_end: "a".into(),
            ..Default::default()
        };
        assert_eq!(range(&s, inverted).unwrap().count, 0);
    }

    #[test]
    fn limit_count_more_and_sorting() {
        let s = kv();
        put(&s, "c", "1"); // create 2
        put(&s, "a", "3"); // create 3
        put(&s, "b", "2"); // create 4
        put(&s, "d", "1"); // create 5
                           // count is every key in range; more says the limit cut it.
        let r = range(
            &s,
            RangeRequest {
                limit: 2,
                ..all("a")
            },
        )
        .unwrap();
        assert_eq!(
            (keys(&r), r.count, r.more),
            (vec!["a".to_string(), "b".into()], 4, true)
        );
        let r = range(
            &s,
            RangeRequest {
                limit: 4,
                ..all("a")
            },
        )
        .unwrap();
        assert!(!r.more);
        // (real etcd) sort_order NONE with a non-key target sorts ascending, but
        // only the limit+1 keys fetched in key order: "a"(3) and "b"(4) -> "a".
        let r = range(
            &s,
            RangeRequest {
                limit: 1,
                sort_target: SortTarget::Create,
                ..all("a")
            },
        )
        .unwrap();
        assert_eq!(keys(&r), ["a"]);
        // With an explicit order everything is sorted first: "c"(2).
        let r = range(
            &s,
            RangeRequest {
                limit: 1,
                sort_target: SortTarget::Create,
                sort_order: SortOrder::Ascend,
                ..all("a")
            },
        )
        .unwrap();
        assert_eq!((keys(&r), r.more), (vec!["c".to_string()], true));
        // (real etcd) ties keep ascending key order, also when descending.
        let r = range(
            &s,
            RangeRequest {
                sort_target: SortTarget::Value,
                sort_order: SortOrder::Descend,
                ..all("a")
            },
        )
        .unwrap();
        assert_eq!(keys(&r), ["a", "b", "c", "d"]);
        let r = range(
            &s,
            RangeRequest {
                sort_target: SortTarget::Key,
                sort_order: SortOrder::Descend,
                ..all("a")
            },
        )
        .unwrap();
        assert_eq!(keys(&r), ["d", "c", "b", "a"]);
        // Filters prune but count stays the number of keys in range.
        let r = range(
            &s,
            RangeRequest {
                min_create_revision: 4,
                ..all("a")
            },
        )
        .unwrap();
        assert_eq!((keys(&r), r.count), (vec!["b".to_string(), "d".into()], 4));
        let r = range(
            &s,
            RangeRequest {
                count_only: true,
                limit: 1,
                ..all("a")
            },
        )
        .unwrap();
        assert_eq!((r.kvs.len(), r.count, r.more), (0, 4, false));
        let r = range(
            &s,
            RangeRequest {
                keys_only: true,
                ..all("a")
            },
        )
        .unwrap();
        assert!(r
            .kvs
            .iter()
            .all(|kv| kv.value.is_empty() && kv.version == 1));
    }

    #[test]
    fn revision_errors() {
        let s = kv();
        for i in 0..4 {
            put(&s, "k", &i.to_string()); // revisions 2..=5
        }
        let e = range(
            &s,
            RangeRequest {
                revision: 6,
                ..all("k")
            },
        )
        .unwrap_err();
        assert_eq!(
            e.etcd_message(),
            "etcdserver: mvcc: required revision is a future revision"
        );
        assert_eq!(e.grpc_code(), GrpcCode::OutOfRange);
        // (real etcd) compact 0 is accepted; then at/below the compact revision is an error.
        compact(&s, 0).unwrap();
        assert_eq!(compact(&s, 3).unwrap().header.revision, 5);
        assert!(matches!(compact(&s, 3), Err(MvccError::Compacted)));
        assert!(matches!(compact(&s, 9), Err(MvccError::FutureRev)));
        // (real etcd) reading at the compact revision works; below does not.
        assert_eq!(
            range(
                &s,
                RangeRequest {
                    revision: 3,
                    ..all("k")
                }
            )
            .unwrap()
            .kvs[0]
                .value,
            b"1"
        );
        let e = range(
            &s,
            RangeRequest {
                revision: 2,
                ..all("k")
            },
        )
        .unwrap_err();
        assert_eq!(
            e.etcd_message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        // (real etcd) a plain range at a negative revision reads the head; inside
        // a txn it is checked against the compact revision and fails.
        assert_eq!(
            range(
                &s,
                RangeRequest {
                    revision: -5,
                    ..all("k")
                }
            )
            .unwrap()
            .kvs[0]
                .value,
            b"3"
        );
        let t = TxnRequest {
            success: vec![Request::RequestRange(RangeRequest {
                revision: -5,
                ..all("k")
            })
            .into()],
            ..Default::default()
        };
        assert!(matches!(txn(&s, t), Err(MvccError::Compacted)));
    }

    #[test]
    fn compaction_drops_tombstones_and_superseded_versions() {
        let s = kv();
        put(&s, "a", "1"); // 2
        put(&s, "a", "2"); // 3
        put(&s, "b", "1"); // 4
        del(&s, "b", b""); // 5
        put(&s, "c", "1"); // 6
        compact(&s, 5).unwrap();
        finish_compaction(&s);
        let rd = s.read().unwrap();
        let mut revs = vec![];
        rd.view()
            .scan(
                Tree::Kv,
                Bound::Unbounded,
                Bound::Unbounded,
                false,
                &mut |k, _| {
                    revs.push(Revision::from_kv_key(k).unwrap().main);
                    true
                },
            )
            .unwrap();
        assert_eq!(revs, [3, 6]); // a@3 survives; a@2, b@4 and b's tombstone@5 are gone
                                  // (real etcd) a watch from the compact revision starts with what survived.
        let w = rd
            .watch_events(&WatchEventsRequest {
                key: vec![0],
                range_end: vec![0],
                start_revision: 5,
                ..Default::default()
            })
            .unwrap();
        assert!(w.events.is_empty() || w.events[0].kv.mod_revision == 6);
        let w = rd.watch_events(&WatchEventsRequest {
            key: vec![0],
            range_end: vec![0],
            start_revision: 4,
            ..Default::default()
        });
        assert!(matches!(w, Err(MvccError::Compacted)));
        assert_eq!(
            keys(
                &rd.range(&RangeRequest {
                    revision: 5,
                    ..all("a")
                })
                .unwrap()
            ),
            ["a"]
        );
    }

    #[test]
    fn txn_compares_on_missing_keys_and_ranges() {
        let s = kv();
        put(&s, "a", "1");
        put(&s, "b", "2");
        let cmp = |key: &str, end: &[u8], target, result, u| Compare {
            result,
            target,
            key: key.into(),
            range_end: end.to_vec(),
            target_union: Some(u),
        };
        let ok = |c: Compare| {
            txn(
                &s,
                TxnRequest {
                    compare: vec![c],
                    ..Default::default()
                },
            )
            .unwrap()
            .succeeded
        };
        // A missing key compares as version 0 / create 0 / mod 0 / lease 0 ...
        assert!(ok(cmp(
            "zz",
            b"",
            CompareTarget::Version,
            CompareResult::Equal,
            TargetUnion::Version(0)
        )));
        assert!(ok(cmp(
            "zz",
            b"",
            CompareTarget::Create,
            CompareResult::Less,
            TargetUnion::CreateRevision(1)
        )));
        // ... but a value compare on a missing key always fails.
        assert!(!ok(cmp(
            "zz",
            b"",
            CompareTarget::Value,
            CompareResult::NotEqual,
            TargetUnion::Value(b"x".to_vec())
        )));
        // Over a range every key must satisfy.
        assert!(ok(cmp(
            "a",
            b"c",
            CompareTarget::Version,
            CompareResult::Equal,
            TargetUnion::Version(1)
        )));
        assert!(!ok(cmp(
            "a",
            b"c",
            CompareTarget::Value,
            CompareResult::Equal,
            TargetUnion::Value(b"1".to_vec())
        )));
        assert!(ok(cmp(
            "a",
            &[0],
            CompareTarget::Value,
            CompareResult::Greater,
            TargetUnion::Value(b"0".to_vec())
        )));
        // A union that does not match the target compares against zero.
        assert!(ok(cmp(
            "a",
            b"",
            CompareTarget::Mod,
            CompareResult::Greater,
            TargetUnion::Value(b"zzz".to_vec())
        )));
    }

    #[test]
    fn txn_responses_and_nested_headers() {
        let s = kv();
        put(&s, "x", "1"); // 2
                           // (real etcd) nested put then a later nested delete of the same key is
                           // allowed; nested txn headers stay empty; op headers carry the txn revision.
        let r = txn(
            &s,
            TxnRequest {
                success: vec![op_txn(vec![op_put("n")]), op_txn(vec![op_del("n", b"")])],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(r.header.revision, 3);
        let Some(Response::ResponseTxn(t1)) = &r.responses[0].response else {
            panic!()
        };
        assert_eq!(t1.header.revision, 0);
        let Some(Response::ResponsePut(p)) = &t1.responses[0].response else {
            panic!()
        };
        assert_eq!(p.header.revision, 3);
        assert!(range(
            &s,
            RangeRequest {
                key: "n".into(),
                ..Default::default()
            }
        )
        .unwrap()
        .kvs
        .is_empty());
        // A range after a write inside the txn sees it, at the txn's revision.
        let r = txn(
            &s,
            TxnRequest {
                success: vec![op_put("y"), Request::RequestRange(all("y")).into()],
                ..Default::default()
            },
        )
        .unwrap();
        let Some(Response::ResponseRange(rr)) = &r.responses[1].response else {
            panic!()
        };
        assert_eq!((rr.header.revision, rr.count), (4, 1));
        // A delete that deletes nothing after a write still reports the txn revision.
        let r = txn(
            &s,
            TxnRequest {
                success: vec![op_put("z"), op_del("nothing", b"")],
                ..Default::default()
            },
        )
        .unwrap();
        let Some(Response::ResponseDeleteRange(d)) = &r.responses[1].response else {
            panic!()
        };
        assert_eq!((d.deleted, d.header.revision), (0, 5));
    }

    #[test]
    fn txn_validation() {
        let dup = |t: TxnRequest| check_txn_request(&t, 128).err().map(|e| e.etcd_message());
        let txn = |success| TxnRequest {
            success,
            ..Default::default()
        };
        let d = Some("etcdserver: duplicate key given in txn request".to_string());
        assert_eq!(dup(txn(vec![op_put("a"), op_put("a")])), d);
        assert_eq!(dup(txn(vec![op_put("b"), op_del("a", b"c")])), d);
        assert_eq!(
            dup(txn(vec![op_del("a", b"c"), op_txn(vec![op_put("b")])])),
            d
        );
        assert_eq!(
            dup(txn(vec![
                op_txn(vec![op_del("a", b"")]),
                op_txn(vec![op_put("a")])
            ])),
            d
        );
        // Allowed by etcd: put then a later nested delete, and (real etcd) a
        // delete with range end "\0" (an inverted interval to etcd's check).
        assert_eq!(
            dup(txn(vec![
                op_txn(vec![op_put("a")]),
                op_txn(vec![op_del("a", b"")])
            ])),
            None
        );
        assert_eq!(dup(txn(vec![op_put("k"), op_del("a", &[0])])), None);
        // then/else of one nested txn may put the same key.
        let both = TxnRequest {
            compare: vec![],
            success: vec![op_put("a")],
            failure: vec![op_put("a")],
        };
        assert_eq!(dup(txn(vec![Request::RequestTxn(both).into()])), None);
        // Too many ops: each list against the limit, nested txns against what is left.
        let many = TxnRequest {
            success: (0..129).map(|i| op_put(&i.to_string())).collect(),
            ..Default::default()
        };
        assert_eq!(
            dup(many).unwrap(),
            "etcdserver: too many operations in txn request"
        );
        let nested = txn(vec![op_txn(
            (0..2).map(|i| op_put(&i.to_string())).collect(),
        )]);
        assert!(check_txn_request(&nested, 2).is_err() && check_txn_request(&nested, 3).is_ok());
        assert_eq!(
            dup(txn(vec![RequestOp { request: None }])).unwrap(),
            "etcdserver: key not found"
        );
        assert_eq!(
            dup(txn(vec![op_put("")])).unwrap(),
            "etcdserver: key is not provided"
        );
    }

    #[test]
    fn put_flags() {
        let s = kv();
        let mut w = s.write().unwrap();
        let p = PutRequest {
            key: "k".into(),
            ignore_value: true,
            ..Default::default()
        };
        assert_eq!(
            w.put(1, &p).unwrap_err().etcd_message(),
            "etcdserver: key not found"
        );
        w.lease_grant(1, &LeaseGrantRequest { id: 7, ttl: 60 })
            .unwrap();
        w.put(
            1,
            &PutRequest {
                key: "k".into(),
                value: "v".into(),
                lease: 7,
                ..Default::default()
            },
        )
        .unwrap();
        let r = w
            .put(
                1,
                &PutRequest {
                    key: "k".into(),
                    value: "w".into(),
                    ignore_lease: true,
                    prev_kv: true,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(r.prev_kv.unwrap().value, b"v");
        w.put(
            1,
            &PutRequest {
                key: "k".into(),
                ignore_value: true,
                ..Default::default()
            },
        )
        .unwrap();
        let kv = &w.range(&all("k")).unwrap().kvs[0];
        assert_eq!(
            (kv.value.as_slice(), kv.lease, kv.version),
            (&b"w"[..], 0, 3)
        );
        let e = w
            .put(
                1,
                &PutRequest {
                    key: "k".into(),
                    lease: 99,
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert_eq!(
            (e.etcd_message().as_str(), e.grpc_code()),
            ("etcdserver: requested lease not found", GrpcCode::NotFound)
        );
        let bad = PutRequest {
            key: "k".into(),
            value: "v".into(),
            ignore_value: true,
            ..Default::default()
        };
        assert_eq!(
            validate::check_put_request(&bad)
                .unwrap_err()
                .etcd_message(),
            "etcdserver: value is provided"
        );
        let bad = PutRequest {
            key: "k".into(),
            lease: 1,
            ignore_lease: true,
            ..Default::default()
        };
        assert_eq!(
            validate::check_put_request(&bad)
                .unwrap_err()
                .etcd_message(),
            "etcdserver: lease is provided"
        );
    }

    #[test]
    fn leases() {
        let s = KvStore::open(
            MemStore::new(),
            Config {
                min_lease_ttl: 5,
                ..Config::default()
            },
        )
        .unwrap();
        let mut w = s.write().unwrap();
        let g = w
            .lease_grant(10, &LeaseGrantRequest { id: 0, ttl: 1 })
            .unwrap();
        assert!(g.id > 0 && g.ttl == 5);
        let g2 = w
            .lease_grant(11, &LeaseGrantRequest { id: 0, ttl: 60 })
            .unwrap();
        assert_ne!(g.id, g2.id);
        let e = w
            .lease_grant(1, &LeaseGrantRequest { id: g.id, ttl: 60 })
            .unwrap_err();
        assert_eq!(
            (e.etcd_message().as_str(), e.grpc_code()),
            (
                "etcdserver: lease already exists",
                GrpcCode::FailedPrecondition
            )
        );
        let e = w
            .lease_grant(
                1,
                &LeaseGrantRequest {
                    id: 5,
                    ttl: MAX_LEASE_TTL + 1,
                },
            )
            .unwrap_err();
        assert_eq!(e.etcd_message(), "etcdserver: too large lease TTL");
        for k in ["c", "a", "b"] {
            w.put(
                1,
                &PutRequest {
                    key: k.into(),
                    value: "v".into(),
                    lease: g.id,
                    ..Default::default()
                },
            )
            .unwrap();
        }
        // Overwriting with another lease moves the key.
        w.put(
            1,
            &PutRequest {
                key: "c".into(),
                value: "v".into(),
                lease: g2.id,
                ..Default::default()
            },
        )
        .unwrap();
        w.lease_checkpoint(
            1,
            &[LeaseCheckpoint {
                id: g.id,
                remaining_ttl: 3,
            }],
        )
        .unwrap();
        w.commit().unwrap();
        let l = s.read().unwrap().lease_lookup(g.id).unwrap().unwrap();
        assert_eq!(
            (l.keys, l.remaining_ttl),
            (vec![b"a".to_vec(), b"b".to_vec()], 3)
        );
        let rev = s.read().unwrap().revision();
        let mut w = s.write().unwrap();
        w.take_events();
        let r = w.lease_revoke(1, &LeaseRevokeRequest { id: g.id }).unwrap();
        // Every attached key goes in one revision, in key order.
        assert_eq!(r.header.revision, rev + 1);
        let ev = w.take_events();
        assert_eq!(
            ev.iter()
                .map(|e| (e.r#type, e.kv.key.clone(), e.kv.mod_revision))
                .collect::<Vec<_>>(),
            vec![
                (EventType::Delete, b"a".to_vec(), rev + 1),
                (EventType::Delete, b"b".to_vec(), rev + 1)
            ]
        );
        let e = w
            .lease_revoke(1, &LeaseRevokeRequest { id: g.id })
            .unwrap_err();
        assert_eq!(e.etcd_message(), "etcdserver: requested lease not found");
        w.commit().unwrap();
        let rd = s.read().unwrap();
        assert_eq!(keys(&rd.range(&all("a")).unwrap()), ["c"]);
        assert_eq!(
            rd.lease_list()
                .unwrap()
                .iter()
                .map(|l| l.id)
                .collect::<Vec<_>>(),
            [g2.id]
        );
    }

    #[test]
    fn reopen_recovers_revision_compaction_and_data() {
        let s = kv();
        for i in 0..10 {
            put(&s, &format!("k{}", i % 3), &i.to_string());
        }
        del(&s, "k1", b"");
        compact(&s, 8).unwrap();
        // Half-way through the physical compaction.
        let mut w = s.write().unwrap();
        assert_eq!(w.compact_step(2).unwrap(), CompactStep::More);
        w.set_index_for_test();
        w.commit().unwrap();
        let before = s.read().unwrap();
        let s2 = KvStore::open(s.store().reopen(), Config::default()).unwrap();
        let after = s2.read().unwrap();
        assert_eq!((after.revision(), after.compact_revision()), (12, 8));
        assert_eq!(after.view().applied_index(), 42);
        assert!(after.compaction_pending());
        assert_eq!(
            after.range(&all("k")).unwrap(),
            before.range(&all("k")).unwrap()
        );
        assert_eq!(after.hash_kv(0).unwrap(), before.hash_kv(0).unwrap());
        // The compaction resumes where it stopped.
        finish_compaction(&s2);
        assert!(!s2.read().unwrap().compaction_pending());
        assert_eq!(
            s2.read().unwrap().hash_kv(0).unwrap(),
            before.hash_kv(0).unwrap()
        );
        assert_eq!(put(&s2, "k9", "x"), 13);
    }

    /// Compaction removes `Tree::KeyHistory` entries first (phase 1) and the
    /// orphaned `Tree::Kv` records afterwards in revision order (phase 2).
    /// At every step, with a reopen and a larger `compact` in the middle,
    /// reads, hash_kv and watch from the compact revision equal those of a
    /// store compacted in one go; at the end only survivors remain and no
    /// progress keys are left. Spans several phase-2 chunks (1,024 revisions).
    #[test]
    fn two_phase_compaction_is_invisible_at_every_step() {
        let build = || {
            let s = kv();
            for i in 0..3000 {
                let k = format!("k{}", i % 37);
                // Some keys end deleted (a put, a put, a tombstone: no
                // survivor once the tombstone is compacted).
                if i % 37 == 5 && i % 3 == 0 {
                    del(&s, &k, b"");
                } else {
                    put(&s, &k, &i.to_string());
                }
            }
            s
        };
        let watch = |s: &KvStore<MemStore>, from: i64| {
            s.read()
                .unwrap()
                .watch_events(&WatchEventsRequest {
                    key: vec![0],
                    range_end: vec![0],
                    start_revision: from,
                    prev_kv: true,
                    ..Default::default()
                })
                .unwrap()
                .events
        };
        let snapshot = |s: &KvStore<MemStore>, at: i64| {
            let rd = s.read().unwrap();
            let mut old = all("k");
            old.revision = at;
            (
                rd.hash_kv(0).unwrap().hash,
                rd.hash_kv(at + 1).unwrap().hash,
                rd.range(&old).unwrap().kvs,
                rd.range(&all("k")).unwrap().kvs,
                watch(s, at),
            )
        };
        // At both targets k5's newest change is a tombstone (rev 2042, 2819):
        // its orphaned older puts have no indexed successor <= the target.
        let (first, second) = (2050, 2830);
        // The reference: compacted to `first`, then to `second`, in one go.
        let eager = build();
        compact(&eager, first).unwrap();
        finish_compaction(&eager);
        let want_first = snapshot(&eager, first);
        compact(&eager, second).unwrap();
        finish_compaction(&eager);
        let want_second = snapshot(&eager, second);

        let mut s = build();
        compact(&s, first).unwrap();
        let mut steps = 0;
        loop {
            assert_eq!(snapshot(&s, first), want_first, "step {steps}");
            let mut w = s.write().unwrap();
            let more = w.compact_step(50).unwrap() == CompactStep::More;
            w.commit().unwrap();
            steps += 1;
            if steps == 40 {
                s = KvStore::open(s.store().reopen(), Config::default()).unwrap();
            }
            if !more {
                break;
            }
        }
        // Phase 1 examines ~2,100 entries, phase 2 ~2,100 records.
        assert!(steps > 80, "{steps} steps");
        compact(&s, first + 100).unwrap();
        // A larger compaction arrives while the previous one is in phase 2.
        for _ in 0..60 {
            let mut w = s.write().unwrap();
            w.compact_step(10).unwrap();
            w.commit().unwrap();
        }
        compact(&s, second).unwrap();
        loop {
            assert_eq!(snapshot(&s, second), want_second);
            let mut w = s.write().unwrap();
            let more = w.compact_step(100).unwrap() == CompactStep::More;
            w.commit().unwrap();
            if !more {
                break;
            }
        }
        let rd = s.read().unwrap();
        let erd = eager.read().unwrap();
        let entries = |v: &dyn ReadView, t: Tree| {
            let mut out = Vec::new();
            v.scan(t, Bound::Unbounded, Bound::Unbounded, false, &mut |k, v| {
                out.push((k.to_vec(), v.to_vec()));
                true
            })
            .unwrap();
            out
        };
        for t in [Tree::Kv, Tree::KeyIndex, Tree::KeyHistory, Tree::Meta] {
            assert_eq!(entries(rd.view(), t), entries(erd.view(), t), "{t:?}");
        }
        assert!(entries(rd.view(), Tree::Meta)
            .iter()
            .all(|(k, _)| !k.starts_with(b"mvcc/compact_")));
        assert_eq!(rd.hash().unwrap().hash, erd.hash().unwrap().hash);
    }

    /// Records a raft index the way an apply would.
    trait SetIndex {
        fn set_index_for_test(&mut self);
    }

    impl<W: ironcd_engine::kv::WriteView> SetIndex for KvWriter<W> {
        fn set_index_for_test(&mut self) {
            self.lease_checkpoint(42, &[]).unwrap();
        }
    }

    #[test]
    fn watch_batches_and_prev_kv() {
        let s = KvStore::open(
            MemStore::new(),
            Config {
                events: EventMode::EventsWithPrevKv,
                ..Config::default()
            },
        )
        .unwrap();
        put(&s, "a", "1"); // 2
        put(&s, "b", "1"); // 3
        put(&s, "a", "2"); // 4
        del(&s, "a", b""); // 5
        let rd = s.read().unwrap();
        let req = WatchEventsRequest {
            key: "a".into(),
            range_end: vec![],
            start_revision: 1,
            end_revision: 0,
            prev_kv: true,
            max_revisions: 2,
        };
        let w = rd.watch_events(&req).unwrap();
        assert_eq!(
            w.events
                .iter()
                .map(|e| e.kv.mod_revision)
                .collect::<Vec<_>>(),
            [2, 4]
        );
        assert_eq!(w.events[0].prev_kv, None); // a creation has no prev_kv
        assert_eq!(w.events[1].prev_kv.as_ref().unwrap().value, b"1");
        assert_eq!(w.next_revision, Some(5));
        let w = rd
            .watch_events(&WatchEventsRequest {
                start_revision: 5,
                ..req
            })
            .unwrap();
        assert_eq!(
            (w.events[0].r#type, w.events[0].kv.version, w.next_revision),
            (EventType::Delete, 0, None)
        );
        assert_eq!(w.events[0].prev_kv.as_ref().unwrap().value, b"2");
    }

    #[test]
    fn hash_kv_ignores_compaction_progress() {
        let (a, b) = (kv(), kv());
        for s in [&a, &b] {
            for i in 0..20 {
                put(s, &format!("k{}", i % 4), &i.to_string());
            }
            del(s, "k2", b"");
            compact(s, 15).unwrap();
        }
        finish_compaction(&a);
        let (ra, rb) = (a.read().unwrap(), b.read().unwrap());
        for rev in [0, 16, 20, 22] {
            assert_eq!(ra.hash_kv(rev).unwrap(), rb.hash_kv(rev).unwrap());
        }
        assert_eq!(ra.hash_kv(0).unwrap().compact_revision, 15);
        assert!(matches!(ra.hash_kv(15), Err(MvccError::Compacted)));
        assert!(matches!(ra.hash_kv(23), Err(MvccError::FutureRev)));
        assert_ne!(ra.hash_kv(20).unwrap().hash, ra.hash_kv(21).unwrap().hash);
        // Hash (whole store) depends on physical compaction progress, like etcd's.
        assert_ne!(ra.hash().unwrap().hash, rb.hash().unwrap().hash);
        drop((ra, rb));
        finish_compaction(&b);
        let (ra, rb) = (a.read().unwrap(), b.read().unwrap());
        assert_eq!(ra.hash().unwrap(), rb.hash().unwrap());
        assert_eq!(ra.hash().unwrap().header.revision, 22);
    }
}
