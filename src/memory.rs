//! How the process' allocator hands memory back.
//!
//! glibc's malloc serves a large allocation with pages of its own and unmaps them when freed, but
//! only up to a threshold that it raises to the size of each such block freed, to at most 32 MiB.
//! After the first large body is let go, later ones come from its heaps instead, where freed
//! memory stays resident: under a flood of 16 MiB bodies, each charged to the body budget only
//! for the bytes that arrived and freed when cut off, the service grew to 2.6 GiB with a budget
//! of 256 MiB (docs/reliability.md). A fixed threshold keeps every large block on pages of its
//! own, so what a body held leaves the process with it.

/// Blocks of this many bytes or more are mapped on their own and returned when freed: anything
/// larger than an ordinary delivery.
const OWN_PAGES_FROM: i32 = 1024 * 1024;

/// Makes the allocator return large blocks to the system as they are freed. Call once, first
/// thing; without glibc it does nothing.
pub fn return_large_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        /// `M_MMAP_THRESHOLD` in glibc's `malloc.h`.
        const M_MMAP_THRESHOLD: i32 = -3;
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: `mallopt` only sets a tunable of the allocator; setting this one also stops
        // glibc from moving the threshold itself.
        let set = unsafe { mallopt(M_MMAP_THRESHOLD, OWN_PAGES_FROM) };
        if set != 1 {
            tracing::warn!("the allocator's threshold for returning large blocks could not be set");
        }
    }
}
