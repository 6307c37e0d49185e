//! Reduction operators (sum, min, max, prod) and the element types they apply to.
//!
//! Integers use wrapping arithmetic, which is associative and commutative, so every algorithm
//! gives results bit-identical to a sequential reduction whatever its order. Floats are
//! commutative but not associative: each algorithm documents the order in which it combines
//! contributions, and every combination is `combine(a, b)` with `a ⊕ b == b ⊕ a` bit for bit, so
//! all ranks of one collective end with the same bits. `f16` and `bf16` are combined in `f32`
//! and rounded once per combination (as NCCL does).

use half::{bf16, f16};

/// A reduction operator (MPI_SUM, MPI_MIN, MPI_MAX, MPI_PROD).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Sum (wrapping for integers).
    Sum,
    /// Minimum (for floats, `f32::min` semantics: a NaN loses to a number).
    Min,
    /// Maximum (for floats, `f32::max` semantics: a NaN loses to a number).
    Max,
    /// Product (wrapping for integers).
    Prod,
}

impl ReduceOp {
    /// Every operator, for tests and benchmarks.
    pub const ALL: [ReduceOp; 4] = [ReduceOp::Sum, ReduceOp::Min, ReduceOp::Max, ReduceOp::Prod];
}

impl std::fmt::Display for ReduceOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Min => "min",
            ReduceOp::Max => "max",
            ReduceOp::Prod => "prod",
        })
    }
}

/// An element type the collectives reduce: plain old data with the four operators.
pub trait Element: bytemuck::Pod + Send + Sync + PartialEq + std::fmt::Debug + 'static {
    /// The type's name, for messages and plans.
    const NAME: &'static str;
    /// `a ⊕ b`; must equal `b ⊕ a` bit for bit.
    fn combine(op: ReduceOp, a: Self, b: Self) -> Self;
    /// Converts from `f64` (for test data and tolerances).
    fn from_f64(v: f64) -> Self;
    /// Converts to `f64` (for test data and tolerances).
    fn to_f64(self) -> f64;
}

macro_rules! int_element {
    ($t:ty) => {
        impl Element for $t {
            const NAME: &'static str = stringify!($t);
            #[inline]
            fn combine(op: ReduceOp, a: Self, b: Self) -> Self {
                match op {
                    ReduceOp::Sum => a.wrapping_add(b),
                    ReduceOp::Min => a.min(b),
                    ReduceOp::Max => a.max(b),
                    ReduceOp::Prod => a.wrapping_mul(b),
                }
            }
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
        }
    };
}
int_element!(i32);
int_element!(i64);

macro_rules! float_element {
    ($t:ty) => {
        impl Element for $t {
            const NAME: &'static str = stringify!($t);
            #[inline]
            fn combine(op: ReduceOp, a: Self, b: Self) -> Self {
                match op {
                    ReduceOp::Sum => a + b,
                    ReduceOp::Min => a.min(b),
                    ReduceOp::Max => a.max(b),
                    ReduceOp::Prod => a * b,
                }
            }
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
        }
    };
}
float_element!(f32);
float_element!(f64);

macro_rules! half_element {
    ($t:ty) => {
        impl Element for $t {
            const NAME: &'static str = stringify!($t);
            #[inline]
            fn combine(op: ReduceOp, a: Self, b: Self) -> Self {
                <$t>::from_f32(f32::combine(op, a.to_f32(), b.to_f32()))
            }
            fn from_f64(v: f64) -> Self {
                <$t>::from_f64(v)
            }
            fn to_f64(self) -> f64 {
                <$t>::to_f64(self)
            }
        }
    };
}
half_element!(f16);
half_element!(bf16);

/// `acc[i] = acc[i] ⊕ other[i]`; the slices have equal lengths.
pub(crate) fn combine_into<T: Element>(op: ReduceOp, acc: &mut [T], other: &[T]) {
    combine_into_ordered(op, acc, other, false);
}

/// `acc[i] = acc[i] ⊕ other[i]`, or `other[i] ⊕ acc[i]` with `other_first` (the algorithms'
/// documented operand order); the slices have equal lengths. The operator is chosen once per
/// call, not per element, so each loop compiles to vector instructions.
pub(crate) fn combine_into_ordered<T: Element>(
    op: ReduceOp,
    acc: &mut [T],
    other: &[T],
    other_first: bool,
) {
    debug_assert_eq!(acc.len(), other.len());
    #[inline(always)]
    fn each<T: Copy>(acc: &mut [T], other: &[T], other_first: bool, f: impl Fn(T, T) -> T) {
        if other_first {
            for (a, b) in acc.iter_mut().zip(other) {
                *a = f(*b, *a);
            }
        } else {
            for (a, b) in acc.iter_mut().zip(other) {
                *a = f(*a, *b);
            }
        }
    }
    match op {
        ReduceOp::Sum => each(acc, other, other_first, |a, b| {
            T::combine(ReduceOp::Sum, a, b)
        }),
        ReduceOp::Min => each(acc, other, other_first, |a, b| {
            T::combine(ReduceOp::Min, a, b)
        }),
        ReduceOp::Max => each(acc, other, other_first, |a, b| {
            T::combine(ReduceOp::Max, a, b)
        }),
        ReduceOp::Prod => each(acc, other, other_first, |a, b| {
            T::combine(ReduceOp::Prod, a, b)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_are_commutative_bit_for_bit() {
        let xs = [0.1f64, -3.5, 1e30, -0.0, 7.25, f64::NAN];
        for op in ReduceOp::ALL {
            for &a in &xs {
                for &b in &xs {
                    let (x, y) = (
                        f32::combine(op, a as f32, b as f32),
                        f32::combine(op, b as f32, a as f32),
                    );
                    assert!(
                        x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
                        "{op} {a} {b}"
                    );
                    let (x, y) = (
                        bf16::combine(op, bf16::from_f64(a), bf16::from_f64(b)),
                        bf16::combine(op, bf16::from_f64(b), bf16::from_f64(a)),
                    );
                    assert!(
                        x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
                        "{op} {a} {b}"
                    );
                }
            }
        }
        assert_eq!(i32::combine(ReduceOp::Sum, i32::MAX, 1), i32::MIN);
        assert_eq!(i64::combine(ReduceOp::Prod, 3, -4), -12);
        assert_eq!(
            f16::combine(ReduceOp::Max, f16::from_f32(2.0), f16::from_f32(-1.0)),
            f16::from_f32(2.0)
        );
    }
}
