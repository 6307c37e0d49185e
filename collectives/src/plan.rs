//! `Plan`: which algorithm a collective uses, chosen from the message size and the topology.
//!
//! 1. One rank: nothing to do.
//! 2. Several nodes, and some node with several ranks: hierarchical (reduce inside the node,
//!    all-reduce among the node leaders, broadcast inside the node); the leaders use recursive
//!    doubling below the small-message threshold and the ring above it.
//! 3. Otherwise recursive doubling below the threshold (log p latency terms), the ring above it
//!    (bandwidth-optimal: each rank sends 2(p−1)/p of the message).
//!
//! Rail weights come from the topology's line rates of the rails of rank 0's node (equal when
//! unknown); the [`crate::RailBalancer`] replaces them with measured ones as traffic flows.
//!
//! **Invariant:** a plan depends only on values every rank has alike (size, rank count,
//! topology), so all ranks choose the same algorithm without talking.

use crate::topology::Topology;

/// An all-reduce algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Ring: reduce-scatter then all-gather, pipelined in chunks.
    Ring,
    /// Recursive doubling, with a fold for rank counts that are not powers of two.
    RecursiveDoubling,
    /// Inside the node, then among node leaders (with `inter`), then inside the node again.
    Hierarchical {
        /// The algorithm among the node leaders (never itself hierarchical).
        inter: Flat,
    },
}

/// A flat (single-level) all-reduce, as used among node leaders.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flat {
    /// See [`Algorithm::Ring`].
    Ring,
    /// See [`Algorithm::RecursiveDoubling`].
    RecursiveDoubling,
}

impl From<Flat> for Algorithm {
    fn from(f: Flat) -> Self {
        match f {
            Flat::Ring => Algorithm::Ring,
            Flat::RecursiveDoubling => Algorithm::RecursiveDoubling,
        }
    }
}

impl std::fmt::Display for Flat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Flat::Ring => "ring",
            Flat::RecursiveDoubling => "recursive doubling",
        })
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Algorithm::Ring => f.write_str("ring"),
            Algorithm::RecursiveDoubling => f.write_str("recursive doubling"),
            Algorithm::Hierarchical { inter } => {
                write!(f, "hierarchical ({inter} among node leaders)")
            }
        }
    }
}

/// What a collective will do.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The operation (`"allreduce"`).
    pub op: &'static str,
    /// Message bytes.
    pub bytes: usize,
    /// Ranks taking part.
    pub ranks: usize,
    /// Nodes they are on (1 without a topology).
    pub nodes: usize,
    /// The algorithm.
    pub algorithm: Algorithm,
    /// Bytes per pipelined message in the ring.
    pub chunk_bytes: usize,
    /// Initial share of each rail (sums to 1).
    pub rail_weights: Vec<f64>,
}

fn human(bytes: usize) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 || v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} on {} ranks / {} nodes: {}, chunks of {}, rails [",
            self.op,
            human(self.bytes),
            self.ranks,
            self.nodes,
            self.algorithm,
            human(self.chunk_bytes)
        )?;
        for (i, w) in self.rail_weights.iter().enumerate() {
            write!(f, "{}{w:.3}", if i > 0 { ", " } else { "" })?;
        }
        f.write_str("]")
    }
}

/// Chooses plans; see the module docs.
#[derive(Clone, Debug, PartialEq)]
pub struct Planner {
    /// Messages below this many bytes use recursive doubling (default 64 KiB).
    pub small_bytes: usize,
    /// Bytes per pipelined ring message (default 1 MiB).
    pub chunk_bytes: usize,
}

impl Default for Planner {
    fn default() -> Self {
        Planner {
            small_bytes: 64 << 10,
            chunk_bytes: 1 << 20,
        }
    }
}

impl Planner {
    /// The plan for an all-reduce of `bytes` over `ranks` ranks placed as in `topology` (if
    /// given and it places exactly `ranks` ranks; otherwise the topology is not used).
    pub fn allreduce(&self, topology: Option<&Topology>, ranks: usize, bytes: usize) -> Plan {
        let topo = topology.filter(|t| t.ranks() == ranks && t.node_of_ranks().is_ok());
        let nodes = topo.map_or(1, |t| {
            t.nodes.iter().filter(|n| !n.ranks.is_empty()).count()
        });
        let crowded = topo.is_some_and(|t| t.nodes.iter().any(|n| n.ranks.len() > 1));
        let flat = if bytes < self.small_bytes {
            Flat::RecursiveDoubling
        } else {
            Flat::Ring
        };
        let algorithm = if nodes > 1 && crowded {
            Algorithm::Hierarchical { inter: flat }
        } else {
            flat.into()
        };
        let rail_weights = topo
            .and_then(|t| t.node_of(0).map(|n| t.nodes[n].rail_gbits()))
            .filter(|g| !g.is_empty())
            .map(|g| {
                let s: f64 = g.iter().sum();
                g.iter().map(|x| x / s).collect()
            })
            .unwrap_or_else(|| vec![1.0]);
        Plan {
            op: "allreduce",
            bytes,
            ranks,
            nodes,
            algorithm,
            chunk_bytes: self.chunk_bytes,
            rail_weights,
        }
    }
}
