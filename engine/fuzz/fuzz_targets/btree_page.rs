//! Fuzzes the B-tree file's decoders: one page as meta, freelist, overflow
//! and node page; then the input as a whole store file, opened, read,
//! checked and written. Every call must return; none may panic or hang.
//!
//! `cargo +nightly fuzz run btree_page` (from `engine/`).
#![no_main]

use std::ops::Bound;
use std::sync::Arc;

use ironcd_engine::btree::{fuzzing, Db, DbOptions, FaultIo, PAGE_SIZE};
use ironcd_engine::kv::{ReadView, Store, Tree, WriteView};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut page = data.to_vec();
    page.resize(PAGE_SIZE, 0);
    let _ = fuzzing::decode_page(&page);

    // The input as a file of pages (at least the two meta pages).
    if data.len() < 2 * PAGE_SIZE {
        return;
    }
    let mut image = data.to_vec();
    image.resize(data.len().div_ceil(PAGE_SIZE) * PAGE_SIZE, 0);
    let mut opts = DbOptions::default();
    opts.debug_check_every = 0;
    let Ok(db) = Db::open_with_io(Arc::new(FaultIo::from_image(image)), opts) else { return };
    let snap = db.snapshot();
    for t in Tree::ALL {
        let _ = snap.get(t, b"key");
        let _ = snap.scan(t, Bound::Unbounded, Bound::Unbounded, false, &mut |_, _| true);
        let _ = snap.scan(t, Bound::Included(b"a"), Bound::Excluded(b"m"), true, &mut |_, _| true);
    }
    let _ = db.check();
    if let Ok(mut w) = db.begin_write() {
        let _ = w.put(Tree::Kv, b"key", b"value");
        let _ = w.delete(Tree::Kv, b"a");
        let _ = w.commit();
    }
    let _ = db.sync();
});
