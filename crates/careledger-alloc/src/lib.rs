//! The process allocator of the `careledger` binary, and how it returns memory.
//!
//! With glibc's allocator the server's peak RSS while one sender loaded 1M women was 8.9 GB,
//! about half of it freed memory kept in glibc's per-thread arenas (`MALLOC_ARENA_MAX=2`
//! halved it, at a fifth less throughput). mimalloc keeps less, and returns freed memory to
//! the system at once when told to ([`return_freed_memory_at_once`]). BENCHMARKS.md has the
//! runs.

/// The allocator: `#[global_allocator] static A: careledger_alloc::Allocator = careledger_alloc::ALLOCATOR;`.
pub type Allocator = mimalloc::MiMalloc;

/// The allocator's value.
pub const ALLOCATOR: Allocator = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (the same place in its v2 and v3
/// headers; `libmimalloc-sys` names the options around it but not this one). The test reads
/// its default back, so a build whose option 15 is another one fails it.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory goes back to the system at once, not after mimalloc's delay (1 s in the
/// mimalloc built here, v3). At 1M women loaded by one sender the server's peak RSS fell from
/// 7.9 to 4.6 GB, at 82.5k rows/s against 89.4k (one run each).
#[allow(unsafe_code)]
pub fn return_freed_memory_at_once() {
    // SAFETY: `mi_option_set` stores a process-wide option of the allocator; it takes plain
    // integers and may be called at any time, from any thread.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 0) };
}

/// The allocator's current purge delay in milliseconds (for tests).
#[allow(unsafe_code)]
pub fn purge_delay_ms() -> std::ffi::c_long {
    // SAFETY: `mi_option_get` reads a process-wide option of the allocator.
    unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn freed_memory_is_returned_at_once() {
        assert_eq!(
            super::purge_delay_ms(),
            1000,
            "mimalloc's default purge delay"
        );
        super::return_freed_memory_at_once();
        assert_eq!(super::purge_delay_ms(), 0);
    }
}
