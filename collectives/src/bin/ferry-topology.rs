//! Prints and records this machine's topology as ferry sees it (sysfs and hwloc, then a TOML
//! override): `ferry-topology [--patch FILE] [--out FILE]`, or across a job with
//! `mpirun ... ferry-topology --mpi [--patch FILE] [--out FILE]` (rank 0 prints and writes the
//! gathered topology). The output is TOML that `Topology::load` reads back, so a topology
//! recorded on one cluster replays as a planner fixture; the GPU-to-NIC locality table follows
//! as TOML comments.

use std::path::PathBuf;

use ferry_collectives::{Collectives, Node, Topology};
use ferry_comm::{Comm, MpiRuntime};

fn usage(msg: &str) -> ! {
    eprintln!(
        "ferry-topology: {msg}\nusage: ferry-topology [--mpi] [--patch FILE] [--out FILE]\n  \
         --patch FILE  apply the node of FILE with this host's name (rates of virtual NICs, ...)\n  \
         --out FILE    also write the topology to FILE\n  \
         --mpi         gather every rank's node (run under mpirun); rank 0 prints and writes"
    );
    std::process::exit(2);
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("ferry-topology: {msg}");
    std::process::exit(1);
}

/// The GPU-to-NIC table of one node, as TOML comment lines.
fn locality_table(node: &Node) -> String {
    let mut out = format!("# {}: ", node.name);
    match (&node.hwloc, &node.hwloc_skipped) {
        (Some(v), _) => out += &format!("placed by hwloc {v}"),
        (None, Some(why)) => out += &format!("hwloc skipped: {why}"),
        (None, None) => out += "no hwloc record",
    }
    out += "\n";
    if node.gpus.is_empty() {
        out += "#   no GPUs\n";
    }
    let rails: Vec<_> = node.rails().collect();
    for g in &node.gpus {
        out += &format!(
            "#   gpu {} ({}, numa {}, package {}):",
            g.index,
            g.pci.as_deref().unwrap_or("no PCI address"),
            g.numa.map_or("?".into(), |n| n.to_string()),
            g.package.map_or("?".into(), |n| n.to_string()),
        );
        let best = node.nearest_rail(g.index);
        for (i, nic) in rails.iter().enumerate() {
            let mark = if best == Some(i) { " (nearest)" } else { "" };
            out += &format!(" {} {}{mark};", nic.name, g.locality(nic));
        }
        if rails.is_empty() {
            out += " no data NICs";
        }
        out += "\n";
    }
    out
}

fn main() {
    ferry_comm::init_logging();
    let (mut mpi, mut patch, mut out) = (false, None::<PathBuf>, None::<PathBuf>);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--mpi" => mpi = true,
            "--patch" => {
                patch = Some(
                    args.next()
                        .unwrap_or_else(|| usage("--patch needs a file"))
                        .into(),
                )
            }
            "--out" => {
                out = Some(
                    args.next()
                        .unwrap_or_else(|| usage("--out needs a file"))
                        .into(),
                )
            }
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    let mut node = Node::discover();
    if let Some(p) = &patch {
        let over = Topology::load(p).unwrap_or_else(|e| fail(e));
        match over.nodes.iter().find(|n| n.name == node.name) {
            Some(o) => node.patch(o),
            None => fail(format!(
                "{}: no node named {:?} (this host)",
                p.display(),
                node.name
            )),
        }
    }
    let (topo, print) = if mpi {
        let runtime = MpiRuntime::init().unwrap_or_else(|e| fail(e));
        let world = runtime.world().unwrap_or_else(|e| fail(e));
        let rank = world.rank();
        let topo = Collectives::new(world)
            .gather_topology(&node)
            .unwrap_or_else(|e| fail(e));
        drop(runtime);
        (topo, rank == 0)
    } else {
        let topo = Topology {
            name: String::new(),
            nodes: vec![Node {
                ranks: vec![0],
                ..node
            }],
        };
        (topo, true)
    };
    if !print {
        return;
    }
    print!("{}", topo.to_toml());
    println!();
    for n in &topo.nodes {
        print!("{}", locality_table(n));
    }
    if let Some(p) = &out {
        topo.save(p).unwrap_or_else(|e| fail(e));
    }
}
