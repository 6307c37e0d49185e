//! Launch-shape selection for the gather kernels: vector width, threads per row, rows per warp
//! and the 128-byte line alignment, as pure functions the unit tests check without a GPU.
//!
//! The common case: a 512-byte row in a page-aligned table reads 16-byte words, 32 words, so
//! one warp per row; a 64-byte row reads 4 words, so 4 threads per row and 8 rows per warp.

/// Bytes in the memory transaction the alignment option lines warp reads up with.
pub(crate) const LINE_BYTES: u64 = 128;

/// Threads in a warp.
pub(crate) const WARP: u32 = 32;

/// How one gather is launched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchShape {
    /// Bytes each thread moves per load: 16, 8, 4, 2 or 1.
    pub vec_bytes: u32,
    /// Threads that copy one row together: a power of two up to a warp.
    pub threads_per_row: u32,
    /// Rows one warp copies at a time (`WARP / threads_per_row`).
    pub rows_per_warp: u32,
    /// Whether row reads start at the 128-byte line boundary below the row (rows over 128 bytes).
    pub align_lines: bool,
}

/// The largest of 16, 8, 4, 2, 1 dividing both `row_bytes` and the table's base address.
pub fn vector_bytes(row_bytes: usize, base_addr: u64) -> u32 {
    [16u32, 8, 4, 2, 1]
        .into_iter()
        .find(|&v| row_bytes % v as usize == 0 && base_addr % v as u64 == 0)
        .unwrap_or(1)
}

/// Chooses the shape for rows of `row_bytes` in a table at `base_addr`; `align_requested` asks
/// for 128-byte line alignment, which applies only to rows over 128 bytes.
pub fn launch_shape(row_bytes: usize, base_addr: u64, align_requested: bool) -> LaunchShape {
    let vec_bytes = vector_bytes(row_bytes, base_addr);
    let words = row_bytes.div_ceil(vec_bytes as usize).max(1);
    let threads_per_row = words.next_power_of_two().min(WARP as usize) as u32;
    LaunchShape {
        vec_bytes,
        threads_per_row,
        rows_per_warp: WARP / threads_per_row,
        align_lines: align_requested && row_bytes as u64 > LINE_BYTES,
    }
}

/// Vector words between the 128-byte line boundary at or below `row_addr` and `row_addr`:
/// the leading lanes that stay idle when reads are line-aligned. The kernel computes the same.
pub fn align_shift_words(row_addr: u64, vec_bytes: u32) -> u64 {
    (row_addr % LINE_BYTES) / vec_bytes as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_width_follows_row_size_and_base() {
        let cases = [
            // (row_bytes, base, expected)
            (64, 0x1000, 16),
            (4096, 0x1000, 16),
            (12, 0x1000, 4),
            (100, 0x1000, 4),
            (24, 0x1000, 8),
            (64, 0x1004, 4),
            (64, 0x1008, 8),
            (6, 0x1000, 2),
            (7, 0x1000, 1),
            (64, 0x1001, 1),
        ];
        for (rb, base, want) in cases {
            assert_eq!(vector_bytes(rb, base), want, "row {rb} base {base:#x}");
        }
    }

    #[test]
    fn threads_and_rows_per_warp() {
        let cases = [
            // (row_bytes, threads_per_row, rows_per_warp)
            (4, 1, 32),
            (16, 1, 32),
            (64, 4, 8),
            (100, 32, 1), // 25 words of 4 bytes round up to 32 lanes.
            (12, 4, 8),   // 3 words of 4 bytes.
            (128, 8, 4),
            (256, 16, 2),
            (512, 32, 1),
            (4096, 32, 1),
        ];
        for (rb, tpr, rpw) in cases {
            let s = launch_shape(rb, 0x10000, true);
            assert_eq!(
                (s.threads_per_row, s.rows_per_warp),
                (tpr, rpw),
                "row {rb}: {s:?}"
            );
            assert_eq!(s.threads_per_row * s.rows_per_warp, WARP);
        }
    }

    #[test]
    fn alignment_applies_only_to_long_rows_when_asked() {
        assert!(!launch_shape(128, 0, true).align_lines);
        assert!(launch_shape(256, 0, true).align_lines);
        assert!(!launch_shape(256, 0, false).align_lines);
    }

    #[test]
    fn shift_counts_words_below_the_line() {
        assert_eq!(align_shift_words(0x1000, 16), 0);
        assert_eq!(align_shift_words(0x1000 + 48, 16), 3);
        assert_eq!(align_shift_words(0x1000 + 124, 4), 31);
        assert_eq!(align_shift_words(0x1000 + 128 + 8, 8), 1);
    }
}
