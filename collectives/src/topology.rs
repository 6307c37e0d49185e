//! `Topology`: the machines a job runs on, as data: nodes, the ranks on each, GPUs, and NICs
//! with class, bandwidth, NUMA node and PCI address.
//!
//! A topology is discovered from sysfs ([`Node::discover`]), patched from a TOML file where the
//! kernel does not know the truth (sysfs reports 10 Gbit for every veth, so the test bed declares
//! its rates: [`Node::patch`]), gathered across ranks by [`crate::Collectives::gather_topology`],
//! and loaded from or dumped to TOML ([`Topology::from_toml`], [`Topology::to_toml`]), so
//! planners are tested on recorded fixtures (NCCL's `NCCL_TOPO_FILE` idea).
//!
//! **Invariant:** nothing here calls MPI; planners take a `Topology` value.
//!
//! File format (every field but names optional):
//! ```toml
//! name = "testbed"
//! [[node]]
//! name = "h0"
//! ranks = [0, 1]
//! numa_nodes = 2
//! nic = [ { name = "fast0", class = "ethernet", gbit = 2.0 },
//!         { name = "mgmt0", class = "ethernet", gbit = 1.0, role = "management" } ]
//! gpu = [ { index = 0, numa = 0, pci = "0000:3b:00.0" } ]
//! ```
//!
//! Not done yet: hwloc (`lstopo --of xml`) as a discovery source beside sysfs, and bandwidth
//! probing between rails at start-up.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The kind of network a NIC is on; collectives keep heavy traffic inside one class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NicClass {
    /// InfiniBand (native RDMA).
    Infiniband,
    /// RDMA over Converged Ethernet.
    Roce,
    /// Plain Ethernet (TCP).
    Ethernet,
}

impl std::fmt::Display for NicClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NicClass::Infiniband => "infiniband",
            NicClass::Roce => "roce",
            NicClass::Ethernet => "ethernet",
        })
    }
}

/// What a NIC is used for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NicRole {
    /// Carries collective traffic: one rail.
    #[default]
    Data,
    /// Bootstrap and control only (the test bed's management net); never a rail.
    Management,
}

fn is_default_role(r: &NicRole) -> bool {
    *r == NicRole::Data
}

/// One network interface.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nic {
    /// Interface name (`eth0`, `ib0`, `veth-fast`).
    pub name: String,
    /// Network class.
    pub class: NicClass,
    /// Line rate in Gbit/s, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gbit: Option<f64>,
    /// NUMA node the NIC hangs off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa: Option<u32>,
    /// PCI address (`0000:3b:00.0`); `None` for virtual interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci: Option<String>,
    /// An address bound to the NIC, for transports that pick rails by address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Data rail or management.
    #[serde(default, skip_serializing_if = "is_default_role")]
    pub role: NicRole,
}

/// One GPU.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gpu {
    /// Index on its node (CUDA order where known, else PCI order).
    pub index: u32,
    /// Model name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// NUMA node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa: Option<u32>,
    /// PCI address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci: Option<String>,
    /// The NIC nearest to it (same PCIe switch or NUMA node), by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic: Option<String>,
}

/// One host.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Host name; unique within a topology.
    pub name: String,
    /// World ranks that run on this node, in order (local rank i is `ranks[i]`).
    #[serde(default)]
    pub ranks: Vec<usize>,
    /// Number of NUMA nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa_nodes: Option<u32>,
    /// Network interfaces; the data NICs, in order, are the rails.
    #[serde(default, rename = "nic")]
    pub nics: Vec<Nic>,
    /// GPUs.
    #[serde(default, rename = "gpu")]
    pub gpus: Vec<Gpu>,
}

/// The whole job's machines.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// A label for the topology (the cluster or fixture name).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The nodes, in the order of their lowest rank.
    #[serde(default, rename = "node")]
    pub nodes: Vec<Node>,
}

impl Node {
    /// The data NICs in order: rail `i` is the `i`-th.
    pub fn rails(&self) -> impl Iterator<Item = &Nic> {
        self.nics.iter().filter(|n| n.role == NicRole::Data)
    }

    /// Line rate of each rail in Gbit/s (1.0 where unknown, so unknown rails share evenly).
    pub fn rail_gbits(&self) -> Vec<f64> {
        self.rails().map(|n| n.gbit.unwrap_or(1.0)).collect()
    }

    /// The class of the node's best data NIC (InfiniBand before RoCE before Ethernet, then the
    /// fastest): the network its heavy traffic should use. `None` without data NICs.
    pub fn class(&self) -> Option<NicClass> {
        self.rails()
            .min_by(|a, b| {
                a.class.cmp(&b.class).then(
                    b.gbit
                        .unwrap_or(0.0)
                        .partial_cmp(&a.gbit.unwrap_or(0.0))
                        .unwrap_or(std::cmp::Ordering::Equal),
                )
            })
            .map(|n| n.class)
    }

    /// Applies the entries of `over` (a node description from a file) to this one: NICs with
    /// the same name take every field `over` sets (class and role always, the optional ones where
    /// present); NICs and GPUs that only `over` lists are added; `ranks` and `numa_nodes` are
    /// taken where `over` has them.
    pub fn patch(&mut self, over: &Node) {
        for o in &over.nics {
            match self.nics.iter_mut().find(|n| n.name == o.name) {
                Some(n) => {
                    n.class = o.class;
                    n.role = o.role;
                    n.gbit = o.gbit.or(n.gbit);
                    n.numa = o.numa.or(n.numa);
                    n.pci = o.pci.clone().or(n.pci.take());
                    n.address = o.address.clone().or(n.address.take());
                }
                None => self.nics.push(o.clone()),
            }
        }
        for g in &over.gpus {
            match self.gpus.iter_mut().find(|x| x.index == g.index) {
                Some(x) => *x = g.clone(),
                None => self.gpus.push(g.clone()),
            }
        }
        if !over.ranks.is_empty() {
            self.ranks = over.ranks.clone();
        }
        self.numa_nodes = over.numa_nodes.or(self.numa_nodes);
    }

    /// This host as sysfs describes it: NICs from `/sys/class/net` (class from the link type
    /// and a bound RDMA device, speed, NUMA node, PCI address; `lo` left out), NVIDIA GPUs from
    /// `/sys/bus/pci/devices`, and the NUMA node count. No ranks.
    pub fn discover() -> Node {
        Self::discover_in(Path::new("/"))
    }

    /// [`Node::discover`] under another root (a recorded copy of `/sys` and `/proc`, for tests).
    pub fn discover_in(root: &Path) -> Node {
        let read = |p: &Path| {
            std::fs::read_to_string(root.join(p))
                .ok()
                .map(|s| s.trim().to_string())
        };
        let name =
            read(Path::new("proc/sys/kernel/hostname")).unwrap_or_else(|| "localhost".into());
        let numa = |p: &Path| {
            read(p)
                .and_then(|s| s.parse::<i64>().ok())
                .and_then(|v| u32::try_from(v).ok())
        };
        let pci_of = |dev: &Path| {
            std::fs::canonicalize(root.join(dev))
                .ok()
                .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
                .filter(|f| f.matches(':').count() == 2)
        };
        let mut nics = Vec::new();
        let net = root.join("sys/class/net");
        let mut names: Vec<String> = std::fs::read_dir(&net)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        for ifname in names.into_iter().filter(|n| n != "lo") {
            let base = Path::new("sys/class/net").join(&ifname);
            let link_type = read(&base.join("type")).and_then(|s| s.parse::<u32>().ok());
            // ARPHRD_INFINIBAND is 32; an Ethernet NIC with an RDMA device bound is RoCE.
            let class = if link_type == Some(32) {
                NicClass::Infiniband
            } else if root.join(&base).join("device/infiniband").is_dir() {
                NicClass::Roce
            } else {
                NicClass::Ethernet
            };
            // speed is in Mbit/s; -1 or an error (link down, virtual) means unknown.
            let gbit = read(&base.join("speed"))
                .and_then(|s| s.parse::<i64>().ok())
                .filter(|&s| s > 0)
                .map(|s| s as f64 / 1000.0);
            nics.push(Nic {
                name: ifname,
                class,
                gbit,
                numa: numa(&base.join("device/numa_node")),
                pci: pci_of(&base.join("device")),
                address: None,
                role: NicRole::Data,
            });
        }
        let mut gpus = Vec::new();
        let pci = root.join("sys/bus/pci/devices");
        let mut devs: Vec<String> = std::fs::read_dir(&pci)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        devs.sort();
        for dev in devs {
            let base = Path::new("sys/bus/pci/devices").join(&dev);
            let class = read(&base.join("class")).unwrap_or_default();
            let vendor = read(&base.join("vendor")).unwrap_or_default();
            // PCI class 0x0300 (VGA) or 0x0302 (3D controller), vendor NVIDIA.
            if vendor == "0x10de" && (class.starts_with("0x0300") || class.starts_with("0x0302")) {
                gpus.push(Gpu {
                    index: gpus.len() as u32,
                    model: None,
                    numa: numa(&base.join("numa_node")),
                    pci: Some(dev),
                    nic: None,
                });
            }
        }
        let numa_nodes = std::fs::read_dir(root.join("sys/devices/system/node"))
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        let n = e.file_name();
                        let n = n.to_string_lossy();
                        n.starts_with("node") && n[4..].parse::<u32>().is_ok()
                    })
                    .count() as u32
            })
            .ok()
            .filter(|&n| n > 0);
        Node {
            name,
            ranks: Vec::new(),
            numa_nodes,
            nics,
            gpus,
        }
    }
}

impl Topology {
    /// Parses TOML text and checks it ([`Topology::validate`]).
    pub fn from_toml(text: &str) -> Result<Topology> {
        let topo: Topology = toml::from_str(text).map_err(|e| Error::Parse {
            path: None,
            message: e.to_string(),
        })?;
        topo.validate()?;
        Ok(topo)
    }

    /// Loads and checks a TOML file.
    pub fn load(path: impl AsRef<Path>) -> Result<Topology> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            Error::Parse { message, .. } => Error::Parse {
                path: Some(path.to_path_buf()),
                message,
            },
            Error::Topology(m) => Error::Topology(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// The topology as TOML ([`Topology::from_toml`] reads it back to an equal value).
    pub fn to_toml(&self) -> String {
        // Serialising plain structs of strings, numbers and enums cannot fail.
        toml::to_string(self).unwrap_or_else(|e| format!("# not serialisable: {e}\n"))
    }

    /// Writes [`Topology::to_toml`] to a file.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.to_toml()).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Checks that node names are unique, every rank appears on exactly one node, ranks are
    /// `0..n` without gaps, and bandwidths are positive and finite.
    pub fn validate(&self) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for n in &self.nodes {
            if !seen.insert(&n.name) {
                return Err(Error::Topology(format!(
                    "node {:?} is listed twice",
                    n.name
                )));
            }
            for nic in &n.nics {
                if let Some(g) = nic.gbit {
                    if !(g.is_finite() && g > 0.0) {
                        return Err(Error::Topology(format!(
                            "node {:?}: NIC {:?} has bandwidth {g} Gbit/s; it must be positive",
                            n.name, nic.name
                        )));
                    }
                }
            }
        }
        let mut ranks: Vec<(usize, &str)> = self
            .nodes
            .iter()
            .flat_map(|n| n.ranks.iter().map(move |&r| (r, n.name.as_str())))
            .collect();
        ranks.sort();
        if let Some(w) = ranks.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(Error::Topology(format!(
                "rank {} is placed on both {:?} and {:?}",
                w[0].0, w[0].1, w[1].1
            )));
        }
        if let Some((i, _)) = ranks.iter().enumerate().find(|(i, w)| w.0 != *i) {
            return Err(Error::Topology(format!(
                "ranks must be 0..{} without gaps; rank {i} is missing",
                ranks.len()
            )));
        }
        Ok(())
    }

    /// Number of ranks placed on nodes.
    pub fn ranks(&self) -> usize {
        self.nodes.iter().map(|n| n.ranks.len()).sum()
    }

    /// The index of the node that runs `rank`.
    pub fn node_of(&self, rank: usize) -> Option<usize> {
        self.nodes.iter().position(|n| n.ranks.contains(&rank))
    }

    /// The node index of each rank `0..ranks()`; an error if a rank is not placed.
    pub fn node_of_ranks(&self) -> Result<Vec<usize>> {
        (0..self.ranks())
            .map(|r| {
                self.node_of(r)
                    .ok_or_else(|| Error::Topology(format!("rank {r} is on no node")))
            })
            .collect()
    }

    /// The NIC class each rank's node uses for heavy traffic ([`Node::class`]).
    pub fn class_of_ranks(&self) -> Result<Vec<NicClass>> {
        self.node_of_ranks()?
            .into_iter()
            .map(|n| {
                self.nodes[n].class().ok_or_else(|| {
                    Error::Topology(format!("node {:?} has no data NIC", self.nodes[n].name))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_validates() {
        let text = r#"
            name = "t"
            [[node]]
            name = "a"
            ranks = [0, 2]
            nic = [{ name = "ib0", class = "infiniband", gbit = 200.0 },
                   { name = "eth0", class = "ethernet", gbit = 25.0 },
                   { name = "m", class = "ethernet", role = "management" }]
            [[node]]
            name = "b"
            ranks = [1]
            nic = [{ name = "eth0", class = "roce", gbit = 100.0, numa = 1 }]
        "#;
        let t = Topology::from_toml(text).unwrap();
        assert_eq!(t.node_of_ranks().unwrap(), [0, 1, 0]);
        assert_eq!(t.nodes[0].rail_gbits(), [200.0, 25.0]);
        assert_eq!(t.nodes[0].class(), Some(NicClass::Infiniband));
        assert_eq!(Topology::from_toml(&t.to_toml()).unwrap(), t);

        let dup = text.replace("ranks = [1]", "ranks = [2]");
        let e = Topology::from_toml(&dup).unwrap_err().to_string();
        assert!(e.contains("rank 2 is placed on both"), "{e}");
        let e = Topology::from_toml(&text.replace("gbit = 25.0", "gbit = -1.0")).unwrap_err();
        assert!(e.to_string().contains("must be positive"), "{e}");
        let e = Topology::from_toml("[[node]]\nname = 1\n").unwrap_err();
        assert!(matches!(e, Error::Parse { .. }), "{e}");
        let e = Topology::from_toml("[[node]]\nname = \"x\"\nbogus = 1\n").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn patch_overrides_discovered_rates() {
        let mut n = Node {
            name: "h".into(),
            nics: vec![Nic {
                name: "veth0".into(),
                class: NicClass::Ethernet,
                gbit: Some(10.0),
                numa: None,
                pci: None,
                address: None,
                role: NicRole::Data,
            }],
            ..Node::default()
        };
        let over: Topology = Topology::from_toml(
            "[[node]]\nname = \"h\"\nnic = [{ name = \"veth0\", class = \"ethernet\", gbit = 0.2 }, { name = \"m\", class = \"ethernet\", role = \"management\" }]\n",
        )
        .unwrap();
        n.patch(&over.nodes[0]);
        assert_eq!(n.rail_gbits(), [0.2]);
        assert_eq!(n.nics.len(), 2);
    }

    #[test]
    fn discovers_this_host_without_panicking() {
        let n = Node::discover();
        assert!(!n.name.is_empty());
        assert!(n.nics.iter().all(|x| x.name != "lo"));
        println!(
            "{}",
            Topology {
                name: "here".into(),
                nodes: vec![n]
            }
            .to_toml()
        );
    }
}
