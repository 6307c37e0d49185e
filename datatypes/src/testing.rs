//! Seeded random datatypes and their constructor recipes, for tests (feature `testing`).
//!
//! [`random_type`] returns a [`Type`] together with the [`Recipe`] that built it: the tree of
//! MPI constructor calls with their arguments, leaves being predefined types of 1, 2, 4 or
//! 8 bytes (`MPI_CHAR`, `MPI_SHORT`, `MPI_INT`, `MPI_DOUBLE`: their natural alignments are
//! what [`Type::named`] assumes). A test in another crate can walk the recipe and call the
//! same MPI constructors, then compare MPI's bounds and `MPI_Pack` bytes with ferry's.
//! A recipe prints as, and parses from, a one-line text form such as
//! `struct([3,2], [0,16], [named(4), vector(4, 2, -8, named(8))])`, so failing cases can be
//! stored and replayed.
//!
//! Generated types stay small enough for fast tests: at most 256 KiB of data and a 2 MiB
//! footprint per element. Counts include 0, 1, 17 and 1075, and 65536 of a 1- or 2-byte type;
//! strides and displacements may be negative; structs mix types; resizes shift lb.
//!
//! Compared with Open MPI 4.1.4 on 30000 seeds, bounds and `MPI_Pack` bytes agree except
//! where Open MPI departs from MPI-3.1, which [`random_type`] therefore never generates:
//! a byte stride (or extent) of exactly -1, which Open MPI takes to mean "the old type's
//! extent" and packs forwards; and a struct member of size 0 with a nonzero blocklength
//! (an empty type, or a darray part this rank does not own), which stretches the bounds
//! but leaves Open MPI's "contiguous" flag set, so a count > 1 packs its elements back to
//! back instead of one extent apart; and a darray of a zero-size old type, for which Open
//! MPI returns garbage bounds. [`random_type_unrestricted`] generates them too.
//!
//! Not done yet: leaves other than the four sizes (pair types, 16-byte types).

use std::fmt;

use crate::array::{Darg, Distribution, Order};
use crate::error::TypeError;
use crate::ir::Type;

/// One MPI constructor call and its arguments; `old` fields are the inner calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recipe {
    /// A predefined type of this many bytes: 1 `MPI_CHAR`, 2 `MPI_SHORT`, 4 `MPI_INT`,
    /// 8 `MPI_DOUBLE`.
    Named {
        /// Bytes.
        size: usize,
    },
    /// `MPI_Type_contiguous`.
    Contiguous {
        /// Count.
        count: usize,
        /// Old type.
        old: Box<Recipe>,
    },
    /// `MPI_Type_vector` (stride in old extents).
    Vector {
        /// Count.
        count: usize,
        /// Blocklength.
        blocklen: usize,
        /// Stride in extents of the old type.
        stride: isize,
        /// Old type.
        old: Box<Recipe>,
    },
    /// `MPI_Type_create_hvector` (stride in bytes).
    HVector {
        /// Count.
        count: usize,
        /// Blocklength.
        blocklen: usize,
        /// Stride in bytes.
        stride: isize,
        /// Old type.
        old: Box<Recipe>,
    },
    /// `MPI_Type_indexed` (displacements in old extents).
    Indexed {
        /// Blocklengths.
        blocklens: Vec<usize>,
        /// Displacements in extents of the old type.
        displs: Vec<isize>,
        /// Old type.
        old: Box<Recipe>,
    },
    /// `MPI_Type_create_hindexed` (displacements in bytes).
    HIndexed {
        /// Blocklengths.
        blocklens: Vec<usize>,
        /// Displacements in bytes.
        displs: Vec<isize>,
        /// Old type.
        old: Box<Recipe>,
    },
    /// `MPI_Type_create_indexed_block`.
    IndexedBlock {
        /// Blocklength of every block.
        blocklen: usize,
        /// Displacements in extents of the old type.
        displs: Vec<isize>,
        /// Old type.
        old: Box<Recipe>,
    },
    /// `MPI_Type_create_hindexed_block`.
    HIndexedBlock {
        /// Blocklength of every block.
        blocklen: usize,
        /// Displacements in bytes.
        displs: Vec<isize>,
        /// Old type.
        old: Box<Recipe>,
    },
    /// `MPI_Type_create_struct`.
    Struct {
        /// Blocklengths.
        blocklens: Vec<usize>,
        /// Displacements in bytes.
        displs: Vec<isize>,
        /// Entry types.
        types: Vec<Recipe>,
    },
    /// `MPI_Type_create_subarray`.
    Subarray {
        /// Full array sizes.
        sizes: Vec<usize>,
        /// Subarray sizes.
        subsizes: Vec<usize>,
        /// Subarray starts.
        starts: Vec<usize>,
        /// Storage order.
        order: Order,
        /// Old type.
        old: Box<Recipe>,
    },
    /// `MPI_Type_create_darray`.
    Darray {
        /// Group size.
        size: usize,
        /// Rank in the group.
        rank: usize,
        /// Global array sizes.
        gsizes: Vec<usize>,
        /// Distribution of each dimension.
        distribs: Vec<Distribution>,
        /// Distribution argument of each dimension.
        dargs: Vec<Darg>,
        /// Process grid.
        psizes: Vec<usize>,
        /// Storage order.
        order: Order,
        /// Old type.
        old: Box<Recipe>,
    },
    /// `MPI_Type_create_resized`.
    Resized {
        /// New lower bound.
        lb: isize,
        /// New extent.
        extent: isize,
        /// Old type.
        old: Box<Recipe>,
    },
    /// `MPI_Type_dup`.
    Dup {
        /// Old type.
        old: Box<Recipe>,
    },
}

impl Recipe {
    /// Builds the type through ferry's constructors.
    pub fn try_build(&self) -> Result<Type, TypeError> {
        Ok(match self {
            Recipe::Named { size } => Type::named(*size),
            Recipe::Contiguous { count, old } => Type::contiguous(*count, &old.try_build()?)?,
            Recipe::Vector {
                count,
                blocklen,
                stride,
                old,
            } => Type::vector(*count, *blocklen, *stride, &old.try_build()?)?,
            Recipe::HVector {
                count,
                blocklen,
                stride,
                old,
            } => Type::hvector(*count, *blocklen, *stride, &old.try_build()?)?,
            Recipe::Indexed {
                blocklens,
                displs,
                old,
            } => Type::indexed(blocklens, displs, &old.try_build()?)?,
            Recipe::HIndexed {
                blocklens,
                displs,
                old,
            } => Type::hindexed(blocklens, displs, &old.try_build()?)?,
            Recipe::IndexedBlock {
                blocklen,
                displs,
                old,
            } => Type::indexed_block(*blocklen, displs, &old.try_build()?)?,
            Recipe::HIndexedBlock {
                blocklen,
                displs,
                old,
            } => Type::hindexed_block(*blocklen, displs, &old.try_build()?)?,
            Recipe::Struct {
                blocklens,
                displs,
                types,
            } => {
                let types = types
                    .iter()
                    .map(Recipe::try_build)
                    .collect::<Result<Vec<_>, _>>()?;
                Type::struct_(blocklens, displs, &types)?
            }
            Recipe::Subarray {
                sizes,
                subsizes,
                starts,
                order,
                old,
            } => Type::subarray(sizes, subsizes, starts, *order, &old.try_build()?)?,
            Recipe::Darray {
                size,
                rank,
                gsizes,
                distribs,
                dargs,
                psizes,
                order,
                old,
            } => Type::darray(
                *size,
                *rank,
                gsizes,
                distribs,
                dargs,
                psizes,
                *order,
                &old.try_build()?,
            )?,
            Recipe::Resized { lb, extent, old } => Type::resized(*lb, *extent, &old.try_build()?)?,
            Recipe::Dup { old } => old.try_build()?.dup(),
        })
    }

    /// Builds the type; panics if the recipe's arguments are invalid (a generated recipe
    /// never is).
    pub fn build(&self) -> Type {
        self.try_build()
            .unwrap_or_else(|e| panic!("recipe {self} is invalid: {e}"))
    }

    /// Parses the text form that `Display` prints.
    pub fn parse(text: &str) -> Result<Recipe, RecipeParseError> {
        let mut p = Parser {
            tokens: tokenize(text)?,
            at: 0,
        };
        let r = p.recipe()?;
        if p.at != p.tokens.len() {
            return Err(p.error("end of input"));
        }
        Ok(r)
    }
}

/// A recipe's text could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot parse recipe: {0}")]
pub struct RecipeParseError(String);

fn join<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn order_name(o: Order) -> &'static str {
    match o {
        Order::C => "C",
        Order::Fortran => "F",
    }
}

impl fmt::Display for Recipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Recipe::Named { size } => write!(f, "named({size})"),
            Recipe::Contiguous { count, old } => write!(f, "contiguous({count}, {old})"),
            Recipe::Vector {
                count,
                blocklen,
                stride,
                old,
            } => write!(f, "vector({count}, {blocklen}, {stride}, {old})"),
            Recipe::HVector {
                count,
                blocklen,
                stride,
                old,
            } => write!(f, "hvector({count}, {blocklen}, {stride}, {old})"),
            Recipe::Indexed {
                blocklens,
                displs,
                old,
            } => write!(
                f,
                "indexed([{}], [{}], {old})",
                join(blocklens),
                join(displs)
            ),
            Recipe::HIndexed {
                blocklens,
                displs,
                old,
            } => write!(
                f,
                "hindexed([{}], [{}], {old})",
                join(blocklens),
                join(displs)
            ),
            Recipe::IndexedBlock {
                blocklen,
                displs,
                old,
            } => write!(f, "indexed_block({blocklen}, [{}], {old})", join(displs)),
            Recipe::HIndexedBlock {
                blocklen,
                displs,
                old,
            } => write!(f, "hindexed_block({blocklen}, [{}], {old})", join(displs)),
            Recipe::Struct {
                blocklens,
                displs,
                types,
            } => write!(
                f,
                "struct([{}], [{}], [{}])",
                join(blocklens),
                join(displs),
                types
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Recipe::Subarray {
                sizes,
                subsizes,
                starts,
                order,
                old,
            } => write!(
                f,
                "subarray([{}], [{}], [{}], {}, {old})",
                join(sizes),
                join(subsizes),
                join(starts),
                order_name(*order)
            ),
            Recipe::Darray {
                size,
                rank,
                gsizes,
                distribs,
                dargs,
                psizes,
                order,
                old,
            } => {
                let d: Vec<&str> = distribs
                    .iter()
                    .map(|d| match d {
                        Distribution::Block => "block",
                        Distribution::Cyclic => "cyclic",
                        Distribution::None => "none",
                    })
                    .collect();
                let a: Vec<String> = dargs
                    .iter()
                    .map(|a| match a {
                        Darg::Default => "dflt".to_string(),
                        Darg::Value(v) => v.to_string(),
                    })
                    .collect();
                write!(
                    f,
                    "darray({size}, {rank}, [{}], [{}], [{}], [{}], {}, {old})",
                    join(gsizes),
                    d.join(","),
                    a.join(","),
                    join(psizes),
                    order_name(*order)
                )
            }
            Recipe::Resized { lb, extent, old } => write!(f, "resized({lb}, {extent}, {old})"),
            Recipe::Dup { old } => write!(f, "dup({old})"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Int(i128),
    Punct(char),
}

fn tokenize(text: &str) -> Result<Vec<Token>, RecipeParseError> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if "()[],".contains(c) {
            out.push(Token::Punct(c));
            i += 1;
        } else if c == '-' || c.is_ascii_digit() {
            let start = i;
            i += 1;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            let s: String = chars[start..i].iter().collect();
            let v = s
                .parse()
                .map_err(|_| RecipeParseError(format!("bad number {s:?}")))?;
            out.push(Token::Int(v));
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token::Word(chars[start..i].iter().collect()));
        } else {
            return Err(RecipeParseError(format!("unexpected character {c:?}")));
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn error(&self, wanted: &str) -> RecipeParseError {
        RecipeParseError(format!(
            "expected {wanted} at token {} ({:?})",
            self.at,
            self.tokens.get(self.at)
        ))
    }

    fn punct(&mut self, c: char) -> Result<(), RecipeParseError> {
        if self.tokens.get(self.at) == Some(&Token::Punct(c)) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.error(&format!("{c:?}")))
        }
    }

    fn comma(&mut self) -> Result<(), RecipeParseError> {
        self.punct(',')
    }

    fn word(&mut self) -> Result<String, RecipeParseError> {
        match self.tokens.get(self.at) {
            Some(Token::Word(w)) => {
                self.at += 1;
                Ok(w.clone())
            }
            _ => Err(self.error("a name")),
        }
    }

    fn int(&mut self) -> Result<i128, RecipeParseError> {
        match self.tokens.get(self.at) {
            Some(Token::Int(v)) => {
                self.at += 1;
                Ok(*v)
            }
            _ => Err(self.error("a number")),
        }
    }

    fn isize(&mut self) -> Result<isize, RecipeParseError> {
        let v = self.int()?;
        isize::try_from(v).map_err(|_| RecipeParseError(format!("{v} does not fit isize")))
    }

    fn usize(&mut self) -> Result<usize, RecipeParseError> {
        let v = self.int()?;
        usize::try_from(v).map_err(|_| RecipeParseError(format!("{v} is not a count")))
    }

    fn list<T>(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<T, RecipeParseError>,
    ) -> Result<Vec<T>, RecipeParseError> {
        self.punct('[')?;
        let mut out = Vec::new();
        if self.tokens.get(self.at) == Some(&Token::Punct(']')) {
            self.at += 1;
            return Ok(out);
        }
        loop {
            out.push(item(self)?);
            if self.tokens.get(self.at) == Some(&Token::Punct(']')) {
                self.at += 1;
                return Ok(out);
            }
            self.comma()?;
        }
    }

    fn order(&mut self) -> Result<Order, RecipeParseError> {
        match self.word()?.as_str() {
            "C" => Ok(Order::C),
            "F" => Ok(Order::Fortran),
            _ => Err(self.error("order C or F")),
        }
    }

    fn old(&mut self) -> Result<Box<Recipe>, RecipeParseError> {
        self.comma()?;
        Ok(Box::new(self.recipe()?))
    }

    fn recipe(&mut self) -> Result<Recipe, RecipeParseError> {
        let name = self.word()?;
        self.punct('(')?;
        let r = match name.as_str() {
            "named" => Recipe::Named {
                size: self.usize()?,
            },
            "contiguous" => Recipe::Contiguous {
                count: self.usize()?,
                old: self.old()?,
            },
            "vector" | "hvector" => {
                let count = self.usize()?;
                self.comma()?;
                let blocklen = self.usize()?;
                self.comma()?;
                let stride = self.isize()?;
                let old = self.old()?;
                if name == "vector" {
                    Recipe::Vector {
                        count,
                        blocklen,
                        stride,
                        old,
                    }
                } else {
                    Recipe::HVector {
                        count,
                        blocklen,
                        stride,
                        old,
                    }
                }
            }
            "indexed" | "hindexed" => {
                let blocklens = self.list(Self::usize)?;
                self.comma()?;
                let displs = self.list(Self::isize)?;
                let old = self.old()?;
                if name == "indexed" {
                    Recipe::Indexed {
                        blocklens,
                        displs,
                        old,
                    }
                } else {
                    Recipe::HIndexed {
                        blocklens,
                        displs,
                        old,
                    }
                }
            }
            "indexed_block" | "hindexed_block" => {
                let blocklen = self.usize()?;
                self.comma()?;
                let displs = self.list(Self::isize)?;
                let old = self.old()?;
                if name == "indexed_block" {
                    Recipe::IndexedBlock {
                        blocklen,
                        displs,
                        old,
                    }
                } else {
                    Recipe::HIndexedBlock {
                        blocklen,
                        displs,
                        old,
                    }
                }
            }
            "struct" => {
                let blocklens = self.list(Self::usize)?;
                self.comma()?;
                let displs = self.list(Self::isize)?;
                self.comma()?;
                let types = self.list(Self::recipe)?;
                Recipe::Struct {
                    blocklens,
                    displs,
                    types,
                }
            }
            "subarray" => {
                let sizes = self.list(Self::usize)?;
                self.comma()?;
                let subsizes = self.list(Self::usize)?;
                self.comma()?;
                let starts = self.list(Self::usize)?;
                self.comma()?;
                let order = self.order()?;
                Recipe::Subarray {
                    sizes,
                    subsizes,
                    starts,
                    order,
                    old: self.old()?,
                }
            }
            "darray" => {
                let size = self.usize()?;
                self.comma()?;
                let rank = self.usize()?;
                self.comma()?;
                let gsizes = self.list(Self::usize)?;
                self.comma()?;
                let distribs = self.list(|p| match p.word()?.as_str() {
                    "block" => Ok(Distribution::Block),
                    "cyclic" => Ok(Distribution::Cyclic),
                    "none" => Ok(Distribution::None),
                    _ => Err(p.error("block, cyclic or none")),
                })?;
                self.comma()?;
                let dargs = self.list(|p| {
                    if let Some(Token::Word(w)) = p.tokens.get(p.at) {
                        if w == "dflt" {
                            p.at += 1;
                            return Ok(Darg::Default);
                        }
                    }
                    Ok(Darg::Value(p.usize()?))
                })?;
                self.comma()?;
                let psizes = self.list(Self::usize)?;
                self.comma()?;
                let order = self.order()?;
                Recipe::Darray {
                    size,
                    rank,
                    gsizes,
                    distribs,
                    dargs,
                    psizes,
                    order,
                    old: self.old()?,
                }
            }
            "resized" => {
                let lb = self.isize()?;
                self.comma()?;
                let extent = self.isize()?;
                Recipe::Resized {
                    lb,
                    extent,
                    old: self.old()?,
                }
            }
            "dup" => Recipe::Dup {
                old: Box::new(self.recipe()?),
            },
            other => return Err(RecipeParseError(format!("unknown constructor {other:?}"))),
        };
        self.punct(')')?;
        Ok(r)
    }
}

/// SplitMix64: a tiny, well-mixed generator, so that seeds mean the same on every platform.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: isize, hi: isize) -> isize {
        lo + self.below((hi - lo + 1) as usize) as isize
    }

    pub(crate) fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// True with probability `num / den`.
    pub(crate) fn chance(&mut self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }
}

/// Most data bytes in one generated element.
const MAX_SIZE: usize = 1 << 18;
/// Largest |lb|, |ub|, |true bound| of a generated element.
const MAX_SPAN: isize = 1 << 21;

fn fits(t: &Type) -> bool {
    t.size() <= MAX_SIZE
        && [t.lb(), t.ub(), t.true_lb(), t.true_ub()]
            .iter()
            .all(|v| v.unsigned_abs() <= MAX_SPAN as usize)
}

/// A random type of nesting depth at most `max_depth` and the recipe that builds it, made
/// to be compared with Open MPI 4.1: it avoids the two patterns where Open MPI 4.1.4
/// departs from MPI-3.1 (see the module doc). The same seed always gives the same recipe.
pub fn random_type(seed: u64, max_depth: usize) -> (Type, Recipe) {
    let mut rng = Rng::new(seed);
    let (t, r) = generate(&mut rng, max_depth, true);
    debug_assert_eq!(r.build(), t);
    (t, r)
}

/// Like [`random_type`], but may also use the patterns that Open MPI 4.1 gets wrong
/// (a byte stride of -1, zero-size struct members), for tests of ferry alone.
pub fn random_type_unrestricted(seed: u64, max_depth: usize) -> (Type, Recipe) {
    let mut rng = Rng::new(seed);
    let (t, r) = generate(&mut rng, max_depth, false);
    debug_assert_eq!(r.build(), t);
    (t, r)
}

/// Whether Open MPI 4.1.4 builds or packs `r` (built as `t` over `old`) against MPI-3.1:
/// 1. `opal_datatype_add` takes a step of -1 byte to mean "the old type's extent", so an
///    hvector (or vector) whose byte stride is -1, or any type of extent -1, packs forwards.
/// 2. A struct member of size 0 with a blocklength moves `lb`/`ub` but leaves the type
///    marked contiguous, so a count > 1 packs the elements back to back, ignoring the extent.
/// 3. A darray (and so a subarray of it) of a zero-size old type comes out with garbage
///    bounds, sizes and pack errors.
fn trips_open_mpi(r: &Recipe, t: &Type, old: &Type) -> bool {
    if t.extent() == -1 {
        return true;
    }
    match r {
        Recipe::HVector { stride, .. } => *stride == -1,
        Recipe::Vector { stride, .. } => *stride as i128 * old.extent() as i128 == -1,
        Recipe::Darray { .. } | Recipe::Subarray { .. } => old.size() == 0,
        Recipe::Struct {
            blocklens, types, ..
        } => blocklens
            .iter()
            .zip(types)
            .any(|(&bl, m)| bl > 0 && m.build().size() == 0),
        _ => false,
    }
}

fn leaf(rng: &mut Rng) -> (Type, Recipe) {
    let size = rng.pick(&[1, 2, 4, 8]);
    (Type::named(size), Recipe::Named { size })
}

fn generate(rng: &mut Rng, depth: usize, safe: bool) -> (Type, Recipe) {
    if depth == 0 || rng.chance(1, 10) {
        return leaf(rng);
    }
    let (ct, cr) = generate(rng, depth - 1, safe);
    for _ in 0..8 {
        let r = propose(rng, depth, &ct, &cr, safe);
        if let Ok(t) = r.try_build() {
            if fits(&t) && !(safe && trips_open_mpi(&r, &t, &ct)) {
                return (t, r);
            }
        }
    }
    (ct, cr)
}

fn count(rng: &mut Rng, old: &Type) -> usize {
    if (1..=2).contains(&old.size()) && rng.chance(1, 12) {
        return 65536;
    }
    if rng.chance(1, 40) {
        return 0;
    }
    rng.pick(&[1, 2, 2, 3, 4, 5, 7, 17, 17, 1075])
}

/// A blocklength: mostly 1 to 3, sometimes `big`, rarely 0.
fn blocklen(rng: &mut Rng, big: usize) -> usize {
    if rng.chance(1, 40) {
        return 0;
    }
    rng.pick(&[1, 1, 1, 2, 2, 3, big])
}

/// A number of entries of an indexed type or struct: mostly 1 to `most`, rarely 0.
fn entries(rng: &mut Rng, most: usize) -> usize {
    if rng.chance(1, 40) {
        0
    } else {
        1 + rng.below(most)
    }
}

/// One constructor call over `old` (and, for structs, fresh siblings).
fn propose(rng: &mut Rng, depth: usize, old: &Type, r: &Recipe, safe: bool) -> Recipe {
    let b = || Box::new(r.clone());
    let ext = old.extent();
    match rng.below(13) {
        0 => Recipe::Contiguous {
            count: count(rng, old),
            old: b(),
        },
        1 => {
            let blocklen = blocklen(rng, 17);
            let bl = blocklen as isize;
            let stride = rng.pick(&[bl, bl + 1, bl + 3, -bl, -bl - 2, 0, 1]);
            Recipe::Vector {
                count: count(rng, old),
                blocklen,
                stride,
                old: b(),
            }
        }
        2 => {
            let blocklen = blocklen(rng, 5);
            let dense = ext * blocklen as isize;
            let stride = match rng.below(4) {
                0 => dense,
                1 => dense + rng.range(1, 9),
                2 => -dense - rng.range(0, 9),
                _ => rng.range(-64, 256),
            };
            Recipe::HVector {
                count: count(rng, old),
                blocklen,
                stride,
                old: b(),
            }
        }
        3 | 4 => {
            let n = if rng.chance(1, 10) {
                17
            } else {
                entries(rng, 5)
            };
            let blocklens: Vec<usize> = (0..n).map(|_| blocklen(rng, 5)).collect();
            let regular = rng.chance(1, 3);
            let (start, step) = (rng.range(-8, 8), rng.range(-6, 10));
            let byte = rng.below(2) == 1;
            let displs: Vec<isize> = (0..n)
                .map(|i| {
                    let e = if regular {
                        start + step * i as isize
                    } else {
                        rng.range(-10, 30)
                    };
                    if byte {
                        if rng.chance(1, 2) {
                            e * ext
                        } else {
                            e * 3 + rng.range(0, 2)
                        }
                    } else {
                        e
                    }
                })
                .collect();
            let blocklens = if regular {
                vec![blocklens.first().copied().unwrap_or(1); n]
            } else {
                blocklens
            };
            if byte {
                Recipe::HIndexed {
                    blocklens,
                    displs,
                    old: b(),
                }
            } else {
                Recipe::Indexed {
                    blocklens,
                    displs,
                    old: b(),
                }
            }
        }
        5 | 6 => {
            let n = if rng.chance(1, 20) {
                1075
            } else {
                entries(rng, 5)
            };
            let blocklen = blocklen(rng, 4);
            let step = rng.range(-4, 8);
            let regular = rng.chance(1, 2);
            let byte = rng.below(2) == 1;
            let displs: Vec<isize> = (0..n)
                .map(|i| {
                    let e = if regular {
                        step * i as isize
                    } else {
                        rng.range(-10, 30)
                    };
                    if byte {
                        e * ext.max(1) + rng.range(0, 1)
                    } else {
                        e
                    }
                })
                .collect();
            if byte {
                Recipe::HIndexedBlock {
                    blocklen,
                    displs,
                    old: b(),
                }
            } else {
                Recipe::IndexedBlock {
                    blocklen,
                    displs,
                    old: b(),
                }
            }
        }
        7 | 8 => {
            let n = entries(rng, 4);
            let mut types = Vec::with_capacity(n);
            let mut blocklens = Vec::with_capacity(n);
            let mut displs = Vec::with_capacity(n);
            let natural = rng.chance(1, 2);
            let mut at: isize = 0;
            for _ in 0..n {
                let (t, tr) = match rng.below(3) {
                    0 => (old.clone(), r.clone()),
                    1 => leaf(rng),
                    _ => generate(rng, depth.saturating_sub(2), safe),
                };
                let bl = blocklen(rng, 3);
                let d = if natural {
                    let e = t.extent().max(1);
                    let align = [8isize, 4, 2, 1]
                        .into_iter()
                        .find(|a| e % a == 0)
                        .unwrap_or(1);
                    at = (at + align - 1) / align * align;
                    let d = at;
                    at += e * bl as isize;
                    d
                } else {
                    rng.range(-32, 128)
                };
                types.push(tr);
                blocklens.push(bl);
                displs.push(d);
            }
            Recipe::Struct {
                blocklens,
                displs,
                types,
            }
        }
        9 if ext > 0 => {
            let n = 1 + rng.below(3);
            let sizes: Vec<usize> = (0..n).map(|_| 1 + rng.below(6)).collect();
            let subsizes: Vec<usize> = sizes.iter().map(|&s| 1 + rng.below(s)).collect();
            let starts: Vec<usize> = sizes
                .iter()
                .zip(&subsizes)
                .map(|(&s, &ss)| rng.below(s - ss + 1))
                .collect();
            Recipe::Subarray {
                sizes,
                subsizes,
                starts,
                order: rng.pick(&[Order::C, Order::Fortran]),
                old: b(),
            }
        }
        10 if ext > 0 => {
            let n = 1 + rng.below(3);
            let size = rng.pick(&[1, 2, 3, 4, 6]);
            let mut psizes = vec![1usize; n];
            // Deal the prime factors of `size` to random dimensions.
            let mut left = size;
            for p in [2, 3] {
                while left % p == 0 {
                    left /= p;
                    let d = rng.below(n);
                    psizes[d] *= p;
                }
            }
            let gsizes: Vec<usize> = (0..n).map(|_| 1 + rng.below(8)).collect();
            let mut distribs = Vec::with_capacity(n);
            let mut dargs = Vec::with_capacity(n);
            for d in 0..n {
                let choice = rng.below(if psizes[d] == 1 { 3 } else { 2 });
                let (dist, darg) = match choice {
                    0 => {
                        let least = gsizes[d].div_ceil(psizes[d]);
                        let a = if rng.chance(1, 2) {
                            Darg::Default
                        } else {
                            Darg::Value(least + rng.below(3))
                        };
                        (Distribution::Block, a)
                    }
                    1 => {
                        let a = if rng.chance(1, 3) {
                            Darg::Default
                        } else {
                            Darg::Value(1 + rng.below(3))
                        };
                        (Distribution::Cyclic, a)
                    }
                    _ => (Distribution::None, Darg::Default),
                };
                distribs.push(dist);
                dargs.push(darg);
            }
            Recipe::Darray {
                size,
                rank: rng.below(size),
                gsizes,
                distribs,
                dargs,
                psizes,
                order: rng.pick(&[Order::C, Order::Fortran]),
                old: b(),
            }
        }
        11 => {
            let lb = if rng.chance(1, 3) {
                old.true_lb()
            } else {
                old.lb() + rng.range(-8, 8)
            };
            let extent = match rng.below(6) {
                0 => old.true_extent(),
                1 => ext + rng.range(1, 16),
                2 if rng.chance(1, 3) => 0,
                3 if rng.chance(1, 3) => -ext,
                _ => ext,
            };
            Recipe::Resized {
                lb,
                extent,
                old: b(),
            }
        }
        _ => Recipe::Dup { old: b() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipes_print_and_parse_back() {
        for seed in 0..300 {
            let (t, r) = random_type(seed, 4);
            let text = r.to_string();
            let back = Recipe::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(back, r, "{text}");
            assert_eq!(back.build(), t);
        }
    }

    #[test]
    fn parse_reports_errors() {
        assert!(Recipe::parse("vector(1, 2, named(4))").is_err());
        assert!(Recipe::parse("named(4) extra").is_err());
        assert!(Recipe::parse("frob(1)").is_err());
        let r = Recipe::parse("darray(4, 1, [5,7], [block,cyclic], [dflt,2], [2,2], C, named(4))")
            .unwrap();
        assert_eq!(r.build().size(), 36);
    }

    #[test]
    fn seeds_are_deterministic_and_varied() {
        let a: Vec<String> = (0..50).map(|s| random_type(s, 3).1.to_string()).collect();
        let b: Vec<String> = (0..50).map(|s| random_type(s, 3).1.to_string()).collect();
        assert_eq!(a, b);
        let mut kinds: Vec<&str> = a.iter().map(|s| s.split('(').next().unwrap()).collect();
        kinds.sort();
        kinds.dedup();
        assert!(kinds.len() >= 8, "{kinds:?}");
    }
}
