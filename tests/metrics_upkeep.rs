//! Histogram samples do not pile up in a process that nobody scrapes. The recorder keeps every
//! sample until its upkeep folds them into their buckets; without a task running it, memory grew
//! with every delivery. A test binary of its own: it counts the bytes its whole process holds.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use prediction_inbox::metrics;
use support::{Backend, spawn_app};

/// The system allocator, counting the bytes held.
struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call goes to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees for `layout` are passed on.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: `pointer` came from `alloc` above with this `layout`.
        unsafe { System.dealloc(pointer, layout) };
        HELD.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn held() -> isize {
    HELD.load(Ordering::Relaxed)
}

/// Records rounds of ingest timings while a service runs, with time passing beyond an upkeep
/// period after each; what the process holds after each round, above what it held before the first.
#[tokio::test]
async fn histogram_samples_are_let_go_without_a_scrape() {
    const SAMPLES: usize = 200_000;
    const ROUNDS: usize = 4;
    // The service runs the upkeep (`Application::run_until`); nobody scrapes it.
    let _app = spawn_app(Backend::Sqlite).await;
    // From here, time jumps to the next timer whenever nothing else is to be done.
    tokio::time::pause();

    let start = held();
    let mut after = Vec::new();
    for _ in 0..ROUNDS {
        for _ in 0..SAMPLES {
            metrics::ingest_duration(Duration::from_micros(700));
        }
        after.push(held() - start);
        tokio::time::sleep(metrics::UPKEEP_PERIOD + Duration::from_secs(1)).await;
    }

    // A round's samples are held until the upkeep: at least 8 bytes each.
    let round = after[0];
    assert!(
        round >= (SAMPLES * 8) as isize,
        "a round held {round} bytes"
    );
    // Let go of after it, so rounds do not add up. (A folded round's memory is freed as the
    // recorder's epoch moves on, not at once: the next round may reuse it or not.)
    let last = after[ROUNDS - 1];
    assert!(
        last < 2 * round,
        "after {ROUNDS} rounds of {round} bytes each, {last} bytes were held: {after:?}"
    );
}
