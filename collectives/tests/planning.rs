//! Planners and group formation on recorded topology fixtures (`tests/fixtures/*.toml`):
//! no MPI, no hwloc, only `Topology` values.

use ferry_collectives::{
    Algorithm, Collectives, Error, Flat, Locality, NicClass, ParallelDims, Planner, RailBalancer,
    ReduceOp, Topology, holmes_groups, megatron_groups,
};
use ferry_comm::{Comm, Record, ThreadComm};

fn fixture(name: &str) -> Topology {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    Topology::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn fixtures_load_dump_and_reload() {
    for name in [
        "testbed-4.toml",
        "holmes-ib-roce-8x8.toml",
        "mixed-8x8.toml",
        "two-socket-4gpu-2nic.toml",
    ] {
        let t = fixture(name);
        assert_eq!(Topology::from_toml(&t.to_toml()).unwrap(), t, "{name}");
    }
    let t = fixture("mixed-8x8.toml");
    assert_eq!(t.ranks(), 64);
    assert_eq!(t.nodes[2].gpus.len(), 8);
    let classes: Vec<_> = t.nodes.iter().map(|n| n.class().unwrap()).collect();
    use NicClass::*;
    assert_eq!(
        classes,
        [
            Infiniband, Roce, Infiniband, Roce, Ethernet, Infiniband, Roce, Ethernet
        ]
    );
    let tb = fixture("testbed-4.toml");
    assert_eq!(tb.nodes[0].rail_gbits(), [2.0, 0.2]);
}

#[test]
fn a_bad_file_names_itself_and_the_problem() {
    let dir = std::env::temp_dir().join(format!("ferry-coll-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[[node]]\nname = \"a\"\nranks = [0, 2]\n").unwrap();
    let e = Topology::load(&bad).unwrap_err().to_string();
    assert!(
        e.contains("bad.toml") && e.contains("rank 1 is missing"),
        "{e}"
    );
    std::fs::write(
        &bad,
        "[[node]]\nname = \"a\"\nnic = [{ name = \"x\", class = \"token-ring\" }]\n",
    )
    .unwrap();
    let e = Topology::load(&bad).unwrap_err();
    assert!(
        matches!(e, Error::Parse { .. }) && e.to_string().contains("bad.toml"),
        "{e}"
    );
    let e = Topology::load(dir.join("absent.toml")).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn plans_follow_size_and_topology() {
    let p = Planner::default();
    let tb = fixture("testbed-4.toml");
    // One rank per host: flat; recursive doubling for small, ring for large.
    let small = p.allreduce(Some(&tb), 4, 4096);
    assert_eq!(small.algorithm, Algorithm::RecursiveDoubling);
    let large = p.allreduce(Some(&tb), 4, 16 << 20);
    assert_eq!(large.algorithm, Algorithm::Ring);
    assert!((large.rail_weights[0] - 2.0 / 2.2).abs() < 1e-12);
    let shown = large.to_string();
    assert_eq!(
        shown,
        "allreduce of 16 MiB on 4 ranks / 4 nodes: ring, chunks of 1 MiB, rails [0.909, 0.091]"
    );
    // Eight GPUs per node: hierarchical, with the leaders' algorithm by size.
    let big = fixture("holmes-ib-roce-8x8.toml");
    let h = p.allreduce(Some(&big), 64, 256 << 20);
    assert_eq!(h.algorithm, Algorithm::Hierarchical { inter: Flat::Ring });
    assert_eq!(h.nodes, 8);
    assert_eq!(
        p.allreduce(Some(&big), 64, 8).algorithm,
        Algorithm::Hierarchical {
            inter: Flat::RecursiveDoubling
        }
    );
    println!("{h}");
    // A topology of the wrong size is not used.
    assert_eq!(p.allreduce(Some(&big), 4, 256 << 20).nodes, 1);
    assert_eq!(
        p.allreduce(None, 1, 0).algorithm,
        Algorithm::RecursiveDoubling
    );
}

#[test]
fn holmes_keeps_heavy_groups_inside_a_class_where_megatron_does_not() {
    let t = fixture("holmes-ib-roce-8x8.toml");
    let classes = t.class_of_ranks().unwrap();
    let dims = ParallelDims {
        tp: 8,
        pp: 4,
        dp: 2,
    };
    let naive = megatron_groups(64, dims).unwrap();
    let holmes = holmes_groups(&t, dims).unwrap();
    let (n, h) = (naive.crossings(&classes), holmes.crossings(&classes));
    println!("megatron {n:?}, holmes {h:?}");
    // Megatron's data groups pair node 2s with node 2s+1: IB with RoCE, every one of them.
    assert_eq!(n.data, naive.data.len());
    assert_eq!((h.tensor, h.data), (0, 0));
    // Pipelines span both classes.
    assert_eq!(h.pipeline, holmes.pipeline.len());
    // Tensor groups are whole nodes.
    let node_of = t.node_of_ranks().unwrap();
    assert!(
        holmes
            .tensor
            .iter()
            .all(|g| g.iter().all(|&r| node_of[r] == node_of[g[0]]))
    );
    // Every rank is in exactly one group of each kind.
    for groups in [&holmes.tensor, &holmes.data, &holmes.pipeline] {
        let mut all: Vec<usize> = groups.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..64).collect::<Vec<_>>());
    }
}

#[test]
fn holmes_on_three_classes_pools_only_the_leftovers() {
    let t = fixture("mixed-8x8.toml");
    let classes = t.class_of_ranks().unwrap();
    // Stages of 16 ranks: IB and RoCE have 24 each (one clean stage + 8 left), Ethernet 16.
    let dims = ParallelDims {
        tp: 8,
        pp: 4,
        dp: 2,
    };
    let h = holmes_groups(&t, dims).unwrap().crossings(&classes);
    let n = megatron_groups(64, dims).unwrap().crossings(&classes);
    println!("megatron {n:?}, holmes {h:?}");
    assert_eq!(h.tensor, 0);
    assert_eq!(h.data, 8, "only the pooled stage's 8 data groups cross");
    assert!(n.data > h.data);
    // Stages of 8 ranks fit every class exactly: nothing crosses.
    let dims = ParallelDims {
        tp: 4,
        pp: 8,
        dp: 2,
    };
    let h = holmes_groups(&t, dims).unwrap().crossings(&classes);
    assert_eq!((h.tensor, h.data), (0, 0));
    assert!(matches!(
        holmes_groups(
            &t,
            ParallelDims {
                tp: 8,
                pp: 3,
                dp: 2
            }
        ),
        Err(Error::Groups(_))
    ));
    assert!(matches!(
        megatron_groups(
            64,
            ParallelDims {
                tp: 0,
                pp: 8,
                dp: 8
            }
        ),
        Err(Error::Groups(_))
    ));
}

#[test]
fn holmes_groups_become_sub_communicators() {
    // The 4-host test bed as 2 classes: hosts 0 and 2 get a RoCE rail.
    let mut t = fixture("testbed-4.toml");
    for h in [0, 2] {
        t.nodes[h].nics[0].class = NicClass::Roce;
    }
    let dims = ParallelDims {
        tp: 1,
        pp: 2,
        dp: 2,
    };
    let groups = holmes_groups(&t, dims).unwrap();
    assert_eq!(groups.data, [vec![0, 2], vec![1, 3]]);
    let sums = ThreadComm::run(4, |comm| {
        let rank = comm.rank();
        let comms = groups.split(&comm).unwrap();
        let data = Collectives::new(comms.data);
        let mut v = [rank as i32];
        data.allreduce(&mut v, ReduceOp::Sum).unwrap();
        (v[0], comms.pipeline.size())
    });
    assert_eq!(sums, [(2, 2), (4, 2), (2, 2), (4, 2)]);
}

#[test]
fn collectives_set_rail_weights_from_telemetry_every_k_operations() {
    // ThreadComm has one rail; a balancer for one rail still runs and sets [1.0].
    let out = ThreadComm::run(2, |comm| {
        let coll =
            Collectives::new(comm).with_rail_balancer(RailBalancer::new(&[1.0]).unwrap().every(2));
        coll.telemetry()
            .record(Record::new("send", 1 << 20, 0, 1_000_000).with_rail(0));
        let mut v = [1.0f32; 4];
        for _ in 0..4 {
            coll.allreduce(&mut v, ReduceOp::Sum).unwrap();
        }
        let b = coll.rail_balancer().unwrap();
        (b.updates(), b.throughput()[0])
    });
    for (updates, tp) in out {
        assert_eq!(updates, 2);
        assert!((tp.unwrap() - (1 << 20) as f64 * 1e3).abs() < 1.0);
    }
}

#[test]
fn each_gpu_prefers_the_rail_nearest_to_it() {
    let t = fixture("two-socket-4gpu-2nic.toml");
    let g0 = &t.nodes[0];
    let rails: Vec<_> = g0.rails().map(|n| n.name.as_str()).collect();
    assert_eq!(rails, ["ib0", "ib1"], "the management port is no rail");
    // Locality of every GPU to every rail, nearest first in the enum's order.
    use Locality::*;
    let table: Vec<Vec<Locality>> = g0
        .gpus
        .iter()
        .map(|g| g0.rails().map(|n| g.locality(n)).collect())
        .collect();
    assert_eq!(
        table,
        [
            [Switch, System],
            [Switch, System],
            [System, Switch],
            [System, Numa]
        ]
    );
    let eth0 = &g0.nics[0];
    assert_eq!(
        g0.gpus[0].locality(eth0),
        Numa,
        "another host bridge of NUMA node 0"
    );
    assert_eq!(
        g0.nearest_nic(3).map(|n| n.name.as_str()),
        Some("ib1"),
        "same NUMA node beats the other socket's switch"
    );
    // g1: the same machine without PCIe paths (NUMA nodes only), GPU 3 pinned to ib0.
    let g1 = &t.nodes[1];
    assert_eq!(g1.gpus[0].locality(&g1.nics[1]), Numa);
    assert_eq!(g1.gpus[0].locality(&g1.nics[2]), System);
    assert_eq!(
        g1.gpus[2].locality(&g1.nics[0]),
        Unknown,
        "eth0 has no locality"
    );
    let per_rank: Vec<_> = (0..t.ranks()).map(|r| t.rail_of_rank(r)).collect();
    assert_eq!(
        per_rank,
        [0, 0, 1, 1, 0, 0, 1, 0].map(Some),
        "g0 by PCIe paths, g1 by NUMA node and the pin"
    );
    assert_eq!(t.rail_of_rank(8), None, "no such rank");
}

#[test]
fn a_gpu_pinned_to_a_nic_the_node_lacks_is_refused_by_name() {
    let path = format!(
        "{}/tests/fixtures/two-socket-4gpu-2nic.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let bad = text.replace("nic = \"ib0\"", "nic = \"ib7\"");
    assert_ne!(bad, text);
    let e = Topology::from_toml(&bad).unwrap_err().to_string();
    assert!(
        e.contains("\"g1\"") && e.contains("GPU 3") && e.contains("\"ib7\""),
        "{e}"
    );
    let pinned_to_management = text.replace("nic = \"ib0\"", "nic = \"eth0\"");
    let e = Topology::from_toml(&pinned_to_management)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a data NIC"), "{e}");
    let twice = text.replace("{ index = 1, numa = 0", "{ index = 0, numa = 0");
    let e = Topology::from_toml(&twice).unwrap_err().to_string();
    assert!(e.contains("GPU 0 is listed twice"), "{e}");
}
