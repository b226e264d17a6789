//! A fixed set of worker threads that a session keeps for its lifetime (std only). Idle workers
//! spin on a generation counter for a short while, then park on a condition variable; a job
//! is published by bumping the counter (and waking parked workers only), so a parallel
//! operation inside a run costs a few cache-line transfers, not a wake-up, and allocates nothing.
//! A pool whose workers lately made its jobs slower than its caller alone would have been (their
//! cores are busy with other work) runs jobs on the caller for a while (`Balance`, with std).

#[cfg(not(feature = "std"))]
mod imp {
    /// Without std there are no threads: every job runs on the caller.
    pub(crate) struct Pool;

    impl Pool {
        pub(crate) fn new(_threads: usize, _split: crate::Split) -> Pool {
            Pool
        }

        pub(crate) const fn serial() -> Pool {
            Pool
        }

        pub(crate) fn threads(&self) -> usize {
            1
        }

        pub(crate) fn run(&self, job: &(dyn Fn(usize) + Sync)) {
            job(0)
        }

        pub(crate) fn run_steps(
            &self,
            _max_steps: usize,
            job: &(dyn Fn(usize, usize, usize, usize) -> bool + Sync),
        ) {
            job(0, 0, 0, 1);
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

    use core::cell::UnsafeCell;
    use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
    use std::sync::{Condvar, Mutex};
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};
    use std::vec::Vec;

    /// How long an idle worker spins for the next job before it parks: longer than the gap
    /// between two parallel operations of a run (the single-threaded operations between them),
    /// short enough that an idle session stops burning its cores quickly.
    const SPIN: Duration = Duration::from_micros(200);

    /// The job being run: a type-erased `&(dyn Fn(usize) + Sync)`.
    #[derive(Clone, Copy)]
    struct JobPtr(*const (dyn Fn(usize) + Sync));

    struct Shared {
        /// Written by `Pool::run` only while no worker runs or reads it (`pending == 0`), read
        /// by workers after they see a new `generation`.
        job: UnsafeCell<Option<JobPtr>>,
        /// Incremented (Release) after `job` and `pending` are set, once per job.
        generation: AtomicU64,
        /// Workers inside a claim of a part ([`Shared::claimed`]): raised before the claim and
        /// lowered after the part ran (or the claim failed), so `Pool::run` returns only
        /// once no worker can still read `job`.
        pending: AtomicUsize,
        /// Per part (index `part - 1`): the last generation whose part was claimed, by its
        /// worker or by the caller. Exactly one thread runs each part of each job.
        claimed: Vec<AtomicU64>,
        /// A worker's call of the current job panicked.
        panicked: AtomicBool,
        shutdown: AtomicBool,
        /// Parked workers. Incremented under `lock` before a worker re-checks `generation`
        /// and waits on `wake`; `Pool::run` notifies under `lock` when it is non-zero.
        sleepers: AtomicUsize,
        lock: Mutex<()>,
        wake: Condvar,
    }

    // SAFETY: `job` is the only non-Sync field; it is written by the pool's owner only while
    // `pending == 0` (no worker reads it) and read by workers only between their Acquire load
    // of a new `generation` and their Release decrement of `pending` (see `Pool::run`). The
    // pointee is `Sync`.
    unsafe impl Sync for Shared {}
    // SAFETY: as above; the raw pointer is only dereferenced under that protocol.
    unsafe impl Send for Shared {}

    pub(crate) struct Pool {
        /// `None` for a pool without workers.
        shared: Option<std::sync::Arc<Shared>>,
        workers: Vec<JoinHandle<()>>,
        /// Whether the workers pay off lately ([`Balance`]); only `run`'s caller touches it.
        balance: std::sync::Mutex<Balance>,
        /// Per part, the next step [`Pool::run_steps`] hands out.
        steps: Vec<Counter>,
    }

    /// A counter alone on its cache lines.
    #[repr(align(128))]
    struct Counter(AtomicUsize);

    /// Jobs per window over which [`Balance`] weighs the workers' help.
    const WINDOW: u32 = 64;

    /// Jobs shorter than this do not count in [`Balance`]'s windows: their time is mostly the
    /// hand-off itself, which neither steps nor running alone would shorten.
    const MIN_JOB: Duration = Duration::from_micros(50);

    /// Jobs the caller runs alone once a window showed the workers costing time, doubled for
    /// each such window in a row (up to 16 times).
    const SOLO_JOBS: u32 = 4 * WINDOW;

    /// Whether handing parts to the workers pays, judged from the jobs themselves
    /// ([`crate::Split::Adaptive`]): per window of [`WINDOW`] jobs that the caller and a worker
    /// both took part in and that lasted at least [`MIN_JOB`], the time they took against what
    /// the caller alone would have taken (its own share's time, scaled to the whole job), and
    /// how long the caller waited for the workers once done with its own share.
    /// - A window in which the caller waited more than 15 % of the time, or (in steps) ran more
    ///   than a quarter over its even share of the steps, cuts the next window's shares into
    ///   steps ([`Pool::run_steps`]) that a thread done early takes over: a worker on a slower
    ///   core, or on one shared with other work. Otherwise each thread takes one share: a
    ///   static split.
    /// - A window a quarter above the caller-alone time (a worker descheduled inside its part,
    ///   so that the caller waits out the scheduler's time slice) makes the caller run the next
    ///   [`SOLO_JOBS`] jobs alone (more after several such windows in a row), then try the
    ///   workers again, in steps.
    pub(crate) struct Balance {
        split: crate::Split,
        threads: u32,
        solo_left: u32,
        /// Windows in a row that sent the caller solo.
        streak: u32,
        /// Cut shares into steps.
        steps: bool,
        jobs: u32,
        parallel: Duration,
        alone: Duration,
        /// The caller's waits for the workers, and the sum of its shares.
        waited: Duration,
        shares: f64,
    }

    impl Balance {
        pub(crate) const fn new(threads: usize, split: crate::Split) -> Balance {
            Balance {
                split,
                threads: if threads > 1 { threads as u32 } else { 1 },
                solo_left: 0,
                streak: 0,
                steps: false,
                jobs: 0,
                parallel: Duration::ZERO,
                alone: Duration::ZERO,
                waited: Duration::ZERO,
                shares: 0.0,
            }
        }

        /// Whether the next job runs on the caller alone (counting it down).
        pub(crate) fn solo(&mut self) -> bool {
            if self.solo_left == 0 {
                return false;
            }
            self.solo_left -= 1;
            true
        }

        /// Whether [`Pool::run_steps`] cuts shares into steps.
        pub(crate) fn steps(&self) -> bool {
            match self.split {
                crate::Split::Adaptive => self.steps,
                crate::Split::Static => false,
                crate::Split::Steps => true,
            }
        }

        /// Records a job that took `took`, of which the caller ran the fraction `share` in
        /// `own`. Jobs the caller ran alone (`share` 1) and jobs under [`MIN_JOB`] do not
        /// count.
        pub(crate) fn record(&mut self, share: f64, own: Duration, took: Duration) {
            if !(share > 0.0 && share < 1.0) || took < MIN_JOB || self.split == crate::Split::Static
            {
                return;
            }
            self.jobs += 1;
            self.parallel += took;
            self.alone += own.div_f64(share);
            self.waited += took.saturating_sub(own);
            self.shares += share;
            if self.jobs == WINDOW {
                let waited = self.waited > self.parallel * 3 / 20;
                let heavy =
                    self.steps && self.shares * f64::from(self.threads) > 1.25 * f64::from(WINDOW);
                if self.parallel > self.alone + self.alone / 4 {
                    self.solo_left = SOLO_JOBS << self.streak.min(4);
                    self.streak = self.streak.saturating_add(1);
                    self.steps = true;
                } else {
                    if self.parallel <= self.alone {
                        self.streak = 0;
                    }
                    self.steps = waited || heavy;
                }
                self.jobs = 0;
                self.parallel = Duration::ZERO;
                self.alone = Duration::ZERO;
                self.waited = Duration::ZERO;
                self.shares = 0.0;
            }
        }
    }

    impl Pool {
        /// A pool running jobs on `threads` threads: the caller's and `threads - 1` workers,
        /// handing out work as `split` says.
        pub(crate) fn new(threads: usize, split: crate::Split) -> Pool {
            let shared = std::sync::Arc::new(Shared {
                job: UnsafeCell::new(None),
                generation: AtomicU64::new(0),
                pending: AtomicUsize::new(0),
                claimed: (1..threads.max(1)).map(|_| AtomicU64::new(0)).collect(),
                panicked: AtomicBool::new(false),
                shutdown: AtomicBool::new(false),
                sleepers: AtomicUsize::new(0),
                lock: Mutex::new(()),
                wake: Condvar::new(),
            });
            let workers = (1..threads.max(1))
                .map(|part| {
                    let shared = shared.clone();
                    std::thread::spawn(move || worker(&shared, part))
                })
                .collect();
            Pool {
                shared: Some(shared),
                workers,
                balance: std::sync::Mutex::new(Balance::new(threads, split)),
                steps: (0..threads.max(1))
                    .map(|_| Counter(AtomicUsize::new(0)))
                    .collect(),
            }
        }

        /// A pool that runs every job on the caller (allocates nothing).
        pub(crate) const fn serial() -> Pool {
            Pool {
                shared: None,
                workers: Vec::new(),
                balance: std::sync::Mutex::new(Balance::new(1, crate::Split::Static)),
                steps: Vec::new(),
            }
        }

        pub(crate) fn threads(&self) -> usize {
            self.workers.len() + 1
        }

        /// Calls `job(part)` once for every `part < self.threads()` and returns when all calls
        /// have returned: part 0 on the calling thread, each other part on its worker, which
        /// picks the job up from a spin on `generation` (or is woken if it parked). A part whose
        /// worker has not claimed it by the time the caller finishes its own runs on the caller
        /// instead (a worker descheduled, parked, or on a slower core does not hold the job
        /// up); the caller then spins until the parts its workers claimed are done. While
        /// [`Balance`] finds the workers costing time, the caller runs every part itself.
        pub(crate) fn run(&self, job: &(dyn Fn(usize) + Sync)) {
            let parts = self.threads();
            self.run_shared(job, &|own_parts| own_parts as f64 / parts as f64, &|_| {})
        }

        /// [`Pool::run`]: with workers, `prepare` sees [`Balance`] before the job is published
        /// (under its lock, which the whole call holds), and `share(own_parts)` tells it the fraction of
        /// the job the caller ran when it ran `own_parts` parts.
        fn run_shared(
            &self,
            job: &(dyn Fn(usize) + Sync),
            share: &dyn Fn(usize) -> f64,
            prepare: &dyn Fn(&Balance),
        ) {
            let Some(sh) = self.shared.as_deref().filter(|_| !self.workers.is_empty()) else {
                job(0);
                return;
            };
            let mut balance = self.balance.lock().unwrap_or_else(|e| e.into_inner());
            prepare(&balance);
            if balance.solo() {
                for part in 0..self.threads() {
                    job(part);
                }
                return;
            }
            let start = Instant::now();
            // SAFETY: the lifetime is erased only for the duration of this call: we wait below
            // until `pending == 0`, i.e. until no worker holds or calls the pointer any more,
            // and clear it before returning.
            let ptr: JobPtr = JobPtr(unsafe {
                core::mem::transmute::<
                    *const (dyn Fn(usize) + Sync + '_),
                    *const (dyn Fn(usize) + Sync + 'static),
                >(job as *const _)
            });
            // SAFETY: every part of the previous job was claimed and `pending` was 0 after it,
            // so no worker reads `job` (a late worker's claim of an old generation fails before
            // it reads it).
            unsafe { *sh.job.get() = Some(ptr) };
            let gen = sh.generation.fetch_add(1, SeqCst) + 1;
            if sh.sleepers.load(SeqCst) > 0 {
                let _g = sh.lock.lock().unwrap_or_else(|e| e.into_inner());
                sh.wake.notify_all();
            }
            // The caller's parts must not unwind past the wait below while workers run theirs.
            let mut own_parts = 0;
            let own = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                job(0);
                own_parts += 1;
                for (i, c) in sh.claimed.iter().enumerate() {
                    if claim(c, gen) {
                        job(i + 1);
                        own_parts += 1;
                    }
                }
            }));
            let own_done = start.elapsed();
            if own.is_err() {
                // Parts left unclaimed by the unwinding stay unrun; claim them so the next job's
                // claims start from this generation.
                for c in &sh.claimed {
                    claim(c, gen);
                }
            }
            // A worker still in its part may share this core (more threads than free cores):
            // after a short spin, yield to it.
            let (mut spins, mut yielding) = (0u32, false);
            while sh.pending.load(Acquire) != 0 {
                spins = spins.wrapping_add(1);
                if yielding {
                    std::thread::yield_now();
                } else {
                    core::hint::spin_loop();
                    yielding = spins.is_multiple_of(64) && start.elapsed() > own_done + SPIN / 8;
                }
            }
            // SAFETY: every worker is done with the job (`pending == 0`, Acquire).
            unsafe { *sh.job.get() = None };
            if own.is_ok() {
                balance.record(share(own_parts), own_done, start.elapsed());
            }
            // Cleared whoever panicked, so that the next job starts clean.
            let worker_panicked = sh.panicked.swap(false, Relaxed);
            if let Err(e) = own {
                std::panic::resume_unwind(e);
            }
            if worker_panicked {
                panic!("a worker thread panicked while running a kernel");
            }
        }
    }

    impl Pool {
        /// Calls `job(slot, part, step, steps)` once for every `part < self.threads()` and
        /// `step < steps`, with `steps` 1 or `max_steps` as [`Balance`] decides; `job` returns
        /// whether the step had any work. Each thread runs its own part's steps in order, then
        /// takes the steps left of the other parts: equally fast threads each run their own
        /// part (a static split, whose data stays with the thread from one operation to the
        /// next), while a thread that started late or runs slower (a little core, a core shared
        /// with other work) leaves its remaining steps to the others. In one step per part, a
        /// part nobody has started yet goes to whichever thread is done first. `slot <
        /// self.threads()` names the thread: calls with the same slot never overlap, so a slot
        /// can index per-thread scratch.
        pub(crate) fn run_steps(
            &self,
            max_steps: usize,
            job: &(dyn Fn(usize, usize, usize, usize) -> bool + Sync),
        ) {
            let threads = self.threads();
            if threads == 1 || self.steps.len() < threads {
                for part in 0..threads {
                    job(0, part, 0, 1);
                }
                return;
            }
            let steps = AtomicUsize::new(1);
            // Counters and step count are published to the workers with the job (`run`'s
            // release of the generation).
            let prepare = |b: &Balance| {
                steps.store(if b.steps() { max_steps.max(1) } else { 1 }, Relaxed);
                for c in &self.steps[..threads] {
                    c.0.store(0, Relaxed);
                }
            };
            // Steps with work: the caller's, and everyone's.
            let (mine, all) = (AtomicUsize::new(0), AtomicUsize::new(0));
            let job = |slot: usize| {
                let (steps, mut done) = (steps.load(Relaxed), 0);
                for k in 0..threads {
                    let part = (slot + k) % threads;
                    loop {
                        let s = self.steps[part].0.fetch_add(1, Relaxed);
                        if s >= steps {
                            break;
                        }
                        done += usize::from(job(slot, part, s, steps));
                    }
                }
                all.fetch_add(done, Relaxed);
                if slot == 0 {
                    mine.fetch_add(done, Relaxed);
                }
            };
            let share = |_| match all.load(Relaxed) {
                0 => 1.0,
                n => mine.load(Relaxed) as f64 / n as f64,
            };
            self.run_shared(&job, &share, &prepare);
        }
    }

    /// Claims a part of job `gen`: true for the first thread to ask (its previous job's
    /// generation is `gen - 1`, since every job's parts are all claimed before the next is
    /// published), false for a later one or a worker that wakes up after its job is over.
    fn claim(c: &AtomicU64, gen: u64) -> bool {
        // A failed claim reads the winner's write (Acquire), so the caller's later load of
        // `pending` sees the winning worker's increment before it.
        c.compare_exchange(gen - 1, gen, SeqCst, SeqCst).is_ok()
    }

    /// Waits for a generation other than `seen` (or shutdown): spins for [`SPIN`], then parks.
    fn wait_for_job(sh: &Shared, seen: u64) -> u64 {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            let g = sh.generation.load(Acquire);
            if g != seen || sh.shutdown.load(Acquire) {
                return g;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) {
                core::hint::spin_loop();
                continue;
            }
            let waited = start.elapsed();
            if waited < SPIN {
                // Past a short spin, let a thread that shares this core (the caller's, when
                // there are more threads than free cores) run.
                if waited > SPIN / 8 {
                    std::thread::yield_now();
                }
                continue;
            }
            let mut guard = sh.lock.lock().unwrap_or_else(|e| e.into_inner());
            sh.sleepers.fetch_add(1, SeqCst);
            while sh.generation.load(SeqCst) == seen && !sh.shutdown.load(SeqCst) {
                guard = sh.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            sh.sleepers.fetch_sub(1, SeqCst);
            drop(guard);
            spins = 0;
        }
    }

    fn worker(sh: &Shared, part: usize) {
        let mut seen = 0u64;
        loop {
            seen = wait_for_job(sh, seen);
            if sh.shutdown.load(Acquire) {
                return;
            }
            // Raised before the claim, so the caller, which claims every part before it waits
            // for `pending == 0`, waits for this worker if the claim succeeds.
            sh.pending.fetch_add(1, SeqCst);
            if !claim(&sh.claimed[part - 1], seen) {
                sh.pending.fetch_sub(1, Release);
                continue;
            }
            // SAFETY: `Pool::run` set the job before publishing this generation (Acquire above),
            // this worker claimed its part of that generation (so the caller is still inside
            // `run`, and waits for `pending` to fall), and the job stays alive and unchanged
            // until this worker decrements `pending`.
            let job = unsafe { *sh.job.get() };
            let mut ok = true;
            if let Some(JobPtr(f)) = job {
                // SAFETY: as above.
                let f = unsafe { &*f };
                // A panicking job must still release the caller (which re-raises it), or `run`
                // would wait forever.
                ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(part))).is_ok();
            }
            if !ok {
                sh.panicked.store(true, Relaxed);
            }
            sh.pending.fetch_sub(1, Release);
        }
    }

    impl Drop for Pool {
        fn drop(&mut self) {
            let Some(sh) = self.shared.as_deref() else {
                return;
            };
            sh.shutdown.store(true, SeqCst);
            {
                let _g = sh.lock.lock().unwrap_or_else(|e| e.into_inner());
                sh.wake.notify_all();
            }
            for w in self.workers.drain(..) {
                let _ = w.join();
            }
        }
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::Pool;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    use std::time::Duration;
    use std::vec::Vec;

    /// Whichever thread claims a part, each part of each job runs exactly once, with workers
    /// spinning, slow (a part that sleeps, so the next job starts while late workers are
    /// still around) or parked (after idling past the spin).
    #[test]
    fn issue14_every_part_runs_once_per_job() {
        for threads in [1, 2, 3, 5] {
            let pool = Pool::new(threads, crate::Split::Adaptive);
            for round in 0..1000 {
                if round % 300 == 299 {
                    std::thread::sleep(Duration::from_millis(2));
                }
                let counts: Vec<AtomicUsize> = (0..threads).map(|_| AtomicUsize::new(0)).collect();
                pool.run(&|part| {
                    if round % 7 == 0 && part == threads - 1 {
                        std::thread::sleep(Duration::from_micros(30));
                    }
                    counts[part].fetch_add(1, Relaxed);
                });
                for (part, c) in counts.iter().enumerate() {
                    assert_eq!(
                        c.load(Relaxed),
                        1,
                        "{threads} threads, job {round}, part {part}"
                    );
                }
            }
        }
    }

    /// A part that panics, on the caller or on a worker, or every part, panics `run` once every
    /// other part is done, and the pool runs every part of the jobs after it.
    #[test]
    fn issue14_a_panicking_part_leaves_the_pool_usable() {
        let pool = Pool::new(3, crate::Split::Adaptive);
        for bad in 0..4 {
            let (done, started) = (AtomicUsize::new(0), AtomicUsize::new(0));
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pool.run(&|part| {
                    // Every part failing: all three are running (the workers have claimed
                    // theirs) before any fails.
                    started.fetch_add(1, Relaxed);
                    let t0 = std::time::Instant::now();
                    while bad == 3 && started.load(Relaxed) < 3 && t0.elapsed().as_secs() < 10 {
                        std::hint::spin_loop();
                    }
                    assert!(part != bad && bad != 3, "part {part} fails");
                    done.fetch_add(1, Relaxed);
                })
            }));
            assert!(r.is_err(), "part {bad}'s panic reaches the caller");
            let counts: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..100 {
                pool.run(&|part| {
                    counts[part].fetch_add(1, Relaxed);
                });
            }
            assert!(counts.iter().all(|c| c.load(Relaxed) == 100));
        }
    }

    /// Windows of jobs that the workers sped up never send the caller solo; a window whose
    /// jobs took more than a quarter longer than the caller alone would have does, for
    /// `SOLO_JOBS` jobs, doubled while such windows follow each other and reset by a window
    /// in which the workers paid; windows in which the caller waited for the workers, or ran
    /// most steps, cut shares into steps, and the others go back to one share per thread; jobs
    /// the caller ran alone, and short ones, do not count.
    #[test]
    fn issue14_balance_goes_solo_only_when_the_workers_cost_time() {
        use super::imp::Balance;
        let us = Duration::from_micros;
        // Two threads; the caller ran half the work in 100 µs: alone would take 200 µs.
        let window = |b: &mut Balance, took: u64| {
            for _ in 0..64 {
                b.record(0.5, us(100), us(10 * took));
            }
        };
        let solo_jobs = |b: &mut Balance| (0..100_000).take_while(|_| b.solo()).count();
        let mut b = Balance::new(2, crate::Split::Adaptive);
        window(&mut b, 11);
        assert_eq!((solo_jobs(&mut b), b.steps()), (0, false), "an even split");
        window(&mut b, 14);
        assert_eq!(
            (solo_jobs(&mut b), b.steps()),
            (0, true),
            "the caller waited 29 %"
        );
        window(&mut b, 11);
        assert!(!b.steps(), "waits of 9 %");
        window(&mut b, 24);
        assert_eq!(solo_jobs(&mut b), 0, "within a quarter of the caller alone");
        for _ in 0..64 {
            b.record(1.0, us(100), us(1000));
            b.record(0.0, us(0), us(1000));
            b.record(0.5, us(1), us(40));
        }
        assert_eq!(
            solo_jobs(&mut b),
            0,
            "jobs the caller or the workers ran alone, and short ones"
        );
        window(&mut b, 26);
        let first = solo_jobs(&mut b);
        assert_eq!((first, b.steps()), (256, true), "one window that cost time");
        window(&mut b, 40);
        assert_eq!(solo_jobs(&mut b), 2 * first, "a second one in a row");
        window(&mut b, 22);
        window(&mut b, 40);
        assert_eq!(
            solo_jobs(&mut b),
            4 * first,
            "a middling window keeps the streak"
        );
        window(&mut b, 15);
        window(&mut b, 40);
        assert_eq!(solo_jobs(&mut b), first, "a window that paid resets it");
        // In steps, a caller that ran three quarters of them without waiting keeps the steps;
        // one that ran half goes back to one share per thread.
        let mut b = Balance::new(2, crate::Split::Adaptive);
        window(&mut b, 14);
        for share in [0.75, 0.75, 0.5] {
            for _ in 0..64 {
                b.record(share, us(150), us(150));
            }
            assert_eq!(
                (solo_jobs(&mut b), b.steps()),
                (0, share > 0.5),
                "caller share {share}"
            );
        }
        // A job that scales poorly but evenly (both threads busy to the end) stays static.
        let mut b = Balance::new(2, crate::Split::Adaptive);
        for _ in 0..64 {
            b.record(0.5, us(180), us(185));
        }
        assert!(!b.steps(), "poor scaling is not uneven threads");
    }

    /// With a worker much slower than the caller, steps move to the caller: every step of
    /// every part runs exactly once, and the caller runs most of them.
    #[test]
    fn issue14_steps_move_to_the_faster_thread() {
        let pool = Pool::new(2, crate::Split::Adaptive);
        let caller = std::thread::current().id();
        let (mut on_caller, mut all) = (0, 0);
        // The first window sends the pool solo (one step per part, the caller waiting for the
        // worker's); the pool comes back in steps. A caller's step is long enough for the
        // worker to have fetched its own first (under qemu too).
        for _ in 0..2000 {
            let runs: Vec<AtomicUsize> = (0..8).map(|_| AtomicUsize::new(0)).collect();
            let mine = AtomicUsize::new(0);
            let seen = AtomicUsize::new(0);
            pool.run_steps(4, &|_, part, step, steps| {
                seen.store(steps, Relaxed);
                runs[part * 4 + step].fetch_add(1, Relaxed);
                if std::thread::current().id() == caller {
                    mine.fetch_add(1, Relaxed);
                    let t0 = std::time::Instant::now();
                    while t0.elapsed() < Duration::from_micros(300) {
                        std::hint::spin_loop();
                    }
                } else {
                    std::thread::sleep(Duration::from_millis(1));
                }
                true
            });
            let steps = seen.load(Relaxed);
            for (i, r) in runs.iter().enumerate() {
                let expected = usize::from(i % 4 < steps);
                assert_eq!(r.load(Relaxed), expected, "{steps} steps, step {i}");
            }
            if steps == 4 {
                all += 8;
                on_caller += mine.load(Relaxed);
                if all >= 8 * 20 {
                    break;
                }
            }
        }
        assert!(all > 0, "the pool never cut shares into steps");
        assert!(
            on_caller * 4 > all * 3,
            "the caller ran {on_caller} of {all} steps"
        );
    }

    /// A worker that stalls inside its parts (as one descheduled by a busy core does) sends
    /// the pool solo: later jobs run every part on the caller, each exactly once.
    #[test]
    fn issue14_a_stalled_worker_sends_the_pool_solo() {
        let pool = Pool::new(2, crate::Split::Adaptive);
        let caller = std::thread::current().id();
        let mut solo_jobs = 0;
        for _ in 0..400 {
            let (runs, on_caller) = (AtomicUsize::new(0), AtomicUsize::new(0));
            pool.run(&|part| {
                runs.fetch_add(1, Relaxed);
                if std::thread::current().id() == caller {
                    on_caller.fetch_add(1, Relaxed);
                    let t0 = std::time::Instant::now();
                    while part == 0 && t0.elapsed() < Duration::from_micros(200) {
                        std::hint::spin_loop();
                    }
                } else {
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
            assert_eq!(runs.load(Relaxed), 2);
            if on_caller.load(Relaxed) == 2 {
                solo_jobs += 1;
            }
        }
        // At most 64 jobs before the first window closes, and a few the caller claimed.
        assert!(
            solo_jobs >= 256,
            "{solo_jobs} of 400 jobs ran on the caller"
        );
    }
}
