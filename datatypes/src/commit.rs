//! Committed datatypes: a [`Type`] with its canonical [`Layout`] computed once and cached.
//!
//! `MPI_Type_commit` (MPI-3.1 §4.1.9) is where an MPI library compiles a type into the form
//! its pack loops run; [`Committed`] is ferry's equivalent and the only thing the pack
//! engines take, so a layout is never recomputed per operation.
//!
//! Not done yet: the GPU kernel choice (word size, levels) cached next to the layout.

use std::fmt;
use std::sync::Arc;

use crate::error::PackError;
use crate::ir::Type;
#[cfg(debug_assertions)]
use crate::layout::simplify_levels;
use crate::layout::{Block, Layout, Level};
use crate::pack::Width;

/// A committed datatype: the type, its layout and the tables the pack engine needs.
/// Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct Committed(Arc<Inner>);

struct Inner {
    ty: Type,
    layout: Layout,
    /// `prefix[i]`: packed bytes before block `i` within one repetition; one entry more than
    /// there are blocks, the last being the repetition's size.
    prefix: Vec<usize>,
    /// The bytes one element touches, relative to its origin.
    footprint: Option<(isize, isize)>,
    /// How the pack loops copy every block of a list of several: the narrowest copier
    /// width covering all their lengths.
    list_width: Width,
}

impl Type {
    /// Commits the type (`MPI_Type_commit`, MPI-3.1 §4.1.9): computes its layout once.
    pub fn commit(&self) -> Committed {
        Committed::new(self)
    }
}

impl Committed {
    /// Commits `ty`: lowers it to its canonical layout and builds the engine's tables.
    pub fn new(ty: &Type) -> Committed {
        let layout = Layout::of(ty);
        debug_assert_eq!(layout.packed_bytes(), ty.size(), "{ty}");
        let mut prefix = Vec::with_capacity(layout.blocks().len() + 1);
        let mut at = 0usize;
        prefix.push(0);
        for b in layout.blocks() {
            at += b.len;
            prefix.push(at);
        }
        let footprint = layout.footprint();
        let lens = layout.blocks().iter().map(|b| b.len);
        let list_width = Width::covering(lens.clone().min().unwrap_or(0), lens.max().unwrap_or(0));
        Committed(Arc::new(Inner {
            ty: ty.clone(),
            layout,
            prefix,
            footprint,
            list_width,
        }))
    }

    /// The committed type.
    pub fn ty(&self) -> &Type {
        &self.0.ty
    }

    /// The canonical layout of one element.
    pub fn layout(&self) -> &Layout {
        &self.0.layout
    }

    /// Bytes that packing `count` elements produces (`MPI_Pack_size`, MPI-3.1 §4.2), or
    /// `None` if that overflows.
    pub fn packed_size(&self, count: usize) -> Option<usize> {
        self.0.ty.packed_size(count)
    }

    pub(crate) fn checked_packed_size(&self, count: usize) -> Result<usize, PackError> {
        self.packed_size(count)
            .filter(|&n| n <= isize::MAX as usize)
            .ok_or(PackError::Overflow { count })
    }

    /// The bytes that `count` elements touch, `[lo, hi)` relative to the origin, or `None`
    /// when they touch nothing.
    pub fn footprint(&self, count: usize) -> Result<Option<(isize, isize)>, PackError> {
        let Some((lo, hi)) = self.0.footprint else {
            return Ok(None);
        };
        if count == 0 {
            return Ok(None);
        }
        let span = (count as i128 - 1) * self.0.ty.extent() as i128;
        let lo = lo as i128 + span.min(0);
        let hi = hi as i128 + span.max(0);
        match (isize::try_from(lo), isize::try_from(hi)) {
            (Ok(lo), Ok(hi)) => Ok(Some((lo, hi))),
            _ => Err(PackError::Overflow { count }),
        }
    }

    /// Checks that `count` elements at `origin` lie inside a slice of `len` bytes.
    pub(crate) fn check_footprint(
        &self,
        len: usize,
        origin: usize,
        count: usize,
    ) -> Result<(), PackError> {
        let Some((lo, hi)) = self.footprint(count)? else {
            return Ok(());
        };
        let start = origin as i128 + lo as i128;
        let end = origin as i128 + hi as i128;
        if start < 0 || end > len as i128 {
            return Err(PackError::OutOfBounds {
                lo,
                hi,
                origin,
                len,
            });
        }
        Ok(())
    }

    /// The engine's view of `count` elements: one more level for the count, folded.
    /// Builds nothing on the heap unless the plan has more than [`INLINE_LEVELS`] levels.
    ///
    /// 1. Start from the layout's levels. They are canonical: no two of them merge, and a
    ///    single block never absorbs the innermost one.
    /// 2. Add the count as the outermost level `(count, extent)`, simplified against that
    ///    fixpoint: a count of 1 adds nothing; the count merges into the outermost level when
    ///    the extent continues its stride, or folds into a single block with no levels when
    ///    the elements are dense. Neither step can enable another merge or fold, because the
    ///    strides that those compare are unchanged, so the plan equals
    ///    `simplify_levels` of the full list (checked in debug builds).
    pub(crate) fn plan(&self, count: usize) -> Plan<'_> {
        let inner = &*self.0;
        let blocks = inner.layout.blocks();
        let extent = inner.ty.extent();
        // Step 1.
        let mut levels = Levels::from_slice(inner.layout.levels());
        let single = match blocks {
            [b] => Some(*b),
            _ => None,
        };
        let mut b = single.unwrap_or(Block { offset: 0, len: 0 });
        // Step 2.
        if count != 1 {
            match levels.as_mut_slice().last_mut() {
                Some(last) if extent as i128 == last.count as i128 * last.stride as i128 => {
                    last.count *= count;
                }
                None if single.is_some() && extent as i128 == b.len as i128 => b.len *= count,
                _ => levels.push(Level {
                    count,
                    stride: extent,
                }),
            }
        }
        let plan = if single.is_some() {
            Plan {
                single: [b],
                single_prefix: [0, b.len],
                list: None,
                levels,
                rep_bytes: b.len,
                width: Width::of(b.len),
            }
        } else {
            Plan {
                single: [b],
                single_prefix: [0, 0],
                list: Some((blocks, &inner.prefix)),
                levels,
                rep_bytes: *inner.prefix.last().unwrap_or(&0),
                width: inner.list_width,
            }
        };
        #[cfg(debug_assertions)]
        {
            let mut want = inner.layout.levels().to_vec();
            want.push(Level {
                count,
                stride: extent,
            });
            let mut want_b = single;
            simplify_levels(want_b.as_mut(), &mut want);
            debug_assert_eq!(plan.levels(), &want[..], "{}", inner.layout);
            if let Some(w) = want_b {
                debug_assert_eq!(plan.blocks(), &[w], "{}", inner.layout);
            }
        }
        plan
    }
}

/// Levels a [`Plan`] holds without allocating; deeper layouts (rare) use the heap.
pub(crate) const INLINE_LEVELS: usize = 8;

/// A short list of levels, inline up to [`INLINE_LEVELS`].
enum Levels {
    /// The first `.0` entries of `.1`.
    Inline(usize, [Level; INLINE_LEVELS]),
    /// More levels than fit inline.
    Heap(Vec<Level>),
}

impl Levels {
    /// A list holding `levels`, with room for one more.
    fn from_slice(levels: &[Level]) -> Levels {
        if levels.len() < INLINE_LEVELS {
            let mut buf = [Level {
                count: 0,
                stride: 0,
            }; INLINE_LEVELS];
            buf[..levels.len()].copy_from_slice(levels);
            Levels::Inline(levels.len(), buf)
        } else {
            let mut v = Vec::with_capacity(levels.len() + 1);
            v.extend_from_slice(levels);
            Levels::Heap(v)
        }
    }

    fn push(&mut self, l: Level) {
        match self {
            Levels::Inline(n, buf) if *n < INLINE_LEVELS => {
                buf[*n] = l;
                *n += 1;
            }
            Levels::Inline(n, buf) => {
                let mut v = buf[..*n].to_vec();
                v.push(l);
                *self = Levels::Heap(v);
            }
            Levels::Heap(v) => v.push(l),
        }
    }

    fn as_slice(&self) -> &[Level] {
        match self {
            Levels::Inline(n, buf) => &buf[..*n],
            Levels::Heap(v) => v,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [Level] {
        match self {
            Levels::Inline(n, buf) => &mut buf[..*n],
            Levels::Heap(v) => v,
        }
    }
}

/// A layout extended by a count, as the pack loops consume it.
pub(crate) struct Plan<'a> {
    /// The single block, folded with the count, when the layout has one.
    single: [Block; 1],
    /// Prefix sums of `single`.
    single_prefix: [usize; 2],
    /// The layout's block list and its prefix sums when it has several (or none).
    list: Option<(&'a [Block], &'a [usize])>,
    /// Innermost first; never a count-1 level.
    levels: Levels,
    /// Packed bytes of one repetition of the blocks.
    pub(crate) rep_bytes: usize,
    /// How every block of the list is copied.
    pub(crate) width: Width,
}

impl Plan<'_> {
    /// The blocks of one repetition, in type-map order.
    pub(crate) fn blocks(&self) -> &[Block] {
        match self.list {
            Some((blocks, _)) => blocks,
            None => &self.single,
        }
    }

    /// `prefix[i]`: packed bytes before block `i` within one repetition; one entry more
    /// than there are blocks.
    pub(crate) fn prefix(&self) -> &[usize] {
        match self.list {
            Some((_, prefix)) => prefix,
            None => &self.single_prefix,
        }
    }

    /// The repetition levels, innermost first.
    pub(crate) fn levels(&self) -> &[Level] {
        self.levels.as_slice()
    }
}

impl fmt::Debug for Committed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Committed({:?}, {})", self.0.ty, self.0.layout)
    }
}
