//! The memory-mapped copy-on-write B-tree file (being built; see docs/FORMAT.md).
