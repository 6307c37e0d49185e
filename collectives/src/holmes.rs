//! Holmes groups: data-, pipeline- and tensor-parallel groups formed from NIC classes.
//!
//! Holmes (ICPP'24) observed that on clusters mixing InfiniBand, RoCE and Ethernet nodes, the
//! heavy collectives (tensor-parallel all-reduces every layer, data-parallel gradient
//! all-reduces every step) run at the speed of the slowest NIC they cross, while pipeline
//! traffic (one activation tensor per micro-batch between neighbouring stages) is light. So:
//!
//! 1. Order the ranks by their node's NIC class ([`crate::Node::class`]), then by node, then
//!    by rank.
//! 2. Cut each class's ranks into *stages* of `tp · dp` ranks; those stages never cross a class.
//!    Ranks left over in a class (fewer than a stage) are pooled, in class order, into the
//!    remaining stages, which then do cross classes (reported by [`Groups::crossings`]).
//! 3. Inside a stage, position `i` has tensor index `i mod tp` and data index `i / tp`: tensor
//!    groups are `tp` consecutive ranks (one node when a node's rank count is a multiple of
//!    `tp`), data groups take one rank from each tensor group.
//! 4. Pipeline groups take the rank at the same position from every stage, in stage order, so
//!    pipelines span the classes.
//!
//! [`megatron_groups`] is the naive order (tensor fastest, then data, then pipeline, over world
//! ranks), for comparison; [`Groups::split`] turns groups into sub-communicators.
//!
//! **Invariant:** group formation takes a `Topology` value and never calls MPI.

use ferry_comm::Comm;

use crate::error::{Error, Result};
use crate::topology::{NicClass, Topology};

/// Tensor-, pipeline- and data-parallel sizes; their product is the rank count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParallelDims {
    /// Tensor-parallel group size.
    pub tp: usize,
    /// Pipeline stages.
    pub pp: usize,
    /// Data-parallel group size.
    pub dp: usize,
}

impl ParallelDims {
    fn check(&self, ranks: usize) -> Result<()> {
        if self.tp == 0 || self.pp == 0 || self.dp == 0 {
            return Err(Error::Groups(format!("sizes must be positive: {self:?}")));
        }
        if self.tp * self.pp * self.dp != ranks {
            return Err(Error::Groups(format!(
                "tp {} x pp {} x dp {} = {} ranks, but there are {ranks}",
                self.tp,
                self.pp,
                self.dp,
                self.tp * self.pp * self.dp
            )));
        }
        Ok(())
    }
}

/// Rank lists of every group; each rank is in exactly one group of each kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Groups {
    /// The sizes.
    pub dims: ParallelDims,
    /// Tensor-parallel groups (`pp · dp` groups of `tp` ranks).
    pub tensor: Vec<Vec<usize>>,
    /// Data-parallel groups (`pp · tp` groups of `dp` ranks).
    pub data: Vec<Vec<usize>>,
    /// Pipelines (`tp · dp` groups of `pp` ranks, in stage order).
    pub pipeline: Vec<Vec<usize>>,
}

/// How many groups of each kind mix NIC classes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Crossings {
    /// Tensor groups with ranks of more than one class.
    pub tensor: usize,
    /// Data groups with ranks of more than one class.
    pub data: usize,
    /// Pipelines that span more than one class (expected, and cheap).
    pub pipeline: usize,
}

/// This rank's sub-communicators.
#[derive(Debug)]
pub struct GroupComms<C> {
    /// Its tensor-parallel group.
    pub tensor: C,
    /// Its data-parallel group.
    pub data: C,
    /// Its pipeline.
    pub pipeline: C,
}

fn from_stages(dims: ParallelDims, stages: &[Vec<usize>]) -> Groups {
    let (tp, dp) = (dims.tp, dims.dp);
    let mut tensor = Vec::new();
    let mut data = Vec::new();
    for stage in stages {
        tensor.extend(stage.chunks(tp).map(<[usize]>::to_vec));
        data.extend((0..tp).map(|t| (0..dp).map(|d| stage[d * tp + t]).collect()));
    }
    let pipeline = (0..tp * dp)
        .map(|i| stages.iter().map(|s| s[i]).collect())
        .collect();
    Groups {
        dims,
        tensor,
        data,
        pipeline,
    }
}

/// The naive (Megatron-LM) order over world ranks: tensor index fastest, then data, then
/// pipeline stage.
pub fn megatron_groups(ranks: usize, dims: ParallelDims) -> Result<Groups> {
    dims.check(ranks)?;
    let stage = dims.tp * dims.dp;
    let stages: Vec<Vec<usize>> = (0..dims.pp)
        .map(|s| (s * stage..(s + 1) * stage).collect())
        .collect();
    Ok(from_stages(dims, &stages))
}

/// Holmes groups for the ranks of `topology`; see the module docs.
pub fn holmes_groups(topology: &Topology, dims: ParallelDims) -> Result<Groups> {
    let ranks = topology.ranks();
    dims.check(ranks)?;
    let classes = topology.class_of_ranks()?;
    let node_of = topology.node_of_ranks()?;
    let mut order: Vec<usize> = (0..ranks).collect();
    order.sort_by_key(|&r| (classes[r], node_of[r], r));
    let stage = dims.tp * dims.dp;
    let mut stages = Vec::new();
    let mut leftover = Vec::new();
    for class in [NicClass::Infiniband, NicClass::Roce, NicClass::Ethernet] {
        let mine: Vec<usize> = order
            .iter()
            .copied()
            .filter(|&r| classes[r] == class)
            .collect();
        let full = mine.len() / stage * stage;
        stages.extend(mine[..full].chunks(stage).map(<[usize]>::to_vec));
        leftover.extend_from_slice(&mine[full..]);
    }
    stages.extend(leftover.chunks(stage).map(<[usize]>::to_vec));
    Ok(from_stages(dims, &stages))
}

impl Groups {
    /// Counts the groups that mix classes, given each rank's class.
    pub fn crossings(&self, class_of: &[NicClass]) -> Crossings {
        let mixed = |gs: &[Vec<usize>]| {
            gs.iter()
                .filter(|g| g.iter().any(|&r| class_of[r] != class_of[g[0]]))
                .count()
        };
        Crossings {
            tensor: mixed(&self.tensor),
            data: mixed(&self.data),
            pipeline: mixed(&self.pipeline),
        }
    }

    /// The index of the group of `rank` in `groups` and its position there.
    fn find(groups: &[Vec<usize>], rank: usize) -> Result<(usize, usize)> {
        groups
            .iter()
            .enumerate()
            .find_map(|(g, m)| m.iter().position(|&r| r == rank).map(|i| (g, i)))
            .ok_or_else(|| Error::Groups(format!("rank {rank} is in no group")))
    }

    /// This rank's sub-communicators, made with three [`Comm::split`]s (collective over
    /// `comm`, whose ranks the groups name); members are ordered as in the group lists.
    pub fn split<C: Comm>(&self, comm: &C) -> Result<GroupComms<C>> {
        let n = self.dims.tp * self.dims.pp * self.dims.dp;
        if comm.size() != n {
            return Err(Error::Groups(format!(
                "groups for {n} ranks applied to a communicator of {}",
                comm.size()
            )));
        }
        let one = |groups: &[Vec<usize>]| -> Result<C> {
            let (g, i) = Self::find(groups, comm.rank())?;
            comm.split(Some(g as u32), i as i32)?
                .ok_or_else(|| Error::Groups("split returned no communicator".into()))
        };
        Ok(GroupComms {
            tensor: one(&self.tensor)?,
            data: one(&self.data)?,
            pipeline: one(&self.pipeline)?,
        })
    }
}
