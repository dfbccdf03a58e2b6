//! Dense f32 matrix products for training, through the `gemm` crate (the one place its `unsafe`
//! raw-pointer API is called), with [`sgemm_ref`] as the scalar reference it is tested against.

use crate::KernelError;

/// How a row-major operand is stored: as the matrix itself, or as its transpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `op(A) = A`: an `[rows, cols]` operand is stored `[rows, cols]` row-major.
    Normal,
    /// `op(A) = Aᵀ`: an `[rows, cols]` operand is stored `[cols, rows]` row-major.
    Transposed,
}

/// (row stride, column stride) of an operand of `cols` columns stored with `layout`.
fn strides(layout: Layout, rows: usize, cols: usize) -> (isize, isize) {
    match layout {
        Layout::Normal => (cols as isize, 1),
        Layout::Transposed => (1, rows as isize),
    }
}

fn check(what: &'static str, expected: usize, got: usize) -> Result<(), KernelError> {
    if got < expected {
        return Err(KernelError::BadLength {
            ty: crate::GgmlType::F32,
            what,
            expected,
            got,
        });
    }
    Ok(())
}

/// `C = op(A) · op(B)` (or `C += …` when `accumulate`), row-major: `C` is `[m, n]`, `op(A)`
/// `[m, k]`, `op(B)` `[k, n]`. Uses up to `n_threads` rayon threads (0: rayon's current pool
/// size). Errors when a slice is shorter than its shape.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_layout: Layout,
    b: &[f32],
    b_layout: Layout,
    c: &mut [f32],
    accumulate: bool,
    n_threads: usize,
) -> Result<(), KernelError> {
    let over = KernelError::Overflow { what: "sgemm" };
    let mk = m.checked_mul(k).ok_or(over.clone())?;
    let kn = k.checked_mul(n).ok_or(over.clone())?;
    let mn = m.checked_mul(n).ok_or(over)?;
    check("sgemm A", mk, a.len())?;
    check("sgemm B", kn, b.len())?;
    check("sgemm C", mn, c.len())?;
    if mn == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            c[..mn].fill(0.0);
        }
        return Ok(());
    }
    let (a_rs, a_cs) = strides(a_layout, m, k);
    let (b_rs, b_cs) = strides(b_layout, k, n);
    let parallelism = if n_threads == 1 {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(n_threads)
    };
    // SAFETY: the lengths were checked above: every element gemm reads, `a[i*a_rs + p*a_cs]`
    // for i < m, p < k (and likewise for B), lies inside its slice, and C's `m*n` row-major
    // elements lie inside `c`, which we borrow mutably, so nothing else aliases it. A and B are
    // shared borrows that cannot overlap `c`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

/// The scalar reference of [`sgemm`]: products summed in f64, one rounding per element.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_ref(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_layout: Layout,
    b: &[f32],
    b_layout: Layout,
    c: &mut [f32],
    accumulate: bool,
) {
    let (a_rs, a_cs) = strides(a_layout, m, k);
    let (b_rs, b_cs) = strides(b_layout, k, n);
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f64;
            for p in 0..k {
                let x = a[(i as isize * a_rs + p as isize * a_cs) as usize];
                let y = b[(p as isize * b_rs + j as isize * b_cs) as usize];
                s += x as f64 * y as f64;
            }
            let dst = &mut c[i * n + j];
            *dst = if accumulate {
                *dst + s as f32
            } else {
                s as f32
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::rand_vec;

    #[test]
    fn sgemm_matches_reference_in_every_layout() {
        let mut seed = 7u64;
        for &(m, n, k) in &[
            (1, 1, 1),
            (3, 5, 7),
            (17, 33, 65),
            (64, 48, 96),
            (5, 130, 3),
        ] {
            for a_l in [Layout::Normal, Layout::Transposed] {
                for b_l in [Layout::Normal, Layout::Transposed] {
                    for acc in [false, true] {
                        for threads in [1, 2] {
                            let a = rand_vec(m * k, 1.0, &mut seed);
                            let b = rand_vec(k * n, 1.0, &mut seed);
                            let c0 = rand_vec(m * n, 1.0, &mut seed);
                            let mut c = c0.clone();
                            let mut r = c0.clone();
                            sgemm(m, n, k, &a, a_l, &b, b_l, &mut c, acc, threads).unwrap();
                            sgemm_ref(m, n, k, &a, a_l, &b, b_l, &mut r, acc);
                            for (i, (x, y)) in c.iter().zip(&r).enumerate() {
                                // f32 accumulation of k products of magnitude <= 1.
                                let tol = 1e-6 * (k as f32) + 1e-6;
                                assert!(
                                    (x - y).abs() <= tol,
                                    "m{m} n{n} k{k} {a_l:?} {b_l:?} acc {acc}: c[{i}] {x} vs {y}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn sgemm_rejects_short_slices() {
        let a = vec![0.0f32; 5];
        let b = vec![0.0f32; 6];
        let mut c = vec![0.0f32; 6];
        let e = sgemm(
            2,
            3,
            3,
            &a,
            Layout::Normal,
            &b,
            Layout::Normal,
            &mut c,
            false,
            1,
        );
        assert!(matches!(
            e,
            Err(KernelError::BadLength {
                what: "sgemm A",
                ..
            })
        ));
    }
}
