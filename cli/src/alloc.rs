//! The allocator: mimalloc, and how soon it gives freed memory back to the system.
//!
//! Records are made on one worker thread and freed on another; glibc's allocator serialises
//! that on arena locks (15 % of the sensors benchmark was spent waiting on them). mimalloc
//! frees across threads without a lock.
//!
//! mimalloc 3 keeps the pages a thread freed for a second (its `purge_delay`, 1,000 ms) before
//! giving them back, for a program that will want them again; a flow's batches come and go
//! every few milliseconds on different threads, so a second of them is a lot: the sensors
//! flow peaked at 80-82 MB at 10,000,000 events. At 5 ms it peaks at 50 MB at 1,000,000 and
//! 55-56 MB at 10,000,000, in the same time (alternating runs: 10 ms 52 / 57-61 MB, 2 ms
//! 47 / 53-55 MB and 3 % slower; 0 costs a madvise per free and 40 % more time;
//! docs/performance.md, step 24). mimalloc 2 purged after 10 ms already, but kept more per
//! thread (54 / 60 MB with the smaller batches of step 23).
//!
//! Setting it needs mimalloc's C API, which is `unsafe` to call: the crate denies
//! `unsafe_code` (the workspace forbids it) so that [`tune`] and its test's reading of the
//! option alone can allow it (tests/tests/unsafe_code.rs lists every such place).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 3's `mimalloc.h` (libmimalloc-sys names no constant
/// for it; a test checks the number by its default).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Give freed pages back after this many milliseconds.
const PURGE_DELAY_MS: std::ffi::c_long = 5;

/// Set mimalloc's purge delay to [`PURGE_DELAY_MS`], unless `MIMALLOC_PURGE_DELAY` says
/// otherwise (mimalloc reads its environment when the process starts). Called first in
/// `main`, before any thread starts.
#[allow(unsafe_code, reason = "mimalloc's C API; see the SAFETY comment")]
pub fn tune() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: `mi_option_set` takes an option number and a value, no pointers; it stores the
    // value in mimalloc's option table (an atomic store), which any thread may do at any
    // time. 15 is `mi_option_purge_delay` (checked by `the_purge_delay_is_option_15`).
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, PURGE_DELAY_MS) }
}

/// The purge delay in effect.
#[cfg(test)]
#[allow(unsafe_code, reason = "mimalloc's C API; see the SAFETY comment")]
fn purge_delay() -> std::ffi::c_long {
    // SAFETY: reads an option's value by its number (no pointers).
    unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Option 15 is the purge delay: its default is mimalloc 3's 1,000 ms (no other option
    /// of mimalloc 3 defaults to that), and `tune` sets it.
    #[test]
    fn the_purge_delay_is_option_15() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        assert_eq!(purge_delay(), 1_000, "mimalloc 3's default purge delay");
        tune();
        assert_eq!(purge_delay(), PURGE_DELAY_MS);
    }
}
