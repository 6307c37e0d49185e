//! The canonical layout of a datatype: a block list repeated over nested strided levels.
//!
//! A [`Layout`] is what the pack engines run. `blocks` are (offset, length) byte runs in
//! type-map order; `levels` (innermost first) repeat the whole block list: the bytes of
//! repetition `(i_0, ..., i_{n-1})` are the blocks shifted by `sum i_j * stride_j`, and
//! repetitions are visited with `i_0` fastest. With one block this is TEMPI's `StridedBlock`
//! (start, block length, counts and strides).
//!
//! Lowering walks the IR: a named type is one block; contig and hvector push levels;
//! (block-)hindexed and struct concatenate their entries' layouts, as one more level when
//! the entries are equal and evenly spaced, otherwise by materialising every entry's levels
//! into blocks. Canonicalisation then applies, until nothing changes:
//! (a) drop zero-length blocks and count-1 levels; a zero-count level empties the layout;
//! (b) coalesce blocks adjacent in memory and in order;
//! (c) k > 1 equal-length blocks at a constant stride become one block and an innermost level;
//! (d) fold a dense innermost level into the single block (stride == block length);
//! (e) merge adjacent levels when `outer.stride == inner.count * inner.stride`.
//!
//! Deviation from TEMPI: TEMPI sorts levels by stride before merging. ferry never reorders
//! levels or blocks, because the packed byte order must be MPI's type-map order
//! (MPI-3.1 §4.1, §4.2): ferry's packed bytes are compared byte for byte with Open MPI's
//! `MPI_Pack`, and a receiver may unpack them with MPI itself.
//!
//! Not done yet: a layout kind for irregular nests (an hindexed of large vectors is
//! materialised into one block per vector block), and a cap on materialised block lists.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::sync::Arc;

use crate::ir::{Kind, Node, Type};

/// One contiguous run of bytes at `offset` from the element's origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Block {
    /// Byte offset from the buffer origin (may be negative).
    pub offset: isize,
    /// Length in bytes (never 0 in a canonical layout).
    pub len: usize,
}

/// One repetition level: `count` copies, `stride` bytes apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Level {
    /// Number of repetitions (never 0 or 1 in a canonical layout).
    pub count: usize,
    /// Byte distance between repetitions (may be zero or negative).
    pub stride: isize,
}

/// A canonical layout: `blocks` in type-map order, repeated over `levels` (innermost first).
///
/// The empty layout (no blocks, no levels) packs nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Layout {
    blocks: Vec<Block>,
    levels: Vec<Level>,
}

impl Layout {
    /// Canonicalises the given blocks and levels (see the module doc) into a layout.
    pub fn from_parts(blocks: Vec<Block>, levels: Vec<Level>) -> Layout {
        let mut l = Layout { blocks, levels };
        l.canonicalize();
        l
    }

    /// The layout of one element of `ty`, before any count.
    pub(crate) fn of(ty: &Type) -> Layout {
        let mut memo = HashMap::new();
        Arc::unwrap_or_clone(lower(ty, &mut memo))
    }

    fn block(offset: isize, len: usize) -> Layout {
        Layout::from_parts(vec![Block { offset, len }], Vec::new())
    }

    /// The blocks of one repetition, in type-map order.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// The repetition levels, innermost first.
    pub fn levels(&self) -> &[Level] {
        &self.levels
    }

    /// Whether the layout packs no bytes.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Whether the layout is one block repeated over levels (TEMPI's `StridedBlock`).
    pub fn is_strided(&self) -> bool {
        self.blocks.len() == 1
    }

    /// Bytes in one repetition of the block list.
    pub fn block_bytes(&self) -> usize {
        self.blocks.iter().map(|b| b.len).sum()
    }

    /// Number of repetitions: the product of the level counts (1 with no levels).
    pub fn repetitions(&self) -> usize {
        self.levels.iter().map(|l| l.count).product()
    }

    /// Total packed bytes of the layout.
    pub fn packed_bytes(&self) -> usize {
        self.block_bytes() * self.repetitions()
    }

    /// The bytes touched, `[lo, hi)` relative to the origin, or `None` when empty.
    pub fn footprint(&self) -> Option<(isize, isize)> {
        let lo = self.blocks.iter().map(|b| b.offset as i128).min()?;
        let hi = self
            .blocks
            .iter()
            .map(|b| b.offset as i128 + b.len as i128)
            .max()?;
        let (mut lo, mut hi) = (lo, hi);
        for l in &self.levels {
            let span = (l.count as i128 - 1) * l.stride as i128;
            lo += span.min(0);
            hi += span.max(0);
        }
        Some((isize::try_from(lo).ok()?, isize::try_from(hi).ok()?))
    }

    /// This layout as one element of a count: `count` copies, element `i` shifted by
    /// `i * extent`, canonicalised.
    pub fn for_count(&self, count: usize, extent: isize) -> Layout {
        self.repeat(count, extent)
    }

    /// Pushes an outermost level and canonicalises.
    fn repeat(&self, count: usize, stride: isize) -> Layout {
        let mut levels = self.levels.clone();
        levels.push(Level { count, stride });
        Layout::from_parts(self.blocks.clone(), levels)
    }

    fn shifted(&self, by: isize) -> Layout {
        Layout {
            blocks: self
                .blocks
                .iter()
                .map(|b| Block {
                    offset: b.offset + by,
                    len: b.len,
                })
                .collect(),
            levels: self.levels.clone(),
        }
    }

    /// Appends every block of every repetition, shifted by `by`, in packing order.
    fn materialize_into(&self, by: isize, out: &mut Vec<Block>) {
        let n = self.levels.len();
        let mut idx = vec![0usize; n];
        let mut base = by;
        loop {
            out.extend(self.blocks.iter().map(|b| Block {
                offset: b.offset + base,
                len: b.len,
            }));
            // Odometer increment, innermost level first.
            let mut j = 0;
            loop {
                if j == n {
                    return;
                }
                idx[j] += 1;
                base += self.levels[j].stride;
                if idx[j] < self.levels[j].count {
                    break;
                }
                base -= self.levels[j].stride * self.levels[j].count as isize;
                idx[j] = 0;
                j += 1;
            }
        }
    }

    /// Concatenates entries `(layout, displacement)` in order.
    ///
    /// 1. Drop empty entries.
    /// 2. Equal layouts at evenly spaced displacements become one more (outer) level.
    /// 3. Otherwise materialise every entry into blocks and canonicalise.
    fn concat(entries: &[(&Layout, isize)]) -> Layout {
        // Step 1.
        let entries: Vec<(&Layout, isize)> = entries
            .iter()
            .copied()
            .filter(|(l, _)| !l.is_empty())
            .collect();
        match entries.len() {
            0 => return Layout::default(),
            1 => return entries[0].0.shifted(entries[0].1),
            _ => {}
        }
        // Step 2.
        let first = entries[0].0;
        let step = entries[1].1 - entries[0].1;
        let regular = entries
            .windows(2)
            .all(|w| w[1].1 - w[0].1 == step && (std::ptr::eq(w[1].0, first) || w[1].0 == first));
        if regular {
            return first.shifted(entries[0].1).repeat(entries.len(), step);
        }
        // Step 3.
        let mut blocks = Vec::new();
        for (l, d) in &entries {
            l.materialize_into(*d, &mut blocks);
        }
        Layout::from_parts(blocks, Vec::new())
    }

    /// Applies passes (a) to (e) of the module doc.
    fn canonicalize(&mut self) {
        // Pass (a).
        if self.levels.iter().any(|l| l.count == 0) {
            self.blocks.clear();
        }
        self.blocks.retain(|b| b.len != 0);
        if self.blocks.is_empty() {
            self.levels.clear();
            return;
        }
        self.levels.retain(|l| l.count != 1);
        // Pass (b).
        let mut out: Vec<Block> = Vec::with_capacity(self.blocks.len());
        for b in self.blocks.drain(..) {
            match out.last_mut() {
                Some(last) if last.offset as i128 + last.len as i128 == b.offset as i128 => {
                    last.len += b.len;
                }
                _ => out.push(b),
            }
        }
        self.blocks = out;
        // Pass (c).
        if self.blocks.len() > 1 {
            let len = self.blocks[0].len;
            let stride = self.blocks[1].offset - self.blocks[0].offset;
            let regular = self
                .blocks
                .windows(2)
                .all(|w| w[1].len == len && w[1].offset - w[0].offset == stride);
            if regular {
                let count = self.blocks.len();
                self.blocks.truncate(1);
                self.levels.insert(0, Level { count, stride });
            }
        }
        // Passes (d) and (e).
        let single = if self.blocks.len() == 1 {
            Some(&mut self.blocks[0])
        } else {
            None
        };
        simplify_levels(single, &mut self.levels);
    }
}

/// Passes (d) and (e) until nothing changes: fold dense innermost levels into a single block
/// (when there is one), merge adjacent levels.
pub(crate) fn simplify_levels(mut single: Option<&mut Block>, levels: &mut Vec<Level>) {
    levels.retain(|l| l.count != 1);
    loop {
        if let Some(b) = single.as_deref_mut() {
            if let Some(l0) = levels.first() {
                if l0.stride as i128 == b.len as i128 {
                    b.len *= l0.count;
                    levels.remove(0);
                    continue;
                }
            }
        }
        let merge = (1..levels.len()).find(|&i| {
            levels[i].stride as i128 == levels[i - 1].count as i128 * levels[i - 1].stride as i128
        });
        match merge {
            Some(i) => {
                levels[i - 1].count *= levels[i].count;
                levels.remove(i);
            }
            None => return,
        }
    }
}

/// Lowers one IR node; `memo` keeps each shared node's layout.
fn lower(ty: &Type, memo: &mut HashMap<*const Node, Arc<Layout>>) -> Arc<Layout> {
    let key = Arc::as_ptr(&ty.0);
    if let Some(l) = memo.get(&key) {
        return Arc::clone(l);
    }
    let layout = match &ty.node().kind {
        Kind::Named { size } => Layout::block(0, *size),
        Kind::Contig { count, child } => lower(child, memo).repeat(*count, child.extent()),
        Kind::HVector {
            count,
            blocklen,
            stride,
            child,
        } => lower(child, memo)
            .repeat(*blocklen, child.extent())
            .repeat(*count, *stride),
        Kind::BlockHIndexed {
            blocklen,
            displs,
            child,
        } => {
            let c = lower(child, memo).repeat(*blocklen, child.extent());
            let entries: Vec<(&Layout, isize)> = displs.iter().map(|&d| (&c, d)).collect();
            Layout::concat(&entries)
        }
        Kind::HIndexed {
            blocklens,
            displs,
            child,
        } => {
            let c = lower(child, memo);
            let mut per_len: HashMap<usize, Layout> = HashMap::new();
            for &bl in blocklens {
                per_len
                    .entry(bl)
                    .or_insert_with(|| c.repeat(bl, child.extent()));
            }
            let entries: Vec<(&Layout, isize)> = blocklens
                .iter()
                .zip(displs)
                .map(|(bl, &d)| (&per_len[bl], d))
                .collect();
            Layout::concat(&entries)
        }
        Kind::Struct {
            blocklens,
            displs,
            children,
        } => {
            let mut per_entry: HashMap<(*const Node, usize), Layout> = HashMap::new();
            for (child, &bl) in children.iter().zip(blocklens) {
                let k = (Arc::as_ptr(&child.0), bl);
                if let Entry::Vacant(slot) = per_entry.entry(k) {
                    slot.insert(lower(child, memo).repeat(bl, child.extent()));
                }
            }
            let entries: Vec<(&Layout, isize)> = children
                .iter()
                .zip(blocklens)
                .zip(displs)
                .map(|((child, &bl), &d)| (&per_entry[&(Arc::as_ptr(&child.0), bl)], d))
                .collect();
            Layout::concat(&entries)
        }
        Kind::Resized { child, .. } => {
            let l = lower(child, memo);
            return remember(memo, key, l);
        }
    };
    remember(memo, key, Arc::new(layout))
}

fn remember(
    memo: &mut HashMap<*const Node, Arc<Layout>>,
    key: *const Node,
    l: Arc<Layout>,
) -> Arc<Layout> {
    memo.insert(key, Arc::clone(&l));
    l
}

impl fmt::Display for Layout {
    /// `strided{start=0, block=8, levels=[(4,32),(3,256)]}` for one block,
    /// `blocks{[(0,4),(8,8)], levels=[(3,64)]}` for several, `empty` for none.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let levels = self
            .levels
            .iter()
            .map(|l| format!("({},{})", l.count, l.stride))
            .collect::<Vec<_>>()
            .join(",");
        match self.blocks.as_slice() {
            [] => write!(f, "empty"),
            [b] => write!(
                f,
                "strided{{start={}, block={}, levels=[{levels}]}}",
                b.offset, b.len
            ),
            blocks => {
                let show = |bs: &[Block]| {
                    bs.iter()
                        .map(|b| format!("({},{})", b.offset, b.len))
                        .collect::<Vec<_>>()
                        .join(",")
                };
                let list = if blocks.len() <= 8 {
                    show(blocks)
                } else {
                    format!(
                        "{},...{} more...,{}",
                        show(&blocks[..4]),
                        blocks.len() - 6,
                        show(&blocks[blocks.len() - 2..])
                    )
                };
                write!(f, "blocks{{[{list}], levels=[{levels}]}}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::array::Order;

    fn int() -> Type {
        Type::named(4)
    }

    fn snap(t: &Type) -> String {
        let l = Layout::of(t);
        assert_eq!(l.packed_bytes(), t.size(), "{t}");
        l.to_string()
    }

    #[test]
    fn vector_is_one_strided_block() {
        let v = Type::vector(4, 2, 8, &int()).unwrap();
        assert_eq!(snap(&v), "strided{start=0, block=8, levels=[(4,32)]}");
    }

    #[test]
    fn contiguous_of_contiguous_folds_to_one_block() {
        let c = Type::contiguous(3, &Type::contiguous(5, &int()).unwrap()).unwrap();
        assert_eq!(snap(&c), "strided{start=0, block=60, levels=[]}");
        let dense = Type::vector(3, 2, 2, &int()).unwrap();
        assert_eq!(snap(&dense), "strided{start=0, block=24, levels=[]}");
    }

    #[test]
    fn subarray_3d_has_two_levels() {
        let s = Type::subarray(&[4, 5, 6], &[2, 3, 4], &[1, 1, 2], Order::C, &int()).unwrap();
        assert_eq!(
            snap(&s),
            "strided{start=152, block=16, levels=[(3,24),(2,120)]}"
        );
        // Full rows merge: a 2x6 box of full 6-wide rows is one block per plane.
        let rows = Type::subarray(&[4, 5, 6], &[2, 3, 6], &[1, 1, 0], Order::C, &int()).unwrap();
        assert_eq!(
            snap(&rows),
            "strided{start=144, block=72, levels=[(2,120)]}"
        );
        let f = Type::subarray(&[4, 5, 6], &[2, 3, 4], &[1, 1, 2], Order::Fortran, &int()).unwrap();
        assert_eq!(
            snap(&f),
            "strided{start=180, block=8, levels=[(3,16),(4,80)]}"
        );
    }

    #[test]
    fn regular_indexed_is_strided() {
        let i = Type::indexed(&[2, 2, 2], &[0, 5, 10], &int()).unwrap();
        assert_eq!(snap(&i), "strided{start=0, block=8, levels=[(3,20)]}");
        let b = Type::hindexed_block(1, &[-8, 0, 8, 16], &int()).unwrap();
        assert_eq!(snap(&b), "strided{start=-8, block=4, levels=[(4,8)]}");
        let irregular = Type::indexed(&[1, 2, 1], &[0, 3, 9], &int()).unwrap();
        assert_eq!(snap(&irregular), "blocks{[(0,4),(12,8),(36,4)], levels=[]}");
    }

    #[test]
    fn levels_keep_type_map_order() {
        // A negative stride is kept, not reversed: MPI packs the last row first.
        let v = Type::vector(3, 1, -2, &int()).unwrap();
        assert_eq!(snap(&v), "strided{start=0, block=4, levels=[(3,-8)]}");
        // An hindexed over a vector with irregular displacements materialises blocks.
        let inner = Type::vector(2, 1, 2, &int()).unwrap();
        let h = Type::hindexed(&[1, 1, 1], &[0, 100, 1000], &inner).unwrap();
        assert_eq!(
            snap(&h),
            "blocks{[(0,4),(8,4),(100,4),(108,4),(1000,4),(1008,4)], levels=[]}"
        );
        // Two equal entries always form a level, whatever their distance.
        let two = Type::hindexed(&[1, 1], &[100, 0], &inner).unwrap();
        assert_eq!(
            snap(&two),
            "strided{start=100, block=4, levels=[(2,8),(2,-100)]}"
        );
    }

    #[test]
    fn struct_signature_int3_double2() {
        let s = Type::struct_(&[3, 2], &[0, 16], &[int(), Type::named(8)]).unwrap();
        assert_eq!(snap(&s), "blocks{[(0,12),(16,16)], levels=[]}");
        assert_eq!(s.extent(), 32);
        let l = Layout::of(&s).for_count(4, s.extent());
        assert_eq!(l.to_string(), "blocks{[(0,12),(16,16)], levels=[(4,32)]}");
    }

    #[test]
    fn zero_counts_give_empty_layouts() {
        assert_eq!(snap(&Type::contiguous(0, &int()).unwrap()), "empty");
        assert_eq!(snap(&Type::vector(3, 0, 2, &int()).unwrap()), "empty");
        assert_eq!(
            snap(&Type::hindexed(&[0, 0], &[4, 8], &int()).unwrap()),
            "empty"
        );
        assert!(Layout::of(&int()).for_count(0, 4).is_empty());
    }

    #[test]
    fn for_count_folds_and_merges() {
        let l = Layout::of(&int()).for_count(10, 4);
        assert_eq!(l.to_string(), "strided{start=0, block=40, levels=[]}");
        let v = Type::vector(4, 2, 8, &int()).unwrap();
        let l = Layout::of(&v).for_count(3, v.extent());
        assert_eq!(
            l.to_string(),
            "strided{start=0, block=8, levels=[(4,32),(3,104)]}"
        );
        let r = Type::resized(0, 128, &v).unwrap();
        let l = Layout::of(&r).for_count(3, r.extent());
        assert_eq!(l.to_string(), "strided{start=0, block=8, levels=[(12,32)]}");
    }

    #[test]
    fn footprint_covers_negative_strides() {
        let v = Type::vector(3, 1, -2, &int()).unwrap();
        assert_eq!(Layout::of(&v).footprint(), Some((-16, 4)));
        assert_eq!(Layout::default().footprint(), None);
    }

    #[test]
    fn from_parts_canonicalises() {
        let l = Layout::from_parts(
            vec![
                Block { offset: 0, len: 2 },
                Block { offset: 2, len: 2 },
                Block { offset: 8, len: 0 },
                Block { offset: 16, len: 4 },
            ],
            vec![
                Level {
                    count: 1,
                    stride: 99,
                },
                Level {
                    count: 2,
                    stride: 32,
                },
            ],
        );
        assert_eq!(l.to_string(), "strided{start=0, block=4, levels=[(4,16)]}");
    }
}
