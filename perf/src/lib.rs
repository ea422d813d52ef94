//! The load tool and the side-by-side runner (the perf issue); nothing here yet.
