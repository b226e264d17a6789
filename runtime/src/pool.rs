//! A fixed set of worker threads that a session keeps for its lifetime (std only). Dispatching a
//! job wakes the workers instead of spawning threads, so a run with several threads costs a
//! condition-variable round trip per parallel operation and allocates nothing.

#[cfg(not(feature = "std"))]
mod imp {
    /// Without std there are no threads: every job runs on the caller.
    pub(crate) struct Pool;

    impl Pool {
        pub(crate) fn new(_threads: usize) -> Pool {
            Pool
        }

        pub(crate) fn threads(&self) -> usize {
            1
        }

        pub(crate) fn run(&self, job: &(dyn Fn(usize) + Sync)) {
            job(0)
        }
    }
}

#[cfg(not(feature = "std"))]
pub(crate) use imp::Pool;

#[cfg(feature = "std")]
pub(crate) use imp::Pool;

/// Physical cores of this machine, for `--threads auto`: on Linux and Android the distinct
/// (package, core) pairs of the online CPUs in sysfs, so hyperthread siblings count once;
/// elsewhere, or when sysfs is unreadable, the logical CPUs std reports. On big.LITTLE chips
/// every core counts, little ones included.
#[cfg(feature = "std")]
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let read = |cpu: usize, f: &str| {
            std::fs::read_to_string(std::format!(
                "/sys/devices/system/cpu/cpu{cpu}/topology/{f}"
            ))
            .ok()
            .map(|s| std::string::String::from(s.trim()))
        };
        let mut cores = std::collections::BTreeSet::new();
        for cpu in 0..1024 {
            match (read(cpu, "physical_package_id"), read(cpu, "core_id")) {
                (Some(p), Some(c)) => {
                    cores.insert((p, c));
                }
                _ if cpu > 0
                    && !std::path::Path::new(&std::format!("/sys/devices/system/cpu/cpu{cpu}"))
                        .exists() =>
                {
                    break
                }
                _ => {}
            }
        }
        if !cores.is_empty() {
            return cores.len().min(logical);
        }
    }
    logical
}

#[cfg(feature = "std")]
mod imp {

    use std::sync::{Condvar, Mutex};
    use std::thread::JoinHandle;
    use std::vec::Vec;

    /// The job being run: a type-erased `&(dyn Fn(usize) + Sync)`.
    #[derive(Clone, Copy)]
    struct JobPtr(*const (dyn Fn(usize) + Sync));

    // SAFETY: the pointee is `Sync`, and `Pool::run` keeps it alive until every worker has finished
    // calling it (see the SAFETY comment there).
    unsafe impl Send for JobPtr {}

    struct State {
        job: Option<JobPtr>,
        /// Incremented for every job, so a worker runs each job once.
        generation: u64,
        /// Workers still running the current job.
        busy: usize,
        /// A worker's call of the current job panicked.
        panicked: bool,
        shutdown: bool,
    }

    struct Shared {
        state: Mutex<State>,
        start: Condvar,
        done: Condvar,
    }

    pub(crate) struct Pool {
        shared: std::sync::Arc<Shared>,
        workers: Vec<JoinHandle<()>>,
    }

    impl Pool {
        /// A pool running jobs on `threads` threads: the caller's and `threads - 1` workers.
        pub(crate) fn new(threads: usize) -> Pool {
            let shared = std::sync::Arc::new(Shared {
                state: Mutex::new(State {
                    job: None,
                    generation: 0,
                    busy: 0,
                    panicked: false,
                    shutdown: false,
                }),
                start: Condvar::new(),
                done: Condvar::new(),
            });
            let workers = (1..threads.max(1))
                .map(|part| {
                    let shared = shared.clone();
                    std::thread::spawn(move || worker(&shared, part))
                })
                .collect();
            Pool { shared, workers }
        }

        pub(crate) fn threads(&self) -> usize {
            self.workers.len() + 1
        }

        /// Calls `job(part)` for every `part < self.threads()`, part 0 on the calling thread, and
        /// returns when all calls have returned.
        pub(crate) fn run(&self, job: &(dyn Fn(usize) + Sync)) {
            if self.workers.is_empty() {
                job(0);
                return;
            }
            // SAFETY: the lifetime is erased only for the duration of this call: we wait below until
            // `busy == 0`, i.e. until no worker holds or calls the pointer any more, and clear it
            // before returning.
            let ptr: JobPtr = JobPtr(unsafe {
                core::mem::transmute::<
                    *const (dyn Fn(usize) + Sync + '_),
                    *const (dyn Fn(usize) + Sync + 'static),
                >(job as *const _)
            });
            {
                let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
                st.job = Some(ptr);
                st.generation += 1;
                st.busy = self.workers.len();
            }
            self.shared.start.notify_all();
            job(0);
            let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            while st.busy > 0 {
                st = self.shared.done.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            st.job = None;
            if core::mem::take(&mut st.panicked) {
                drop(st);
                panic!("a worker thread panicked while running a kernel");
            }
        }
    }

    fn worker(shared: &Shared, part: usize) {
        let mut seen = 0u64;
        loop {
            let job = {
                let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
                while !st.shutdown && st.generation == seen {
                    st = shared.start.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                if st.shutdown {
                    return;
                }
                seen = st.generation;
                st.job
            };
            let mut ok = true;
            if let Some(JobPtr(f)) = job {
                // SAFETY: `Pool::run` keeps the job alive until this worker decrements `busy`.
                let f = unsafe { &*f };
                // A panicking job must still release the caller (which re-raises it), or `run` would
                // wait forever.
                ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(part))).is_ok();
            }
            let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            st.panicked |= !ok;
            st.busy -= 1;
            if st.busy == 0 {
                shared.done.notify_one();
            }
        }
    }

    impl Drop for Pool {
        fn drop(&mut self) {
            self.shared
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .shutdown = true;
            self.shared.start.notify_all();
            for w in self.workers.drain(..) {
                let _ = w.join();
            }
        }
    }
}
