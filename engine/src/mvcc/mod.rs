//! etcd's multi-version key-value model (being built).
