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
//!    blocks, the odometer with the block list as its body. A transposed two-level grid
//!    (columns of rows, as in an FFT transpose) is walked a tile of columns at a time.
//! 4. A partial last repetition is copied block by block.
//!
//! The copier is chosen once per plan from the block lengths ([`Width`]) and each loop is
//! compiled for it, with no per-block dispatch: one fixed-size move for 1, 2, 4, 8, 16 and
//! 32 bytes; two overlapping moves of `N` bytes for any other length in `[N, 2N]`, up to
//! 128 bytes; 64-byte chunks below 256 bytes; `memcpy` from 256 bytes. Block lists whose
//! lengths span several classes branch per block on the length. On x86-64 CPUs with AVX2
//! the whole-repetition loops run in a second instantiation that moves 32 bytes per
//! instruction.
//! In calls that move more bytes than the process's [`crate::StreamThresholds`], blocks of
//! 256 bytes and more write their whole cache lines with streaming stores (`stream.rs`),
//! which skip the read-for-ownership of lines about to leave the cache; by default only
//! unpacking does.
//!
//! Where the engine cannot beat a plain per-block `memcpy` (the loop MPI libraries run):
//! blocks of 64 bytes and more whose strided source does not fit in cache are bound by
//! memory traffic, as are small blocks at page-sized strides (one TLB and cache miss per
//! block); there the engine matches, rather than beats, the library.
//!
//! One narrow block (1, 2, 4 or 8 bytes) at a small innermost stride takes the SIMD kernels
//! of `narrow.rs` for the whole vectors of each run, on CPUs with AVX2. Calls that move at
//! least [`crate::pack_parallel_bytes`] are split into contiguous byte ranges copied on
//! several threads (`parallel.rs`).
//!
//! Not done yet: GPU pack kernels (with the GPU-datatype issue).

use std::ptr;

use crate::commit::{Committed, INLINE_LEVELS, Plan};
use crate::error::PackError;
use crate::layout::Level;
use crate::narrow::Narrow;
use crate::parallel;
use crate::stream;

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
        let threshold = stream::stream_thresholds().pack;
        self.pack_range_with(src, origin, count, first_byte, out, Mode::auto(threshold))
    }

    /// [`Committed::pack_range`] in `mode` (streaming threshold and split).
    pub(crate) fn pack_range_with(
        &self,
        src: &[u8],
        origin: usize,
        count: usize,
        first_byte: usize,
        out: &mut [u8],
        mode: Mode<'_>,
    ) -> Result<usize, PackError> {
        let (mem, packed) = (
            (src.as_ptr().cast_mut(), src.len()),
            (out.as_mut_ptr(), out.len()),
        );
        // SAFETY: both come from slices, a shared and an exclusive one, which never overlap;
        // `PACK = true` only reads `src`.
        unsafe { self.checked_transfer::<true>(mem, origin, count, packed, first_byte, mode) }
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
        let threshold = stream::stream_thresholds().unpack;
        self.unpack_range_with(
            packed,
            dst,
            origin,
            count,
            first_byte,
            Mode::auto(threshold),
        )
    }

    /// [`Committed::unpack_range`] in `mode` (streaming threshold and split).
    pub(crate) fn unpack_range_with(
        &self,
        packed: &[u8],
        dst: &mut [u8],
        origin: usize,
        count: usize,
        first_byte: usize,
        mode: Mode<'_>,
    ) -> Result<usize, PackError> {
        let (mem, packed) = (
            (dst.as_mut_ptr(), dst.len()),
            (packed.as_ptr().cast_mut(), packed.len()),
        );
        // SAFETY: as in `pack_range_with`; `PACK = false` only reads `packed`.
        unsafe { self.checked_transfer::<false>(mem, origin, count, packed, first_byte, mode) }
    }

    /// [`Committed::pack_range`] split into `segments` on `pool` (tests of the split path
    /// on any machine).
    #[cfg(test)]
    pub(crate) fn pack_range_split(
        &self,
        src: &[u8],
        origin: usize,
        count: usize,
        first_byte: usize,
        out: &mut [u8],
        (pool, segments): (&parallel::Pool, usize),
    ) -> Result<usize, PackError> {
        let mode = Mode {
            threshold: usize::MAX,
            split: Split::Forced(Some(pool), segments),
        };
        self.pack_range_with(src, origin, count, first_byte, out, mode)
    }

    /// [`Committed::unpack_range`] split into `segments` on `pool`, with streaming stores
    /// on, so each thread's fence is exercised too.
    #[cfg(test)]
    pub(crate) fn unpack_range_split(
        &self,
        packed: &[u8],
        dst: &mut [u8],
        origin: usize,
        count: usize,
        first_byte: usize,
        (pool, segments): (&parallel::Pool, usize),
    ) -> Result<usize, PackError> {
        let mode = Mode {
            threshold: 0,
            split: Split::Forced(Some(pool), segments),
        };
        self.unpack_range_with(packed, dst, origin, count, first_byte, mode)
    }

    /// The body of the slice APIs: checks the range and that the footprint of `count`
    /// elements at `mem.0 + origin` lies inside the `mem.1` bytes at `mem.0`, then transfers
    /// the `packed.1` bytes at `packed.0`.
    ///
    /// # Safety
    /// `mem` and `packed` are valid (for reads on the side `PACK` reads, for writes on the
    /// other) for their lengths and do not overlap.
    unsafe fn checked_transfer<const PACK: bool>(
        &self,
        mem: (*mut u8, usize),
        origin: usize,
        count: usize,
        packed: (*mut u8, usize),
        first_byte: usize,
        mode: Mode<'_>,
    ) -> Result<usize, PackError> {
        self.check_range(count, first_byte, packed.1)?;
        self.check_footprint(mem.1, origin, count)?;
        let at = mem.0.wrapping_add(origin);
        // SAFETY: the footprint check proved that every byte `count` elements touch,
        // `origin + lo .. origin + hi`, lies inside `mem`; `packed` holds exactly the bytes
        // of the range; the caller vouches for the rest.
        unsafe { self.transfer_raw::<PACK>(at, count, packed.0, first_byte, packed.1, mode) }
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
        let threshold = stream::stream_thresholds().pack;
        // SAFETY: the caller's contract; the source is only read: `PACK = true` copies from
        // `mem` to `packed`.
        unsafe {
            self.transfer_raw::<true>(
                src.cast_mut(),
                count,
                out,
                first_byte,
                len,
                Mode::auto(threshold),
            )
        }
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
        let threshold = stream::stream_thresholds().unpack;
        // SAFETY: the caller's contract; the packed buffer is only read: `PACK = false` copies
        // from `packed` to `mem`.
        unsafe {
            let mode = Mode::auto(threshold);
            self.transfer_raw::<false>(dst, count, packed.cast_mut(), first_byte, len, mode)
        }
    }

    /// Copies bytes `[first_byte, first_byte + len)` of the packed stream of `count` elements
    /// between the buffer at `mem` and `packed`, in the direction `PACK` names; long blocks
    /// take streaming stores when `len` reaches `mode.threshold` (see [`crate::stream`]), and
    /// large calls are split over threads as `mode.split` says (see [`crate::parallel`]).
    ///
    /// # Safety
    /// As for [`Committed::pack_raw`] (`PACK`) or [`Committed::unpack_raw`]; the side that
    /// is read is never written.
    unsafe fn transfer_raw<const PACK: bool>(
        &self,
        mem: *mut u8,
        count: usize,
        packed: *mut u8,
        first_byte: usize,
        len: usize,
        mode: Mode<'_>,
    ) -> Result<usize, PackError> {
        self.check_range(count, first_byte, len)?;
        let mut plan = self.plan(count);
        let streaming = len >= mode.threshold && plan.width == Width::Long;
        if streaming {
            plan.width = Width::LongStream;
        }
        let (pool, segments) = match mode.split {
            Split::Auto => match parallel::segments(len) {
                1 => (None, 1),
                n => (parallel::pool(), n),
            },
            Split::Forced(pool, n) => (pool, n),
        };
        if segments <= 1 {
            // SAFETY: the caller guarantees the memory contract; the range is inside the
            // stream.
            unsafe { run::<PACK>(&plan, mem, packed, first_byte, len) };
            if streaming {
                stream::fence();
            }
            return Ok(len);
        }
        let (mem, packed) = (Shared(mem), Shared(packed));
        parallel::for_each_segment(pool, len, segments, |at, n| {
            // SAFETY: segments partition `[0, len)`, so each thread copies its own sub-range
            // of the caller's range: on the packed side disjoint bytes, on the memory side
            // disjoint sets of the type map's bytes (no loop writes a byte outside the type
            // map); the call returns only when every segment is done.
            unsafe { run::<PACK>(&plan, mem.get(), packed.get().add(at), first_byte + at, n) };
            if streaming {
                // Each thread orders its own streaming stores before the join.
                stream::fence();
            }
        });
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

/// How one call writes and splits.
#[derive(Clone, Copy)]
pub(crate) struct Mode<'p> {
    /// Long blocks take streaming stores in calls of at least this many bytes.
    threshold: usize,
    split: Split<'p>,
}

impl Mode<'_> {
    /// Streaming from `threshold`, split as the process's setting says.
    pub(crate) fn auto(threshold: usize) -> Mode<'static> {
        Mode {
            threshold,
            split: Split::Auto,
        }
    }
}

/// How a call is split over threads.
#[derive(Clone, Copy)]
pub(crate) enum Split<'p> {
    /// As the process's setting says ([`parallel::segments`]).
    Auto,
    /// Into this many segments on this pool (tests).
    #[cfg_attr(not(test), allow(dead_code))]
    Forced(Option<&'p parallel::Pool>, usize),
}

/// A pointer that the segments of one split call share; each segment touches only its own
/// bytes through it.
#[derive(Clone, Copy)]
struct Shared(*mut u8);

// SAFETY: the pointer is only used by `transfer_raw`'s segments, which copy disjoint byte
// sets and are joined before the call returns.
unsafe impl Send for Shared {}
// SAFETY: as for `Send`.
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer (a method, so that closures capture the whole `Shared`).
    fn get(self) -> *mut u8 {
        self.0
    }
}

/// A way of copying one block of a known length class.
trait Copier {
    /// Copies `len` bytes from `src` to `dst`.
    ///
    /// # Safety
    /// Both ranges are valid, do not overlap, and `len` lies in the copier's class.
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

/// `N` to `2N` bytes, as two `N`-byte moves: one at the first byte and one ending at the
/// last. Where they overlap, both write the same bytes, and both stay inside `[0, len)`.
struct Pair<const N: usize>;

impl<const N: usize> Copier for Pair<N> {
    #[inline(always)]
    unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) {
        debug_assert!(N <= len && len <= 2 * N, "{len} bytes in Pair<{N}>");
        // SAFETY: `N <= len` (the caller's class), so both moves cover bytes inside
        // `[0, len)` of each range; the ranges do not overlap, so the order is free.
        unsafe {
            Fixed::<N>::copy(dst, src, N);
            Fixed::<N>::copy(dst.add(len - N), src.add(len - N), N);
        }
    }
}

/// At least `N` bytes: `N`-byte moves from the first byte, the last one ending at the last.
struct Chunks<const N: usize>;

impl<const N: usize> Copier for Chunks<N> {
    #[inline(always)]
    unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) {
        debug_assert!(N <= len, "{len} bytes in Chunks<{N}>");
        let mut i = 0;
        // SAFETY: every move covers `[i, i + N)` with `i + N <= len`, inside both ranges.
        unsafe {
            while i + N < len {
                Fixed::<N>::copy(dst.add(i), src.add(i), N);
                i += N;
            }
            Fixed::<N>::copy(dst.add(len - N), src.add(len - N), N);
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

/// Long blocks written to memory that leaves the cache: the lines wholly inside a block take
/// streaming stores, the partial lines at its ends ordinary ones (see [`crate::stream`]).
struct StreamLong;

impl Copier for StreamLong {
    #[inline(always)]
    unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) {
        // SAFETY: the caller guarantees both ranges are valid and disjoint.
        unsafe { stream::copy_inner_lines(dst, src, len) }
    }
}

/// Any length, branching on it per block (block lists whose lengths span several classes,
/// and partial repetitions).
struct AnyLen;

impl Copier for AnyLen {
    #[inline(always)]
    unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) {
        // SAFETY: every arm's class contains `len`; the ranges are the caller's.
        unsafe {
            if len <= 16 {
                if len >= 8 {
                    Pair::<8>::copy(dst, src, len)
                } else if len >= 4 {
                    Pair::<4>::copy(dst, src, len)
                } else if len >= 2 {
                    Pair::<2>::copy(dst, src, len)
                } else if len == 1 {
                    Fixed::<1>::copy(dst, src, len)
                }
            } else if len <= 32 {
                Pair::<16>::copy(dst, src, len)
            } else if len <= 64 {
                Pair::<32>::copy(dst, src, len)
            } else if len <= 128 {
                Pair::<64>::copy(dst, src, len)
            } else if len < LONG {
                Chunks::<64>::copy(dst, src, len)
            } else {
                Memcpy::copy(dst, src, len)
            }
        }
    }
}

/// Blocks of this many bytes or more are copied with `memcpy`.
const LONG: usize = 256;

/// The copier class of a loop, chosen once per plan from its block lengths so that the
/// loop is compiled for it (see [`with_copier`]). `ExactN` copies exactly `N` bytes
/// ([`Fixed`]); `PairN` copies `N` to `2N` bytes ([`Pair`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Width {
    Exact1,
    Exact2,
    Exact4,
    Exact8,
    Exact16,
    Exact32,
    Pair1,
    Pair2,
    Pair4,
    Pair8,
    Pair16,
    Pair32,
    Pair64,
    /// 64 to 255 bytes: [`Chunks`] of 64.
    Chunks64,
    /// [`LONG`] bytes or more: `memcpy`.
    Long,
    /// [`LONG`] bytes or more, written with streaming stores ([`StreamLong`]); chosen per
    /// call for large outputs (`plan_streaming`), never by [`Width::of`] or
    /// [`Width::covering`].
    LongStream,
    /// Mixed lengths: [`AnyLen`].
    Any,
}

impl Width {
    /// The class for blocks of exactly `len` bytes: one fixed move for a power of two up
    /// to 32, two overlapping moves below 128, 64-byte chunks below [`LONG`], else `memcpy`.
    pub(crate) fn of(len: usize) -> Width {
        match len {
            // Length 0 is the folded block of a zero count, which never copies.
            0 | 1 => Width::Exact1,
            2 => Width::Exact2,
            3 => Width::Pair2,
            4 => Width::Exact4,
            5..=7 => Width::Pair4,
            8 => Width::Exact8,
            9..=15 => Width::Pair8,
            16 => Width::Exact16,
            17..=31 => Width::Pair16,
            32 => Width::Exact32,
            33..=64 => Width::Pair32,
            65..=128 => Width::Pair64,
            129..LONG => Width::Chunks64,
            _ => Width::Long,
        }
    }

    /// The narrowest class that copies every length in `[min, max]`.
    pub(crate) fn covering(min: usize, max: usize) -> Width {
        if min == max {
            return Width::of(min);
        }
        let pair = [
            (1, Width::Pair1),
            (2, Width::Pair2),
            (4, Width::Pair4),
            (8, Width::Pair8),
            (16, Width::Pair16),
            (32, Width::Pair32),
            (64, Width::Pair64),
        ]
        .into_iter()
        .find(|&(n, _)| n <= min && max <= 2 * n);
        match pair {
            Some((_, w)) => w,
            None if min >= LONG => Width::Long,
            None if min >= 64 && max < LONG => Width::Chunks64,
            None => Width::Any,
        }
    }
}

/// Runs `$body` with `$c` naming the copier type of width `$w`: one compiled loop per class.
macro_rules! with_copier {
    ($w:expr, $c:ident => $body:expr) => {
        match $w {
            Width::Exact1 => {
                type $c = Fixed<1>;
                $body
            }
            Width::Exact2 => {
                type $c = Fixed<2>;
                $body
            }
            Width::Exact4 => {
                type $c = Fixed<4>;
                $body
            }
            Width::Exact8 => {
                type $c = Fixed<8>;
                $body
            }
            Width::Exact16 => {
                type $c = Fixed<16>;
                $body
            }
            Width::Exact32 => {
                type $c = Fixed<32>;
                $body
            }
            Width::Pair1 => {
                type $c = Pair<1>;
                $body
            }
            Width::Pair2 => {
                type $c = Pair<2>;
                $body
            }
            Width::Pair4 => {
                type $c = Pair<4>;
                $body
            }
            Width::Pair8 => {
                type $c = Pair<8>;
                $body
            }
            Width::Pair16 => {
                type $c = Pair<16>;
                $body
            }
            Width::Pair32 => {
                type $c = Pair<32>;
                $body
            }
            Width::Pair64 => {
                type $c = Pair<64>;
                $body
            }
            Width::Chunks64 => {
                type $c = Chunks<64>;
                $body
            }
            Width::Long => {
                type $c = Memcpy;
                $body
            }
            Width::LongStream => {
                type $c = StreamLong;
                $body
            }
            Width::Any => {
                type $c = AnyLen;
                $body
            }
        }
    };
}

/// Copies one block between memory and the packed stream, in the direction `PACK` names.
///
/// # Safety
/// `mem` and `packed` are valid for `len` bytes (reads or writes as the direction needs)
/// and do not overlap; `len` lies in the class of `C`.
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
            // The AVX2 instantiation runs only where the CPU reports AVX2 (a cached check).
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                repetitions_avx2::<PACK>(plan, mem, p, rep, whole);
            } else {
                repetitions_base::<PACK>(plan, mem, p, rep, whole);
            }
            #[cfg(not(target_arch = "x86_64"))]
            repetitions_base::<PACK>(plan, mem, p, rep, whole);
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
    for l in plan.levels() {
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
    let (blocks, prefix) = (plan.blocks(), plan.prefix());
    let mut i = prefix.partition_point(|&p| p <= from) - 1;
    let mut pos = from;
    let mut p = packed;
    while pos < to {
        let b = blocks[i];
        let within = pos - prefix[i];
        let n = (b.len - within).min(to - pos);
        let at = base.wrapping_add(b.offset).wrapping_add(within as isize);
        // SAFETY: bytes `within .. within + n` of block `i` of repetition `rep`, which the
        // caller vouches for, and the next `n` packed bytes.
        unsafe {
            xfer::<AnyLen, PACK>(mem.wrapping_offset(at), p, n);
            p = p.add(n);
        }
        pos += n;
        i += 1;
    }
}

/// [`repetitions`] compiled for the target's baseline instruction set.
///
/// # Safety
/// As for [`repetitions`].
unsafe fn repetitions_base<const PACK: bool>(
    plan: &Plan<'_>,
    mem: *mut u8,
    packed: *mut u8,
    start: usize,
    count: usize,
) {
    // SAFETY: forwarded from the caller.
    unsafe { repetitions::<PACK>(plan, mem, packed, start, count, None) }
}

/// Whole repetitions from which on a narrow block's runs take the SIMD kernels of
/// [`crate::narrow`] (below, building their tables costs more than they save).
#[cfg(target_arch = "x86_64")]
const NARROW_MIN_REPETITIONS: usize = 64;

/// [`repetitions`] compiled with AVX2: every copier of 32 bytes and more moves 32 bytes
/// per instruction instead of 16, which halves the stores in flight per block; one narrow
/// block (1 to 8 bytes) at a small innermost stride takes the kernels of [`crate::narrow`].
///
/// # Safety
/// As for [`repetitions`], on a CPU with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn repetitions_avx2<const PACK: bool>(
    plan: &Plan<'_>,
    mem: *mut u8,
    packed: *mut u8,
    start: usize,
    count: usize,
) {
    let narrow = match (plan.blocks(), plan.levels().first()) {
        ([b], Some(l0)) if count >= NARROW_MIN_REPETITIONS => Narrow::new(b.len, l0.stride),
        _ => None,
    };
    // SAFETY: forwarded from the caller, who checked for AVX2, which the kernels need.
    unsafe { repetitions::<PACK>(plan, mem, packed, start, count, narrow.as_ref()) }
}

/// Copies `count` whole repetitions starting at repetition `start`; runs along the
/// innermost level of a single block take `narrow`'s kernel where it is given.
///
/// # Safety
/// As for [`run`], with `packed` valid for `count * rep_bytes` bytes; `narrow`, if any, is
/// the kernel for the single block's length at the innermost stride, on a CPU with AVX2.
#[inline(always)]
unsafe fn repetitions<const PACK: bool>(
    plan: &Plan<'_>,
    mem: *mut u8,
    packed: *mut u8,
    start: usize,
    count: usize,
    narrow: Option<&Narrow>,
) {
    // SAFETY: forwarded from the caller; `plan.width` covers every block's length.
    unsafe {
        if let [b] = plan.blocks() {
            let base = mem.wrapping_offset(b.offset);
            with_copier!(plan.width, C => single::<C, PACK>(plan, base, packed, b.len, start, count, narrow))
        } else {
            with_copier!(plan.width, C => list::<C, PACK>(plan, mem, packed, start, count))
        }
    }
}

/// One block of `len` bytes at `base`, repeated over the plan's levels: the specialised
/// loops for 0 to 3 levels, the odometer beyond.
///
/// # Safety
/// As for [`repetitions`], with `base` the block of repetition 0 and `len` in the class of
/// `C`.
#[inline(always)]
unsafe fn single<C: Copier, const PACK: bool>(
    plan: &Plan<'_>,
    base: *mut u8,
    packed: *mut u8,
    len: usize,
    start: usize,
    count: usize,
    narrow: Option<&Narrow>,
) {
    let mut p = packed;
    let mut left = count;
    // SAFETY: in every arm, each copy is one block of a repetition in
    // `start .. start + count`, and the next `len` bytes of `packed`.
    unsafe {
        match *plan.levels() {
            [] => {
                debug_assert!(start == 0 && count == 1);
                xfer::<C, PACK>(base, p, len);
            }
            [l0] => {
                let a = base.wrapping_offset((start as isize).wrapping_mul(l0.stride));
                strided::<C, PACK>(a, l0.stride, p, len, count, narrow);
            }
            [l0, l1] if is_transposed_grid(l0, l1, len) => {
                transposed::<C, PACK>(l0, l1, base, packed, len, start, count);
            }
            [l0, l1] => {
                let (mut i0, mut i1) = (start % l0.count, start / l0.count);
                while left > 0 {
                    let run = (l0.count - i0).min(left);
                    let off = (i1 as isize)
                        .wrapping_mul(l1.stride)
                        .wrapping_add((i0 as isize).wrapping_mul(l0.stride));
                    if left > run {
                        let next = ((i1 + 1) as isize).wrapping_mul(l1.stride);
                        prefetch_run(base.wrapping_offset(next), l0.stride, left - run);
                    }
                    let a = base.wrapping_offset(off);
                    p = strided::<C, PACK>(a, l0.stride, p, len, run, narrow);
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
                    if left > run {
                        let next = if i1 + 1 < l1.count {
                            (i2 as isize)
                                .wrapping_mul(l2.stride)
                                .wrapping_add(((i1 + 1) as isize).wrapping_mul(l1.stride))
                        } else {
                            ((i2 + 1) as isize).wrapping_mul(l2.stride)
                        };
                        prefetch_run(base.wrapping_offset(next), l0.stride, left - run);
                    }
                    let a = base.wrapping_offset(off);
                    p = strided::<C, PACK>(a, l0.stride, p, len, run, narrow);
                    left -= run;
                    i0 = 0;
                    i1 += 1;
                    if i1 == l1.count {
                        i1 = 0;
                        i2 += 1;
                    }
                }
            }
            _ => {
                let mut odo = Odometer::new(plan.levels(), start);
                let s0 = plan.levels()[0].stride;
                while left > 0 {
                    let (at, run) = odo.run();
                    let run = run.min(left);
                    let a = base.wrapping_offset(at);
                    p = strided::<C, PACK>(a, s0, p, len, run, narrow);
                    left -= run;
                    odo.advance(run);
                }
            }
        }
    }
}

/// Copies `n` blocks of `len` bytes, `stride` apart from `a`, and the next `n * len` packed
/// bytes; returns the packed pointer after them. `narrow`'s kernel takes the whole vectors
/// of the run it may (see [`Narrow::pack_steps`]), the scalar loop the rest.
///
/// # Safety
/// As for [`single`]: the `n` blocks are a run of the plan's innermost level, and `narrow`,
/// if any, is the kernel for `len` at `stride` on a CPU with AVX2.
#[inline(always)]
unsafe fn strided<C: Copier, const PACK: bool>(
    mut a: *mut u8,
    stride: isize,
    mut p: *mut u8,
    len: usize,
    n: usize,
    narrow: Option<&Narrow>,
) -> *mut u8 {
    let mut left = n;
    #[cfg(target_arch = "x86_64")]
    if let Some(k) = narrow {
        let steps = if PACK {
            k.pack_steps(n)
        } else {
            k.unpack_steps(n)
        };
        if steps > 0 {
            // SAFETY: the blocks are a run of the plan, so every block up to the last one
            // of the run exists and `pack_steps` leaves one after the last step; the caller
            // vouches for AVX2 and that `k` was made for `len` at `stride`.
            unsafe {
                if PACK {
                    k.pack(a, p, steps)
                } else {
                    k.unpack(a, p, steps)
                }
            }
            let done = steps * k.per_step();
            a = a.wrapping_offset((done as isize).wrapping_mul(stride));
            // SAFETY: `done <= n` blocks, inside the caller's `n * len` packed bytes.
            p = unsafe { p.add(done * len) };
            left -= done;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = narrow;
    for _ in 0..left {
        // SAFETY: the next block of the run and its packed bytes, as the caller vouches.
        unsafe {
            xfer::<C, PACK>(a, p, len);
            p = p.add(len);
        }
        a = a.wrapping_offset(stride);
    }
    p
}

/// Blocks at the start of the next run along the innermost level that the 2- and 3-level
/// loops ask the cache for while copying the current run. The next run starts at a jump
/// that the hardware prefetchers cannot predict; for nested vectors with short runs (MILC's
/// 24 blocks) this hides most of the miss latency at each jump.
const PREFETCH_BLOCKS: usize = 8;

/// Prefetches the first of the `left` blocks of a run at `a`, `stride` bytes apart.
#[inline(always)]
fn prefetch_run(a: *const u8, stride: isize, left: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let mut at = a;
        for _ in 0..left.min(PREFETCH_BLOCKS) {
            // SAFETY: a prefetch is a hint; it never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(at.cast::<i8>()) };
            at = at.wrapping_offset(stride);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (a, stride, left);
}

/// The byte span of adjacent columns that one tile of [`transposed`] reads per row.
const TILE_BYTES: usize = 128;

/// Whether blocks of `len` bytes over levels `l0` (rows) and `l1` (columns) form a grid
/// walked column by column (`|l1.stride| < |l0.stride|`, as in a transpose) whose adjacent
/// columns share cache lines, and whose blocks never overlap, so that copying them in
/// another order gives the same bytes in both directions.
fn is_transposed_grid(l0: Level, l1: Level, len: usize) -> bool {
    let (s0, s1) = (l0.stride.unsigned_abs(), l1.stride.unsigned_abs());
    s1 < TILE_BYTES / 2 && len <= s1 && l1.count as u128 * s1 as u128 <= s0 as u128
}

/// One block over two levels that [`is_transposed_grid`] accepts: the packed stream runs
/// down each column (`l0`), but memory is read (or written) a tile of adjacent columns at
/// a time, so each cache line is fetched once rather than once per column.
///
/// 1. Copy the rest of a partly done first column down the column.
/// 2. Copy whole columns in tiles of up to `TILE_BYTES / |l1.stride|` (2 to 8) columns:
///    row by row, each row's blocks of the tile go to as many packed streams, one per
///    column, `l0.count * len` bytes apart.
/// 3. Copy the first rows of a last, partial column down the column.
///
/// # Safety
/// As for [`single`], with levels `[l0, l1]`.
#[inline(always)]
unsafe fn transposed<C: Copier, const PACK: bool>(
    l0: Level,
    l1: Level,
    base: *mut u8,
    packed: *mut u8,
    len: usize,
    start: usize,
    count: usize,
) {
    let (c0, s0, s1) = (l0.count, l0.stride, l1.stride);
    let column = c0 * len;
    let tile = (TILE_BYTES / s1.unsigned_abs()).clamp(2, 8);
    let (i0, mut i1) = (start % c0, start / c0);
    let mut p = packed;
    let mut left = count;
    // SAFETY: each copy is one block of a repetition in `start .. start + count` and its
    // `len` bytes of `packed`: repetition `i + c0 * j` (row `i`, column `j`) lies at
    // `i * s0 + j * s1` and packs at `(i + c0 * j - start) * len`.
    unsafe {
        // Step 1.
        if i0 != 0 {
            let run = (c0 - i0).min(left);
            let mut a = base
                .wrapping_offset((i1 as isize).wrapping_mul(s1))
                .wrapping_offset((i0 as isize).wrapping_mul(s0));
            for _ in 0..run {
                xfer::<C, PACK>(a, p, len);
                a = a.wrapping_offset(s0);
                p = p.add(len);
            }
            left -= run;
            i1 += 1;
        }
        // Step 2.
        let mut columns = left / c0;
        left -= columns * c0;
        while columns > 0 {
            let t = columns.min(tile);
            let mut a = base.wrapping_offset((i1 as isize).wrapping_mul(s1));
            let mut q = p;
            for _ in 0..c0 {
                let (mut aa, mut pp) = (a, q);
                for _ in 0..t {
                    xfer::<C, PACK>(aa, pp, len);
                    aa = aa.wrapping_offset(s1);
                    pp = pp.add(column);
                }
                a = a.wrapping_offset(s0);
                q = q.add(len);
            }
            p = p.add(t * column);
            i1 += t;
            columns -= t;
        }
        // Step 3.
        let mut a = base.wrapping_offset((i1 as isize).wrapping_mul(s1));
        for _ in 0..left {
            xfer::<C, PACK>(a, p, len);
            a = a.wrapping_offset(s0);
            p = p.add(len);
        }
    }
}

/// A block list repeated over the plan's levels, walked by the odometer.
///
/// # Safety
/// As for [`repetitions`], with every block length in the class of `C`.
#[inline(always)]
unsafe fn list<C: Copier, const PACK: bool>(
    plan: &Plan<'_>,
    mem: *mut u8,
    packed: *mut u8,
    start: usize,
    count: usize,
) {
    let blocks = plan.blocks();
    let s0 = plan.levels().first().map_or(0, |l| l.stride);
    let mut odo = Odometer::new(plan.levels(), start);
    let mut p = packed;
    let mut left = count;
    while left > 0 {
        let (at, run) = odo.run();
        let run = run.min(left);
        let mut a = mem.wrapping_offset(at);
        for _ in 0..run {
            for b in blocks {
                // SAFETY: block `b` of a repetition in `start .. start + count`, which the
                // caller vouches for, and the next `b.len` packed bytes.
                unsafe {
                    xfer::<C, PACK>(a.wrapping_offset(b.offset), p, b.len);
                    p = p.add(b.len);
                }
            }
            a = a.wrapping_offset(s0);
        }
        left -= run;
        odo.advance(run);
    }
}

/// Walks repetitions in runs along the innermost level, keeping an index per level
/// (innermost first) and carrying into the outer levels at the end of each run.
struct Odometer<'p> {
    levels: &'p [Level],
    inline: [usize; INLINE_LEVELS],
    heap: Vec<usize>,
    /// Memory offset of the current repetition.
    at: isize,
}

impl<'p> Odometer<'p> {
    /// Starts at repetition `start`, decomposed by mixed radix.
    #[inline(always)]
    fn new(levels: &'p [Level], start: usize) -> Odometer<'p> {
        let mut o = Odometer {
            levels,
            inline: [0; INLINE_LEVELS],
            heap: Vec::new(),
            at: 0,
        };
        if levels.len() > INLINE_LEVELS {
            o.heap.resize(levels.len(), 0);
        }
        let mut r = start;
        let mut at = 0isize;
        for (i, l) in o.idx().iter_mut().zip(levels) {
            *i = r % l.count;
            r /= l.count;
            at = at.wrapping_add((*i as isize).wrapping_mul(l.stride));
        }
        o.at = at;
        o
    }

    #[inline(always)]
    fn idx(&mut self) -> &mut [usize] {
        let n = self.levels.len();
        if n <= INLINE_LEVELS {
            &mut self.inline[..n]
        } else {
            &mut self.heap
        }
    }

    /// The memory offset of the current repetition and the repetitions left along the
    /// innermost level from it (1 with no levels).
    #[inline(always)]
    fn run(&mut self) -> (isize, usize) {
        let at = self.at;
        match self.levels.first() {
            Some(l0) => (at, l0.count - self.idx()[0]),
            None => (at, 1),
        }
    }

    /// Moves `n` repetitions on, `n` being at most the current run.
    #[inline(always)]
    fn advance(&mut self, n: usize) {
        let levels = self.levels;
        let Some(l0) = levels.first() else {
            return;
        };
        let mut at = self.at;
        let idx = self.idx();
        idx[0] += n;
        at = at.wrapping_add((n as isize).wrapping_mul(l0.stride));
        if idx[0] < l0.count {
            self.at = at;
            return;
        }
        // Carry into the outer levels; past the last one the walk is over.
        at = at.wrapping_sub((l0.count as isize).wrapping_mul(l0.stride));
        idx[0] = 0;
        for (j, l) in levels.iter().enumerate().skip(1) {
            idx[j] += 1;
            at = at.wrapping_add(l.stride);
            if idx[j] < l.count {
                break;
            }
            at = at.wrapping_sub((l.count as isize).wrapping_mul(l.stride));
            idx[j] = 0;
        }
        self.at = at;
    }
}

#[cfg(test)]
mod tests {
    use super::{
        AnyLen, Chunks, Copier, Fixed, Memcpy, Pair, StreamLong, Width, is_transposed_grid,
    };
    use crate::commit::INLINE_LEVELS;
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
        for len in (1usize..=300).chain([511, 512, 1000]) {
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
    fn width_classes_copy_every_length_they_cover() {
        // Every class that `covering` picks copies exactly `len` bytes for every length in
        // its range, and nothing past them.
        let src = data(700);
        for min in 1usize..=300 {
            for max in [min, min + 1, 2 * min - 1, 2 * min, 2 * min + 1, min + 200] {
                let w = Width::covering(min, max);
                for len in min..=max.max(min) {
                    let mut dst = vec![0xA5u8; len + 16];
                    // SAFETY: `src` holds 700 >= len bytes, `dst` len + 16; `len` lies in
                    // the class that `covering` returned for `[min, max]`.
                    with_copier!(w, C => unsafe { C::copy(dst.as_mut_ptr(), src.as_ptr(), len) });
                    assert_eq!(&dst[..len], &src[..len], "{w:?} len {len}");
                    assert!(dst[len..].iter().all(|&b| b == 0xA5), "{w:?} len {len}");
                }
            }
        }
        assert_eq!(Width::covering(12, 12), Width::Pair8);
        assert_eq!(Width::covering(8, 16), Width::Pair8);
        assert_eq!(Width::covering(40, 40), Width::Pair32);
        assert_eq!(Width::covering(80, 200), Width::Chunks64);
        assert_eq!(Width::covering(256, 5000), Width::Long);
        assert_eq!(Width::covering(4, 280), Width::Any);
    }

    #[test]
    fn transposed_grid_matches_the_column_walk() {
        // Columns of 16 bytes, 64 rows 1024 bytes apart, 37 columns 16 bytes apart: tiles
        // of 8 columns, then 5; every range start and end cuts columns anywhere.
        let col = Type::resized(
            0,
            16,
            &Type::vector(64, 1, 64, &Type::contiguous(2, &Type::named(8)).unwrap()).unwrap(),
        )
        .unwrap()
        .commit();
        let count = 37;
        let plan = col.plan(count);
        let [l0, l1] = *plan.levels() else {
            panic!("{:?}", plan.levels());
        };
        assert!(is_transposed_grid(l0, l1, 16));
        let src = data(64 * 1024);
        let mut want = Vec::new();
        for j in 0..count {
            for i in 0..64 {
                want.extend_from_slice(&src[i * 1024 + j * 16..][..16]);
            }
        }
        let total = want.len();
        for first in [0, 5, 16, 1024, 1030, total - 17] {
            for end in [first + 1, first + 2048, total] {
                let end = end.min(total);
                let mut seg = vec![0u8; end - first];
                col.pack_range(&src, 0, count, first, &mut seg).unwrap();
                assert_eq!(seg, want[first..end], "{first}..{end}");
                let mut back = vec![0u8; src.len()];
                col.unpack_range(&seg, &mut back, 0, count, first).unwrap();
                let mut again = vec![0u8; end - first];
                col.pack_range(&back, 0, count, first, &mut again).unwrap();
                assert_eq!(again, seg, "{first}..{end}");
            }
        }
    }

    #[test]
    fn deep_layouts_spill_the_plan_to_the_heap() {
        // Single bytes over ten levels whose strides never merge, then a count of 3.
        let strides = [3isize, 7, 17, 37, 79, 163, 331, 673, 1361, 2729];
        let mut t = Type::named(1);
        for &s in &strides {
            t = Type::hvector(2, 1, s, &t).unwrap();
        }
        let c = t.commit();
        assert_eq!(c.layout().levels().len(), strides.len());
        let count = 3;
        assert!(c.plan(count).levels().len() > INLINE_LEVELS);
        let ext = c.ty().extent() as usize;
        let src = data(ext * count);
        let mut want = Vec::new();
        for e in 0..count {
            for r in 0..1usize << strides.len() {
                let at: isize = (0..strides.len())
                    .filter(|j| r >> j & 1 == 1)
                    .map(|j| strides[j])
                    .sum();
                want.push(src[e * ext + at as usize]);
            }
        }
        let mut out = vec![0u8; want.len()];
        c.pack(&src, 0, count, &mut out).unwrap();
        assert_eq!(out, want);
        let mut seg = vec![0u8; 1500];
        c.pack_range(&src, 0, count, 1000, &mut seg).unwrap();
        assert_eq!(seg, want[1000..2500]);
    }

    /// Narrow blocks at small strides (the SIMD kernels of `narrow.rs` where the CPU has AVX2,
    /// the scalar loop elsewhere, and shapes just outside the kernels) over one, two and
    /// three levels: every range, starting and ending mid-block and mid-vector, at unaligned
    /// origins, packs the reference's bytes, and unpacking it into a poisoned buffer writes
    /// exactly the range's bytes of the type map and no other byte.
    #[test]
    fn narrow_blocks_match_the_reference() {
        use crate::reference::pieces;
        use crate::testing::Recipe;
        let hv = |count, stride, old| {
            Box::new(Recipe::HVector {
                count,
                blocklen: 1,
                stride,
                old,
            })
        };
        let shapes = [
            (1usize, 2isize),
            (1, 3),
            (1, 8),
            (1, 9),
            (2, 4),
            (2, 6),
            (2, 8),
            (2, 10),
            (4, 8),
            (4, 12),
            (4, 16),
            (4, 20),
            (8, 16),
            (8, 24),
        ];
        for (len, stride) in shapes {
            let named = || Box::new(Recipe::Named { size: len });
            let run = 3 * 64 + 7;
            let recipes = [
                (hv(run, stride, named()), 1),
                (
                    hv(3, run as isize * stride + 40, hv(run, stride, named())),
                    1,
                ),
                (
                    Box::new(Recipe::Resized {
                        lb: 0,
                        extent: 9000,
                        old: hv(2, 4100, hv(70, stride, named())),
                    }),
                    3,
                ),
            ];
            for (recipe, count) in recipes {
                let c = recipe.try_build().unwrap().commit();
                let blocks = pieces(&recipe, count);
                let offsets: Vec<usize> = blocks
                    .iter()
                    .flat_map(|&(at, n)| at as usize..at as usize + n)
                    .collect();
                let total = offsets.len();
                let hi = offsets.iter().max().unwrap() + 1;
                for shift in [0usize, 1, 3] {
                    let src: Vec<u8> = (0..hi + shift).map(|i| (i * 131 + 17) as u8).collect();
                    let want: Vec<u8> = offsets.iter().map(|&o| src[shift + o]).collect();
                    let cuts = [0, 1, len / 2, 5 * len + 1, 33 * len, total / 2 + 3];
                    for first in cuts {
                        for end in [total, total - 1, first + 64 * len + 1] {
                            let end = end.min(total).max(first);
                            let what = format!("{recipe} x{count} shift {shift} {first}..{end}");
                            let mut seg = vec![0xEEu8; end - first];
                            c.pack_range(&src, shift, count, first, &mut seg).unwrap();
                            assert_eq!(seg, want[first..end], "{what}");
                            let mut back = vec![0xA5u8; src.len()];
                            c.unpack_range(&seg, &mut back, shift, count, first)
                                .unwrap();
                            let mut expect = vec![0xA5u8; src.len()];
                            for &o in &offsets[first..end] {
                                expect[shift + o] = src[shift + o];
                            }
                            assert_eq!(back, expect, "{what}");
                        }
                    }
                }
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
