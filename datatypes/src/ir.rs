//! The datatype IR: a tree of byte-displacement constructors, one per MPI-3.1 §4.1 kind.
//!
//! Every MPI constructor lowers to one of seven kinds whose displacements and strides are in
//! bytes: [`Kind::Named`], [`Kind::Contig`], [`Kind::HVector`], [`Kind::BlockHIndexed`],
//! [`Kind::HIndexed`], [`Kind::Struct`] and [`Kind::Resized`]. `vector`, `indexed` and
//! `indexed_block` multiply their element displacements by the old type's extent;
//! `subarray` and `darray` (in `array.rs`) lower to nested hvector/hindexed plus a resize.
//! A node stores its bounds, computed once when it is built (see `bounds.rs`), so every query
//! is O(1) and a [`Type`] is an `Arc`, cheap to clone and share between threads.
//!
//! Not done yet: MPI_Type_create_hindexed with `MPI_Count` (large-count) arguments beyond
//! `isize`, and the pair types (`MPI_DOUBLE_INT`...) as named types: build them as structs.

use std::fmt;
use std::sync::Arc;

use crate::bounds::{Bounds, Builder, Overflow};
use crate::error::TypeError;

/// An MPI datatype (`MPI_Datatype`, MPI-3.1 §4.1): an immutable, cheaply cloned IR tree.
///
/// Build one with the constructors below, then [`Type::commit`] it to pack and unpack.
#[derive(Clone)]
pub struct Type(pub(crate) Arc<Node>);

/// One IR node: its kind and its bounds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Node {
    pub(crate) kind: Kind,
    pub(crate) bounds: Bounds,
}

/// The byte-displacement kinds of the IR (yaksa's type kinds, TEMPI's IR).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A predefined type: `size` contiguous bytes.
    Named { size: usize },
    /// `count` copies of `child`, one extent apart.
    Contig { count: usize, child: Type },
    /// `count` blocks of `blocklen` copies of `child`; blocks start `stride` bytes apart.
    HVector {
        count: usize,
        blocklen: usize,
        stride: isize,
        child: Type,
    },
    /// Blocks of `blocklen` copies of `child` at byte displacements `displs`.
    BlockHIndexed {
        blocklen: usize,
        displs: Vec<isize>,
        child: Type,
    },
    /// Blocks of `blocklens[i]` copies of `child` at byte displacements `displs[i]`.
    HIndexed {
        blocklens: Vec<usize>,
        displs: Vec<isize>,
        child: Type,
    },
    /// Blocks of `blocklens[i]` copies of `children[i]` at byte displacements `displs[i]`.
    Struct {
        blocklens: Vec<usize>,
        displs: Vec<isize>,
        children: Vec<Type>,
    },
    /// `child` with its lb and extent replaced; the type map is unchanged.
    Resized {
        lb: isize,
        extent: isize,
        child: Type,
    },
}

impl PartialEq for Type {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Eq for Type {}

impl fmt::Debug for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Type({})", self.signature())
    }
}

fn overflow(constructor: &'static str) -> impl Fn(Overflow) -> TypeError {
    move |_| TypeError::Overflow { constructor }
}

/// The largest power of two that divides `size`, at most 8: the alignment of the C type of
/// that size on the LP64 ABIs Open MPI targets (`MPI_CHAR` 1, `MPI_SHORT` 2, `MPI_INT` 4,
/// `MPI_DOUBLE` 8; `MPI_C_DOUBLE_COMPLEX` is 16 bytes aligned to 8).
fn natural_align(size: usize) -> usize {
    if size == 0 {
        1
    } else {
        (1usize << size.trailing_zeros()).min(8)
    }
}

/// Whether Open MPI would see two struct entries as the same type handle, so that it merges
/// adjacent runs of them into one (which only changes when alignment rounding happens).
fn same_handle(a: &Type, b: &Type) -> bool {
    if Arc::ptr_eq(&a.0, &b.0) {
        return true;
    }
    matches!((&a.0.kind, &b.0.kind), (Kind::Named { size: x }, Kind::Named { size: y })
        if x == y && a.0.bounds.align == b.0.bounds.align)
}

impl Type {
    pub(crate) fn new(kind: Kind, bounds: Bounds) -> Type {
        Type(Arc::new(Node { kind, bounds }))
    }

    pub(crate) fn node(&self) -> &Node {
        &self.0
    }

    pub(crate) fn bounds(&self) -> &Bounds {
        &self.0.bounds
    }

    /// A predefined type of `size` bytes (MPI-3.1 §3.2.2): `MPI_BYTE`/`MPI_CHAR` = 1,
    /// `MPI_SHORT` = 2, `MPI_INT`/`MPI_FLOAT` = 4, `MPI_DOUBLE`/`MPI_LONG` = 8.
    ///
    /// Its alignment, which rounds the extents of types built from it (§4.1.6), is the
    /// largest power of two dividing `size`, at most 8; use [`Type::named_aligned`] for
    /// others (`MPI_LONG_DOUBLE`: 16, `MPI_C_FLOAT_COMPLEX`: 4, `MPI_2INT`: 4).
    pub fn named(size: usize) -> Type {
        Type::named_aligned(size, natural_align(size))
            .expect("a natural alignment is a power of two")
    }

    /// A predefined type of `size` bytes with alignment `align` (a power of two).
    pub fn named_aligned(size: usize, align: usize) -> Result<Type, TypeError> {
        const C: &str = "named type";
        if !align.is_power_of_two() {
            return Err(TypeError::invalid(
                C,
                format!("alignment {align} is not a power of two"),
            ));
        }
        let bounds = Bounds::named(size, align).map_err(overflow(C))?;
        Ok(Type::new(Kind::Named { size }, bounds))
    }

    /// `MPI_Type_contiguous` (MPI-3.1 §4.1.2): `count` copies of `old`, one extent apart.
    pub fn contiguous(count: usize, old: &Type) -> Result<Type, TypeError> {
        const C: &str = "MPI_Type_contiguous";
        let ob = old.bounds();
        let bounds = if count == 0 || ob.size == 0 {
            Bounds::EMPTY
        } else {
            let mut b = Builder::new();
            b.add(ob, count, 0, ob.extent()).map_err(overflow(C))?;
            b.finish()
        };
        Ok(Type::new(
            Kind::Contig {
                count,
                child: old.clone(),
            },
            bounds,
        ))
    }

    /// `MPI_Type_vector` (MPI-3.1 §4.1.2): `count` blocks of `blocklen` copies of `old`,
    /// block starts `stride` extents of `old` apart. Lowers to an hvector.
    pub fn vector(
        count: usize,
        blocklen: usize,
        stride: isize,
        old: &Type,
    ) -> Result<Type, TypeError> {
        const C: &str = "MPI_Type_vector";
        let bytes = stride
            .checked_mul(old.extent())
            .ok_or(TypeError::Overflow { constructor: C })?;
        Type::hvector_named(C, count, blocklen, bytes, old)
    }

    /// `MPI_Type_create_hvector` (MPI-3.1 §4.1.2): like `vector`, stride in bytes.
    pub fn hvector(
        count: usize,
        blocklen: usize,
        stride: isize,
        old: &Type,
    ) -> Result<Type, TypeError> {
        Type::hvector_named("MPI_Type_create_hvector", count, blocklen, stride, old)
    }

    fn hvector_named(
        c: &'static str,
        count: usize,
        blocklen: usize,
        stride: isize,
        old: &Type,
    ) -> Result<Type, TypeError> {
        let ob = old.bounds();
        let ext = ob.extent();
        // The three cases of Open MPI's ompi_datatype_create_hvector.
        let bounds = if count == 0 || blocklen == 0 {
            Bounds::EMPTY
        } else {
            let total = count
                .checked_mul(blocklen)
                .ok_or(TypeError::Overflow { constructor: c })?;
            let mut b = Builder::new();
            if ext as i128 * blocklen as i128 == stride as i128 || count <= 1 {
                b.add(ob, total, 0, ext).map_err(overflow(c))?;
            } else if blocklen == 1 {
                b.add(ob, count, 0, stride).map_err(overflow(c))?;
            } else {
                let mut inner = Builder::new();
                inner.add(ob, blocklen, 0, ext).map_err(overflow(c))?;
                b.add(&inner.finish(), count, 0, stride)
                    .map_err(overflow(c))?;
            }
            b.finish()
        };
        Ok(Type::new(
            Kind::HVector {
                count,
                blocklen,
                stride,
                child: old.clone(),
            },
            bounds,
        ))
    }

    /// `MPI_Type_indexed` (MPI-3.1 §4.1.2): blocks of `blocklens[i]` copies of `old` at
    /// `displs[i]` extents of `old`. Lowers to an hindexed.
    pub fn indexed(blocklens: &[usize], displs: &[isize], old: &Type) -> Result<Type, TypeError> {
        const C: &str = "MPI_Type_indexed";
        TypeError::check_len(C, "blocklens", blocklens.len(), "displs", displs.len())?;
        let bytes = scale(C, displs, old.extent())?;
        Type::hindexed_named(C, blocklens, bytes, old)
    }

    /// `MPI_Type_create_hindexed` (MPI-3.1 §4.1.2): like `indexed`, displacements in bytes.
    pub fn hindexed(blocklens: &[usize], displs: &[isize], old: &Type) -> Result<Type, TypeError> {
        const C: &str = "MPI_Type_create_hindexed";
        TypeError::check_len(C, "blocklens", blocklens.len(), "displs", displs.len())?;
        Type::hindexed_named(C, blocklens, displs.to_vec(), old)
    }

    fn hindexed_named(
        c: &'static str,
        blocklens: &[usize],
        displs: Vec<isize>,
        old: &Type,
    ) -> Result<Type, TypeError> {
        let ob = old.bounds();
        let bounds = if ob.size == 0 {
            Bounds::EMPTY
        } else {
            runs_bounds(c, blocklens.iter().copied(), &displs, |_| ob)?
        };
        Ok(Type::new(
            Kind::HIndexed {
                blocklens: blocklens.to_vec(),
                displs,
                child: old.clone(),
            },
            bounds,
        ))
    }

    /// `MPI_Type_create_indexed_block` (MPI-3.1 §4.1.2): blocks of `blocklen` copies of `old`
    /// at `displs[i]` extents of `old`. Lowers to a block-hindexed.
    pub fn indexed_block(blocklen: usize, displs: &[isize], old: &Type) -> Result<Type, TypeError> {
        const C: &str = "MPI_Type_create_indexed_block";
        let bytes = scale(C, displs, old.extent())?;
        Type::hindexed_block_named(C, blocklen, bytes, old)
    }

    /// `MPI_Type_create_hindexed_block` (MPI-3.1 §4.1.2): like `indexed_block`, displacements
    /// in bytes.
    pub fn hindexed_block(
        blocklen: usize,
        displs: &[isize],
        old: &Type,
    ) -> Result<Type, TypeError> {
        Type::hindexed_block_named(
            "MPI_Type_create_hindexed_block",
            blocklen,
            displs.to_vec(),
            old,
        )
    }

    fn hindexed_block_named(
        c: &'static str,
        blocklen: usize,
        displs: Vec<isize>,
        old: &Type,
    ) -> Result<Type, TypeError> {
        let ob = old.bounds();
        // Unlike hindexed, Open MPI 4.1 does not empty a block-indexed type of a zero-size
        // old type: its runs still move lb and ub.
        let bounds = if blocklen == 0 {
            Bounds::EMPTY
        } else {
            runs_bounds(c, displs.iter().map(|_| blocklen), &displs, |_| ob)?
        };
        Ok(Type::new(
            Kind::BlockHIndexed {
                blocklen,
                displs,
                child: old.clone(),
            },
            bounds,
        ))
    }

    /// `MPI_Type_create_struct` (MPI-3.1 §4.1.2): blocks of `blocklens[i]` copies of
    /// `types[i]` at byte displacements `displs[i]`.
    ///
    /// The extent is rounded up to the largest alignment of the predefined types inside
    /// (the §4.1.6 epsilon), as Open MPI 4.1 does: `struct {int@0, char@4}` has extent 8.
    pub fn struct_(
        blocklens: &[usize],
        displs: &[isize],
        types: &[Type],
    ) -> Result<Type, TypeError> {
        const C: &str = "MPI_Type_create_struct";
        TypeError::check_len(C, "blocklens", blocklens.len(), "displs", displs.len())?;
        TypeError::check_len(C, "blocklens", blocklens.len(), "types", types.len())?;
        let bounds = struct_bounds(blocklens, displs, types).map_err(overflow(C))?;
        Ok(Type::new(
            Kind::Struct {
                blocklens: blocklens.to_vec(),
                displs: displs.to_vec(),
                children: types.to_vec(),
            },
            bounds,
        ))
    }

    /// `MPI_Type_create_resized` (MPI-3.1 §4.1.7): the same type map with lower bound `lb`
    /// and extent `extent` (which may be zero or negative).
    pub fn resized(lb: isize, extent: isize, old: &Type) -> Result<Type, TypeError> {
        const C: &str = "MPI_Type_create_resized";
        let bounds = old.bounds().resized(lb, extent).map_err(overflow(C))?;
        Ok(Type::new(
            Kind::Resized {
                lb,
                extent,
                child: old.clone(),
            },
            bounds,
        ))
    }

    /// `MPI_Type_dup` (MPI-3.1 §4.1.10): a type equal to this one.
    pub fn dup(&self) -> Type {
        self.clone()
    }

    /// Bytes of data in one element (`MPI_Type_size`, MPI-3.1 §4.1.5).
    pub fn size(&self) -> usize {
        self.bounds().size
    }

    /// Lower bound (`MPI_Type_get_extent`, MPI-3.1 §4.1.7).
    pub fn lb(&self) -> isize {
        self.bounds().lb
    }

    /// Upper bound, `lb + extent` (MPI-3.1 §4.1.6).
    pub fn ub(&self) -> isize {
        self.bounds().ub
    }

    /// Extent, `ub - lb`: the distance between consecutive elements of a count
    /// (MPI-3.1 §4.1.7).
    pub fn extent(&self) -> isize {
        self.bounds().extent()
    }

    /// Lowest byte of data, ignoring resizing (`MPI_Type_get_true_extent`, MPI-3.1 §4.1.8).
    pub fn true_lb(&self) -> isize {
        self.bounds().true_lb
    }

    /// One past the highest byte of data (MPI-3.1 §4.1.8).
    pub fn true_ub(&self) -> isize {
        self.bounds().true_ub
    }

    /// `true_ub - true_lb` (MPI-3.1 §4.1.8).
    pub fn true_extent(&self) -> isize {
        self.true_ub() - self.true_lb()
    }

    /// Bytes that `MPI_Pack` writes for `count` elements (`MPI_Pack_size`, MPI-3.1 §4.2),
    /// or `None` if that overflows.
    pub fn packed_size(&self, count: usize) -> Option<usize> {
        self.size().checked_mul(count)
    }

    /// A one-line summary: kind, size, bounds.
    fn signature(&self) -> String {
        let b = self.bounds();
        format!(
            "{} size={} lb={} extent={} true_lb={} true_extent={}",
            self.0.kind.name(),
            b.size,
            b.lb,
            b.extent(),
            b.true_lb,
            b.true_ub - b.true_lb
        )
    }

    /// The IR tree, one node a line, indented by depth, with each node's bounds.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        self.describe_into(&mut out, 0);
        out
    }

    fn describe_into(&self, out: &mut String, depth: usize) {
        use std::fmt::Write as _;
        let b = self.bounds();
        let _ = write!(out, "{:width$}", "", width = depth * 2);
        let _ = match &self.0.kind {
            Kind::Named { size } => write!(out, "named({size})"),
            Kind::Contig { count, .. } => write!(out, "contig(count={count})"),
            Kind::HVector {
                count,
                blocklen,
                stride,
                ..
            } => write!(
                out,
                "hvector(count={count}, blocklen={blocklen}, stride={stride})"
            ),
            Kind::BlockHIndexed {
                blocklen, displs, ..
            } => write!(
                out,
                "blockhindexed(blocklen={blocklen}, displs={})",
                list(displs)
            ),
            Kind::HIndexed {
                blocklens, displs, ..
            } => write!(
                out,
                "hindexed(blocklens={}, displs={})",
                list(blocklens),
                list(displs)
            ),
            Kind::Struct {
                blocklens, displs, ..
            } => write!(
                out,
                "struct(blocklens={}, displs={})",
                list(blocklens),
                list(displs)
            ),
            Kind::Resized { lb, extent, .. } => write!(out, "resized(lb={lb}, extent={extent})"),
        };
        let _ = writeln!(
            out,
            "  [size={} lb={} ub={} true_lb={} true_ub={}]",
            b.size, b.lb, b.ub, b.true_lb, b.true_ub
        );
        for child in self.0.kind.children() {
            child.describe_into(out, depth + 1);
        }
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Kind {
    fn name(&self) -> &'static str {
        match self {
            Kind::Named { .. } => "named",
            Kind::Contig { .. } => "contig",
            Kind::HVector { .. } => "hvector",
            Kind::BlockHIndexed { .. } => "blockhindexed",
            Kind::HIndexed { .. } => "hindexed",
            Kind::Struct { .. } => "struct",
            Kind::Resized { .. } => "resized",
        }
    }

    fn children(&self) -> Vec<&Type> {
        match self {
            Kind::Named { .. } => Vec::new(),
            Kind::Contig { child, .. }
            | Kind::HVector { child, .. }
            | Kind::BlockHIndexed { child, .. }
            | Kind::HIndexed { child, .. }
            | Kind::Resized { child, .. } => vec![child],
            Kind::Struct { children, .. } => children.iter().collect(),
        }
    }
}

/// `[a, b, c]`, eliding the middle of long lists.
fn list<T: fmt::Display>(items: &[T]) -> String {
    let show = |v: &[T]| {
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if items.len() <= 8 {
        format!("[{}]", show(items))
    } else {
        format!(
            "[{}, ... ({} more), {}]",
            show(&items[..4]),
            items.len() - 6,
            show(&items[items.len() - 2..])
        )
    }
}

/// Element displacements times the old extent, in bytes.
fn scale(c: &'static str, displs: &[isize], extent: isize) -> Result<Vec<isize>, TypeError> {
    displs
        .iter()
        .map(|d| {
            d.checked_mul(extent)
                .ok_or(TypeError::Overflow { constructor: c })
        })
        .collect()
}

/// The bounds of an (h)indexed type, built as Open MPI 4.1's ompi_datatype_create_hindexed
/// does.
///
/// 1. Skip leading zero-length blocks; if all are zero the type is empty.
/// 2. Merge each block that starts where the previous run ends into that run.
/// 3. Add each run, in order.
fn runs_bounds<'a>(
    c: &'static str,
    blocklens: impl Iterator<Item = usize> + Clone,
    displs: &[isize],
    child: impl Fn(usize) -> &'a Bounds,
) -> Result<Bounds, TypeError> {
    let lens: Vec<usize> = blocklens.collect();
    // Step 1.
    let Some(first) = lens.iter().position(|&l| l != 0) else {
        return Ok(Bounds::EMPTY);
    };
    let ob = child(first);
    let ext = ob.extent() as i128;
    let mut b = Builder::new();
    let (mut disp, mut len) = (displs[first], lens[first]);
    let mut end = disp as i128 + len as i128 * ext;
    // Step 2.
    for i in first + 1..lens.len() {
        if displs[i] as i128 == end {
            len = len
                .checked_add(lens[i])
                .ok_or(TypeError::Overflow { constructor: c })?;
            end += lens[i] as i128 * ext;
        } else {
            // Step 3.
            b.add(ob, len, disp, ob.extent()).map_err(overflow(c))?;
            disp = displs[i];
            len = lens[i];
            end = disp as i128 + len as i128 * ext;
        }
    }
    b.add(ob, len, disp, ob.extent()).map_err(overflow(c))?;
    Ok(b.finish())
}

/// The bounds of a struct, built as Open MPI 4.1's ompi_datatype_create_struct does: like
/// [`runs_bounds`], where a run continues only while the type handle stays the same.
fn struct_bounds(
    blocklens: &[usize],
    displs: &[isize],
    types: &[Type],
) -> Result<Bounds, Overflow> {
    let Some(first) = blocklens.iter().position(|&l| l != 0) else {
        return Ok(Bounds::EMPTY);
    };
    let mut b = Builder::new();
    let mut ty = &types[first];
    let (mut disp, mut len) = (displs[first], blocklens[first]);
    let mut end = disp as i128 + len as i128 * ty.extent() as i128;
    for i in first + 1..blocklens.len() {
        if same_handle(&types[i], ty) && displs[i] as i128 == end {
            len = len.checked_add(blocklens[i]).ok_or(Overflow)?;
            end = disp as i128 + len as i128 * ty.extent() as i128;
        } else {
            b.add(ty.bounds(), len, disp, ty.extent())?;
            ty = &types[i];
            disp = displs[i];
            len = blocklens[i];
            end = disp as i128 + len as i128 * ty.extent() as i128;
        }
    }
    b.add(ty.bounds(), len, disp, ty.extent())?;
    Ok(b.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int() -> Type {
        Type::named(4)
    }

    fn dbl() -> Type {
        Type::named(8)
    }

    fn ch() -> Type {
        Type::named(1)
    }

    /// (size, lb, extent, true_lb, true_extent), as MPI_Type_size, MPI_Type_get_extent and
    /// MPI_Type_get_true_extent report them.
    fn b(t: &Type) -> (usize, isize, isize, isize, isize) {
        (t.size(), t.lb(), t.extent(), t.true_lb(), t.true_extent())
    }

    // Every expected tuple below was checked against Open MPI 4.1.4.

    #[test]
    fn named_types() {
        assert_eq!(b(&int()), (4, 0, 4, 0, 4));
        assert_eq!(b(&Type::named(0)), (0, 0, 0, 0, 0));
        assert!(Type::named_aligned(16, 3).is_err());
    }

    #[test]
    fn contiguous() {
        assert_eq!(b(&Type::contiguous(3, &int()).unwrap()), (12, 0, 12, 0, 12));
        assert_eq!(b(&Type::contiguous(0, &int()).unwrap()), (0, 0, 0, 0, 0));
        let r = Type::resized(0, -4, &int()).unwrap();
        assert_eq!(b(&r), (4, 0, -4, 0, 4));
        assert_eq!(b(&Type::contiguous(3, &r).unwrap()), (12, -8, 4, -8, 12));
        let r3 = Type::resized(0, 3, &int()).unwrap();
        assert_eq!(b(&Type::contiguous(3, &r3).unwrap()), (12, 0, 9, 0, 10));
    }

    #[test]
    fn vector_and_hvector() {
        assert_eq!(
            b(&Type::vector(2, 2, 2, &int()).unwrap()),
            (16, 0, 16, 0, 16)
        );
        assert_eq!(
            b(&Type::vector(4, 2, 8, &int()).unwrap()),
            (32, 0, 104, 0, 104)
        );
        assert_eq!(
            b(&Type::vector(3, 2, -3, &int()).unwrap()),
            (24, -24, 32, -24, 32)
        );
        assert_eq!(
            b(&Type::hvector(3, 1, -8, &int()).unwrap()),
            (12, -16, 20, -16, 20)
        );
        assert_eq!(
            b(&Type::hvector(3, 2, -16, &int()).unwrap()),
            (24, -32, 40, -32, 40)
        );
        // Alignment rounding: [-6, 8) rounds up to extent 16.
        assert_eq!(
            b(&Type::hvector(3, 2, -3, &int()).unwrap()),
            (24, -6, 16, -6, 14)
        );
        assert_eq!(
            b(&Type::hvector(2, 1, 6, &int()).unwrap()),
            (8, 0, 12, 0, 10)
        );
        assert_eq!(b(&Type::hvector(2, 1, 0, &int()).unwrap()), (8, 0, 4, 0, 4));
        assert_eq!(b(&Type::vector(0, 2, 3, &int()).unwrap()), (0, 0, 0, 0, 0));
        assert_eq!(b(&Type::vector(3, 0, 2, &int()).unwrap()), (0, 0, 0, 0, 0));
        let r = Type::resized(-4, 12, &int()).unwrap();
        assert_eq!(
            b(&Type::vector(3, 2, -3, &r).unwrap()),
            (24, -76, 96, -72, 88)
        );
    }

    #[test]
    fn indexed_family() {
        assert_eq!(
            b(&Type::hindexed(&[1, 1], &[0, 8], &ch()).unwrap()),
            (2, 0, 9, 0, 9)
        );
        assert_eq!(
            b(&Type::hindexed(&[1, 1], &[0, 6], &int()).unwrap()),
            (8, 0, 12, 0, 10)
        );
        assert_eq!(
            b(&Type::hindexed(&[0, 1], &[100, 200], &int()).unwrap()),
            (4, 200, 4, 200, 4)
        );
        assert_eq!(
            b(&Type::hindexed(&[0, 0], &[100, 200], &int()).unwrap()),
            (0, 0, 0, 0, 0)
        );
        assert_eq!(
            b(&Type::indexed(&[2, 1], &[3, -2], &int()).unwrap()),
            (12, -8, 28, -8, 28)
        );
        assert_eq!(
            b(&Type::hindexed_block(1, &[0, 6], &int()).unwrap()),
            (8, 0, 12, 0, 10)
        );
        assert_eq!(
            b(&Type::indexed_block(2, &[4, 0], &int()).unwrap()),
            (16, 0, 24, 0, 24)
        );
        let r = Type::resized(-4, 12, &int()).unwrap();
        assert_eq!(
            b(&Type::hindexed(&[0, 1], &[100, 200], &r).unwrap()),
            (4, 196, 12, 200, 4)
        );
        assert_eq!(
            b(&Type::hindexed_block(0, &[100, 200], &r).unwrap()),
            (0, 0, 0, 0, 0)
        );
        let z = Type::contiguous(0, &int()).unwrap();
        assert_eq!(
            b(&Type::hindexed_block(2, &[0, 28, 30, -2], &z).unwrap()),
            (0, -2, 32, 0, 0)
        );
        assert_eq!(
            b(&Type::hindexed(&[1, 1], &[100, 200], &z).unwrap()),
            (0, 0, 0, 0, 0)
        );
        assert!(matches!(
            Type::hindexed(&[1], &[0, 1], &int()),
            Err(TypeError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn struct_pads_to_alignment() {
        let s = |bl: &[usize], d: &[isize], t: &[Type]| b(&Type::struct_(bl, d, t).unwrap());
        assert_eq!(s(&[1, 1], &[0, 4], &[int(), ch()]), (5, 0, 8, 0, 5));
        assert_eq!(s(&[1, 1], &[0, 8], &[dbl(), ch()]), (9, 0, 16, 0, 9));
        assert_eq!(s(&[1, 1], &[2, 9], &[int(), ch()]), (5, 2, 8, 2, 8));
        assert_eq!(
            s(&[1, 1], &[0, 8], &[Type::named(2), ch()]),
            (3, 0, 10, 0, 9)
        );
        assert_eq!(s(&[3, 1], &[0, 8], &[dbl(), ch()]), (25, 0, 24, 0, 24));
        assert_eq!(
            s(&[1, 1], &[100, 200], &[int(), int()]),
            (8, 100, 104, 100, 104)
        );
        assert_eq!(
            s(&[1, 1, 1], &[0, 8, -1], &[int(), ch(), ch()]),
            (6, -1, 16, -1, 10)
        );
        assert_eq!(
            s(&[1, 1, 1], &[0, 4, -1], &[int(), ch(), ch()]),
            (6, -1, 12, -1, 6)
        );
        assert_eq!(s(&[0, 0], &[100, 200], &[int(), int()]), (0, 0, 0, 0, 0));
        assert_eq!(s(&[], &[], &[]), (0, 0, 0, 0, 0));
        let pair = Type::struct_(&[1, 1], &[0, 4], &[int(), ch()]).unwrap();
        assert_eq!(b(&Type::contiguous(2, &pair).unwrap()), (10, 0, 16, 0, 13));
    }

    #[test]
    fn resized_markers_are_sticky() {
        let r = Type::resized(4, 4, &int()).unwrap();
        assert_eq!(b(&r), (4, 4, 4, 0, 4));
        assert_eq!(
            b(&Type::struct_(&[1, 1], &[0, 0], &[int(), r.clone()]).unwrap()),
            (8, 4, 4, 0, 4)
        );
        let rd = Type::resized(0, 6, &dbl()).unwrap();
        assert_eq!(
            b(&Type::struct_(&[1, 1], &[0, 20], &[rd, ch()]).unwrap()),
            (9, 0, 6, 0, 21)
        );
        let z = Type::contiguous(0, &int()).unwrap();
        let rz = Type::resized(-4, 12, &z).unwrap();
        assert_eq!(b(&rz), (0, -4, 12, 0, 0));
        assert_eq!(
            b(&Type::struct_(&[1, 1], &[0, 100], &[int(), rz.clone()]).unwrap()),
            (4, 96, 12, 0, 4)
        );
        // Open MPI's contiguous and hindexed of a zero-size type drop its markers.
        assert_eq!(b(&Type::contiguous(3, &rz).unwrap()), (0, 0, 0, 0, 0));
        assert_eq!(b(&Type::vector(3, 2, 5, &rz).unwrap()).2, 144);
    }

    #[test]
    fn zero_size_entries_still_move_bounds() {
        // A quirk of Open MPI 4.1 that ferry keeps: the empty child at 100 sets ub to 100.
        let z = Type::contiguous(0, &int()).unwrap();
        assert_eq!(
            b(&Type::struct_(&[1, 1], &[0, 100], &[int(), z.clone()]).unwrap()),
            (4, 0, 100, 0, 4)
        );
        assert_eq!(
            b(&Type::struct_(&[1, 1], &[-100, 0], &[z.clone(), int()]).unwrap()),
            (4, -100, 104, 0, 4)
        );
        assert_eq!(b(&Type::hvector(2, 1, 100, &z).unwrap()).2, 100);
    }

    #[test]
    fn dup_is_equal() {
        let v = Type::vector(3, 2, 5, &int()).unwrap();
        assert_eq!(v.dup(), v);
        assert_eq!(Type::vector(3, 2, 5, &int()).unwrap(), v);
        assert_ne!(Type::vector(3, 2, 6, &int()).unwrap(), v);
    }

    #[test]
    fn describe_prints_the_tree() {
        let v = Type::vector(3, 2, 5, &int()).unwrap();
        let text = v.describe();
        assert_eq!(
            text,
            "hvector(count=3, blocklen=2, stride=20)  [size=24 lb=0 ub=48 true_lb=0 true_ub=48]\n  \
             named(4)  [size=4 lb=0 ub=4 true_lb=0 true_ub=4]\n"
        );
    }
}
