//! Non-temporal (streaming) stores for long blocks of large pack and unpack calls, and the
//! thresholds that turn them on.
//!
//! An ordinary store to a line that is not in cache first reads the line
//! (read-for-ownership), so writing `n` bytes to memory moves `2n` bytes over the memory bus.
//! A non-temporal store writes whole lines through write-combining buffers without reading
//! them, as glibc's `memcpy` does above its cache-size threshold. For blocks of 256 bytes and
//! more (the engine's `memcpy` class) in calls that move at least a threshold of bytes, the
//! lines that lie wholly inside a block's destination take streaming stores and the partial
//! lines at its ends ordinary ones, so no line ever receives both kinds of store (a line
//! shared with the next block, or with bytes outside the type, is written ordinarily). A store
//! fence ends every such call, so its bytes are ordered before any later store (a flag
//! another thread reads, an MPI send). On x86-64 the streaming stores are SSE2's `movntdq`,
//! part of the baseline instruction set, so there is nothing to detect at run time, and the
//! store width does not matter when memory is the bound; elsewhere they are ordinary copies.
//!
//! Measured on the 2-core dev VM (AMD EPYC, glibc 2.36, 8 MiB packed, alternating in one
//! process): unpacking 256-1536 B blocks into a strided 16 MiB destination takes 0.5-0.75x
//! the time with streaming stores (faster than an 8 MiB `memcpy` there, whose glibc keeps
//! ordinary stores up to 192 MiB on that machine); packing them takes 1.0-1.7x the time,
//! also when packing into an L1-resident bounce buffer that is streamed out line by line (every
//! block size from 1 B). Packing is bound by reading the strided source, and streaming stores
//! in flight slow those reads down. So unpacking streams by default and packing does not;
//! `ferry-bench pack` times both ways in the same process, for other machines.
//!
//! Not done yet: the thresholds are one pair of numbers for every machine; they could be
//! derived from the last-level cache size per core, as glibc derives its own.

use std::sync::atomic::{AtomicUsize, Ordering};

/// When pack and unpack calls stream (see the module doc): calls that move at least this many
/// bytes, in each direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamThresholds {
    /// Packing, whose output is one contiguous run. Default: never (`usize::MAX`).
    pub pack: usize,
    /// Unpacking into the strided destination. Default: 4 MiB, twice the largest per-core
    /// L2 of current x86 server cores (1-2 MiB) and about one core's share of their
    /// last-level cache, so an output this large does not stay in the cache for whoever
    /// reads it next, while smaller ones (a halo face, an eager message) keep the ordinary
    /// stores that leave them cached.
    pub unpack: usize,
}

impl StreamThresholds {
    /// The thresholds the engine starts with.
    pub const DEFAULT: StreamThresholds = StreamThresholds {
        pack: usize::MAX,
        unpack: 4 << 20,
    };
    /// Never stream.
    pub const NEVER: StreamThresholds = StreamThresholds {
        pack: usize::MAX,
        unpack: usize::MAX,
    };
}

static PACK_THRESHOLD: AtomicUsize = AtomicUsize::new(StreamThresholds::DEFAULT.pack);
static UNPACK_THRESHOLD: AtomicUsize = AtomicUsize::new(StreamThresholds::DEFAULT.unpack);

/// The process-wide [`StreamThresholds`]; [`StreamThresholds::DEFAULT`] unless set.
pub fn stream_thresholds() -> StreamThresholds {
    StreamThresholds {
        pack: PACK_THRESHOLD.load(Ordering::Relaxed),
        unpack: UNPACK_THRESHOLD.load(Ordering::Relaxed),
    }
}

/// Sets the [`StreamThresholds`] for the whole process. Packed bytes do not depend on them,
/// only how they are written; benchmarks use this to compare both store paths in one process.
pub fn set_stream_thresholds(t: StreamThresholds) {
    PACK_THRESHOLD.store(t.pack, Ordering::Relaxed);
    UNPACK_THRESHOLD.store(t.unpack, Ordering::Relaxed);
}

/// The cache line size the streaming stores align to.
const LINE: usize = 64;

/// Copies `n` bytes from `src` (any alignment) to `dst`, streaming the lines that lie wholly
/// inside `[dst, dst + n)` and storing the partial lines at either end ordinarily.
///
/// # Safety
/// Both ranges are valid for `n` bytes and do not overlap.
#[inline(always)]
pub(crate) unsafe fn copy_inner_lines(dst: *mut u8, src: *const u8, n: usize) {
    let head = dst.align_offset(LINE);
    if n < head + LINE {
        // SAFETY: forwarded from the caller.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, n) };
        return;
    }
    let body = (n - head) & !(LINE - 1);
    // SAFETY: `head + body <= n`; the three pieces partition both ranges.
    unsafe {
        std::ptr::copy_nonoverlapping(src, dst, head);
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
            let (d, s) = (dst.add(head), src.add(head));
            let mut i = 0;
            while i < body {
                // SAFETY: `i + 64 <= body`; `d + i` is 64-byte aligned; loads are unaligned.
                let (dd, ss) = (d.add(i).cast::<__m128i>(), s.add(i).cast::<__m128i>());
                _mm_stream_si128(dd, _mm_loadu_si128(ss));
                _mm_stream_si128(dd.add(1), _mm_loadu_si128(ss.add(1)));
                _mm_stream_si128(dd.add(2), _mm_loadu_si128(ss.add(2)));
                _mm_stream_si128(dd.add(3), _mm_loadu_si128(ss.add(3)));
                i += LINE;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        std::ptr::copy_nonoverlapping(src.add(head), dst.add(head), body);
        let done = head + body;
        std::ptr::copy_nonoverlapping(src.add(done), dst.add(done), n - done);
    }
}

/// Orders every streaming store before later stores (`sfence`); a no-op without them.
#[inline]
pub(crate) fn fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `sfence` has no operands and is part of SSE, in the x86-64 baseline.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    }
}

#[cfg(test)]
mod tests {
    use super::{LINE, copy_inner_lines, fence};

    #[test]
    fn inner_lines_copy_every_length_at_every_alignment() {
        let src: Vec<u8> = (0..2048u32).map(|i| (i * 31 + 7) as u8).collect();
        for n in (0..300).chain([511, 512, 513, 1000]) {
            for shift in [0, 1, 15, 16, 33, 63] {
                let mut dst = vec![0xA5u8; n + 2 * LINE + 64];
                let at = dst.as_ptr().align_offset(LINE) + shift;
                // SAFETY: `dst` has room for `at + n` bytes plus slack; `src` holds 2048 >= n + 7.
                unsafe { copy_inner_lines(dst.as_mut_ptr().add(at), src.as_ptr().add(7), n) };
                fence();
                assert_eq!(&dst[at..at + n], &src[7..7 + n], "n {n} shift {shift}");
                assert!(dst[..at].iter().all(|&b| b == 0xA5), "n {n} shift {shift}");
                assert!(
                    dst[at + n..].iter().all(|&b| b == 0xA5),
                    "n {n} shift {shift}"
                );
            }
        }
    }
}
