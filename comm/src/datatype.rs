//! From MPI datatype handles to ferry's datatype IR, through MPI_Type_get_envelope and
//! MPI_Type_get_contents (MPI-3.1 §4.1.13), recursively.
//!
//! Written for Open MPI's ABI (4.1, the CI's and the GPU machines' MPI). Every datatype handle
//! that MPI_Type_get_contents returns and that is not predefined is freed, as §4.1.13 requires.
//! The result is checked against MPI's own size, extent and true extent, so a type ferry would
//! describe differently from the library is reported as [`DatatypeError::Unsupported`] and the
//! caller falls back to MPI's own datatype path, never packs wrongly.
//!
//! These calls go through `PMPI_*`, so the introspection never re-enters an interposer
//! (including ferry's own) that wraps MPI_Type_free.
//!
//! Predefined types carry their alignment (measured from the library, see `alignment`), and the pair types (MPI_DOUBLE_INT, ...) are
//! described as the structs they are, so structs built on them pad as Open MPI pads them.
//!
//! Not done yet: external32 is left to the library; Fortran pair types are checked only
//! through the extents comparison.

use std::ffi::c_int;
use std::sync::Mutex;

use ferry_datatypes::{Darg, Distribution, Order, Type};
use mpi::ffi;

/// Why an MPI datatype could not be described in ferry's IR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatatypeError {
    /// An MPI call failed.
    #[error("{call} failed with MPI error {code}")]
    Mpi {
        /// The MPI function.
        call: &'static str,
        /// Its return code.
        code: i32,
    },
    /// ferry does not handle this type; use MPI's own datatype path.
    #[error("datatype not supported by ferry: {0}")]
    Unsupported(String),
}

fn check(call: &'static str, code: c_int) -> Result<(), DatatypeError> {
    if code == ffi::MPI_SUCCESS as c_int {
        Ok(())
    } else {
        Err(DatatypeError::Mpi { call, code })
    }
}

/// Size, lb, extent, true lb and true extent as MPI reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MpiExtents {
    /// MPI_Type_size.
    pub size: isize,
    /// MPI_Type_get_extent's lb.
    pub lb: isize,
    /// MPI_Type_get_extent's extent.
    pub extent: isize,
    /// MPI_Type_get_true_extent's lb.
    pub true_lb: isize,
    /// MPI_Type_get_true_extent's extent.
    pub true_extent: isize,
}

/// Reads a datatype's size and extents from MPI.
///
/// # Safety
/// MPI must be initialised and `datatype` a valid datatype handle.
pub unsafe fn mpi_extents(datatype: ffi::MPI_Datatype) -> Result<MpiExtents, DatatypeError> {
    let mut size: ffi::MPI_Count = 0;
    let (mut lb, mut extent, mut tlb, mut textent): (
        ffi::MPI_Aint,
        ffi::MPI_Aint,
        ffi::MPI_Aint,
        ffi::MPI_Aint,
    ) = (0, 0, 0, 0);
    // SAFETY: the caller guarantees a valid handle; the out-parameters are locals.
    unsafe {
        check(
            "MPI_Type_size_x",
            ffi::PMPI_Type_size_x(datatype, &mut size),
        )?;
        check(
            "MPI_Type_get_extent",
            ffi::PMPI_Type_get_extent(datatype, &mut lb, &mut extent),
        )?;
        check(
            "MPI_Type_get_true_extent",
            ffi::PMPI_Type_get_true_extent(datatype, &mut tlb, &mut textent),
        )?;
    }
    Ok(MpiExtents {
        size: size as isize,
        lb,
        extent,
        true_lb: tlb,
        true_extent: textent,
    })
}

/// Describes an MPI datatype in ferry's IR (recursively through its constructors) and checks
/// the description against MPI's own size and extents.
///
/// # Safety
/// MPI must be initialised and `datatype` a valid datatype handle.
pub unsafe fn type_from_mpi(datatype: ffi::MPI_Datatype) -> Result<Type, DatatypeError> {
    // SAFETY: forwarded caller contract.
    let ty = unsafe { decode(datatype, 0)? };
    // SAFETY: forwarded caller contract.
    let want = unsafe { mpi_extents(datatype)? };
    let got = MpiExtents {
        size: ty.size() as isize,
        lb: ty.lb(),
        extent: ty.extent(),
        true_lb: ty.true_lb(),
        true_extent: ty.true_extent(),
    };
    if !extents_agree(&got, &want) {
        return Err(DatatypeError::Unsupported(format!(
            "ferry's description ({got:?}) differs from MPI's ({want:?}) for {}",
            ty.describe()
        )));
    }
    Ok(ty)
}

/// Whether ferry's and MPI's descriptions agree. For a type with no data the true bounds are
/// not meaningful (Open MPI reports sentinels such as `true_lb = isize::MAX`), so only size,
/// lb and extent are compared.
pub fn extents_agree(ours: &MpiExtents, theirs: &MpiExtents) -> bool {
    if ours.size == 0 && theirs.size == 0 {
        return ours.lb == theirs.lb && ours.extent == theirs.extent;
    }
    ours == theirs
}

/// Deepest constructor nesting ferry follows before giving up (guards against cycles in a
/// broken library and against stack exhaustion).
const MAX_DEPTH: usize = 64;

/// One level of decoding; frees the inner handles it obtained.
unsafe fn decode(datatype: ffi::MPI_Datatype, depth: usize) -> Result<Type, DatatypeError> {
    if depth > MAX_DEPTH {
        return Err(DatatypeError::Unsupported(format!(
            "nested deeper than {MAX_DEPTH} constructors"
        )));
    }
    let (mut ni, mut na, mut nd, mut combiner): (c_int, c_int, c_int, c_int) = (0, 0, 0, 0);
    // SAFETY: valid handle (caller); out-parameters are locals.
    check("MPI_Type_get_envelope", unsafe {
        ffi::PMPI_Type_get_envelope(datatype, &mut ni, &mut na, &mut nd, &mut combiner)
    })?;
    let combiner = combiner as u32;
    if combiner == ffi::MPI_COMBINER_NAMED
        || combiner == ffi::MPI_COMBINER_F90_REAL
        || combiner == ffi::MPI_COMBINER_F90_COMPLEX
        || combiner == ffi::MPI_COMBINER_F90_INTEGER
    {
        // SAFETY: valid handle (caller).
        return unsafe { named(datatype) };
    }
    let mut ints = vec![0 as c_int; ni.max(0) as usize];
    let mut addrs = vec![0 as ffi::MPI_Aint; na.max(0) as usize];
    let mut types: Vec<ffi::MPI_Datatype> =
        vec![ffi::MPI_Datatype(std::ptr::null_mut()); nd.max(0) as usize];
    // SAFETY: the arrays have exactly the lengths the envelope asked for.
    check("MPI_Type_get_contents", unsafe {
        ffi::PMPI_Type_get_contents(
            datatype,
            ni,
            na,
            nd,
            ints.as_mut_ptr(),
            addrs.as_mut_ptr(),
            types.as_mut_ptr(),
        )
    })?;
    // Decode the children first, then free every derived one whatever happened.
    let mut children = Vec::with_capacity(types.len());
    let mut failure = None;
    for &t in &types {
        if failure.is_none() {
            // SAFETY: `t` is a valid handle returned by MPI_Type_get_contents.
            match unsafe { decode(t, depth + 1) } {
                Ok(c) => children.push(c),
                Err(e) => failure = Some(e),
            }
        }
    }
    for t in types {
        // SAFETY: `t` came from MPI_Type_get_contents; only derived types may be freed.
        unsafe { free_if_derived(t) };
    }
    if let Some(e) = failure {
        return Err(e);
    }
    build(combiner, &ints, &addrs, &children)
}

/// The address of one of Open MPI's predefined datatype objects, which is its handle.
macro_rules! predefined {
    ($name:ident) => {
        (&raw mut ffi::$name).cast::<ffi::ompi_datatype_t>()
    };
}

/// The alignment the library gives predefined type `handle` of `size` bytes, the one that pads
/// structs built on it (MPI-3.1 §4.1.6 epsilon), measured once per type: the extent of
/// `struct { char @0; T @d }`, with `d + size` one past a multiple of 64, is that multiple
/// plus the alignment (for any power of two up to 64). Measured rather than tabled, since it
/// differs from the size capped at 8 for several types and between builds: Open MPI 4.1 aligns
/// `long double` to 16, and `MPI_C_FLOAT_COMPLEX`, `MPI_2INT`, `MPI_FLOAT_INT` and Fortran's
/// `MPI_COMPLEX`, `MPI_2REAL`, `MPI_2INTEGER` to 4 (BLACS builds structs on `MPI_COMPLEX`).
///
/// # Safety
/// MPI must be initialised and `handle` a valid predefined datatype handle.
unsafe fn alignment(handle: ffi::MPI_Datatype, size: usize) -> Result<usize, DatatypeError> {
    static MEASURED: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());
    let key = handle.0 as usize;
    let cached = |m: &Vec<(usize, usize)>| m.iter().find(|e| e.0 == key).map(|e| e.1);
    if let Some(a) = cached(&MEASURED.lock().unwrap_or_else(|e| e.into_inner())) {
        return Ok(a);
    }
    if size == 0 {
        return Ok(1);
    }
    let d = (1 - size as i128).rem_euclid(64) as ffi::MPI_Aint;
    let mut members = [predefined_char(), handle];
    let blocklens: [c_int; 2] = [1, 1];
    let displs: [ffi::MPI_Aint; 2] = [0, d];
    let mut probe = ffi::MPI_Datatype(std::ptr::null_mut());
    let (mut lb, mut extent): (ffi::MPI_Aint, ffi::MPI_Aint) = (0, 0);
    // SAFETY: the arrays hold two entries each and `handle` is valid (caller); the probe is a
    // type of our own, freed before returning whatever the outcome.
    let measured = unsafe {
        check(
            "MPI_Type_create_struct",
            ffi::PMPI_Type_create_struct(
                2,
                blocklens.as_ptr(),
                displs.as_ptr(),
                members.as_mut_ptr(),
                &mut probe,
            ),
        )?;
        let r = check(
            "MPI_Type_get_extent",
            ffi::PMPI_Type_get_extent(probe, &mut lb, &mut extent),
        );
        ffi::PMPI_Type_free(&mut probe);
        r
    };
    measured?;
    let multiple = d + size as ffi::MPI_Aint - 1;
    let a = (extent - multiple) as usize;
    if lb != 0 || !a.is_power_of_two() || a > 64 {
        return Err(DatatypeError::Unsupported(format!(
            "cannot measure the alignment of a predefined type of {size} bytes: struct \
             {{char@0, type@{d}}} has lb {lb} and extent {extent}"
        )));
    }
    MEASURED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((key, a));
    Ok(a)
}

/// `MPI_CHAR`, the first member of the alignment probe.
fn predefined_char() -> ffi::MPI_Datatype {
    ffi::MPI_Datatype(predefined!(ompi_mpi_char))
}

/// Predefined pair types (MPI-3.1 §5.9.4) described as the structs they are, so that bounds and
/// padding follow Open MPI: (first member size, its alignment, offset of the int).
fn pair_layout(handle: ffi::MPI_Datatype) -> Option<(usize, usize, isize)> {
    let h = handle.0;
    if h == predefined!(ompi_mpi_double_int) || h == predefined!(ompi_mpi_long_int) {
        Some((8, 8, 8))
    } else if h == predefined!(ompi_mpi_short_int) {
        Some((2, 2, 4))
    } else if h == predefined!(ompi_mpi_longdbl_int) {
        Some((16, 16, 16))
    } else {
        None
    }
}

/// A predefined type: contiguous bytes with its alignment, or a pair type as a struct.
unsafe fn named(datatype: ffi::MPI_Datatype) -> Result<Type, DatatypeError> {
    let unsupported = |err: ferry_datatypes::TypeError| DatatypeError::Unsupported(err.to_string());
    if let Some((first, align, int_at)) = pair_layout(datatype) {
        let a = Type::named_aligned(first, align).map_err(unsupported)?;
        return Type::struct_(&[1, 1], &[0, int_at], &[a, Type::named(4)]).map_err(unsupported);
    }
    // SAFETY: valid handle (caller).
    let e = unsafe { mpi_extents(datatype)? };
    if e.size < 0 || e.true_extent != e.size || e.true_lb != 0 {
        return Err(DatatypeError::Unsupported(format!(
            "predefined type with non-contiguous bytes (size {}, true lb {}, true extent {})",
            e.size, e.true_lb, e.true_extent
        )));
    }
    let size = e.size as usize;
    // SAFETY: valid predefined handle (caller).
    let align = unsafe { alignment(datatype, size)? };
    let t = Type::named_aligned(size, align).map_err(unsupported)?;
    if e.lb == 0 && e.extent == e.size {
        Ok(t)
    } else {
        Type::resized(e.lb, e.extent, &t).map_err(unsupported)
    }
}

unsafe fn free_if_derived(t: ffi::MPI_Datatype) {
    let (mut ni, mut na, mut nd, mut combiner): (c_int, c_int, c_int, c_int) = (0, 0, 0, 0);
    // SAFETY: `t` is a valid handle (caller).
    let rc = unsafe { ffi::PMPI_Type_get_envelope(t, &mut ni, &mut na, &mut nd, &mut combiner) };
    if rc != ffi::MPI_SUCCESS as c_int || combiner as u32 == ffi::MPI_COMBINER_NAMED {
        return;
    }
    let mut t = t;
    // SAFETY: a derived type handle returned to us by MPI_Type_get_contents is ours to free.
    let rc = unsafe { ffi::PMPI_Type_free(&mut t) };
    if rc != ffi::MPI_SUCCESS as c_int {
        tracing::warn!(
            code = rc,
            "MPI_Type_free of a type from MPI_Type_get_contents failed"
        );
    }
}

fn count(v: c_int, what: &str) -> Result<usize, DatatypeError> {
    usize::try_from(v).map_err(|_| DatatypeError::Unsupported(format!("negative {what} {v}")))
}

fn counts(v: &[c_int], what: &str) -> Result<Vec<usize>, DatatypeError> {
    v.iter().map(|&x| count(x, what)).collect()
}

fn ints_at(ints: &[c_int], start: usize, n: usize) -> Result<&[c_int], DatatypeError> {
    ints.get(start..start + n).ok_or_else(|| {
        DatatypeError::Unsupported("MPI_Type_get_contents returned too few integers".into())
    })
}

fn order(v: c_int) -> Result<Order, DatatypeError> {
    match v as u32 {
        x if x == ffi::MPI_ORDER_C => Ok(Order::C),
        x if x == ffi::MPI_ORDER_FORTRAN => Ok(Order::Fortran),
        _ => Err(DatatypeError::Unsupported(format!(
            "unknown array order {v}"
        ))),
    }
}

/// Builds the IR node for one constructor from its envelope contents.
fn build(
    combiner: u32,
    ints: &[c_int],
    addrs: &[ffi::MPI_Aint],
    children: &[Type],
) -> Result<Type, DatatypeError> {
    let unsupported = |e: ferry_datatypes::TypeError| DatatypeError::Unsupported(e.to_string());
    let child = || {
        children
            .first()
            .ok_or_else(|| DatatypeError::Unsupported("constructor without an old type".into()))
    };
    let first = |what: &str| -> Result<usize, DatatypeError> {
        count(*ints_at(ints, 0, 1)?.first().unwrap_or(&0), what)
    };
    let t = match combiner {
        c if c == ffi::MPI_COMBINER_DUP => Ok(child()?.dup()),
        c if c == ffi::MPI_COMBINER_CONTIGUOUS => Type::contiguous(first("count")?, child()?),
        c if c == ffi::MPI_COMBINER_VECTOR => {
            let v = ints_at(ints, 0, 3)?;
            Type::vector(
                count(v[0], "count")?,
                count(v[1], "blocklength")?,
                v[2] as isize,
                child()?,
            )
        }
        c if c == ffi::MPI_COMBINER_HVECTOR => {
            let v = ints_at(ints, 0, 2)?;
            let stride = *addrs
                .first()
                .ok_or_else(|| DatatypeError::Unsupported("hvector without stride".into()))?;
            Type::hvector(
                count(v[0], "count")?,
                count(v[1], "blocklength")?,
                stride,
                child()?,
            )
        }
        c if c == ffi::MPI_COMBINER_INDEXED => {
            let n = first("count")?;
            let bl = counts(ints_at(ints, 1, n)?, "blocklength")?;
            let d: Vec<isize> = ints_at(ints, 1 + n, n)?
                .iter()
                .map(|&x| x as isize)
                .collect();
            Type::indexed(&bl, &d, child()?)
        }
        c if c == ffi::MPI_COMBINER_HINDEXED => {
            let n = first("count")?;
            let bl = counts(ints_at(ints, 1, n)?, "blocklength")?;
            let d = addrs
                .get(..n)
                .ok_or_else(|| DatatypeError::Unsupported("too few displacements".into()))?;
            Type::hindexed(&bl, d, child()?)
        }
        c if c == ffi::MPI_COMBINER_INDEXED_BLOCK => {
            let n = first("count")?;
            let bl = count(ints_at(ints, 1, 1)?[0], "blocklength")?;
            let d: Vec<isize> = ints_at(ints, 2, n)?.iter().map(|&x| x as isize).collect();
            Type::indexed_block(bl, &d, child()?)
        }
        c if c == ffi::MPI_COMBINER_HINDEXED_BLOCK => {
            let n = first("count")?;
            let bl = count(ints_at(ints, 1, 1)?[0], "blocklength")?;
            let d = addrs
                .get(..n)
                .ok_or_else(|| DatatypeError::Unsupported("too few displacements".into()))?;
            Type::hindexed_block(bl, d, child()?)
        }
        c if c == ffi::MPI_COMBINER_STRUCT => {
            let n = first("count")?;
            let bl = counts(ints_at(ints, 1, n)?, "blocklength")?;
            let d = addrs
                .get(..n)
                .ok_or_else(|| DatatypeError::Unsupported("too few displacements".into()))?;
            if children.len() < n {
                return Err(DatatypeError::Unsupported(
                    "struct with too few member types".into(),
                ));
            }
            Type::struct_(&bl, d, &children[..n])
        }
        c if c == ffi::MPI_COMBINER_SUBARRAY => {
            let nd = first("ndims")?;
            let sizes = counts(ints_at(ints, 1, nd)?, "size")?;
            let subs = counts(ints_at(ints, 1 + nd, nd)?, "subsize")?;
            let starts = counts(ints_at(ints, 1 + 2 * nd, nd)?, "start")?;
            let ord = order(ints_at(ints, 1 + 3 * nd, 1)?[0])?;
            Type::subarray(&sizes, &subs, &starts, ord, child()?)
        }
        c if c == ffi::MPI_COMBINER_DARRAY => {
            let head = ints_at(ints, 0, 3)?;
            let (size, rank, nd) = (
                count(head[0], "size")?,
                count(head[1], "rank")?,
                count(head[2], "ndims")?,
            );
            let gsizes = counts(ints_at(ints, 3, nd)?, "gsize")?;
            let distribs = ints_at(ints, 3 + nd, nd)?
                .iter()
                .map(|&d| match d as u32 {
                    x if x == ffi::MPI_DISTRIBUTE_BLOCK => Ok(Distribution::Block),
                    x if x == ffi::MPI_DISTRIBUTE_CYCLIC => Ok(Distribution::Cyclic),
                    x if x == ffi::MPI_DISTRIBUTE_NONE => Ok(Distribution::None),
                    _ => Err(DatatypeError::Unsupported(format!(
                        "unknown distribution {d}"
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let dargs = ints_at(ints, 3 + 2 * nd, nd)?
                .iter()
                .map(|&a| {
                    if a == ffi::MPI_DISTRIBUTE_DFLT_DARG {
                        Ok(Darg::Default)
                    } else {
                        count(a, "darg").map(Darg::Value)
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            let psizes = counts(ints_at(ints, 3 + 3 * nd, nd)?, "psize")?;
            let ord = order(ints_at(ints, 3 + 4 * nd, 1)?[0])?;
            Type::darray(
                size,
                rank,
                &gsizes,
                &distribs,
                &dargs,
                &psizes,
                ord,
                child()?,
            )
        }
        c if c == ffi::MPI_COMBINER_RESIZED => {
            let (lb, extent) = match addrs {
                [lb, extent, ..] => (*lb, *extent),
                _ => {
                    return Err(DatatypeError::Unsupported(
                        "resized without lb and extent".into(),
                    ));
                }
            };
            Type::resized(lb, extent, child()?)
        }
        other => return Err(DatatypeError::Unsupported(format!("combiner {other}"))),
    };
    t.map_err(unsupported)
}

/// Builds MPI datatypes from [`ferry_datatypes::testing::Recipe`]s, so tests and benchmarks can
/// compare ferry with the library on the very same type.
#[cfg(feature = "testing")]
pub mod testing {
    use std::ffi::c_int;

    use ferry_datatypes::testing::Recipe;
    use ferry_datatypes::{Darg, Distribution, Order};
    use mpi::ffi;

    use super::{DatatypeError, check};

    fn int(v: usize) -> Result<c_int, DatatypeError> {
        c_int::try_from(v)
            .map_err(|_| DatatypeError::Unsupported(format!("{v} does not fit a C int")))
    }

    fn ints(v: &[usize]) -> Result<Vec<c_int>, DatatypeError> {
        v.iter().map(|&x| int(x)).collect()
    }

    fn int_displs(v: &[isize]) -> Result<Vec<c_int>, DatatypeError> {
        v.iter()
            .map(|&x| {
                c_int::try_from(x)
                    .map_err(|_| DatatypeError::Unsupported(format!("{x} does not fit a C int")))
            })
            .collect()
    }

    fn order(o: Order) -> c_int {
        match o {
            Order::C => ffi::MPI_ORDER_C as c_int,
            Order::Fortran => ffi::MPI_ORDER_FORTRAN as c_int,
        }
    }

    fn named(size: usize) -> Result<ffi::MPI_Datatype, DatatypeError> {
        // SAFETY: reading immutable predefined handles exported by rsmpi's C shim.
        unsafe {
            Ok(match size {
                1 => ffi::RSMPI_UINT8_T,
                2 => ffi::RSMPI_INT16_T,
                4 => ffi::RSMPI_INT32_T,
                8 => ffi::RSMPI_DOUBLE,
                other => {
                    return Err(DatatypeError::Unsupported(format!(
                        "no predefined type of {other} bytes"
                    )));
                }
            })
        }
    }

    /// Builds (without committing) the MPI datatype a recipe describes. The caller owns the
    /// result and frees it with MPI_Type_free (unless it is predefined: a `Named` recipe).
    ///
    /// # Safety
    /// MPI must be initialised.
    // Each constructor call sits in a one-line closure; the SAFETY comment above the match
    // covers all of them.
    #[allow(clippy::undocumented_unsafe_blocks)]
    pub unsafe fn mpi_type_from_recipe(
        recipe: &Recipe,
    ) -> Result<ffi::MPI_Datatype, DatatypeError> {
        let mut out = ffi::MPI_Datatype(std::ptr::null_mut());
        // Builds the inner type, runs `make` on it, and frees the inner type if it is derived.
        let with_old = |old: &Recipe,
                        out: &mut ffi::MPI_Datatype,
                        make: &dyn Fn(ffi::MPI_Datatype, &mut ffi::MPI_Datatype) -> c_int,
                        call: &'static str|
         -> Result<(), DatatypeError> {
            // SAFETY: forwarded caller contract.
            let inner = unsafe { mpi_type_from_recipe(old)? };
            let rc = make(inner, out);
            if !matches!(old, Recipe::Named { .. }) {
                let mut inner = inner;
                // SAFETY: `inner` is a derived type we created; the outer type keeps what it needs.
                unsafe { ffi::PMPI_Type_free(&mut inner) };
            }
            check(call, rc)
        };
        // SAFETY (every constructor call below): the arrays live across the call and have the
        // lengths passed; `o` is a valid handle; `out` is an out-parameter.
        match recipe {
            Recipe::Named { size } => return named(*size),
            Recipe::Contiguous { count, old } => {
                let n = int(*count)?;
                with_old(
                    old,
                    &mut out,
                    &|o, out| unsafe { ffi::PMPI_Type_contiguous(n, o, out) },
                    "MPI_Type_contiguous",
                )?
            }
            Recipe::Vector {
                count,
                blocklen,
                stride,
                old,
            } => {
                let (n, b, s) = (int(*count)?, int(*blocklen)?, int_displs(&[*stride])?[0]);
                with_old(
                    old,
                    &mut out,
                    &|o, out| unsafe { ffi::PMPI_Type_vector(n, b, s, o, out) },
                    "MPI_Type_vector",
                )?
            }
            Recipe::HVector {
                count,
                blocklen,
                stride,
                old,
            } => {
                let (n, b, s) = (int(*count)?, int(*blocklen)?, *stride);
                with_old(
                    old,
                    &mut out,
                    &|o, out| unsafe { ffi::PMPI_Type_create_hvector(n, b, s, o, out) },
                    "MPI_Type_create_hvector",
                )?
            }
            Recipe::Indexed {
                blocklens,
                displs,
                old,
            } => {
                let (b, d) = (ints(blocklens)?, int_displs(displs)?);
                let n = int(b.len())?;
                with_old(
                    old,
                    &mut out,
                    &|o, out| unsafe { ffi::PMPI_Type_indexed(n, b.as_ptr(), d.as_ptr(), o, out) },
                    "MPI_Type_indexed",
                )?
            }
            Recipe::HIndexed {
                blocklens,
                displs,
                old,
            } => {
                let b = ints(blocklens)?;
                let n = int(b.len())?;
                with_old(
                    old,
                    &mut out,
                    &|o, out| unsafe {
                        ffi::PMPI_Type_create_hindexed(n, b.as_ptr(), displs.as_ptr(), o, out)
                    },
                    "MPI_Type_create_hindexed",
                )?
            }
            Recipe::IndexedBlock {
                blocklen,
                displs,
                old,
            } => {
                let (b, d) = (int(*blocklen)?, int_displs(displs)?);
                let n = int(d.len())?;
                with_old(
                    old,
                    &mut out,
                    &|o, out| unsafe {
                        ffi::PMPI_Type_create_indexed_block(n, b, d.as_ptr(), o, out)
                    },
                    "MPI_Type_create_indexed_block",
                )?
            }
            Recipe::HIndexedBlock {
                blocklen,
                displs,
                old,
            } => {
                let b = int(*blocklen)?;
                let n = int(displs.len())?;
                with_old(
                    old,
                    &mut out,
                    &|o, out| unsafe {
                        ffi::PMPI_Type_create_hindexed_block(n, b, displs.as_ptr(), o, out)
                    },
                    "MPI_Type_create_hindexed_block",
                )?
            }
            Recipe::Struct {
                blocklens,
                displs,
                types,
            } => {
                let b = ints(blocklens)?;
                let mut handles = Vec::with_capacity(types.len());
                for t in types {
                    // SAFETY: forwarded caller contract.
                    handles.push(unsafe { mpi_type_from_recipe(t)? });
                }
                // SAFETY: see above.
                let rc = unsafe {
                    ffi::PMPI_Type_create_struct(
                        int(b.len())?,
                        b.as_ptr(),
                        displs.as_ptr(),
                        handles.as_mut_ptr(),
                        &mut out,
                    )
                };
                for (h, t) in handles.iter_mut().zip(types) {
                    if !matches!(t, Recipe::Named { .. }) {
                        // SAFETY: a derived type we created.
                        unsafe { ffi::PMPI_Type_free(h) };
                    }
                }
                check("MPI_Type_create_struct", rc)?;
            }
            Recipe::Subarray {
                sizes,
                subsizes,
                starts,
                order: ord,
                old,
            } => {
                let (sz, sub, st) = (ints(sizes)?, ints(subsizes)?, ints(starts)?);
                let (nd, o_) = (int(sz.len())?, order(*ord));
                with_old(
                    old,
                    &mut out,
                    &|o, out| unsafe {
                        ffi::PMPI_Type_create_subarray(
                            nd,
                            sz.as_ptr(),
                            sub.as_ptr(),
                            st.as_ptr(),
                            o_,
                            o,
                            out,
                        )
                    },
                    "MPI_Type_create_subarray",
                )?
            }
            Recipe::Darray {
                size,
                rank,
                gsizes,
                distribs,
                dargs,
                psizes,
                order: ord,
                old,
            } => {
                let (g, p) = (ints(gsizes)?, ints(psizes)?);
                let d: Vec<c_int> = distribs
                    .iter()
                    .map(|d| match d {
                        Distribution::Block => ffi::MPI_DISTRIBUTE_BLOCK as c_int,
                        Distribution::Cyclic => ffi::MPI_DISTRIBUTE_CYCLIC as c_int,
                        Distribution::None => ffi::MPI_DISTRIBUTE_NONE as c_int,
                    })
                    .collect();
                let a: Vec<c_int> = dargs
                    .iter()
                    .map(|a| match a {
                        Darg::Default => Ok(ffi::MPI_DISTRIBUTE_DFLT_DARG),
                        Darg::Value(v) => int(*v),
                    })
                    .collect::<Result<_, _>>()?;
                let (s, r, nd, o_) = (int(*size)?, int(*rank)?, int(g.len())?, order(*ord));
                with_old(
                    old,
                    &mut out,
                    &|o, out| unsafe {
                        ffi::PMPI_Type_create_darray(
                            s,
                            r,
                            nd,
                            g.as_ptr(),
                            d.as_ptr(),
                            a.as_ptr(),
                            p.as_ptr(),
                            o_,
                            o,
                            out,
                        )
                    },
                    "MPI_Type_create_darray",
                )?
            }
            Recipe::Resized { lb, extent, old } => {
                let (l, e) = (*lb, *extent);
                with_old(
                    old,
                    &mut out,
                    &|o, out| unsafe { ffi::PMPI_Type_create_resized(o, l, e, out) },
                    "MPI_Type_create_resized",
                )?
            }
            Recipe::Dup { old } => with_old(
                old,
                &mut out,
                &|o, out| unsafe { ffi::PMPI_Type_dup(o, out) },
                "MPI_Type_dup",
            )?,
        }
        Ok(out)
    }
}

/// Which entry point an [`MpiType`] call goes through.
#[cfg(feature = "testing")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// `PMPI_*`: the library itself, even under an interposer.
    Library,
    /// `MPI_*`: whatever the dynamic linker binds, an interposer such as libferry_mpi.so when
    /// it is preloaded (otherwise the library).
    Interposable,
}

/// A committed MPI datatype built from a recipe, with the library's own pack and unpack, for
/// benchmarks and tests that compare ferry with the library.
#[cfg(feature = "testing")]
pub struct MpiType {
    handle: ffi::MPI_Datatype,
    derived: bool,
}

#[cfg(feature = "testing")]
impl MpiType {
    /// Builds and commits (through `MPI_Type_commit`, visible to an interposer) the MPI
    /// datatype `recipe` describes.
    ///
    /// # Safety
    /// MPI must be initialised, and stay so until the value is dropped.
    pub unsafe fn from_recipe(
        recipe: &ferry_datatypes::testing::Recipe,
    ) -> Result<MpiType, DatatypeError> {
        // SAFETY: forwarded caller contract.
        let mut handle = unsafe { testing::mpi_type_from_recipe(recipe)? };
        let derived = !matches!(recipe, ferry_datatypes::testing::Recipe::Named { .. });
        if derived {
            // Through MPI_Type_commit, not PMPI_Type_commit, as an application would: an
            // interposer such as libferry_mpi.so learns types at commit, so one committed behind
            // its back would be left to the library.
            // SAFETY: a fresh derived type.
            check("MPI_Type_commit", unsafe {
                ffi::MPI_Type_commit(&mut handle)
            })?;
        }
        Ok(MpiType { handle, derived })
    }

    /// The MPI handle.
    pub fn handle(&self) -> ffi::MPI_Datatype {
        self.handle
    }

    /// The library's MPI_Pack (`PMPI_Pack`) of `count` elements at `src` into `out`; returns
    /// the bytes written.
    ///
    /// # Safety
    /// `src` must be valid for reads over the type's footprint for `count` elements.
    pub unsafe fn pack(
        &self,
        src: *const u8,
        count: usize,
        out: &mut [u8],
    ) -> Result<usize, DatatypeError> {
        // SAFETY: forwarded caller contract.
        unsafe { self.pack_through(Entry::Library, src, count, out) }
    }

    /// [`MpiType::pack`] through `entry`.
    ///
    /// # Safety
    /// As for [`MpiType::pack`].
    pub unsafe fn pack_through(
        &self,
        entry: Entry,
        src: *const u8,
        count: usize,
        out: &mut [u8],
    ) -> Result<usize, DatatypeError> {
        let pack = match entry {
            Entry::Library => ffi::PMPI_Pack,
            Entry::Interposable => ffi::MPI_Pack,
        };
        let mut pos: c_int = 0;
        let n = c_int::try_from(count)
            .map_err(|_| DatatypeError::Unsupported("count too large".into()))?;
        let size = c_int::try_from(out.len())
            .map_err(|_| DatatypeError::Unsupported("buffer too large".into()))?;
        // SAFETY: caller contract for `src`; `out` is a valid slice of `size` bytes.
        check("MPI_Pack", unsafe {
            pack(
                src.cast(),
                n,
                self.handle,
                out.as_mut_ptr().cast(),
                size,
                &mut pos,
                ffi::RSMPI_COMM_WORLD,
            )
        })?;
        Ok(pos as usize)
    }

    /// The library's MPI_Unpack (`PMPI_Unpack`) of `count` elements from `packed` into `dst`.
    ///
    /// # Safety
    /// `dst` must be valid for writes over the type's footprint for `count` elements.
    pub unsafe fn unpack(
        &self,
        packed: &[u8],
        dst: *mut u8,
        count: usize,
    ) -> Result<(), DatatypeError> {
        // SAFETY: forwarded caller contract.
        unsafe { self.unpack_through(Entry::Library, packed, dst, count) }
    }

    /// [`MpiType::unpack`] through `entry`.
    ///
    /// # Safety
    /// As for [`MpiType::unpack`].
    pub unsafe fn unpack_through(
        &self,
        entry: Entry,
        packed: &[u8],
        dst: *mut u8,
        count: usize,
    ) -> Result<(), DatatypeError> {
        let unpack = match entry {
            Entry::Library => ffi::PMPI_Unpack,
            Entry::Interposable => ffi::MPI_Unpack,
        };
        let mut pos: c_int = 0;
        let n = c_int::try_from(count)
            .map_err(|_| DatatypeError::Unsupported("count too large".into()))?;
        let size = c_int::try_from(packed.len())
            .map_err(|_| DatatypeError::Unsupported("buffer too large".into()))?;
        // SAFETY: caller contract for `dst`; `packed` is a valid slice of `size` bytes.
        check("MPI_Unpack", unsafe {
            unpack(
                packed.as_ptr().cast(),
                size,
                &mut pos,
                dst.cast(),
                n,
                self.handle,
                ffi::RSMPI_COMM_WORLD,
            )
        })
    }
}

#[cfg(feature = "testing")]
impl Drop for MpiType {
    fn drop(&mut self) {
        if self.derived && !mpi::environment::is_finalized() {
            // SAFETY: a derived type this value owns (freed through MPI_Type_free, as committed).
            let rc = unsafe { ffi::MPI_Type_free(&mut self.handle) };
            if rc != ffi::MPI_SUCCESS as c_int {
                tracing::warn!(code = rc, "MPI_Type_free failed");
            }
        }
    }
}

#[cfg(feature = "testing")]
impl MpiType {
    /// MPI_Send of `count` elements at `buf` on MPI_COMM_WORLD. This calls `MPI_Send`, not
    /// `PMPI_Send`, so an interposer such as libferry_mpi.so sees it.
    ///
    /// # Safety
    /// `buf` must be valid for reads over the type's footprint for `count` elements.
    pub unsafe fn send(
        &self,
        buf: *const u8,
        count: usize,
        dest: i32,
        tag: i32,
    ) -> Result<(), DatatypeError> {
        let n = c_int::try_from(count)
            .map_err(|_| DatatypeError::Unsupported("count too large".into()))?;
        // SAFETY: caller contract for `buf`.
        check("MPI_Send", unsafe {
            ffi::MPI_Send(buf.cast(), n, self.handle, dest, tag, ffi::RSMPI_COMM_WORLD)
        })
    }

    /// MPI_Recv of up to `count` elements into `buf` on MPI_COMM_WORLD (through `MPI_Recv`, so
    /// an interposer sees it).
    ///
    /// # Safety
    /// `buf` must be valid for writes over the type's footprint for `count` elements.
    pub unsafe fn recv(
        &self,
        buf: *mut u8,
        count: usize,
        source: i32,
        tag: i32,
    ) -> Result<(), DatatypeError> {
        let n = c_int::try_from(count)
            .map_err(|_| DatatypeError::Unsupported("count too large".into()))?;
        // SAFETY: caller contract for `buf`; the status is ignored.
        check("MPI_Recv", unsafe {
            ffi::MPI_Recv(
                buf.cast(),
                n,
                self.handle,
                source,
                tag,
                ffi::RSMPI_COMM_WORLD,
                ffi::RSMPI_STATUS_IGNORE,
            )
        })
    }
}
