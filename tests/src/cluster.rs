//! Harness for clusters of several ironcd or etcd members (being written).
