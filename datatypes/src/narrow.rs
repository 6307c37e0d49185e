//! SIMD kernels for one narrow block (1, 2, 4 or 8 bytes) repeated at a small constant
//! stride: the innermost run of layouts such as `MPI_Type_vector(n, 1, 2, MPI_FLOAT)`.
//!
//! The scalar loop of `pack.rs` moves one block per load and store. Here one vector of packed
//! bytes comes from (or goes to) the `k = stride / len` consecutive vectors of memory that its
//! blocks lie in, with AVX2 (checked at run time by the caller):
//! - Blocks of 4 or 8 bytes ([`Narrow::Dwords`], 32-byte vectors): packing loads the `k`
//!   memory vectors, moves the wanted dwords into place with `vpermd` and blends them into one
//!   output vector. Unpacking loads 32 packed bytes and writes each of the `k` memory vectors
//!   with `vpermd` and a masked store (`vpmaskmovd`), which writes the block's dwords and no
//!   other byte: gap bytes are never written, not even with their own value, so another
//!   thread may write them meanwhile (two receives into the odd and even elements of one
//!   array, say). Only on Intel CPUs: AMD's masked stores are slower than the scalar loop.
//! - Blocks of 1 or 2 bytes ([`Narrow::Bytes`], 16-byte vectors): packing shuffles each of the
//!   `k` memory vectors with `pshufb` and ORs them. Unpacking stays scalar: AVX2 has no
//!   byte-masked store, and a load-blend-store would write gap bytes back.
//!
//! Which shapes qualify: a positive stride that is a multiple of the block length, and `k` at
//! most half the blocks per vector (4 for 4-byte blocks, 2 for 8-byte blocks, 4 for 2-byte
//! blocks, 8 for single bytes), where one vector operation per memory vector still replaces
//! at least two scalar moves. Wider strides stay with the scalar loop, whose time is then
//! the source's cache misses, not the moves.
//!
//! Reads past the blocks: a packing step loads every byte from its first block up to the
//! start of the block after its last one, gaps included, so the caller runs it only where
//! that next block exists (see [`Narrow::pack_steps`]). The gap bytes then lie between two
//! blocks of the type less than a page apart, on pages the type's blocks occupy, and their
//! values are discarded.
//!
//! Not done yet: unpacking 1- and 2-byte blocks (needs AVX-512BW's byte-masked stores),
//! strides that are not a multiple of the block length, AVX-512 versions.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{
    __m128i, __m256i, _mm_loadu_si128, _mm_or_si128, _mm_shuffle_epi8, _mm_storeu_si128,
    _mm256_blendv_epi8, _mm256_loadu_si256, _mm256_maskstore_epi32, _mm256_permutevar8x32_epi32,
    _mm256_storeu_si256,
};

/// The most memory vectors one packed vector of dword blocks draws from.
const DWORDS_K: usize = 4;
/// The most memory vectors one packed vector of byte blocks draws from.
const BYTES_K: usize = 8;

/// Whether `vpmaskmovd` stores beat one scalar store per block: on Intel cores (one or two
/// micro-ops, about one per cycle), not on AMD's (microcoded; on the AMD EPYC dev VM,
/// unpacking 4-byte blocks at stride 8 took 2.1x the scalar loop's time with them). Always
/// in unit tests, so the kernel is checked on every machine.
fn masked_stores_pay() -> bool {
    static INTEL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    cfg!(test) || *INTEL.get_or_init(is_intel)
}

/// Whether the CPU's vendor string is Intel's.
fn is_intel() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: leaf 0 (the vendor string) exists on every x86-64 CPU. (`__cpuid` is a
        // safe function from Rust 1.87 on; the block keeps 1.85, the workspace's minimum.)
        #[allow(unused_unsafe)]
        let r = unsafe { std::arch::x86_64::__cpuid(0) };
        // "GenuineIntel" in EBX, EDX, ECX.
        (r.ebx, r.edx, r.ecx) == (0x756e_6547, 0x4965_6e69, 0x6c65_746e)
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Runs `$body` with the constant `$K` equal to `$k`, one of `$n`: one compiled kernel per
/// number of memory vectors.
macro_rules! with_k {
    ($k:expr, [$($n:literal),*], $K:ident => $body:expr) => {
        match $k {
            $($n => {
                const $K: usize = $n;
                $body
            })*
            k => unreachable!("no kernel for {k} memory vectors"),
        }
    };
}

/// A kernel for blocks of one length at one stride, with its shuffle tables. Made on the
/// stack once per call and never stored, so the variants' sizes need not match.
#[derive(Clone, Copy, Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Narrow {
    /// Blocks of 4 or 8 bytes, 32 packed bytes per step.
    Dwords(Dwords),
    /// Blocks of 1 or 2 bytes, 16 packed bytes per step.
    Bytes(Bytes),
}

/// Tables for [`Narrow::Dwords`]; entry `c` is for memory vector `c` of a step.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dwords {
    k: usize,
    /// Blocks per step.
    per_step: usize,
    stride: usize,
    /// Packing: packed dword `j` is dword `pack_idx[c][j]` of memory vector `c` where
    /// `pack_mask[c][j]` is set.
    pack_idx: [[i32; 8]; DWORDS_K],
    pack_mask: [[i32; 8]; DWORDS_K],
    /// Unpacking: dword `l` of memory vector `c` is packed dword `unpack_idx[c][l]` where
    /// `unpack_mask[c][l]` is set, and is left alone elsewhere.
    unpack_idx: [[i32; 8]; DWORDS_K],
    unpack_mask: [[i32; 8]; DWORDS_K],
}

/// Tables for [`Narrow::Bytes`]: packed byte `j` is byte `pack_idx[c][j]` of memory vector
/// `c`, or `-128` (a zero from `pshufb`) where it lies in another vector.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bytes {
    k: usize,
    per_step: usize,
    stride: usize,
    pack_idx: [[i8; 16]; BYTES_K],
}

impl Narrow {
    /// The kernel for blocks of `len` bytes `stride` bytes apart, if one fits (see the
    /// module doc).
    pub(crate) fn new(len: usize, stride: isize) -> Option<Narrow> {
        let stride = usize::try_from(stride).ok()?;
        if !matches!(len, 1 | 2 | 4 | 8) || stride <= len || stride % len != 0 {
            return None;
        }
        let k = stride / len;
        if len >= 4 {
            let (w, d) = (len / 4, stride / 4);
            let per_step = 8 / w;
            if k > per_step / 2 {
                return None;
            }
            let mut t = Dwords {
                k,
                per_step,
                stride,
                pack_idx: [[0; 8]; DWORDS_K],
                pack_mask: [[0; 8]; DWORDS_K],
                unpack_idx: [[0; 8]; DWORDS_K],
                unpack_mask: [[0; 8]; DWORDS_K],
            };
            for j in 0..8 {
                // Packed dword `j` is dword `j % w` of block `j / w`.
                let at = (j / w) * d + j % w;
                let (c, l) = (at / 8, at % 8);
                t.pack_idx[c][j] = l as i32;
                t.pack_mask[c][j] = -1;
                t.unpack_idx[c][l] = j as i32;
                t.unpack_mask[c][l] = -1;
            }
            Some(Narrow::Dwords(t))
        } else {
            let per_step = 16 / len;
            if k > per_step / 2 {
                return None;
            }
            let mut t = Bytes {
                k,
                per_step,
                stride,
                pack_idx: [[-128; 16]; BYTES_K],
            };
            for j in 0..16 {
                let at = (j / len) * stride + j % len;
                t.pack_idx[at / 16][j] = (at % 16) as i8;
            }
            Some(Narrow::Bytes(t))
        }
    }

    /// Blocks one step moves.
    pub(crate) fn per_step(&self) -> usize {
        match self {
            Narrow::Dwords(t) => t.per_step,
            Narrow::Bytes(t) => t.per_step,
        }
    }

    /// How many steps packing a run of `blocks` blocks may take: every step but the last
    /// needs the block after it, so the loads end before a block of the run.
    pub(crate) fn pack_steps(&self, blocks: usize) -> usize {
        blocks.saturating_sub(1) / self.per_step()
    }

    /// How many steps unpacking a run of `blocks` blocks may take: masked stores write
    /// nothing outside the blocks, so every whole step. Zero for byte blocks, and where
    /// masked stores are slow (see [`masked_stores_pay`]): the scalar loop unpacks those.
    pub(crate) fn unpack_steps(&self, blocks: usize) -> usize {
        match self {
            Narrow::Dwords(t) if masked_stores_pay() => blocks / t.per_step,
            _ => 0,
        }
    }

    /// Packs `steps * per_step()` blocks, the first at `mem`, into `packed`.
    ///
    /// # Safety
    /// The CPU has AVX2. The blocks at `mem + i * stride` for `i` in
    /// `0 ..= steps * per_step()` lie in one buffer valid for reads (the last one is only
    /// needed to exist: the loads end at its first byte); `packed` is valid for the packed
    /// bytes of the blocks before it and overlaps none of them.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn pack(&self, mem: *const u8, packed: *mut u8, steps: usize) {
        // SAFETY: forwarded from the caller; every kernel reads `steps * k` vectors from
        // `mem` on (ending where block `steps * per_step` starts) and writes `steps`
        // vectors from `packed` on.
        unsafe {
            match self {
                Narrow::Dwords(t) => {
                    with_k!(t.k, [2, 3, 4], K => pack_dwords::<K>(t, mem, packed, steps))
                }
                Narrow::Bytes(t) => {
                    with_k!(t.k, [2, 3, 4, 5, 6, 7, 8], K => pack_bytes::<K>(t, mem, packed, steps))
                }
            }
        }
    }

    /// Unpacks `steps * per_step()` blocks from `packed` into the blocks from `mem` on;
    /// `steps` is at most [`Narrow::unpack_steps`].
    ///
    /// # Safety
    /// The CPU has AVX2; the blocks at `mem + i * stride` for `i` in
    /// `0 .. steps * per_step()` are valid for writes; `packed` is valid for their packed
    /// bytes and overlaps none of them.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn unpack(&self, mem: *mut u8, packed: *const u8, steps: usize) {
        // SAFETY: forwarded from the caller; masked stores write only the blocks' dwords.
        unsafe {
            match self {
                Narrow::Dwords(t) => {
                    with_k!(t.k, [2, 3, 4], K => unpack_dwords::<K>(t, mem, packed, steps))
                }
                Narrow::Bytes(_) => debug_assert_eq!(steps, 0, "byte blocks unpack scalar"),
            }
        }
    }
}

/// The first `K` rows of an index table and a mask table, as vectors.
///
/// # Safety
/// The CPU has AVX2. (An `unsafe fn` for Rust 1.85, the workspace's minimum, which has no
/// safe `#[target_feature]` functions.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn vectors<const K: usize>(
    idx: &[[i32; 8]; DWORDS_K],
    mask: &[[i32; 8]; DWORDS_K],
) -> ([__m256i; K], [__m256i; K]) {
    // SAFETY: each row is an array of eight i32, read with unaligned loads.
    unsafe {
        (
            std::array::from_fn(|c| _mm256_loadu_si256(idx[c].as_ptr().cast())),
            std::array::from_fn(|c| _mm256_loadu_si256(mask[c].as_ptr().cast())),
        )
    }
}

/// Packs `steps` vectors of 32 bytes from dword blocks, `K` memory vectors per step.
///
/// # Safety
/// As for [`Narrow::pack`], with `t.k == K`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pack_dwords<const K: usize>(t: &Dwords, mem: *const u8, packed: *mut u8, steps: usize) {
    debug_assert_eq!(t.k, K);
    // SAFETY: the caller vouches for AVX2.
    let (idx, mask) = unsafe { vectors::<K>(&t.pack_idx, &t.pack_mask) };
    let step_bytes = t.per_step * t.stride;
    debug_assert_eq!(step_bytes, 32 * K);
    for s in 0..steps {
        // SAFETY: step `s` reads `[s * 32K, (s + 1) * 32K)` from `mem`, which ends where
        // block `(s + 1) * per_step` starts (the caller's contract), and writes 32 bytes at
        // `packed + 32 s`.
        unsafe {
            let m = mem.add(s * step_bytes);
            let mut r = _mm256_permutevar8x32_epi32(_mm256_loadu_si256(m.cast()), idx[0]);
            for c in 1..K {
                let v =
                    _mm256_permutevar8x32_epi32(_mm256_loadu_si256(m.add(32 * c).cast()), idx[c]);
                r = _mm256_blendv_epi8(r, v, mask[c]);
            }
            _mm256_storeu_si256(packed.add(32 * s).cast(), r);
        }
    }
}

/// Unpacks `steps` vectors of 32 packed bytes into dword blocks, `K` memory vectors per step.
///
/// # Safety
/// As for [`Narrow::unpack`], with `t.k == K`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn unpack_dwords<const K: usize>(t: &Dwords, mem: *mut u8, packed: *const u8, steps: usize) {
    debug_assert_eq!(t.k, K);
    // SAFETY: the caller vouches for AVX2.
    let (idx, mask) = unsafe { vectors::<K>(&t.unpack_idx, &t.unpack_mask) };
    let step_bytes = t.per_step * t.stride;
    for s in 0..steps {
        // SAFETY: step `s` reads 32 packed bytes at `packed + 32 s` and writes, with masks,
        // only the dwords of blocks `s * per_step .. (s + 1) * per_step`, which the caller
        // vouches for.
        unsafe {
            let v = _mm256_loadu_si256(packed.add(32 * s).cast());
            let m = mem.add(s * step_bytes);
            for c in 0..K {
                let out = _mm256_permutevar8x32_epi32(v, idx[c]);
                _mm256_maskstore_epi32(m.add(32 * c).cast(), mask[c], out);
            }
        }
    }
}

/// Packs `steps` vectors of 16 bytes from byte blocks, `K` memory vectors per step.
///
/// # Safety
/// As for [`Narrow::pack`], with `t.k == K`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pack_bytes<const K: usize>(t: &Bytes, mem: *const u8, packed: *mut u8, steps: usize) {
    debug_assert_eq!(t.k, K);
    // SAFETY: the tables are arrays of sixteen i8; loads of them are unaligned loads.
    let idx: [__m128i; K] =
        unsafe { std::array::from_fn(|c| _mm_loadu_si128(t.pack_idx[c].as_ptr().cast())) };
    let step_bytes = t.per_step * t.stride;
    debug_assert_eq!(step_bytes, 16 * K);
    for s in 0..steps {
        // SAFETY: as in `pack_dwords`, with 16-byte vectors.
        unsafe {
            let m = mem.add(s * step_bytes);
            let mut r = _mm_shuffle_epi8(_mm_loadu_si128(m.cast()), idx[0]);
            for (c, &i) in idx.iter().enumerate().skip(1) {
                r = _mm_or_si128(
                    r,
                    _mm_shuffle_epi8(_mm_loadu_si128(m.add(16 * c).cast()), i),
                );
            }
            _mm_storeu_si128(packed.add(16 * s).cast(), r);
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::Narrow;

    fn avx2() -> bool {
        let ok = std::arch::is_x86_feature_detected!("avx2");
        if !ok {
            eprintln!("skip: this CPU has no AVX2");
        }
        ok
    }

    #[test]
    fn shapes_that_qualify() {
        let k = |len, stride| Narrow::new(len, stride).map(|n| n.per_step());
        assert_eq!(k(4, 8), Some(8));
        assert_eq!(k(4, 16), Some(8));
        assert_eq!(k(4, 20), None);
        assert_eq!(k(8, 16), Some(4));
        assert_eq!(k(8, 24), None);
        assert_eq!(k(1, 2), Some(16));
        assert_eq!(k(1, 8), Some(16));
        assert_eq!(k(1, 9), None);
        assert_eq!(k(2, 8), Some(8));
        assert_eq!(k(2, 6), Some(8));
        assert_eq!(k(2, 5), None);
        assert_eq!(k(4, 4), None);
        assert_eq!(k(4, -8), None);
        assert_eq!(k(3, 6), None);
        assert_eq!(k(16, 32), None);
    }

    /// Every kernel, at every base alignment, against a scalar loop: packing reads the right
    /// bytes and writes exactly its output; unpacking writes the blocks and leaves every gap
    /// byte and every byte around the run as it was (poisoned).
    #[test]
    fn kernels_match_a_scalar_loop() {
        if !avx2() {
            return;
        }
        for (len, stride) in [
            (1usize, 2usize),
            (1, 3),
            (1, 4),
            (1, 8),
            (2, 4),
            (2, 6),
            (2, 8),
            (4, 8),
            (4, 12),
            (4, 16),
            (8, 16),
        ] {
            let n = Narrow::new(len, stride as isize).unwrap();
            for shift in [0usize, 1, 3, 4, 17, 31] {
                for blocks in [1usize, 2, 15, 16, 17, 33, 100] {
                    let span = (blocks - 1) * stride + len;
                    let mem: Vec<u8> = (0..span + shift + 64)
                        .map(|i| (i * 37 + 11) as u8)
                        .collect();
                    let want: Vec<u8> = (0..blocks)
                        .flat_map(|b| mem[shift + b * stride..][..len].to_vec())
                        .collect();
                    let steps = n.pack_steps(blocks);
                    let done = steps * n.per_step();
                    assert!(done < blocks || blocks == 0);
                    let mut packed = vec![0xEEu8; want.len() + 32];
                    // SAFETY: AVX2 checked; `mem` holds every block from `shift` on and the
                    // block after the last step; `packed` has room for all blocks.
                    unsafe { n.pack(mem.as_ptr().add(shift), packed.as_mut_ptr(), steps) };
                    let what = format!("len {len} stride {stride} shift {shift} blocks {blocks}");
                    assert_eq!(&packed[..done * len], &want[..done * len], "{what}");
                    assert!(packed[done * len..].iter().all(|&b| b == 0xEE), "{what}");

                    let steps = n.unpack_steps(blocks);
                    let done = steps * n.per_step();
                    let mut back = vec![0x5Au8; mem.len()];
                    // SAFETY: AVX2 checked; `back` holds every block from `shift` on;
                    // `want` holds their packed bytes.
                    unsafe { n.unpack(back.as_mut_ptr().add(shift), want.as_ptr(), steps) };
                    for (i, &b) in back.iter().enumerate() {
                        let rel = i.wrapping_sub(shift);
                        let inside = i >= shift && rel / stride < done && rel % stride < len;
                        let expect = if inside { mem[i] } else { 0x5A };
                        assert_eq!(b, expect, "{what}: byte {i}");
                    }
                }
            }
        }
    }
}
