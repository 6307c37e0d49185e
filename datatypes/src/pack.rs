//! The CPU pack engine: `MPI_Pack`/`MPI_Unpack` (MPI-3.1 §4.2) over committed layouts.
//!
//! The safe API takes slices and an `origin`, the index in the slice that the MPI buffer
//! pointer stands for (a type may reach below its origin through a negative displacement or
//! lower bound). It checks the footprint of all `count` elements once, up front; the loops
//! then run on raw pointers with no per-byte checks. The `*_raw` variants are what the MPI
//! interposer calls with the application's pointers.
//!
//! Every operation is a byte range `[first, first + len)` of the packed stream, which makes
//! MPI_Pack's `position` and pipelined segments the same code path:
//! 1. The range starts in repetition `first / rep_bytes` of the block list, at byte
//!    `first % rep_bytes` of it; a binary search over the blocks' prefix sums finds the block.
//!    Repetition numbers decompose into level indices by mixed radix, so no walk from byte 0.
//! 2. A partial first repetition is copied block by block.
//! 3. Whole repetitions run in the loop made for the layout: for one block (the common
//!    case), a loop specialised for 0, 1, 2 or 3 levels, or an odometer beyond; for several
//!    blocks, the odometer with the block list as its body.
//! 4. A partial last repetition is copied block by block.
//!
//! Each block copy picks its width once per loop: fixed-size moves for 1, 2, 4, 8, 16 and
//! 32 bytes, `memcpy` from 64 bytes, and a word loop in between.
//!
//! Not done yet: GPU pack kernels (with the GPU-datatype issue), multi-threaded packing.

use std::ptr;

use crate::commit::{Committed, Plan};
use crate::error::PackError;

impl Committed {
    /// Packs `count` elements whose buffer starts at `src[origin]` into `out`
    /// (`MPI_Pack`, MPI-3.1 §4.2). Returns the bytes written, `packed_size(count)`.
    pub fn pack(
        &self,
        src: &[u8],
        origin: usize,
        count: usize,
        out: &mut [u8],
    ) -> Result<usize, PackError> {
        let total = self.checked_packed_size(count)?;
        if out.len() < total {
            return Err(PackError::OutputTooSmall {
                need: total,
                have: out.len(),
            });
        }
        self.pack_range(src, origin, count, 0, &mut out[..total])
    }

    /// Packs bytes `[first_byte, first_byte + out.len())` of the packed stream of `count`
    /// elements at `src[origin]`: one segment of a pipelined pack, or MPI_Pack's `position`.
    /// Returns `out.len()`.
    pub fn pack_range(
        &self,
        src: &[u8],
        origin: usize,
        count: usize,
        first_byte: usize,
        out: &mut [u8],
    ) -> Result<usize, PackError> {
        self.check_range(count, first_byte, out.len())?;
        self.check_footprint(src.len(), origin, count)?;
        // SAFETY: the footprint check proved that every byte `count` elements touch,
        // `origin + lo .. origin + hi`, lies inside `src`; `out` holds exactly the `len`
        // bytes written; a shared and an exclusive slice never overlap.
        unsafe {
            self.pack_raw(
                src.as_ptr().wrapping_add(origin),
                count,
                out.as_mut_ptr(),
                first_byte,
                out.len(),
            )
        }
    }

    /// Unpacks `count` elements from `packed` into the buffer at `dst[origin]`
    /// (`MPI_Unpack`, MPI-3.1 §4.2). Returns the bytes read, `packed_size(count)`.
    /// Bytes of `dst` outside the type map are not touched.
    pub fn unpack(
        &self,
        packed: &[u8],
        dst: &mut [u8],
        origin: usize,
        count: usize,
    ) -> Result<usize, PackError> {
        let total = self.checked_packed_size(count)?;
        if packed.len() < total {
            return Err(PackError::InputTooSmall {
                need: total,
                have: packed.len(),
            });
        }
        self.unpack_range(&packed[..total], dst, origin, count, 0)
    }

    /// Unpacks `packed`, which holds bytes `[first_byte, first_byte + packed.len())` of the
    /// packed stream of `count` elements, into the buffer at `dst[origin]`.
    /// Returns `packed.len()`.
    pub fn unpack_range(
        &self,
        packed: &[u8],
        dst: &mut [u8],
        origin: usize,
        count: usize,
        first_byte: usize,
    ) -> Result<usize, PackError> {
        self.check_range(count, first_byte, packed.len())?;
        self.check_footprint(dst.len(), origin, count)?;
        // SAFETY: as in `pack_range`, with `dst` written and `packed` read.
        unsafe {
            self.unpack_raw(
                packed.as_ptr(),
                count,
                dst.as_mut_ptr().wrapping_add(origin),
                first_byte,
                packed.len(),
            )
        }
    }

    /// Packs bytes `[first_byte, first_byte + len)` of the packed stream of `count` elements
    /// of the buffer at `src` into `out`. Returns `len`.
    ///
    /// # Safety
    /// - For every block of the type map of `count` elements (see [`Committed::footprint`]),
    ///   `src + offset .. src + offset + block length` must be valid for reads.
    /// - `out .. out + len` must be valid for writes and must not overlap any of those bytes.
    pub unsafe fn pack_raw(
        &self,
        src: *const u8,
        count: usize,
        out: *mut u8,
        first_byte: usize,
        len: usize,
    ) -> Result<usize, PackError> {
        self.check_range(count, first_byte, len)?;
        let plan = self.plan(count);
        // SAFETY: the caller guarantees the memory contract; the range is inside the stream.
        // The source is only read: `PACK = true` copies from `mem` to `packed`.
        unsafe { run::<true>(&plan, src.cast_mut(), out, first_byte, len) };
        Ok(len)
    }

    /// Unpacks `len` packed bytes at `packed`, which are bytes
    /// `[first_byte, first_byte + len)` of the packed stream of `count` elements, into the
    /// buffer at `dst`. Returns `len`.
    ///
    /// # Safety
    /// - For every block of the type map of `count` elements, `dst + offset .. dst + offset +
    ///   block length` must be valid for writes.
    /// - `packed .. packed + len` must be valid for reads and must not overlap any of those.
    pub unsafe fn unpack_raw(
        &self,
        packed: *const u8,
        count: usize,
        dst: *mut u8,
        first_byte: usize,
        len: usize,
    ) -> Result<usize, PackError> {
        self.check_range(count, first_byte, len)?;
        let plan = self.plan(count);
        // SAFETY: the caller guarantees the memory contract; the range is inside the stream.
        // The packed buffer is only read: `PACK = false` copies from `packed` to `mem`.
        unsafe { run::<false>(&plan, dst, packed.cast_mut(), first_byte, len) };
        Ok(len)
    }

    fn check_range(&self, count: usize, first: usize, len: usize) -> Result<(), PackError> {
        let total = self.checked_packed_size(count)?;
        let end = first
            .checked_add(len)
            .ok_or(PackError::Overflow { count })?;
        if end > total {
            return Err(PackError::RangeOutOfBounds { first, end, total });
        }
        Ok(())
    }
}

/// A way of copying one block of a known length class.
trait Copier {
    /// Copies `len` bytes from `src` to `dst`.
    ///
    /// # Safety
    /// Both ranges are valid and do not overlap.
    unsafe fn copy(dst: *mut u8, src: *const u8, len: usize);
}

/// Exactly `N` bytes, as one unaligned load and store.
struct Fixed<const N: usize>;

impl<const N: usize> Copier for Fixed<N> {
    #[inline(always)]
    unsafe fn copy(dst: *mut u8, src: *const u8, _len: usize) {
        // SAFETY: the caller guarantees `N` valid bytes at both ends (len == N).
        unsafe {
            ptr::write_unaligned(
                dst.cast::<[u8; N]>(),
                ptr::read_unaligned(src.cast::<[u8; N]>()),
            )
        }
    }
}

/// Long blocks: `memcpy`.
struct Memcpy;

impl Copier for Memcpy {
    #[inline(always)]
    unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) {
        // SAFETY: the caller guarantees both ranges are valid and disjoint.
        unsafe { ptr::copy_nonoverlapping(src, dst, len) }
    }
}

/// Short blocks of other lengths: 8-byte words, then one 4-, 2- and 1-byte move as needed.
struct Words;

impl Copier for Words {
    #[inline(always)]
    unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) {
        let mut i = 0;
        // SAFETY: every move below stays below `len`, inside both ranges.
        unsafe {
            while i + 8 <= len {
                Fixed::<8>::copy(dst.add(i), src.add(i), 8);
                i += 8;
            }
            if i + 4 <= len {
                Fixed::<4>::copy(dst.add(i), src.add(i), 4);
                i += 4;
            }
            if i + 2 <= len {
                Fixed::<2>::copy(dst.add(i), src.add(i), 2);
                i += 2;
            }
            if i < len {
                *dst.add(i) = *src.add(i);
            }
        }
    }
}

/// Copies one block between memory and the packed stream, in the direction `PACK` names.
///
/// # Safety
/// `mem` and `packed` are valid for `len` bytes (reads or writes as the direction needs)
/// and do not overlap.
#[inline(always)]
unsafe fn xfer<C: Copier, const PACK: bool>(mem: *mut u8, packed: *mut u8, len: usize) {
    // SAFETY: forwarded from the caller.
    unsafe {
        if PACK {
            C::copy(packed, mem, len)
        } else {
            C::copy(mem, packed, len)
        }
    }
}

/// [`xfer`] choosing the copier from `len` at run time, for block lists.
///
/// # Safety
/// As for [`xfer`].
#[inline(always)]
unsafe fn xfer_any<const PACK: bool>(mem: *mut u8, packed: *mut u8, len: usize) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match len {
            1 => xfer::<Fixed<1>, PACK>(mem, packed, len),
            2 => xfer::<Fixed<2>, PACK>(mem, packed, len),
            4 => xfer::<Fixed<4>, PACK>(mem, packed, len),
            8 => xfer::<Fixed<8>, PACK>(mem, packed, len),
            16 => xfer::<Fixed<16>, PACK>(mem, packed, len),
            32 => xfer::<Fixed<32>, PACK>(mem, packed, len),
            l if l >= 64 => xfer::<Memcpy, PACK>(mem, packed, len),
            _ => xfer::<Words, PACK>(mem, packed, len),
        }
    }
}

/// Copies packed bytes `[first, first + len)` of `plan` (steps 1 to 4 of the module doc).
///
/// # Safety
/// The range lies inside the plan's stream; `mem` is the origin of a buffer valid for
/// every block of the plan; `packed` is valid for `len` bytes; the two do not overlap.
unsafe fn run<const PACK: bool>(
    plan: &Plan<'_>,
    mem: *mut u8,
    packed: *mut u8,
    first: usize,
    len: usize,
) {
    if len == 0 {
        return;
    }
    let rb = plan.rep_bytes;
    // Step 1.
    let mut rep = first / rb;
    let offset = first % rb;
    let mut p = packed;
    let mut left = len;
    // SAFETY: in every step, each call copies a sub-range of `[first, first + len)` to or from
    // the matching sub-range of `packed`, which the caller vouches for.
    unsafe {
        // Step 2.
        if offset != 0 {
            let n = (rb - offset).min(left);
            partial::<PACK>(plan, mem, p, rep, offset, offset + n);
            p = p.add(n);
            left -= n;
            rep += 1;
        }
        // Step 3.
        let whole = left / rb;
        if whole > 0 {
            repetitions::<PACK>(plan, mem, p, rep, whole);
            p = p.add(whole * rb);
            left -= whole * rb;
            rep += whole;
        }
        // Step 4.
        if left > 0 {
            partial::<PACK>(plan, mem, p, rep, 0, left);
        }
    }
}

/// The memory offset of repetition `rep`: its level indices (mixed radix, innermost first)
/// times the strides.
fn rep_offset(plan: &Plan<'_>, mut rep: usize) -> isize {
    let mut at = 0isize;
    for l in &plan.levels {
        let i = rep % l.count;
        rep /= l.count;
        at = at.wrapping_add((i as isize).wrapping_mul(l.stride));
    }
    at
}

/// Copies bytes `[from, to)` of repetition `rep`, block by block.
///
/// # Safety
/// As for [`run`], with `packed` valid for `to - from` bytes.
unsafe fn partial<const PACK: bool>(
    plan: &Plan<'_>,
    mem: *mut u8,
    packed: *mut u8,
    rep: usize,
    from: usize,
    to: usize,
) {
    let base = rep_offset(plan, rep);
    let mut i = plan.prefix.partition_point(|&p| p <= from) - 1;
    let mut pos = from;
    let mut p = packed;
    while pos < to {
        let b = plan.blocks[i];
        let within = pos - plan.prefix[i];
        let n = (b.len - within).min(to - pos);
        let at = base.wrapping_add(b.offset).wrapping_add(within as isize);
        // SAFETY: bytes `within .. within + n` of block `i` of repetition `rep`, which the
        // caller vouches for, and the next `n` packed bytes.
        unsafe {
            xfer_any::<PACK>(mem.wrapping_offset(at), p, n);
            p = p.add(n);
        }
        pos += n;
        i += 1;
    }
}

/// Copies `count` whole repetitions starting at repetition `start`.
///
/// # Safety
/// As for [`run`], with `packed` valid for `count * rep_bytes` bytes.
unsafe fn repetitions<const PACK: bool>(
    plan: &Plan<'_>,
    mem: *mut u8,
    packed: *mut u8,
    start: usize,
    count: usize,
) {
    if let [b] = &*plan.blocks {
        let base = mem.wrapping_offset(b.offset);
        // SAFETY: forwarded from the caller; `base` is the single block of repetition 0.
        unsafe {
            match b.len {
                1 => single::<Fixed<1>, PACK>(plan, base, packed, b.len, start, count),
                2 => single::<Fixed<2>, PACK>(plan, base, packed, b.len, start, count),
                4 => single::<Fixed<4>, PACK>(plan, base, packed, b.len, start, count),
                8 => single::<Fixed<8>, PACK>(plan, base, packed, b.len, start, count),
                16 => single::<Fixed<16>, PACK>(plan, base, packed, b.len, start, count),
                32 => single::<Fixed<32>, PACK>(plan, base, packed, b.len, start, count),
                l if l >= 64 => single::<Memcpy, PACK>(plan, base, packed, b.len, start, count),
                _ => single::<Words, PACK>(plan, base, packed, b.len, start, count),
            }
        }
    } else {
        let blocks = &*plan.blocks;
        odometer(
            plan,
            mem,
            packed,
            plan.rep_bytes,
            start,
            count,
            |at, mut p| {
                for b in blocks {
                    // SAFETY: block `b` of a repetition the caller vouches for, and the next
                    // `b.len` packed bytes.
                    unsafe {
                        xfer_any::<PACK>(at.wrapping_offset(b.offset), p, b.len);
                        p = p.add(b.len);
                    }
                }
            },
        );
    }
}

/// One block of `len` bytes at `base`, repeated over the plan's levels: the specialised
/// loops for 0 to 3 levels, the odometer beyond.
///
/// # Safety
/// As for [`repetitions`].
#[inline(always)]
unsafe fn single<C: Copier, const PACK: bool>(
    plan: &Plan<'_>,
    base: *mut u8,
    packed: *mut u8,
    len: usize,
    start: usize,
    count: usize,
) {
    if plan.levels.len() > 3 {
        odometer(plan, base, packed, len, start, count, |a, p| {
            // SAFETY: one repetition of the block, vouched for by the caller.
            unsafe { xfer::<C, PACK>(a, p, len) }
        });
        return;
    }
    let mut p = packed;
    let mut left = count;
    // SAFETY: in every arm, each copy is one block of a repetition in
    // `start .. start + count`, and the next `len` bytes of `packed`.
    unsafe {
        match *plan.levels.as_slice() {
            [] => {
                debug_assert!(start == 0 && count == 1);
                xfer::<C, PACK>(base, p, len);
            }
            [l0] => {
                let mut a = base.wrapping_offset((start as isize).wrapping_mul(l0.stride));
                for _ in 0..count {
                    xfer::<C, PACK>(a, p, len);
                    a = a.wrapping_offset(l0.stride);
                    p = p.add(len);
                }
            }
            [l0, l1] => {
                let (mut i0, mut i1) = (start % l0.count, start / l0.count);
                while left > 0 {
                    let run = (l0.count - i0).min(left);
                    let off = (i1 as isize)
                        .wrapping_mul(l1.stride)
                        .wrapping_add((i0 as isize).wrapping_mul(l0.stride));
                    let mut a = base.wrapping_offset(off);
                    for _ in 0..run {
                        xfer::<C, PACK>(a, p, len);
                        a = a.wrapping_offset(l0.stride);
                        p = p.add(len);
                    }
                    left -= run;
                    i0 = 0;
                    i1 += 1;
                }
            }
            [l0, l1, l2] => {
                let (mut i0, rest) = (start % l0.count, start / l0.count);
                let (mut i1, mut i2) = (rest % l1.count, rest / l1.count);
                while left > 0 {
                    let run = (l0.count - i0).min(left);
                    let off = (i2 as isize)
                        .wrapping_mul(l2.stride)
                        .wrapping_add((i1 as isize).wrapping_mul(l1.stride))
                        .wrapping_add((i0 as isize).wrapping_mul(l0.stride));
                    let mut a = base.wrapping_offset(off);
                    for _ in 0..run {
                        xfer::<C, PACK>(a, p, len);
                        a = a.wrapping_offset(l0.stride);
                        p = p.add(len);
                    }
                    left -= run;
                    i0 = 0;
                    i1 += 1;
                    if i1 == l1.count {
                        i1 = 0;
                        i2 += 1;
                    }
                }
            }
            _ => unreachable!("more than 3 levels take the odometer"),
        }
    }
}

/// Runs `body(address of repetition, packed pointer)` for `count` repetitions from `start`,
/// advancing an index per level (innermost first) with a tight loop over the innermost one.
#[inline(always)]
fn odometer(
    plan: &Plan<'_>,
    base: *mut u8,
    packed: *mut u8,
    rep_bytes: usize,
    start: usize,
    count: usize,
    mut body: impl FnMut(*mut u8, *mut u8),
) {
    let levels = &plan.levels;
    if levels.is_empty() {
        if count > 0 {
            body(base, packed);
        }
        return;
    }
    let mut idx = vec![0usize; levels.len()];
    let mut r = start;
    let mut at = 0isize;
    for (i, l) in idx.iter_mut().zip(levels) {
        *i = r % l.count;
        r /= l.count;
        at = at.wrapping_add((*i as isize).wrapping_mul(l.stride));
    }
    let (c0, s0) = (levels[0].count, levels[0].stride);
    let mut p = packed;
    let mut left = count;
    while left > 0 {
        let run = (c0 - idx[0]).min(left);
        let mut a = at;
        for _ in 0..run {
            body(base.wrapping_offset(a), p);
            a = a.wrapping_add(s0);
            p = p.wrapping_add(rep_bytes);
        }
        left -= run;
        if left == 0 {
            return;
        }
        // Carry into the outer levels.
        at = at.wrapping_sub((idx[0] as isize).wrapping_mul(s0));
        idx[0] = 0;
        let mut j = 1;
        loop {
            idx[j] += 1;
            at = at.wrapping_add(levels[j].stride);
            if idx[j] < levels[j].count {
                break;
            }
            at = at.wrapping_sub((levels[j].count as isize).wrapping_mul(levels[j].stride));
            idx[j] = 0;
            j += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::error::PackError;
    use crate::ir::Type;

    fn int() -> Type {
        Type::named(4)
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + 3) as u8).collect()
    }

    #[test]
    fn vector_packs_its_blocks() {
        let v = Type::vector(3, 2, 4, &int()).unwrap().commit();
        let src = data(48);
        let mut out = vec![0u8; 24];
        assert_eq!(v.pack(&src, 0, 1, &mut out), Ok(24));
        let mut want = Vec::new();
        for i in 0..3 {
            want.extend_from_slice(&src[i * 16..i * 16 + 8]);
        }
        assert_eq!(out, want);
    }

    #[test]
    fn negative_stride_needs_an_origin() {
        let v = Type::vector(3, 1, -2, &int()).unwrap().commit();
        let src = data(20);
        let mut out = vec![0u8; 12];
        assert!(matches!(
            v.pack(&src, 0, 1, &mut out),
            Err(PackError::OutOfBounds { lo: -16, hi: 4, .. })
        ));
        assert_eq!(v.pack(&src, 16, 1, &mut out), Ok(12));
        assert_eq!(&out[..4], &src[16..20]);
        assert_eq!(&out[4..8], &src[8..12]);
        assert_eq!(&out[8..], &src[0..4]);
    }

    #[test]
    fn errors_are_reported_before_writing() {
        let v = Type::contiguous(4, &int()).unwrap().commit();
        let src = data(16);
        let mut small = vec![0u8; 15];
        assert_eq!(
            v.pack(&src, 0, 1, &mut small),
            Err(PackError::OutputTooSmall { need: 16, have: 15 })
        );
        let mut out = vec![0u8; 8];
        assert_eq!(
            v.pack_range(&src, 0, 1, 12, &mut out),
            Err(PackError::RangeOutOfBounds {
                first: 12,
                end: 20,
                total: 16
            })
        );
        assert!(matches!(
            v.pack(&src, 1, 1, &mut [0u8; 16]),
            Err(PackError::OutOfBounds { .. })
        ));
        let mut dst = vec![0u8; 16];
        assert_eq!(
            v.unpack(&src[..10], &mut dst, 0, 1),
            Err(PackError::InputTooSmall { need: 16, have: 10 })
        );
        assert!(matches!(
            v.pack(&src, 0, usize::MAX, &mut out),
            Err(PackError::Overflow { .. })
        ));
    }

    #[test]
    fn zero_count_and_empty_types_pack_nothing() {
        let v = Type::vector(3, 1, 2, &int()).unwrap().commit();
        assert_eq!(v.pack(&[], 0, 0, &mut []), Ok(0));
        let e = Type::contiguous(0, &int()).unwrap().commit();
        assert_eq!(e.pack(&[], 0, 100, &mut []), Ok(0));
        assert_eq!(e.unpack(&[], &mut [], 0, 100), Ok(0));
    }

    #[test]
    fn ranges_split_anywhere() {
        let s = Type::struct_(&[3, 1], &[0, 20], &[int(), Type::named(2)])
            .unwrap()
            .commit();
        let count = 5;
        let ext = s.ty().extent() as usize;
        let src = data(ext * count);
        let total = s.packed_size(count).unwrap();
        let mut full = vec![0u8; total];
        s.pack(&src, 0, count, &mut full).unwrap();
        for cut in 0..=total {
            let mut a = vec![0u8; cut];
            let mut b = vec![0u8; total - cut];
            s.pack_range(&src, 0, count, 0, &mut a).unwrap();
            s.pack_range(&src, 0, count, cut, &mut b).unwrap();
            a.extend_from_slice(&b);
            assert_eq!(a, full, "cut at {cut}");
        }
    }

    #[test]
    fn every_copier_width() {
        for len in [1usize, 2, 3, 4, 5, 8, 12, 16, 24, 32, 40, 63, 64, 65, 200] {
            let t = Type::hvector(5, 1, len as isize + 3, &Type::named(len)).unwrap();
            let c = t.commit();
            let src = data((len + 3) * 5);
            let mut out = vec![0u8; len * 5];
            c.pack(&src, 0, 1, &mut out).unwrap();
            let mut back = vec![0u8; src.len()];
            c.unpack(&out, &mut back, 0, 1).unwrap();
            for i in 0..5 {
                let at = i * (len + 3);
                assert_eq!(&out[i * len..(i + 1) * len], &src[at..at + len]);
                assert_eq!(&back[at..at + len], &src[at..at + len]);
                assert!(back[at + len..at + len + 3].iter().all(|&b| b == 0));
            }
        }
    }

    #[test]
    fn four_levels_use_the_odometer() {
        let t = Type::hvector(
            2,
            1,
            1000,
            &Type::hvector(
                3,
                1,
                200,
                &Type::hvector(2, 1, 50, &Type::vector(3, 1, 3, &int()).unwrap()).unwrap(),
            )
            .unwrap(),
        )
        .unwrap()
        .commit();
        assert_eq!(t.layout().levels().len(), 4);
        let src = data(3000);
        let total = t.packed_size(2).unwrap();
        let mut out = vec![0u8; total];
        t.pack(&src, 0, 2, &mut out).unwrap();
        let mut want = Vec::new();
        for e in 0..2 {
            for a in 0..2 {
                for b in 0..3 {
                    for c in 0..2 {
                        for d in 0..3 {
                            let at =
                                e * t.ty().extent() as usize + a * 1000 + b * 200 + c * 50 + d * 12;
                            want.extend_from_slice(&src[at..at + 4]);
                        }
                    }
                }
            }
        }
        assert_eq!(out, want);
        for first in [0, 1, 5, 47, 100, total - 1] {
            let mut seg = vec![0u8; total - first];
            t.pack_range(&src, 0, 2, first, &mut seg).unwrap();
            assert_eq!(seg, want[first..]);
        }
    }
}
