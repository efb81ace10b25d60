//! The open-files limit, which tests and benchmarks of many connections raise (the benchmarks
//! include this file too).

/// Raises this process's soft limit on open files towards `wanted` (as far as the hard limit
/// allows; the service started from it inherits it), and returns the limit now in force.
pub fn raise_open_files(wanted: u64) -> u64 {
    #[repr(C)]
    struct Rlimit {
        current: u64,
        maximum: u64,
    }
    unsafe extern "C" {
        fn getrlimit(resource: i32, limit: *mut Rlimit) -> i32;
        fn setrlimit(resource: i32, limit: *const Rlimit) -> i32;
    }
    const RLIMIT_NOFILE: i32 = if cfg!(target_os = "linux") { 7 } else { 8 };
    let mut limit = Rlimit {
        current: 0,
        maximum: 0,
    };
    // SAFETY: both calls only read or write the one struct passed, laid out as C's `rlimit`.
    unsafe {
        if getrlimit(RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.current < wanted {
            let raised = Rlimit {
                current: wanted.min(limit.maximum),
                maximum: limit.maximum,
            };
            if setrlimit(RLIMIT_NOFILE, &raised) == 0 {
                limit.current = raised.current;
            }
        }
    }
    limit.current
}
