//! Where downloads run: threads of their own at a lower scheduling priority (nice 10), so that
//! copying files never takes the CPU from deliveries and reads. On two cores, fetching a GiB at
//! full speed on the service's own threads took ingest p99 at 5,000 deliveries a second from
//! 18 ms to 45 ms (docs/benchmarks.md).

use std::future::Future;

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

/// Threads for the downloads, stopped when this is dropped.
pub struct Background {
    handle: Handle,
    _stop: oneshot::Sender<()>,
}

/// Worker threads: downloads are mostly waiting, but a fast one copies at hundreds of MiB/s.
const THREADS: usize = 2;

impl Background {
    pub fn start() -> std::io::Result<Self> {
        let (started, handle) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("archive".into())
            .spawn(move || {
                // Set before the runtime's threads start: they inherit it.
                lower_priority();
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(THREADS)
                    .thread_name("archive-fetch")
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => {
                        let _ = started.send(Ok(runtime.handle().clone()));
                        // Until the `Background` is dropped.
                        let _ = runtime.block_on(stopped);
                    }
                    Err(error) => {
                        let _ = started.send(Err(error));
                    }
                }
            })?;
        let handle = handle
            .recv()
            .map_err(|_| std::io::Error::other("the archive's threads did not start"))??;
        Ok(Self {
            handle,
            _stop: stop,
        })
    }

    /// Runs `work` there; it is aborted when the returned future is dropped.
    pub fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> impl Future<Output = Option<T>> + Send {
        let task = self.handle.spawn(work);
        let abort = Abort(task.abort_handle());
        async move {
            let done = task.await.ok();
            drop(abort);
            done
        }
    }
}

/// Aborts a task when dropped: a download whose caller went away stops.
struct Abort(AbortHandle);

impl Drop for Abort {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Lowers the calling thread's priority to nice 10; threads it starts inherit it.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        unsafe extern "C" {
            safe fn setpriority(which: i32, who: u32, priority: i32) -> i32;
        }
        // PRIO_PROCESS (0) with `who` 0: on Linux, the calling thread alone (setpriority(2)).
        // Not being able to is no reason not to archive.
        let _ = setpriority(0, 0, 10);
    }
}
