//! An independent reference packer for the tests, and the property tests that use it.
//!
//! The reference walks a [`Recipe`]'s type map straight from the constructor definitions of
//! MPI-3.1 §4.1 (vector as nested loops, subarray and darray element by element, with the
//! darray ownership rules of §4.1.4), with no IR lowering and no layout, and yields the
//! `(offset, length)` pieces in type-map order. It uses only the extents of the old types,
//! which the bounds tables of `ir.rs` and `array.rs` pin down separately.
//!
//! Not done yet: nothing known.

use proptest::prelude::*;

use crate::array::{Darg, Distribution, Order};
use crate::pack::Mode;
use crate::testing::{Recipe, Rng, random_type, random_type_unrestricted};

/// A recipe node with its extent, computed once.
struct Node<'a> {
    recipe: &'a Recipe,
    extent: isize,
    /// Whether the type map has no data, so the walk can skip it.
    empty: bool,
    kids: Vec<Node<'a>>,
}

fn annotate(r: &Recipe) -> Node<'_> {
    let kids = match r {
        Recipe::Named { .. } => Vec::new(),
        Recipe::Contiguous { old, .. }
        | Recipe::Vector { old, .. }
        | Recipe::HVector { old, .. }
        | Recipe::Indexed { old, .. }
        | Recipe::HIndexed { old, .. }
        | Recipe::IndexedBlock { old, .. }
        | Recipe::HIndexedBlock { old, .. }
        | Recipe::Subarray { old, .. }
        | Recipe::Darray { old, .. }
        | Recipe::Resized { old, .. }
        | Recipe::Dup { old } => vec![annotate(old)],
        Recipe::Struct { types, .. } => types.iter().map(annotate).collect(),
    };
    let t = r.build();
    Node {
        recipe: r,
        extent: t.extent(),
        empty: t.size() == 0,
        kids,
    }
}

/// Appends `(offset, len)`, merging with the previous piece when it continues it.
fn push(out: &mut Vec<(isize, usize)>, offset: isize, len: usize) {
    if len == 0 {
        return;
    }
    if let Some(last) = out.last_mut() {
        if last.0 + last.1 as isize == offset {
            last.1 += len;
            return;
        }
    }
    out.push((offset, len));
}

/// The memory order of a multi-index box: `(dimension, count)` from slowest to fastest.
fn slowest_first(n: usize, order: Order) -> Vec<usize> {
    match order {
        Order::C => (0..n).collect(),
        Order::Fortran => (0..n).rev().collect(),
    }
}

/// Calls `f` with every multi-index of `dims`, in memory order of `order`.
fn for_each_index(dims: &[usize], order: Order, mut f: impl FnMut(&[usize])) {
    if dims.contains(&0) {
        return;
    }
    let seq = slowest_first(dims.len(), order);
    let mut idx = vec![0usize; dims.len()];
    loop {
        f(&idx);
        let mut k = seq.len();
        loop {
            if k == 0 {
                return;
            }
            k -= 1;
            let d = seq[k];
            idx[d] += 1;
            if idx[d] < dims[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// Linear element index of `idx` in an array of `sizes`, stored in `order`.
fn linear(idx: &[usize], sizes: &[usize], order: Order) -> isize {
    let mut at = 0isize;
    for &d in &slowest_first(sizes.len(), order) {
        at = at * sizes[d] as isize + idx[d] as isize;
    }
    at
}

fn walk(n: &Node<'_>, base: isize, out: &mut Vec<(isize, usize)>) {
    if n.empty {
        return;
    }
    let old = n.kids.first();
    let ext = old.map(|o| o.extent).unwrap_or(0);
    match n.recipe {
        Recipe::Named { size } => push(out, base, *size),
        Recipe::Contiguous { count, .. } => {
            for i in 0..*count {
                walk(&n.kids[0], base + i as isize * ext, out);
            }
        }
        Recipe::Vector {
            count,
            blocklen,
            stride,
            ..
        } => {
            for i in 0..*count as isize {
                for j in 0..*blocklen as isize {
                    walk(&n.kids[0], base + (i * stride + j) * ext, out);
                }
            }
        }
        Recipe::HVector {
            count,
            blocklen,
            stride,
            ..
        } => {
            for i in 0..*count as isize {
                for j in 0..*blocklen as isize {
                    walk(&n.kids[0], base + i * stride + j * ext, out);
                }
            }
        }
        Recipe::Indexed {
            blocklens, displs, ..
        } => {
            for (&bl, &d) in blocklens.iter().zip(displs) {
                for j in 0..bl as isize {
                    walk(&n.kids[0], base + (d + j) * ext, out);
                }
            }
        }
        Recipe::HIndexed {
            blocklens, displs, ..
        } => {
            for (&bl, &d) in blocklens.iter().zip(displs) {
                for j in 0..bl as isize {
                    walk(&n.kids[0], base + d + j * ext, out);
                }
            }
        }
        Recipe::IndexedBlock {
            blocklen, displs, ..
        } => {
            for &d in displs {
                for j in 0..*blocklen as isize {
                    walk(&n.kids[0], base + (d + j) * ext, out);
                }
            }
        }
        Recipe::HIndexedBlock {
            blocklen, displs, ..
        } => {
            for &d in displs {
                for j in 0..*blocklen as isize {
                    walk(&n.kids[0], base + d + j * ext, out);
                }
            }
        }
        Recipe::Struct {
            blocklens, displs, ..
        } => {
            for ((&bl, &d), kid) in blocklens.iter().zip(displs).zip(&n.kids) {
                for j in 0..bl as isize {
                    walk(kid, base + d + j * kid.extent, out);
                }
            }
        }
        Recipe::Subarray {
            sizes,
            subsizes,
            starts,
            order,
            ..
        } => {
            for_each_index(subsizes, *order, |idx| {
                let at: Vec<usize> = idx.iter().zip(starts).map(|(i, s)| i + s).collect();
                walk(&n.kids[0], base + linear(&at, sizes, *order) * ext, out);
            });
        }
        Recipe::Darray {
            size,
            rank,
            gsizes,
            distribs,
            dargs,
            psizes,
            order,
            ..
        } => {
            // Grid coordinates: processes are numbered row-major (MPI-3.1 §4.1.4).
            let mut coords = vec![0usize; gsizes.len()];
            let mut r = *rank;
            let mut procs = *size;
            for d in 0..gsizes.len() {
                procs /= psizes[d];
                coords[d] = r / procs;
                r %= procs;
            }
            let owns = |d: usize, g: usize| match distribs[d] {
                Distribution::None => true,
                Distribution::Block => {
                    let b = match dargs[d] {
                        Darg::Default => gsizes[d].div_ceil(psizes[d]),
                        Darg::Value(v) => v,
                    };
                    g / b == coords[d]
                }
                Distribution::Cyclic => {
                    let b = match dargs[d] {
                        Darg::Default => 1,
                        Darg::Value(v) => v,
                    };
                    (g / b) % psizes[d] == coords[d]
                }
            };
            for_each_index(gsizes, *order, |idx| {
                if idx.iter().enumerate().all(|(d, &g)| owns(d, g)) {
                    walk(&n.kids[0], base + linear(idx, gsizes, *order) * ext, out);
                }
            });
        }
        Recipe::Resized { .. } | Recipe::Dup { .. } => walk(&n.kids[0], base, out),
    }
}

/// The pieces of `count` elements of the recipe's type, in type-map order.
pub(crate) fn pieces(r: &Recipe, count: usize) -> Vec<(isize, usize)> {
    let root = annotate(r);
    let mut out = Vec::new();
    for e in 0..count as isize {
        walk(&root, e * root.extent, &mut out);
    }
    out
}

/// A case: a random type, a count, a source buffer and where its origin is.
struct Case {
    recipe: Recipe,
    committed: crate::Committed,
    count: usize,
    pieces: Vec<(isize, usize)>,
    src: Vec<u8>,
    origin: usize,
    seed: u64,
}

/// Bytes left around the footprint, to catch stray writes.
const SLACK: usize = 16;
const POISON: u8 = 0xA5;

fn case(seed: u64, depth: usize, count_pick: usize) -> Case {
    // Odd seeds also cover the patterns kept out of comparisons with Open MPI.
    let (ty, recipe) = if seed % 2 == 0 {
        random_type(seed, depth)
    } else {
        random_type_unrestricted(seed, depth)
    };
    let want = [0usize, 1, 1, 2, 3, 17][count_pick % 6];
    let limit = (1usize << 20) / ty.size().max(1);
    case_for(recipe, want.min(limit.max(1)), seed)
}

fn case_for(recipe: Recipe, count: usize, seed: u64) -> Case {
    let pieces = pieces(&recipe, count);
    // The buffer spans the origin and every piece, with slack on both sides.
    let lo = pieces.iter().map(|p| p.0).min().unwrap_or(0).min(0);
    let hi = pieces
        .iter()
        .map(|p| p.0 + p.1 as isize)
        .max()
        .unwrap_or(0)
        .max(0);
    let origin = (SLACK as isize - lo) as usize;
    let len = (hi - lo) as usize + 2 * SLACK;
    let mut rng = Rng::new(seed ^ 0x5eed);
    let src: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
    Case {
        committed: recipe.build().commit(),
        recipe,
        count,
        pieces,
        src,
        origin,
        seed,
    }
}

fn reference_pack(c: &Case) -> Vec<u8> {
    let mut out = Vec::new();
    for &(off, len) in &c.pieces {
        let at = (c.origin as isize + off) as usize;
        out.extend_from_slice(&c.src[at..at + len]);
    }
    out
}

fn check_pack(c: &Case) -> Result<(), TestCaseError> {
    let ty = c.committed.ty();
    let why = || {
        format!(
            "recipe {}\nlayout {}\n{}",
            c.recipe,
            c.committed.layout(),
            ty
        )
    };
    prop_assert_eq!(c.committed.layout().packed_bytes(), ty.size(), "{}", why());
    let want = reference_pack(c);
    prop_assert_eq!(
        want.len(),
        c.committed.packed_size(c.count).unwrap(),
        "{}",
        why()
    );
    // The committed footprint is exactly the span of the reference pieces.
    let fp = c.committed.footprint(c.count).unwrap();
    let span = (!c.pieces.is_empty()).then(|| {
        (
            c.pieces.iter().map(|p| p.0).min().unwrap(),
            c.pieces.iter().map(|p| p.0 + p.1 as isize).max().unwrap(),
        )
    });
    prop_assert_eq!(fp, span, "{}", why());
    let mut out = vec![0u8; want.len()];
    let n = c
        .committed
        .pack(&c.src, c.origin, c.count, &mut out)
        .map_err(|e| TestCaseError::fail(format!("{e}\n{}", why())))?;
    prop_assert_eq!(n, want.len());
    prop_assert!(out == want, "packed bytes differ\n{}", why());
    // Again with every long block written by streaming stores.
    out.fill(POISON);
    c.committed
        .pack_range_with(&c.src, c.origin, c.count, 0, &mut out, Mode::auto(0))
        .map_err(|e| TestCaseError::fail(format!("{e}\n{}", why())))?;
    prop_assert!(out == want, "streamed packed bytes differ\n{}", why());
    Ok(())
}

fn check_unpack(c: &Case) -> Result<(), TestCaseError> {
    let why = || format!("recipe {}\nlayout {}", c.recipe, c.committed.layout());
    let packed = reference_pack(c);
    let mut covered = vec![false; c.src.len()];
    for &(off, len) in &c.pieces {
        let at = (c.origin as isize + off) as usize;
        covered[at..at + len].fill(true);
    }
    // With the default thresholds, then with every long block written by streaming stores.
    for threshold in [None, Some(0)] {
        let mut dst = vec![POISON; c.src.len()];
        match threshold {
            None => c.committed.unpack(&packed, &mut dst, c.origin, c.count),
            Some(t) => c.committed.unpack_range_with(
                &packed,
                &mut dst,
                c.origin,
                c.count,
                0,
                Mode::auto(t),
            ),
        }
        .map_err(|e| TestCaseError::fail(format!("{e}\n{}", why())))?;
        for i in 0..dst.len() {
            let want = if covered[i] { c.src[i] } else { POISON };
            prop_assert_eq!(
                dst[i],
                want,
                "byte {} (covered: {}, streaming from {:?})\n{}",
                i,
                covered[i],
                threshold,
                why()
            );
        }
    }
    Ok(())
}

fn check_ranges(c: &Case) -> Result<(), TestCaseError> {
    let why = || format!("recipe {}\nlayout {}", c.recipe, c.committed.layout());
    let total = c.committed.packed_size(c.count).unwrap();
    let mut full = vec![0u8; total];
    c.committed
        .pack(&c.src, c.origin, c.count, &mut full)
        .unwrap();
    let mut whole = vec![POISON; c.src.len()];
    c.committed
        .unpack(&full, &mut whole, c.origin, c.count)
        .unwrap();
    // Random cut points, including empty segments.
    let mut rng = Rng::new(c.seed ^ 0xc075);
    let mut cuts: Vec<usize> = (0..rng.below(6)).map(|_| rng.below(total + 1)).collect();
    cuts.extend([0, total]);
    cuts.sort_unstable();
    let mut joined = Vec::with_capacity(total);
    let mut pieces = vec![POISON; c.src.len()];
    for (i, w) in cuts.windows(2).enumerate() {
        let mut seg = vec![0u8; w[1] - w[0]];
        // Every other segment streams its long blocks.
        let threshold = if i % 2 == 0 { usize::MAX } else { 0 };
        c.committed
            .pack_range_with(
                &c.src,
                c.origin,
                c.count,
                w[0],
                &mut seg,
                Mode::auto(threshold),
            )
            .map_err(|e| TestCaseError::fail(format!("{e}\n{}", why())))?;
        c.committed
            .unpack_range_with(
                &seg,
                &mut pieces,
                c.origin,
                c.count,
                w[0],
                Mode::auto(threshold),
            )
            .map_err(|e| TestCaseError::fail(format!("{e}\n{}", why())))?;
        joined.extend_from_slice(&seg);
    }
    prop_assert!(
        joined == full,
        "segments {:?} differ from the full pack\n{}",
        cuts,
        why()
    );
    prop_assert!(pieces == whole, "segmented unpack differs\n{}", why());
    // The same range split over threads (the path of large calls), into 1 to 6 segments.
    let segments = 1 + rng.below(6);
    let (first, end) = (cuts[1.min(cuts.len() - 1)].min(total), total);
    let mut seg = vec![0u8; end - first];
    c.committed
        .pack_range_split(
            &c.src,
            c.origin,
            c.count,
            first,
            &mut seg,
            (split_pool(), segments),
        )
        .map_err(|e| TestCaseError::fail(format!("{e}\n{}", why())))?;
    prop_assert!(
        seg == full[first..end],
        "{} segments on threads differ\n{}",
        segments,
        why()
    );
    let (mut split, mut ranged) = (vec![POISON; c.src.len()], vec![POISON; c.src.len()]);
    c.committed
        .unpack_range_split(
            &seg,
            &mut split,
            c.origin,
            c.count,
            first,
            (split_pool(), segments),
        )
        .map_err(|e| TestCaseError::fail(format!("{e}\n{}", why())))?;
    c.committed
        .unpack_range(&seg, &mut ranged, c.origin, c.count, first)
        .map_err(|e| TestCaseError::fail(format!("{e}\n{}", why())))?;
    prop_assert!(
        split == ranged,
        "{} segments of unpack on threads differ\n{}",
        segments,
        why()
    );
    Ok(())
}

/// Three workers for the split-range checks, shared by every case.
fn split_pool() -> &'static crate::parallel::Pool {
    static POOL: std::sync::OnceLock<crate::parallel::Pool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        crate::parallel::Pool::new(3, std::time::Duration::from_micros(20))
            .expect("3 worker threads")
    })
}

/// `cases` cases, or `PROPTEST_CASES` when set (for longer soak runs).
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn check_all(c: &Case) -> Result<(), TestCaseError> {
    check_pack(c)?;
    check_unpack(c)?;
    check_ranges(c)
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn pack_matches_the_reference(seed in any::<u64>(), depth in 0usize..=4, count in 0usize..6) {
        check_pack(&case(seed, depth, count))?;
    }

    #[test]
    fn unpack_restores_exactly_the_covered_bytes(seed in any::<u64>(), depth in 0usize..=4, count in 0usize..6) {
        check_unpack(&case(seed, depth, count))?;
    }

    #[test]
    fn ranges_concatenate_to_the_full_pack(seed in any::<u64>(), depth in 0usize..=4, count in 0usize..6) {
        check_ranges(&case(seed, depth, count))?;
    }
}

/// A fixed sweep of seeds, so every run covers the same ground as well as new ground.
#[test]
fn fixed_seeds_match_the_reference() {
    for seed in 0..1000u64 {
        let depth = (seed % 5) as usize;
        let count = (seed / 5 % 6) as usize;
        if let Err(e) = check_all(&case(seed, depth, count)) {
            panic!("seed {seed} depth {depth} count {count}: {e}");
        }
    }
}

/// Outputs above the default streaming threshold, through the public API, so the thresholds'
/// own decision is exercised: long blocks of several alignments and a 2-level layout.
#[test]
fn outputs_above_the_stream_threshold_match_the_reference() {
    let unpack_from = crate::stream_thresholds().unpack;
    assert!(
        unpack_from <= 4 << 20,
        "a case below must stream: {unpack_from}"
    );
    for text in [
        "hvector(9000, 1, 1000, contiguous(600, named(1)))",
        "subarray([130,130,1000], [128,128,300], [1,1,37], C, named(1))",
        "hindexed([300,257], [0,700], contiguous(9000, named(1)))",
    ] {
        let r = Recipe::parse(text).unwrap();
        let c = case_for(r, 1, 11);
        assert!(reference_pack(&c).len() >= unpack_from, "{text}");
        if let Err(e) = check_all(&c) {
            panic!("{text}: {e}");
        }
    }
}

#[test]
fn hand_picked_types_match_the_reference() {
    for text in [
        // The signature int:3 + double:2.
        "struct([3,2], [0,16], [named(4), named(8)])",
        "contiguous(65536, named(1))",
        "vector(1075, 1, -2, named(2))",
        "hindexed_block(1, [4,0,8], vector(17, 2, 3, named(4)))",
        "resized(-6, 5, hvector(3, 2, -7, named(2)))",
        "darray(6, 4, [5,7,3], [cyclic,block,none], [2,dflt,dflt], [3,2,1], F, named(8))",
        "subarray([4,5,6], [2,3,4], [1,1,2], C, struct([1,1], [0,4], [named(4), named(1)]))",
        // Transposed grids (columns resized to one element), walked in tiles of columns.
        "resized(0, 16, vector(64, 1, 64, contiguous(2, named(8))))",
        "resized(0, 8, vector(40, 1, 40, named(8)))",
        "resized(0, 12, vector(33, 1, 50, named(12)))",
        "resized(0, 4, vector(9, 1, -20, named(4)))",
        // Odd block lengths of application faces: 40 (NAS LU), 48 (MILC), 12 (WRF) bytes.
        "vector(9, 5, 60, named(8))",
        "hvector(4, 1, 700, vector(3, 1, 24, contiguous(6, named(8))))",
        "hvector(3, 1, 400, vector(5, 3, 7, named(4)))",
        // Block lists within one copier class (8 to 16 bytes, 64 to 128, 64 to 255, 256
        // and more), and spanning several.
        "hindexed([3,2,4], [0,20,48], named(4))",
        "hindexed([17,30], [0,100], named(4))",
        "hindexed([20,50], [0,100], named(4))",
        "hindexed([70,80], [0,300], named(4))",
        "hindexed([1,20,70], [0,8,100], named(4))",
        // Narrow blocks at small strides (the SIMD kernels), long enough runs for them.
        "vector(300, 1, 2, named(4))",
        "vector(257, 1, 3, named(4))",
        "hvector(130, 1, 16, named(8))",
        "hvector(500, 1, 3, named(1))",
        "hvector(3, 1, 5000, hvector(333, 1, 6, named(2)))",
        "hvector(100, 1, 8, named(1))",
        // Ten levels with a count: more than a plan holds inline.
        "hvector(2, 1, 1361, hvector(2, 1, 673, hvector(2, 1, 331, hvector(2, 1, 163, \
         hvector(2, 1, 79, hvector(2, 1, 37, hvector(2, 1, 17, hvector(2, 1, 7, \
         vector(2, 1, 3, named(1))))))))))",
    ] {
        let r = Recipe::parse(text).unwrap();
        for count in [0usize, 1, 2, 17] {
            if let Err(e) = check_all(&case_for(r.clone(), count, 7)) {
                panic!("{text} x{count}: {e}");
            }
        }
    }
}
