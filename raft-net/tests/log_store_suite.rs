//! openraft's storage conformance suite (`openraft::testing::log::Suite`)
//! against the WAL-backed log store: on the real disk (O_DIRECT into a temp
//! dir) and on the engine's simulated disk (`SimIo`).

mod common;

use std::path::PathBuf;

use common::MemStateMachine;
use ironcd_engine::wal::{DmaIo, SimIo, WalOptions, MIN_SEGMENT_SIZE};
use ironcd_raft_net::{GlommioRuntime, LogStore, TypeConfig};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::StorageError;
use openraft_rt::AsyncRuntime;

/// Small segments: the suite builds a fresh store for each of its ~45 cases.
fn opts() -> WalOptions {
    WalOptions { segment_size: MIN_SEGMENT_SIZE, ..WalOptions::default() }
}

fn storage_err(e: std::io::Error) -> StorageError<TypeConfig> {
    StorageError::read(TypeConfig::err_from_error(&e))
}

struct DiskBuilder;

impl StoreBuilder<TypeConfig, LogStore<DmaIo>, MemStateMachine, tempfile::TempDir> for DiskBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore<DmaIo>, MemStateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().map_err(storage_err)?;
        let store = LogStore::open_dir(dir.path().join("wal"), opts()).await.map_err(storage_err)?;
        Ok((dir, store, MemStateMachine::default()))
    }
}

struct SimBuilder;

impl StoreBuilder<TypeConfig, LogStore<SimIo>, MemStateMachine> for SimBuilder {
    async fn build(&self) -> Result<((), LogStore<SimIo>, MemStateMachine), StorageError<TypeConfig>> {
        let store = LogStore::open(SimIo::new(), PathBuf::from("/sim/wal"), opts()).await.map_err(storage_err)?;
        Ok(((), store, MemStateMachine::default()))
    }
}

#[test]
fn openraft_log_suite_on_disk() {
    GlommioRuntime::new(1).block_on(async {
        Suite::test_all(DiskBuilder).await.unwrap();
    });
}

#[test]
fn openraft_log_suite_on_sim_io() {
    GlommioRuntime::new(1).block_on(async {
        Suite::test_all(SimBuilder).await.unwrap();
    });
}
