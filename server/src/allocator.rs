//! The memory allocator: mimalloc (feature `mimalloc`, on by default)
//! instead of glibc's malloc (`docs/server.md`, "Memory allocator").
//!
//! mimalloc gives freed memory back to the OS lazily: a page is purged a
//! while after it empties (`purge_delay`, 1 s), and only when mimalloc runs
//! again on that thread. A server that goes idle after a burst (or after
//! replaying its WAL at start) would keep the burst's memory. So each
//! executor asks mimalloc to collect every [`COLLECT_EVERY`].

use std::time::Duration;

/// How often each executor lets the allocator give freed memory back.
pub const COLLECT_EVERY: Duration = Duration::from_secs(1);

/// mimalloc's `arena_eager_commit` option (its C enum's index).
#[cfg(feature = "mimalloc")]
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Sets the allocator up before `main` and before the first allocation
/// (an ELF constructor): mimalloc's arenas are not committed eagerly. On
/// Linux they are by default, and with transparent huge pages each touched
/// corner of an arena then costs 2 MiB of resident memory (measured: 67 MiB
/// resident at idle against 47 MiB, for no measurable gain in put
/// throughput). Set any later, the option misses the first arena.
#[cfg(all(feature = "mimalloc", target_os = "linux"))]
#[used]
#[unsafe(link_section = ".init_array")]
static INIT: extern "C" fn() = {
    extern "C" fn init() {
        // SAFETY: sets a plain integer option; no other thread exists yet.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) }
    }
    init
};

/// Gives this thread's freed memory back to the OS now (`force`: all of it,
/// not only what has been free for the purge delay).
pub fn collect(force: bool) {
    #[cfg(feature = "mimalloc")]
    // SAFETY: mi_collect may be called at any time on any thread.
    unsafe {
        libmimalloc_sys::mi_collect(force)
    }
    #[cfg(not(feature = "mimalloc"))]
    let _ = force;
}

/// Runs [`collect`] every [`COLLECT_EVERY`] on the current executor, forever.
pub async fn collect_forever() {
    loop {
        glommio::timer::sleep(COLLECT_EVERY).await;
        collect(false);
    }
}
