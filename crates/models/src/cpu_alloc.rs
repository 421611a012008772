//! How freed CPU tensor memory is reused. candle allocates a fresh buffer for every op's
//! output, and a prompt's attention scores or a training step's activations are tens to
//! hundreds of MB each. glibc's malloc serves blocks that large with a fresh `mmap` and
//! unmaps them on free, so every op pays the kernel to zero new pages: measured on the 2-core
//! development VM, a 130 MB buffer costs ~70 ms of page faults each time it is allocated
//! again, and a CPU training step spent two thirds of its time in the kernel.
//! [`keep_freed_memory`] raises glibc's mmap and trim thresholds so that such blocks come from
//! the heap and stay there after `free`, ready for the next op (the process keeps its peak
//! footprint instead of returning it between ops). jemalloc and mimalloc, tried as
//! drop-in allocators, did not help: their default decay hands the pages back too. Other
//! C libraries are left as they are.

/// Keep freed large blocks in the heap for reuse (glibc only; a no-op elsewhere). Call once,
/// early, before large tensors are allocated. Returns whether the setting was applied.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // Blocks up to 1 GiB (above any single activation buffer of the models firstrank runs
        // on CPU) come from the heap, the heap grows 1 GiB beyond each request, and it is never
        // trimmed (-1, as mallopt(3) documents). Measured on a CPU training step: the mmap and
        // a 2 GiB trim threshold alone cut its kernel time from 144 s to 102 s, with the
        // padding to 33 s, and without trimming to the few seconds page faults need once.
        const GIB: libc::c_int = 1 << 30;
        // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, GIB) == 1
                && libc::mallopt(libc::M_TOP_PAD, GIB) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, -1) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
