//! Arrays handed to C: one allocation each, with its byte size stored in a header in front of
//! the payload, so `edgelm_string_free` / `edgelm_tokens_free` need only the pointer (a
//! string may hold NUL bytes, so its length cannot be recomputed with `strlen`).

use std::alloc::{alloc, dealloc, Layout};

/// Header bytes before the payload; also the alignment of every allocation.
const HEADER: usize = 16;

/// Copies `items` (plus a zero element when `nul`) into a new allocation; returns a pointer to
/// the first element. `None` when the size overflows or the allocator fails.
pub(crate) fn alloc_array<T: Copy + Default>(items: &[T], nul: bool) -> Option<*mut T> {
    const { assert!(std::mem::align_of::<T>() <= HEADER) };
    let n = items.len() + usize::from(nul);
    let total = n
        .checked_mul(std::mem::size_of::<T>())?
        .checked_add(HEADER)?;
    let layout = Layout::from_size_align(total, HEADER).ok()?;
    // SAFETY: `layout` has a non-zero size (at least HEADER bytes).
    let base = unsafe { alloc(layout) };
    if base.is_null() {
        return None;
    }
    // SAFETY: `base` is valid for `total` bytes, aligned to HEADER (≥ align of usize and T);
    // the header holds one usize, the payload `n` values of T starting HEADER bytes in.
    unsafe {
        base.cast::<usize>().write(total);
        let data = base.add(HEADER).cast::<T>();
        std::ptr::copy_nonoverlapping(items.as_ptr(), data, items.len());
        if nul {
            data.add(items.len()).write(T::default());
        }
        Some(data)
    }
}

/// Frees an array made by [`alloc_array`]; null is ignored.
///
/// # Safety
/// `data` is null or a pointer returned by `alloc_array::<T>` not yet freed.
pub(crate) unsafe fn free_array<T>(data: *mut T) {
    if data.is_null() {
        return;
    }
    // SAFETY: per the contract, the allocation starts HEADER bytes before `data` and its first
    // usize is the total size it was allocated with, at alignment HEADER.
    unsafe {
        let base = data.cast::<u8>().sub(HEADER);
        let total = base.cast::<usize>().read();
        dealloc(base, Layout::from_size_align_unchecked(total, HEADER));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_contents_and_terminator() {
        let p = alloc_array(b"a\0b", true).unwrap();
        // SAFETY: 4 bytes were written (3 + NUL) and `p` is freed once.
        unsafe {
            assert_eq!(std::slice::from_raw_parts(p, 4), b"a\0b\0");
            free_array(p);
        }
        let t = alloc_array::<u32>(&[], false).unwrap();
        // SAFETY: an empty array still owns its header; freed once.
        unsafe { free_array(t) };
        // SAFETY: null is allowed.
        unsafe { free_array::<u32>(std::ptr::null_mut()) };
    }
}
