use super::Tile;

/// Portable 4×4 micro-kernel; see [`super::MicroKernel`] for the contract.
///
/// # Safety
/// As [`super::MicroKernel`] with `MR = NR = 4`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_f32_4x4_scalar(
    kc: usize,
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    b: *const f32,
    b_rs: usize,
    c: *mut f32,
    ldc: usize,
    t: &Tile,
) {
    const MR: usize = 4;
    const NR: usize = 4;
    debug_assert!(a_rs == 1 && a_cs == MR && b_rs == NR, "packed panels only");
    // SAFETY: the caller guarantees `kc * MR` / `kc * NR` readable values behind `a` / `b`.
    let (a, b) = unsafe {
        (
            core::slice::from_raw_parts(a, kc * MR),
            core::slice::from_raw_parts(b, kc * NR),
        )
    };
    let mut acc = [[0f32; NR]; MR];
    for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
        for i in 0..MR {
            for j in 0..NR {
                acc[i][j] += ap[i] * bp[j];
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            // SAFETY: `(i, j)` is inside the `MR × NR` tile and bias arrays the caller provides.
            unsafe {
                let cp = c.add(i * ldc + j);
                let mut x = v + if t.accumulate {
                    *cp
                } else {
                    *t.bias_r.add(i) + *t.bias_c.add(j)
                };
                if t.clamp {
                    x = x.max(t.lo).min(t.hi);
                }
                *cp = x;
            }
        }
    }
}
