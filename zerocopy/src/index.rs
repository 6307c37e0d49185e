//! Index types the gathers accept ([`GatherIndex`]: `i32`, `i64`), host-side validation, and
//! the optional sort of a batch with the permutation back to output positions.

use ferry_gpu::{DeviceRepr, Plain, ValidAsZeroBits};
use rayon::prelude::*;

use crate::error::{Result, ZeroCopyError};

mod sealed {
    pub trait Sealed {}
    impl Sealed for i32 {}
    impl Sealed for i64 {}
}

/// An integer type of row indices: `i32` or `i64`.
pub trait GatherIndex:
    Plain + DeviceRepr + ValidAsZeroBits + Ord + Default + sealed::Sealed
{
    /// The CUDA C type of the same width.
    const C_TYPE: &'static str;
    /// The index as `i64`.
    fn to_i64(self) -> i64;
}

impl GatherIndex for i32 {
    const C_TYPE: &'static str = "int";
    fn to_i64(self) -> i64 {
        self as i64
    }
}

impl GatherIndex for i64 {
    const C_TYPE: &'static str = "long long";
    fn to_i64(self) -> i64 {
        self
    }
}

/// Checks every index against `rows`; the error names the first bad one and its position.
pub fn validate_indices<I: GatherIndex>(indices: &[I], rows: usize) -> Result<()> {
    let bad = indices
        .par_iter()
        .position_first(|&i| i.to_i64() < 0 || i.to_i64() as u64 >= rows as u64);
    match bad {
        None => Ok(()),
        Some(position) => Err(ZeroCopyError::IndexOutOfRange {
            position,
            index: indices[position].to_i64(),
            rows,
        }),
    }
}

/// Sorts `indices` ascending (stable, so duplicates keep their order) and returns the sorted
/// indices with `positions`, where `positions[k]` is the batch position `sorted[k]` came from.
pub fn sort_with_positions<I: GatherIndex>(indices: &[I]) -> (Vec<I>, Vec<i64>) {
    let mut pairs: Vec<(I, i64)> = indices
        .iter()
        .enumerate()
        .map(|(p, &i)| (i, p as i64))
        .collect();
    pairs.par_sort();
    pairs.into_iter().unzip()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_first_bad_index() {
        assert!(validate_indices(&[0i32, 3, 9], 10).is_ok());
        assert!(validate_indices::<i64>(&[], 0).is_ok());
        let e = validate_indices(&[1i64, 10, -1], 10).unwrap_err();
        assert_eq!(
            e,
            ZeroCopyError::IndexOutOfRange {
                position: 1,
                index: 10,
                rows: 10
            }
        );
        let e = validate_indices(&[-5i32], 10).unwrap_err();
        assert!(e.to_string().contains("index -5 at position 0"), "{e}");
    }

    #[test]
    fn sort_keeps_a_permutation_back_to_positions() {
        let idx = [5i32, 1, 5, 0, 3];
        let (sorted, pos) = sort_with_positions(&idx);
        assert_eq!(sorted, [0, 1, 3, 5, 5]);
        assert_eq!(pos, [3, 1, 4, 0, 2]);
        for (k, &p) in pos.iter().enumerate() {
            assert_eq!(idx[p as usize], sorted[k]);
        }
        let (s, p) = sort_with_positions::<i64>(&[]);
        assert!(s.is_empty() && p.is_empty());
    }
}
