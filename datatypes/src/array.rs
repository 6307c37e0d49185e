//! `subarray` and `darray`: array-shaped constructors, lowered to hvector/hindexed + resized.
//!
//! Both describe a part of an n-dimensional array of `old` elements stored in C (row-major)
//! or Fortran (column-major) order. Their type maps visit the selected elements in memory
//! order of the full array, and both are resized to lb 0 and the extent of the full array
//! (MPI-3.1 §4.1.3, §4.1.4), so consecutive elements of a count are consecutive arrays.
//!
//! Not done yet: nothing known.

use crate::error::TypeError;
use crate::ir::Type;

/// Storage order of a multi-dimensional array (`MPI_ORDER_C`, `MPI_ORDER_FORTRAN`,
/// MPI-3.1 §4.1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Order {
    /// Row-major: the last dimension varies fastest.
    C,
    /// Column-major: the first dimension varies fastest.
    Fortran,
}

/// How one dimension of a darray is split over processes (MPI-3.1 §4.1.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Distribution {
    /// `MPI_DISTRIBUTE_BLOCK`: one contiguous block per process.
    Block,
    /// `MPI_DISTRIBUTE_CYCLIC`: blocks of `darg` elements dealt round-robin.
    Cyclic,
    /// `MPI_DISTRIBUTE_NONE`: the dimension is not distributed; every process has all of it,
    /// and its `psizes` entry must be 1 (as MPICH requires; Open MPI 4.1 treats a larger one
    /// as a block distribution in C order only).
    None,
}

/// The distribution argument of one darray dimension (MPI-3.1 §4.1.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Darg {
    /// `MPI_DISTRIBUTE_DFLT_DARG`: `ceil(gsize / psize)` for block, 1 for cyclic.
    Default,
    /// An explicit block size (positive).
    Value(usize),
}

/// Row strides in bytes of each dimension: the distance between consecutive indices.
fn row_strides(
    c: &'static str,
    sizes: &[usize],
    order: Order,
    extent: isize,
) -> Result<Vec<isize>, TypeError> {
    let n = sizes.len();
    let mut strides = vec![0isize; n];
    let mut s = extent as i128;
    let dims: Vec<usize> = match order {
        Order::C => (0..n).rev().collect(),
        Order::Fortran => (0..n).collect(),
    };
    for &d in &dims {
        strides[d] = isize::try_from(s).map_err(|_| TypeError::Overflow { constructor: c })?;
        s *= sizes[d] as i128;
    }
    isize::try_from(s).map_err(|_| TypeError::Overflow { constructor: c })?;
    Ok(strides)
}

/// The dimensions from fastest-varying to slowest.
fn fastest_first(n: usize, order: Order) -> Vec<usize> {
    match order {
        Order::C => (0..n).rev().collect(),
        Order::Fortran => (0..n).collect(),
    }
}

impl Type {
    /// `MPI_Type_create_subarray` (MPI-3.1 §4.1.3): the `subsizes` box starting at `starts`
    /// inside an array of `sizes` elements of `old`.
    ///
    /// Lowering (the standard's definition):
    /// 1. The fastest dimension is a contiguous run of `subsizes[d]` elements.
    /// 2. Each slower dimension is an hvector of count `subsizes[d]`, blocklength 1, and
    ///    stride one row of that dimension in bytes.
    /// 3. An hindexed with one block moves it to the byte offset of `starts`.
    /// 4. A resize sets lb 0 and the extent of the whole array.
    ///
    /// Sizes and subsizes must be positive and `starts[d] + subsizes[d] <= sizes[d]`.
    pub fn subarray(
        sizes: &[usize],
        subsizes: &[usize],
        starts: &[usize],
        order: Order,
        old: &Type,
    ) -> Result<Type, TypeError> {
        const C: &str = "MPI_Type_create_subarray";
        TypeError::check_len(C, "sizes", sizes.len(), "subsizes", subsizes.len())?;
        TypeError::check_len(C, "sizes", sizes.len(), "starts", starts.len())?;
        if sizes.is_empty() {
            return Err(TypeError::invalid(C, "ndims must be at least 1"));
        }
        for d in 0..sizes.len() {
            if sizes[d] == 0 {
                return Err(TypeError::invalid(
                    C,
                    format!("sizes[{d}] is 0; sizes must be positive"),
                ));
            }
            if subsizes[d] == 0 {
                return Err(TypeError::invalid(
                    C,
                    format!("subsizes[{d}] is 0; subsizes must be positive"),
                ));
            }
            if subsizes[d] > sizes[d] {
                return Err(TypeError::invalid(
                    C,
                    format!(
                        "subsizes[{d}] = {} exceeds sizes[{d}] = {}",
                        subsizes[d], sizes[d]
                    ),
                ));
            }
            if starts[d] > sizes[d] - subsizes[d] {
                return Err(TypeError::invalid(
                    C,
                    format!(
                        "starts[{d}] + subsizes[{d}] = {} exceeds sizes[{d}] = {}",
                        starts[d] as u128 + subsizes[d] as u128,
                        sizes[d]
                    ),
                ));
            }
        }
        let ext = old.extent();
        let strides = row_strides(C, sizes, order, ext)?;
        let dims = fastest_first(sizes.len(), order);
        // Steps 1 and 2.
        let mut t = Type::contiguous(subsizes[dims[0]], old)?;
        for &d in &dims[1..] {
            t = Type::hvector(subsizes[d], 1, strides[d], &t)?;
        }
        // Step 3.
        let mut offset: i128 = 0;
        for d in 0..sizes.len() {
            offset += starts[d] as i128 * strides[d] as i128;
        }
        let offset = isize::try_from(offset).map_err(|_| TypeError::Overflow { constructor: C })?;
        let t = Type::hindexed(&[1], &[offset], &t)?;
        // Step 4.
        let full = whole_array(C, sizes, ext)?;
        Type::resized(0, full, &t)
    }

    /// `MPI_Type_create_darray` (MPI-3.1 §4.1.4): the part of a `gsizes` array of `old` that
    /// process `rank` of `size` owns, for processes in a `psizes` grid numbered in row-major
    /// order, with each dimension distributed as `distribs[d]` with argument `dargs[d]`.
    ///
    /// Lowering (equivalent to the standard's reference definition):
    /// 1. Find this process's grid coordinates (row-major in `psizes`, whatever `order`).
    /// 2. For each dimension, fastest first, list the runs of global indices it owns: one
    ///    block for block distribution, every `psize`-th block of `darg` for cyclic (the last
    ///    may be short), all of it for none.
    /// 3. Wrap the previous (faster) dimensions' type, resized to one row of this dimension,
    ///    in an hindexed with those runs, displacements in rows.
    /// 4. Resize the result to lb 0 and the extent of the whole array.
    // The arguments are MPI_Type_create_darray's, in its order.
    #[allow(clippy::too_many_arguments)]
    pub fn darray(
        size: usize,
        rank: usize,
        gsizes: &[usize],
        distribs: &[Distribution],
        dargs: &[Darg],
        psizes: &[usize],
        order: Order,
        old: &Type,
    ) -> Result<Type, TypeError> {
        const C: &str = "MPI_Type_create_darray";
        let n = gsizes.len();
        TypeError::check_len(C, "gsizes", n, "distribs", distribs.len())?;
        TypeError::check_len(C, "gsizes", n, "dargs", dargs.len())?;
        TypeError::check_len(C, "gsizes", n, "psizes", psizes.len())?;
        if n == 0 {
            return Err(TypeError::invalid(C, "ndims must be at least 1"));
        }
        if size == 0 {
            return Err(TypeError::invalid(C, "size must be positive"));
        }
        if rank >= size {
            return Err(TypeError::invalid(
                C,
                format!("rank {rank} is out of range for a group of size {size}"),
            ));
        }
        let mut procs: u128 = 1;
        for d in 0..n {
            if gsizes[d] == 0 {
                return Err(TypeError::invalid(
                    C,
                    format!("gsizes[{d}] is 0; gsizes must be positive"),
                ));
            }
            if psizes[d] == 0 {
                return Err(TypeError::invalid(
                    C,
                    format!("psizes[{d}] is 0; psizes must be positive"),
                ));
            }
            procs *= psizes[d] as u128;
            match (distribs[d], dargs[d]) {
                (Distribution::None, _) if psizes[d] != 1 => {
                    return Err(TypeError::invalid(
                        C,
                        format!(
                            "dimension {d} is not distributed, so psizes[{d}] must be 1, got {}",
                            psizes[d]
                        ),
                    ));
                }
                (_, Darg::Value(0)) => {
                    return Err(TypeError::invalid(
                        C,
                        format!("dargs[{d}] is 0; dargs must be positive"),
                    ));
                }
                (Distribution::Block, Darg::Value(b))
                    if (b as u128) * (psizes[d] as u128) < gsizes[d] as u128 =>
                {
                    return Err(TypeError::invalid(
                        C,
                        format!(
                            "block distribution needs dargs[{d}] * psizes[{d}] >= gsizes[{d}], got {b} * {} < {}",
                            psizes[d], gsizes[d]
                        ),
                    ));
                }
                _ => {}
            }
        }
        if procs != size as u128 {
            return Err(TypeError::invalid(
                C,
                format!("the product of psizes is {procs}, not the group size {size}"),
            ));
        }
        // Step 1.
        let mut coords = vec![0usize; n];
        let (mut r, mut p) = (rank, size);
        for d in 0..n {
            p /= psizes[d];
            coords[d] = r / p;
            r %= p;
        }
        let ext = old.extent();
        let rows = row_strides(C, gsizes, order, ext)?;
        let mut t = old.clone();
        for &d in &fastest_first(n, order) {
            // Step 2.
            let runs = owned_runs(gsizes[d], distribs[d], dargs[d], psizes[d], coords[d]);
            // Step 3.
            let row = Type::resized(0, rows[d], &t)?;
            let lens: Vec<usize> = runs.iter().map(|&(_, len)| len).collect();
            let displs = runs
                .iter()
                .map(|&(start, _)| {
                    isize::try_from(start as i128 * rows[d] as i128)
                        .map_err(|_| TypeError::Overflow { constructor: C })
                })
                .collect::<Result<Vec<_>, _>>()?;
            t = Type::hindexed(&lens, &displs, &row)?;
        }
        // Step 4.
        let full = whole_array(C, gsizes, ext)?;
        Type::resized(0, full, &t)
    }
}

/// `prod(sizes) * extent`, the extent of the whole array.
fn whole_array(c: &'static str, sizes: &[usize], extent: isize) -> Result<isize, TypeError> {
    let mut full = extent as i128;
    for &s in sizes {
        full = full
            .checked_mul(s as i128)
            .ok_or(TypeError::Overflow { constructor: c })?;
    }
    isize::try_from(full).map_err(|_| TypeError::Overflow { constructor: c })
}

/// The runs `(first index, length)` of one darray dimension that coordinate `coord` owns,
/// in increasing order (MPI-3.1 §4.1.4).
fn owned_runs(
    gsize: usize,
    distrib: Distribution,
    darg: Darg,
    psize: usize,
    coord: usize,
) -> Vec<(usize, usize)> {
    match distrib {
        Distribution::None => vec![(0, gsize)],
        Distribution::Block => {
            let b = match darg {
                Darg::Default => gsize.div_ceil(psize),
                Darg::Value(b) => b,
            };
            let start = b.saturating_mul(coord);
            if start >= gsize {
                Vec::new()
            } else {
                vec![(start, b.min(gsize - start))]
            }
        }
        Distribution::Cyclic => {
            let b = match darg {
                Darg::Default => 1,
                Darg::Value(b) => b,
            };
            let mut runs = Vec::new();
            let mut start = b.saturating_mul(coord);
            let step = b.saturating_mul(psize);
            while start < gsize {
                runs.push((start, b.min(gsize - start)));
                start = start.saturating_add(step);
            }
            runs
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(t: &Type) -> (usize, isize, isize, isize, isize) {
        (t.size(), t.lb(), t.extent(), t.true_lb(), t.true_extent())
    }

    // Expected values checked against Open MPI 4.1.4.

    #[test]
    fn subarray_c_and_fortran() {
        let int = Type::named(4);
        let c = Type::subarray(&[4, 5, 6], &[2, 3, 4], &[1, 1, 2], Order::C, &int).unwrap();
        assert_eq!(b(&c), (96, 0, 480, 152, 184));
        let f = Type::subarray(&[4, 5, 6], &[2, 3, 4], &[1, 1, 2], Order::Fortran, &int).unwrap();
        assert_eq!(b(&f), (96, 0, 480, 180, 280));
        let r = Type::resized(-4, 12, &int).unwrap();
        let cr = Type::subarray(&[4, 5, 6], &[2, 3, 4], &[1, 1, 2], Order::C, &r).unwrap();
        assert_eq!(b(&cr), (96, 0, 1440, 456, 544));
        let one = Type::subarray(&[10], &[3], &[2], Order::C, &int).unwrap();
        assert_eq!(b(&one), (12, 0, 40, 8, 12));
    }

    #[test]
    fn subarray_rejects_bad_boxes() {
        let int = Type::named(4);
        let err = Type::subarray(&[4, 5], &[2, 6], &[0, 0], Order::C, &int).unwrap_err();
        assert!(
            err.to_string()
                .contains("subsizes[1] = 6 exceeds sizes[1] = 5"),
            "{err}"
        );
        let err = Type::subarray(&[4, 5], &[2, 3], &[3, 0], Order::C, &int).unwrap_err();
        assert!(
            err.to_string().contains("starts[0] + subsizes[0] = 5"),
            "{err}"
        );
        assert!(Type::subarray(&[4, 5], &[2], &[0, 0], Order::C, &int).is_err());
        assert!(Type::subarray(&[], &[], &[], Order::C, &int).is_err());
        assert!(Type::subarray(&[4], &[0], &[0], Order::C, &int).is_err());
    }

    #[test]
    fn darray_block_and_cyclic() {
        let int = Type::named(4);
        let dflt = [Darg::Default];
        let block = |p: usize, r: usize| {
            b(&Type::darray(
                p,
                r,
                &[10],
                &[Distribution::Block],
                &dflt,
                &[p],
                Order::C,
                &int,
            )
            .unwrap())
        };
        assert_eq!(block(2, 0), (20, 0, 40, 0, 20));
        assert_eq!(block(2, 1), (20, 0, 40, 20, 20));
        assert_eq!(block(3, 2), (8, 0, 40, 32, 8));
        let cyc = |r: usize| {
            b(&Type::darray(
                3,
                r,
                &[10],
                &[Distribution::Cyclic],
                &[Darg::Value(2)],
                &[3],
                Order::C,
                &int,
            )
            .unwrap())
        };
        assert_eq!(cyc(0), (16, 0, 40, 0, 32));
        assert_eq!(cyc(1), (16, 0, 40, 8, 32));
        assert_eq!(cyc(2), (8, 0, 40, 16, 8));
    }

    #[test]
    fn darray_two_dimensions() {
        let int = Type::named(4);
        let d = [Distribution::Block, Distribution::Cyclic];
        let a = [Darg::Default, Darg::Value(2)];
        let expect_c = [
            (48, 0, 140, 0, 80),
            (36, 0, 140, 8, 76),
            (32, 0, 140, 84, 52),
            (24, 0, 140, 92, 48),
        ];
        let expect_f = [
            (48, 0, 140, 0, 112),
            (36, 0, 140, 40, 92),
            (32, 0, 140, 12, 108),
            (24, 0, 140, 52, 88),
        ];
        for r in 0..4 {
            let c = Type::darray(4, r, &[5, 7], &d, &a, &[2, 2], Order::C, &int).unwrap();
            assert_eq!(b(&c), expect_c[r], "C rank {r}");
            let f = Type::darray(4, r, &[5, 7], &d, &a, &[2, 2], Order::Fortran, &int).unwrap();
            assert_eq!(b(&f), expect_f[r], "Fortran rank {r}");
        }
        let r = Type::resized(-4, 12, &int).unwrap();
        let t = Type::darray(
            2,
            1,
            &[10],
            &[Distribution::Block],
            &[Darg::Default],
            &[2],
            Order::C,
            &r,
        )
        .unwrap();
        assert_eq!(b(&t), (20, 0, 120, 60, 52));
    }

    #[test]
    fn darray_rejects_bad_arguments() {
        let int = Type::named(4);
        let one = [Distribution::Block];
        let dflt = [Darg::Default];
        let err = Type::darray(2, 2, &[10], &one, &dflt, &[2], Order::C, &int).unwrap_err();
        assert!(err.to_string().contains("rank 2 is out of range"), "{err}");
        assert!(Type::darray(4, 0, &[10], &one, &dflt, &[2], Order::C, &int).is_err());
        assert!(Type::darray(2, 0, &[10], &one, &[Darg::Value(4)], &[2], Order::C, &int).is_err());
        assert!(Type::darray(2, 0, &[10, 3], &one, &dflt, &[2], Order::C, &int).is_err());
        let none = [Distribution::None];
        let err = Type::darray(2, 0, &[10], &none, &dflt, &[2], Order::C, &int).unwrap_err();
        assert!(err.to_string().contains("psizes[0] must be 1"), "{err}");
    }

    #[test]
    fn owned_runs_follow_the_standard() {
        assert_eq!(
            owned_runs(10, Distribution::Cyclic, Darg::Value(2), 3, 0),
            vec![(0, 2), (6, 2)]
        );
        assert_eq!(
            owned_runs(10, Distribution::Cyclic, Darg::Value(3), 3, 0),
            vec![(0, 3), (9, 1)]
        );
        assert_eq!(
            owned_runs(10, Distribution::Block, Darg::Default, 4, 3),
            vec![(9, 1)]
        );
        assert_eq!(
            owned_runs(10, Distribution::Block, Darg::Value(5), 4, 3),
            vec![]
        );
        assert_eq!(
            owned_runs(7, Distribution::None, Darg::Default, 1, 0),
            vec![(0, 7)]
        );
    }
}
