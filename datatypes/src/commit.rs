//! Committed datatypes: a [`Type`] with its canonical [`Layout`] computed once and cached.
//!
//! `MPI_Type_commit` (MPI-3.1 §4.1.9) is where an MPI library compiles a type into the form
//! its pack loops run; [`Committed`] is ferry's equivalent and the only thing the pack
//! engines take, so a layout is never recomputed per operation.
//!
//! Not done yet: the GPU kernel choice (word size, levels) cached next to the layout.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use crate::error::PackError;
use crate::ir::Type;
use crate::layout::{Block, Layout, Level, simplify_levels};

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
        Committed(Arc::new(Inner {
            ty: ty.clone(),
            layout,
            prefix,
            footprint,
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
    pub(crate) fn plan(&self, count: usize) -> Plan<'_> {
        let inner = &*self.0;
        let blocks = inner.layout.blocks();
        let mut levels = inner.layout.levels().to_vec();
        levels.push(Level {
            count,
            stride: inner.ty.extent(),
        });
        if let [single] = blocks {
            let mut b = *single;
            simplify_levels(Some(&mut b), &mut levels);
            Plan {
                blocks: Cow::Owned(vec![b]),
                prefix: Cow::Owned(vec![0, b.len]),
                levels,
                rep_bytes: b.len,
            }
        } else {
            simplify_levels(None, &mut levels);
            Plan {
                blocks: Cow::Borrowed(blocks),
                prefix: Cow::Borrowed(&inner.prefix),
                levels,
                rep_bytes: *inner.prefix.last().unwrap_or(&0),
            }
        }
    }
}

/// A layout extended by a count, as the pack loops consume it.
pub(crate) struct Plan<'a> {
    pub(crate) blocks: Cow<'a, [Block]>,
    pub(crate) prefix: Cow<'a, [usize]>,
    /// Innermost first; never a count-1 level.
    pub(crate) levels: Vec<Level>,
    /// Packed bytes of one repetition of the blocks.
    pub(crate) rep_bytes: usize,
}

impl fmt::Debug for Committed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Committed({:?}, {})", self.0.ty, self.0.layout)
    }
}
