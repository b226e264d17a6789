//! A bare-metal entry point around `nap-runtime`: the firmware passes a `.nap` image (64-byte
//! aligned, e.g. linked into flash or loaded to RAM) and an input, and gets the output back.
//! Provides what every `no_std` final binary needs: a global allocator and a panic handler.

#![no_std]

extern crate alloc;

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};

use nap_runtime::{LoadOptions, Model, Session};

/// Heap for the session's buffers; size it for the model (`Session::planned_floats() * 4` plus
/// the header and small vectors). Use your RTOS allocator or `embedded-alloc` instead where one
/// exists.
const HEAP_SIZE: usize = 4 << 20;

#[repr(C, align(64))]
struct Heap(UnsafeCell<[u8; HEAP_SIZE]>);

// SAFETY: the heap bytes are only reached through `BumpAlloc`, which hands out disjoint ranges.
unsafe impl Sync for Heap {}

static HEAP: Heap = Heap(UnsafeCell::new([0; HEAP_SIZE]));

/// A bump allocator: never frees (fine for load-once, run-many firmware).
struct BumpAlloc {
    next: AtomicUsize,
}

// SAFETY: `alloc` returns aligned, non-overlapping ranges inside `HEAP` or null when full;
// `dealloc` does nothing, which is always allowed.
unsafe impl GlobalAlloc for BumpAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let base = HEAP.0.get() as usize;
        let mut cur = self.next.load(Ordering::Relaxed);
        loop {
            let start = (base + cur).next_multiple_of(layout.align()) - base;
            let Some(end) = start.checked_add(layout.size()).filter(|&e| e <= HEAP_SIZE) else {
                return core::ptr::null_mut();
            };
            match self
                .next
                .compare_exchange_weak(cur, end, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return (base + start) as *mut u8,
                Err(now) => cur = now,
            }
        }
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}

#[global_allocator]
static ALLOC: BumpAlloc = BumpAlloc {
    next: AtomicUsize::new(0),
};

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Report over your UART / reset the board here.
    loop {
        core::hint::spin_loop();
    }
}

/// Runs the model in `model[..model_len]` on one example; writes up to `out_cap` outputs.
/// Returns the number of outputs, or -1 if the model does not load, -2 if the input length is
/// wrong or planning fails.
///
/// # Safety
/// The pointers must be valid for the given lengths; `model` must be 64-byte aligned.
#[no_mangle]
pub unsafe extern "C" fn nap_run_once(
    model: *const u8,
    model_len: usize,
    input: *const f32,
    input_len: usize,
    out: *mut f32,
    out_cap: usize,
) -> isize {
    // SAFETY: the caller guarantees the three ranges are valid and not mutated meanwhile.
    let (bytes, x, y) = unsafe {
        (
            core::slice::from_raw_parts(model, model_len),
            core::slice::from_raw_parts(input, input_len),
            core::slice::from_raw_parts_mut(out, out_cap),
        )
    };
    // Checksums off: a cold start should not touch every weight page.
    let Ok(m) = Model::from_bytes_with(
        bytes,
        LoadOptions {
            verify_blobs: false,
            ..LoadOptions::default()
        },
    ) else {
        return -1;
    };
    let Ok(mut s) = Session::new(&m, 1) else {
        return -2;
    };
    match s.run(x) {
        Ok(o) => {
            let n = o.len().min(y.len());
            y[..n].copy_from_slice(&o[..n]);
            o.len() as isize
        }
        Err(_) => -2,
    }
}
