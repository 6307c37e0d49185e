//! The correctness suite of the collectives, as a library so it runs over every backend:
//! `cargo test` runs it over `ThreadComm` at 1 to 17 ranks, and `ferry-collectives-check` runs
//! it under `mpirun` over `MpiComm`.
//!
//! Every rank generates every rank's input (seeded by rank, element and case), so it can compute
//! sequential references locally:
//! - the left-to-right fold `x0 ⊕ x1 ⊕ ... ⊕ x(p-1)`: integer results must equal it bit for
//!   bit; float results must be within `2·p·u·Σ|x_i|` of it (`u` the unit roundoff of the type:
//!   any order of p−1 rounded additions is within `γ(p−1)·Σ|x_i|` of the exact sum, Higham,
//!   *Accuracy and Stability of Numerical Algorithms* §4.2, and so is the fold);
//! - the fold in the order the algorithm documents (see `algo`): every result, floats
//!   included, must equal it bit for bit.
//!
//! "Exact" cases use values whose sums and products are exact in every type (small integers,
//! powers of two), so there the float results must equal the plain fold too.

use ferry_comm::Comm;
use half::{bf16, f16};

use crate::algo::blocks;
use crate::halo::{HaloRecv, HaloRegion, HaloSend};
use crate::plan::{Algorithm, Flat, Planner};
use crate::reduce::{Element, ReduceOp};
use crate::{Collectives, ParallelDims, megatron_groups};

/// Options of the suite.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Every element type with every operator (otherwise a fixed sample of pairs).
    pub thorough: bool,
    /// Ranks per simulated node for the hierarchical algorithms (ranks `r` with equal
    /// `r / ranks_per_node` form a node).
    pub ranks_per_node: usize,
    /// Bytes per pipelined ring message (small, so the pipeline has many chunks).
    pub chunk_bytes: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            thorough: false,
            ranks_per_node: 2,
            chunk_bytes: 24,
        }
    }
}

/// One case's outcome on this rank.
#[derive(Clone, Debug)]
pub struct CheckResult {
    /// What was checked.
    pub name: String,
    /// Why it failed; `None` if it passed.
    pub failure: Option<String>,
}

type Outcome = std::result::Result<(), String>;

fn hash(a: u64, b: u64, c: u64) -> u64 {
    let mut x = a.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ c.wrapping_add(0x1656_67B1_9E37_79F9);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
}

/// Rank `r`'s element `i` for operator `op`; `exact` keeps sums and products exact.
fn value<T: Element>(op: ReduceOp, exact: bool, r: usize, i: usize, salt: u64) -> T {
    let h = hash(r as u64, i as u64, salt);
    let v = match (op, exact) {
        (ReduceOp::Sum, true) => (h % 17) as f64 - 8.0,
        (ReduceOp::Prod, _) => {
            let mag = if r < 3 && h % 3 == 0 { 2.0 } else { 1.0 };
            if (h >> 8) % 5 == 0 { -mag } else { mag }
        }
        (ReduceOp::Sum, false) => (h % 100_000) as f64 / 3.0 - 15_000.0,
        (_, true) => (h % 997) as f64 / 8.0 - 60.0,
        (_, false) => (h % 100_000) as f64 / 7.0 - 5000.0,
    };
    T::from_f64(v)
}

fn inputs<T: Element>(p: usize, n: usize, op: ReduceOp, exact: bool, salt: u64) -> Vec<Vec<T>> {
    (0..p)
        .map(|r| (0..n).map(|i| value(op, exact, r, i, salt)).collect())
        .collect()
}

fn zip_with<T: Element>(op: ReduceOp, a: &[T], b: &[T]) -> Vec<T> {
    a.iter()
        .zip(b)
        .map(|(x, y)| T::combine(op, *x, *y))
        .collect()
}

/// Left-to-right fold over ranks.
fn fold<T: Element>(xs: &[Vec<T>], op: ReduceOp) -> Vec<T> {
    xs[1..]
        .iter()
        .fold(xs[0].clone(), |acc, x| zip_with(op, &acc, x))
}

/// The ring order: block b is x[b+1] ⊕ x[b+2] ⊕ ... ⊕ x[b].
fn ring_ref<T: Element>(xs: &[Vec<T>], op: ReduceOp) -> Vec<T> {
    let p = xs.len();
    let mut out = xs[0].clone();
    for (b, range) in blocks(out.len(), p).into_iter().enumerate() {
        for i in range {
            let mut acc = xs[(b + 1) % p][i];
            for j in 2..=p {
                acc = T::combine(op, acc, xs[(b + j) % p][i]);
            }
            out[i] = acc;
        }
    }
    out
}

/// The recursive-doubling order.
fn doubling_ref<T: Element>(xs: &[Vec<T>], op: ReduceOp) -> Vec<T> {
    let p = xs.len();
    let q = 1usize << (usize::BITS - 1 - p.leading_zeros());
    let extra = p - q;
    let mut v: Vec<Vec<T>> = (0..q)
        .map(|j| {
            if j < extra {
                zip_with(op, &xs[2 * j], &xs[2 * j + 1])
            } else {
                xs[j + extra].clone()
            }
        })
        .collect();
    let mut d = 1;
    while d < q {
        v = (0..q)
            .map(|j| zip_with(op, &v[j.min(j ^ d)], &v[j.max(j ^ d)]))
            .collect();
        d <<= 1;
    }
    v.swap_remove(0)
}

/// The binomial-tree order to relative rank 0.
fn tree_ref<T: Element>(xs: &[Vec<T>], op: ReduceOp) -> Vec<T> {
    let p = xs.len();
    let mut acc = xs.to_vec();
    let mut d = 1;
    while d < p {
        for v in (0..p).step_by(2 * d) {
            if v + d < p {
                acc[v] = zip_with(op, &acc[v], &acc[v + d]);
            }
        }
        d <<= 1;
    }
    acc.swap_remove(0)
}

fn ordered_ref<T: Element>(
    alg: Algorithm,
    xs: &[Vec<T>],
    op: ReduceOp,
    node_of: &[usize],
) -> Vec<T> {
    match alg {
        Algorithm::Ring => ring_ref(xs, op),
        Algorithm::RecursiveDoubling => doubling_ref(xs, op),
        Algorithm::Hierarchical { inter } => {
            let mut nodes: Vec<usize> = Vec::new();
            for &n in node_of {
                if !nodes.contains(&n) {
                    nodes.push(n);
                }
            }
            let leaders: Vec<Vec<T>> = nodes
                .iter()
                .map(|&n| {
                    let members: Vec<Vec<T>> = (0..xs.len())
                        .filter(|&r| node_of[r] == n)
                        .map(|r| xs[r].clone())
                        .collect();
                    tree_ref(&members, op)
                })
                .collect();
            match inter {
                Flat::Ring => ring_ref(&leaders, op),
                Flat::RecursiveDoubling => doubling_ref(&leaders, op),
            }
        }
    }
}

fn unit_roundoff<T: Element>() -> f64 {
    match std::mem::size_of::<T>() {
        2 if T::NAME == "f16" => 2f64.powi(-11),
        2 => 2f64.powi(-8),
        4 => 2f64.powi(-24),
        _ => 2f64.powi(-53),
    }
}

fn same_bits<T: Element>(what: &str, got: &[T], want: &[T]) -> Outcome {
    if bytemuck::cast_slice::<T, u8>(got) == bytemuck::cast_slice::<T, u8>(want) {
        return Ok(());
    }
    let i = got
        .iter()
        .zip(want)
        .position(|(a, b)| bytemuck::bytes_of(a) != bytemuck::bytes_of(b))
        .unwrap_or(0);
    Err(format!(
        "{what}: element {i} of {} is {:?}, expected {:?}",
        got.len(),
        got.get(i),
        want.get(i)
    ))
}

/// Integers: bit-identical to the fold; floats: within the summation bound of the fold.
fn near_fold<T: Element>(got: &[T], xs: &[Vec<T>], op: ReduceOp) -> Outcome {
    let want = fold(xs, op);
    let float = T::NAME.starts_with('f') || T::NAME == "bf16";
    if !float || op != ReduceOp::Sum {
        return same_bits("against the sequential fold", got, &want);
    }
    let p = xs.len() as f64;
    for i in 0..got.len() {
        let mag: f64 = xs.iter().map(|x| x[i].to_f64().abs()).sum();
        let tol = 2.0 * p * unit_roundoff::<T>() * mag;
        let (g, w) = (got[i].to_f64(), want[i].to_f64());
        if (g - w).abs() > tol {
            return Err(format!(
                "element {i}: {g} differs from the fold's {w} by more than {tol}"
            ));
        }
    }
    Ok(())
}

struct Suite<C: Comm> {
    coll: Collectives<C>,
    node_of: Vec<usize>,
    results: Vec<CheckResult>,
    salt: u64,
}

impl<C: Comm> Suite<C> {
    fn case(&mut self, name: String, f: impl FnOnce(&Collectives<C>, &[usize], u64) -> Outcome) {
        self.salt += 1;
        let failure = f(&self.coll, &self.node_of, self.salt).err();
        self.results.push(CheckResult { name, failure });
    }

    fn allreduce<T: Element>(&mut self, alg: Algorithm, n: usize, op: ReduceOp, exact: bool) {
        let name = format!(
            "allreduce {alg} {} {op} n={n}{}",
            T::NAME,
            if exact { "" } else { " (inexact)" }
        );
        self.case(name, |coll, node_of, salt| {
            let (p, r) = (coll.comm().size(), coll.comm().rank());
            let xs = inputs::<T>(p, n, op, exact, salt);
            let mut buf = xs[r].clone();
            coll.allreduce_with(alg, &mut buf, op)
                .map_err(|e| e.to_string())?;
            same_bits(
                "against the algorithm's order",
                &buf,
                &ordered_ref(alg, &xs, op, node_of),
            )?;
            near_fold(&buf, &xs, op)
        });
    }
}

fn typed_cases<C: Comm>(s: &mut Suite<C>, alg: Algorithm, n: usize, thorough: bool) {
    macro_rules! all_ops {
        ($t:ty) => {
            for op in ReduceOp::ALL {
                s.allreduce::<$t>(alg, n, op, true);
            }
        };
    }
    if thorough {
        all_ops!(i32);
        all_ops!(i64);
        all_ops!(f32);
        all_ops!(f64);
        all_ops!(f16);
        all_ops!(bf16);
        s.allreduce::<f32>(alg, n, ReduceOp::Sum, false);
        s.allreduce::<f64>(alg, n, ReduceOp::Sum, false);
        s.allreduce::<f16>(alg, n, ReduceOp::Sum, false);
        s.allreduce::<bf16>(alg, n, ReduceOp::Sum, false);
    } else {
        s.allreduce::<i64>(alg, n, ReduceOp::Sum, true);
        s.allreduce::<i32>(alg, n, ReduceOp::Prod, true);
        s.allreduce::<f32>(alg, n, ReduceOp::Max, false);
        s.allreduce::<f64>(alg, n, ReduceOp::Sum, false);
        s.allreduce::<bf16>(alg, n, ReduceOp::Sum, true);
        s.allreduce::<f16>(alg, n, ReduceOp::Min, true);
    }
}

/// Runs the whole suite on this rank (every rank of `comm` must call it with equal options)
/// and returns this rank's results.
pub fn run_checks<C: Comm>(comm: C, opts: &CheckOptions) -> Vec<CheckResult> {
    let p = comm.size();
    let node_of: Vec<usize> = (0..p).map(|r| r / opts.ranks_per_node.max(1)).collect();
    let planner = Planner {
        chunk_bytes: opts.chunk_bytes,
        ..Planner::default()
    };
    let coll = match Collectives::new(comm)
        .with_planner(planner.clone())
        .with_nodes(node_of.clone())
    {
        Ok(c) => c,
        Err(e) => {
            return vec![CheckResult {
                name: "set-up".into(),
                failure: Some(e.to_string()),
            }];
        }
    };
    let mut s = Suite {
        coll,
        node_of,
        results: Vec::new(),
        salt: 0,
    };

    let algs = [
        Algorithm::Ring,
        Algorithm::RecursiveDoubling,
        Algorithm::Hierarchical { inter: Flat::Ring },
        Algorithm::Hierarchical {
            inter: Flat::RecursiveDoubling,
        },
    ];
    for alg in algs {
        for n in [0, 1, p + 1, 3 * p + 2, 97] {
            typed_cases(&mut s, alg, n, opts.thorough);
        }
    }

    // The planned algorithm on both sides of the small-message threshold, out of place.
    for n in [planner.small_bytes / 8 - 1, planner.small_bytes / 8 + 3] {
        s.case(
            format!("allreduce_into (planned) i64 sum n={n}"),
            |coll, _, salt| {
                let (p, r) = (coll.comm().size(), coll.comm().rank());
                let xs = inputs::<i64>(p, n, ReduceOp::Sum, true, salt);
                let mut out = vec![0i64; n];
                coll.allreduce_into(&xs[r], &mut out, ReduceOp::Sum)
                    .map_err(|e| e.to_string())?;
                near_fold(&out, &xs, ReduceOp::Sum)
            },
        );
    }
    s.case(
        "allreduce_into rejects unequal lengths".into(),
        |coll, _, _| match coll.allreduce_into(&[1i32, 2], &mut [0i32; 3], ReduceOp::Sum) {
            Err(crate::Error::InvalidArgument(_)) => Ok(()),
            other => Err(format!("expected InvalidArgument, got {other:?}")),
        },
    );

    for m in [0, 1, 5] {
        s.case(
            format!("reduce_scatter f64 sum blocks of {m}"),
            |coll, _, salt| {
                let (p, r) = (coll.comm().size(), coll.comm().rank());
                let xs = inputs::<f64>(p, m * p, ReduceOp::Sum, false, salt);
                let mut out = vec![0f64; m];
                coll.reduce_scatter(&xs[r], &mut out, ReduceOp::Sum)
                    .map_err(|e| e.to_string())?;
                same_bits(
                    "against the ring order",
                    &out,
                    &ring_ref(&xs, ReduceOp::Sum)[r * m..(r + 1) * m],
                )
            },
        );
    }
    s.case(
        "reduce_scatter_in_place i32 prod, uneven blocks".into(),
        |coll, _, salt| {
            let (p, r) = (coll.comm().size(), coll.comm().rank());
            let n = 3 * p + 2;
            let xs = inputs::<i32>(p, n, ReduceOp::Prod, true, salt);
            let mut buf = xs[r].clone();
            let mine = coll
                .reduce_scatter_in_place(&mut buf, ReduceOp::Prod)
                .map_err(|e| e.to_string())?;
            if mine != blocks(n, p)[r] {
                return Err(format!("returned range {mine:?}"));
            }
            same_bits(
                "against the fold",
                &buf[mine.clone()],
                &fold(&xs, ReduceOp::Prod)[mine],
            )
        },
    );

    for m in [0, 1, 5] {
        s.case(format!("allgather f32 blocks of {m}"), |coll, _, salt| {
            let (p, r) = (coll.comm().size(), coll.comm().rank());
            let xs = inputs::<f32>(p, m, ReduceOp::Max, false, salt);
            let mut out = vec![0f32; m * p];
            coll.allgather(&xs[r], &mut out)
                .map_err(|e| e.to_string())?;
            same_bits("gathered", &out, &xs.concat())
        });
    }
    s.case(
        "allgather_in_place f16, uneven blocks".into(),
        |coll, _, salt| {
            let (p, r) = (coll.comm().size(), coll.comm().rank());
            let n = 3 * p + 2;
            let xs = inputs::<f16>(p, n, ReduceOp::Max, true, salt);
            let mut buf = vec![f16::ZERO; n];
            let want: Vec<f16> = blocks(n, p)
                .into_iter()
                .enumerate()
                .flat_map(|(q, b)| xs[q][b].to_vec())
                .collect();
            let mine = blocks(n, p)[r].clone();
            buf[mine.clone()].copy_from_slice(&xs[r][mine]);
            coll.allgather_in_place(&mut buf)
                .map_err(|e| e.to_string())?;
            same_bits("gathered", &buf, &want)
        },
    );

    let roots = {
        let mut v = vec![0, p / 2, p - 1];
        v.dedup();
        v
    };
    for root in roots.clone() {
        for n in [3, planner.small_bytes / 4 + 7] {
            s.case(
                format!("broadcast i32 n={n} from {root}"),
                |coll, _, salt| {
                    let (p, r) = (coll.comm().size(), coll.comm().rank());
                    let xs = inputs::<i32>(p, n, ReduceOp::Sum, true, salt);
                    let mut buf = if r == root {
                        xs[root].clone()
                    } else {
                        vec![-1; n]
                    };
                    coll.broadcast(&mut buf, root).map_err(|e| e.to_string())?;
                    same_bits("broadcast", &buf, &xs[root])
                },
            );
        }
        s.case(format!("reduce f64 sum to {root}"), |coll, _, salt| {
            let (p, r) = (coll.comm().size(), coll.comm().rank());
            let xs = inputs::<f64>(p, 33, ReduceOp::Sum, false, salt);
            let mut buf = xs[r].clone();
            coll.reduce(&mut buf, ReduceOp::Sum, root)
                .map_err(|e| e.to_string())?;
            if r != root {
                return Ok(());
            }
            let rotated: Vec<Vec<f64>> = (0..p).map(|v| xs[(v + root) % p].clone()).collect();
            same_bits(
                "against the tree order",
                &buf,
                &tree_ref(&rotated, ReduceOp::Sum),
            )?;
            near_fold(&buf, &xs, ReduceOp::Sum)
        });
    }

    s.case(
        "barrier, and one telemetry record per collective".into(),
        |coll, _, _| {
            let before = coll.telemetry().total();
            for _ in 0..3 {
                coll.barrier().map_err(|e| e.to_string())?;
            }
            let mut v = [1i64; 5];
            coll.allreduce(&mut v, ReduceOp::Sum)
                .map_err(|e| e.to_string())?;
            let recs = coll.telemetry().since(before);
            let ours: Vec<_> = recs
                .iter()
                .filter(|r| r.peer.is_none() && r.rail.is_none())
                .collect();
            let ops: Vec<&str> = ours.iter().map(|r| r.op).collect();
            if ops != ["barrier", "barrier", "barrier", "allreduce"]
                || ours[3].bytes != 40
                || ours[3].end_ns < ours[3].start_ns
            {
                return Err(format!("records {ours:?}"));
            }
            if v != [coll.comm().size() as i64; 5] {
                return Err(format!("allreduce gave {v:?}"));
            }
            Ok(())
        },
    );

    s.case(
        "halo exchange of bytes, periodic 1-D".into(),
        |coll, _, _| {
            let (p, r) = (coll.comm().size(), coll.comm().rank());
            let (left, right) = ((r + p - 1) % p, (r + 1) % p);
            let to_left = vec![r as u8; 5];
            let to_right = vec![100 + r as u8; 7];
            let (mut from_right, mut from_left) = (vec![0u8; 5], vec![0u8; 7]);
            // Channel 0 carries data leftwards, channel 1 rightwards.
            let sends = [
                HaloSend {
                    peer: left,
                    channel: 0,
                    data: &to_left,
                },
                HaloSend {
                    peer: right,
                    channel: 1,
                    data: &to_right,
                },
            ];
            let mut recvs = [
                HaloRecv {
                    peer: right,
                    channel: 0,
                    data: &mut from_right,
                },
                HaloRecv {
                    peer: left,
                    channel: 1,
                    data: &mut from_left,
                },
            ];
            coll.halo_exchange(&sends, &mut recvs)
                .map_err(|e| e.to_string())?;
            if from_right != vec![right as u8; 5] || from_left != vec![100 + left as u8; 7] {
                return Err(format!("got {from_right:?} and {from_left:?}"));
            }
            Ok(())
        },
    );

    s.case(
        "halo exchange of strided columns with datatypes".into(),
        |coll, _, _| {
            let (p, r) = (coll.comm().size(), coll.comm().rank());
            let (left, right) = ((r + p - 1) % p, (r + 1) % p);
            const ROWS: usize = 4;
            const COLS: usize = 6; // columns 0 and 5 are ghosts
            let column = ferry_datatypes::Type::vector(
                ROWS,
                1,
                COLS as isize,
                &ferry_datatypes::Type::named(8),
            )
            .map_err(|e| e.to_string())?
            .commit();
            let cell = |q: usize, row: usize, col: usize| (q * 1000 + row * 10 + col) as f64;
            let mut a: Vec<f64> = (0..ROWS * COLS)
                .map(|i| cell(r, i / COLS, i % COLS))
                .collect();
            // Each region is the column type moved to its column by an hindexed of one block.
            let region = |peer: usize, channel: u16, col: usize| -> Result<HaloRegion, String> {
                let ty = ferry_datatypes::Type::hindexed(&[1], &[(col * 8) as isize], column.ty())
                    .map_err(|e| e.to_string())?
                    .commit();
                Ok(HaloRegion {
                    peer,
                    channel,
                    ty,
                    count: 1,
                })
            };
            // Channel 0 carries data leftwards, channel 1 rightwards.
            let sends = [region(left, 0, 1)?, region(right, 1, COLS - 2)?];
            let recvs = [region(right, 0, COLS - 1)?, region(left, 1, 0)?];
            coll.halo_exchange_typed(&mut a, 0, &sends, &recvs)
                .map_err(|e| e.to_string())?;
            for row in 0..ROWS {
                let (g_right, g_left) = (a[row * COLS + COLS - 1], a[row * COLS]);
                if g_right != cell(right, row, 1) || g_left != cell(left, row, COLS - 2) {
                    return Err(format!("row {row}: ghosts {g_left} and {g_right}"));
                }
                for col in 1..COLS - 1 {
                    if a[row * COLS + col] != cell(r, row, col) {
                        return Err(format!("interior ({row}, {col}) changed"));
                    }
                }
            }
            // A receive region outside the array is refused before anything moves.
            let outside = HaloRegion {
                peer: left,
                channel: 1,
                ty: column.clone(),
                count: 2,
            };
            match coll.halo_exchange_typed(&mut a, 0, &[], &[outside]) {
                Err(crate::Error::InvalidArgument(_)) => Ok(()),
                other => Err(format!("expected InvalidArgument, got {other:?}")),
            }
        },
    );

    if p % 4 == 0 {
        s.case(
            "Megatron groups as sub-communicators".into(),
            |coll, _, _| {
                let (p, r) = (coll.comm().size(), coll.comm().rank());
                let dims = ParallelDims {
                    tp: 2,
                    pp: 2,
                    dp: p / 4,
                };
                let groups = megatron_groups(p, dims).map_err(|e| e.to_string())?;
                let comms = groups.split(coll.comm()).map_err(|e| e.to_string())?;
                for (name, c, list) in [
                    ("tensor", comms.tensor, &groups.tensor),
                    ("data", comms.data, &groups.data),
                    ("pipeline", comms.pipeline, &groups.pipeline),
                ] {
                    let members = list
                        .iter()
                        .find(|g| g.contains(&r))
                        .ok_or("rank in no group")?;
                    let sub = Collectives::new(c);
                    let mut v = [r as i64];
                    sub.allreduce(&mut v, ReduceOp::Sum)
                        .map_err(|e| e.to_string())?;
                    let want: i64 = members.iter().map(|&m| m as i64).sum();
                    if sub.comm().size() != members.len() || v[0] != want {
                        return Err(format!(
                            "{name}: size {} sum {} for members {members:?}",
                            sub.comm().size(),
                            v[0]
                        ));
                    }
                }
                Ok(())
            },
        );
    }
    s.results
}
