//! Helpers for the end-to-end suites in `tests/tests/` (real `ironcd`, real
//! `etcdctl`, real etcd). The suites arrive with the server issue.
