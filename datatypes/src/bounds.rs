//! Size, lower and upper bounds, true bounds and alignment of a datatype, computed the way
//! Open MPI 4.1 computes them.
//!
//! MPI-3.1 §4.1.6 defines `lb` and `ub` of a type map from its entries, `ub` rounded up by an
//! alignment increment epsilon; §4.1.7 adds the explicit (sticky) markers that
//! `MPI_Type_create_resized` sets; §4.1.8 defines the true bounds, which ignore markers.
//! Open MPI, ferry's reference, implements these rules incrementally: every constructor adds
//! runs of its old type one at a time (`opal_datatype_add`), and each addition updates the
//! bounds and re-applies the alignment rounding. [`Builder::add`] is that step. The
//! constructors in `ir.rs` feed it the same runs, in the same order, as Open MPI's
//! constructors do, so extents (which decide where the second element of a count starts)
//! agree byte for byte. The resulting rules, checked against Open MPI 4.1.4:
//! - `ub` is rounded up so that `ub - lb` is a multiple of the largest alignment of any
//!   predefined type in the map (MPI-3.1 §4.1.6 epsilon), unless a resized type inside set an
//!   explicit upper bound. The rounding is applied after each run, so it can differ from one
//!   rounding of the final span.
//! - Markers are sticky: once a run carries an explicit lb (ub), only explicit lbs (ubs) count.
//! - A run with count 0 changes nothing. A run of a zero-size type with count > 0 still
//!   moves `lb`/`ub` (a quirk: the standard would ignore its empty type map).
//! - `MPI_Type_contiguous` and `MPI_Type_(h)indexed` of a zero-size old type, and every
//!   constructor whose counts are all zero, give the empty type (`lb = ub = 0`, no markers).
//!
//! Not done yet: the true bounds of a zero-size type are reported as 0, where Open MPI
//! reports uninitialised sentinels.

/// The bounds of one datatype (MPI-3.1 §4.1.6 to §4.1.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bounds {
    /// Bytes of data in one element (`MPI_Type_size`).
    pub(crate) size: usize,
    /// Lower bound (`MPI_Type_get_extent`).
    pub(crate) lb: isize,
    /// Upper bound; `ub - lb` is the extent.
    pub(crate) ub: isize,
    /// Lowest byte of data (`MPI_Type_get_true_extent`).
    pub(crate) true_lb: isize,
    /// One past the highest byte of data.
    pub(crate) true_ub: isize,
    /// The largest alignment of a predefined type in the map.
    pub(crate) align: usize,
    /// Whether an explicit lower-bound marker (from a resize) is in the map.
    pub(crate) user_lb: bool,
    /// Whether an explicit upper-bound marker is in the map.
    pub(crate) user_ub: bool,
}

/// Arithmetic left the `isize` range.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Overflow;

fn narrow(v: i128) -> Result<isize, Overflow> {
    isize::try_from(v).map_err(|_| Overflow)
}

impl Bounds {
    /// The empty type (Open MPI's duplicate of `MPI_DATATYPE_NULL`): no data, all bounds 0.
    pub(crate) const EMPTY: Bounds = Bounds {
        size: 0,
        lb: 0,
        ub: 0,
        true_lb: 0,
        true_ub: 0,
        align: 1,
        user_lb: false,
        user_ub: false,
    };

    /// A predefined type of `size` bytes and the given alignment.
    pub(crate) fn named(size: usize, align: usize) -> Result<Bounds, Overflow> {
        let ub = narrow(size as i128)?;
        Ok(Bounds {
            size,
            lb: 0,
            ub,
            true_lb: 0,
            true_ub: ub,
            align,
            user_lb: false,
            user_ub: false,
        })
    }

    /// `ub - lb`.
    pub(crate) fn extent(&self) -> isize {
        self.ub - self.lb
    }

    /// The bounds after `MPI_Type_create_resized(lb, extent)` (MPI-3.1 §4.1.7): both markers
    /// become explicit; size, true bounds and alignment stay.
    pub(crate) fn resized(&self, lb: isize, extent: isize) -> Result<Bounds, Overflow> {
        let ub = lb.checked_add(extent).ok_or(Overflow)?;
        Ok(Bounds {
            lb,
            ub,
            user_lb: true,
            user_ub: true,
            ..*self
        })
    }
}

/// Accumulates runs of old types into a new type's bounds, as `opal_datatype_add` does.
pub(crate) struct Builder {
    b: Bounds,
    added: bool,
}

impl Builder {
    /// A new type with nothing in it yet.
    pub(crate) fn new() -> Self {
        Builder {
            b: Bounds {
                size: 0,
                lb: isize::MAX,
                ub: isize::MIN,
                true_lb: isize::MAX,
                true_ub: isize::MIN,
                align: 1,
                user_lb: false,
                user_ub: false,
            },
            added: false,
        }
    }

    /// Adds `count` copies of `child`, the first at byte `disp`, each next one `step` bytes
    /// further.
    ///
    /// 1. A zero count changes nothing (MPI-3.1 §4.1, "no effect on datatype bounds").
    /// 2. The run's own lb/ub: the lowest and highest copy, shifted by the child's lb/ub.
    /// 3. Its true bounds: the same copies shifted by the child's true bounds.
    /// 4. Merge lb (ub): if exactly one side has an explicit marker, that side wins and the
    ///    result has a marker; otherwise take the min (max).
    /// 5. Alignment: take the max, and unless an explicit ub is set, round `ub` up so that
    ///    `ub - lb` is a multiple of it (MPI-3.1 §4.1.6 epsilon).
    /// 6. A zero-size child stops here; otherwise add its size and merge the true bounds.
    pub(crate) fn add(
        &mut self,
        child: &Bounds,
        count: usize,
        disp: isize,
        step: isize,
    ) -> Result<(), Overflow> {
        // Step 1.
        if count == 0 {
            return Ok(());
        }
        self.added = true;
        let b = &mut self.b;
        // Step 2.
        let first = disp as i128;
        let last = first + step as i128 * (count as i128 - 1);
        let (low, high) = if first <= last {
            (first, last)
        } else {
            (last, first)
        };
        let lb = narrow(low + child.lb as i128)?;
        let ub = narrow(high + child.ub as i128)?;
        // Step 3.
        let mut true_lb = narrow(lb as i128 - (child.lb as i128 - child.true_lb as i128))?;
        let mut true_ub = narrow(ub as i128 - (child.ub as i128 - child.true_ub as i128))?;
        if true_lb > true_ub {
            std::mem::swap(&mut true_lb, &mut true_ub);
        }
        // Step 4.
        let lb = if child.user_lb != b.user_lb {
            b.user_lb = true;
            if child.user_lb { lb } else { b.lb }
        } else {
            lb.min(b.lb)
        };
        let ub = if child.user_ub != b.user_ub {
            b.user_ub = true;
            if child.user_ub { ub } else { b.ub }
        } else {
            ub.max(b.ub)
        };
        b.lb = lb;
        b.ub = ub;
        // Step 5.
        b.align = b.align.max(child.align);
        if !b.user_ub {
            let span = b.ub as i128 - b.lb as i128;
            let epsilon = span % b.align as i128;
            if epsilon != 0 {
                b.ub = narrow(b.ub as i128 + b.align as i128 - epsilon)?;
            }
        }
        // Step 6.
        if child.size == 0 {
            return Ok(());
        }
        let more = child.size.checked_mul(count).ok_or(Overflow)?;
        b.size = b.size.checked_add(more).ok_or(Overflow)?;
        narrow(b.size as i128)?;
        b.true_lb = b.true_lb.min(true_lb);
        b.true_ub = b.true_ub.max(true_ub);
        Ok(())
    }

    /// The finished bounds; a type to which nothing was added is the empty type.
    pub(crate) fn finish(self) -> Bounds {
        if !self.added {
            return Bounds::EMPTY;
        }
        let mut b = self.b;
        if b.size == 0 {
            b.true_lb = 0;
            b.true_ub = 0;
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int() -> Bounds {
        Bounds::named(4, 4).unwrap()
    }

    #[test]
    fn a_run_of_ints_is_dense() {
        let mut b = Builder::new();
        b.add(&int(), 3, 0, 4).unwrap();
        let b = b.finish();
        assert_eq!(
            (b.size, b.lb, b.ub, b.true_lb, b.true_ub),
            (12, 0, 12, 0, 12)
        );
    }

    #[test]
    fn padding_is_applied_per_run() {
        // Open MPI 4.1.4: struct {int@0, char@4, char@-1} has extent 12, where one rounding
        // of the final span [-1, 5) would give 8.
        let ch = Bounds::named(1, 1).unwrap();
        let mut b = Builder::new();
        b.add(&int(), 1, 0, 4).unwrap();
        b.add(&ch, 1, 4, 1).unwrap();
        b.add(&ch, 1, -1, 1).unwrap();
        let b = b.finish();
        assert_eq!((b.lb, b.ub, b.true_lb, b.true_ub), (-1, 11, -1, 5));
    }

    #[test]
    fn explicit_markers_are_sticky() {
        // Open MPI 4.1.4: struct {int@0, resized(int, 4, 4)@0} has lb 4, extent 4.
        let r = int().resized(4, 4).unwrap();
        let mut b = Builder::new();
        b.add(&int(), 1, 0, 4).unwrap();
        b.add(&r, 1, 0, 4).unwrap();
        let b = b.finish();
        assert_eq!((b.lb, b.ub, b.true_lb, b.true_ub), (4, 8, 0, 4));
    }

    #[test]
    fn nothing_added_is_empty() {
        let mut b = Builder::new();
        b.add(&int(), 0, 100, 4).unwrap();
        assert_eq!(b.finish(), Bounds::EMPTY);
    }
}
