//! `Topology`: the machines a job runs on, as data: nodes, the ranks on each, GPUs, and NICs
//! with class, bandwidth, NUMA node, package, PCI address and PCIe path.
//!
//! A topology is discovered from sysfs and hwloc ([`Node::discover`]: sysfs lists the NICs with
//! class and speed and the GPUs; hwloc adds where each sits: package, NUMA node, the PCIe
//! bridges above it, and the machine's packages and cores; without hwloc the node records why
//! in `hwloc_skipped`), patched from a TOML file where the kernel does not know the truth
//! (sysfs reports 10 Gbit for every veth, so the test bed declares its rates: [`Node::patch`]),
//! gathered across ranks by [`crate::Collectives::gather_topology`], and loaded from or dumped
//! to TOML ([`Topology::from_toml`], [`Topology::to_toml`]), so planners are tested on recorded
//! fixtures (NCCL's `NCCL_TOPO_FILE` idea). `ferry-topology` prints and records it.
//!
//! [`Locality`] says how far apart a GPU and a NIC are (same PCIe bridge, same switch tree,
//! same host bridge, same NUMA node, same package, across packages), from their PCIe paths,
//! NUMA nodes and packages; [`Node::nearest_nic`] and [`Topology::rail_of_rank`] pick the rail
//! a GPU's rank should prefer.
//!
//! **Invariant:** nothing here calls MPI, and only [`Node::discover`] and
//! [`Node::enrich_from_hwloc`] / [`Node::enrich_from_hwloc_xml`] call hwloc; planners take a
//! `Topology` value.
//!
//! File format (every field but names optional):
//! ```toml
//! name = "testbed"
//! [[node]]
//! name = "h0"
//! ranks = [0, 1]
//! numa_nodes = 2
//! packages = 2           # from hwloc, like cores
//! cores = 64
//! hwloc = "2.9.0"         # the hwloc that placed the devices, or:
//! # hwloc_skipped = "why hwloc was not used"
//! nic = [ { name = "fast0", class = "ethernet", gbit = 2.0 },
//!         { name = "mgmt0", class = "ethernet", gbit = 1.0, role = "management" },
//!         { name = "ib0", class = "infiniband", gbit = 200.0, numa = 1, package = 1,
//!           pci = "0000:9a:00.0", pcie = ["0000:[97-9f]", "0000:97:00.0", "0000:98:01.0"] } ]
//! gpu = [ { index = 0, numa = 0, package = 0, pci = "0000:3b:00.0",
//!           pcie = ["0000:[37-3f]", "0000:37:00.0"], nic = "ib0" } ]
//! ```
//! A GPU's `nic` pins its nearest NIC by hand; without it, [`Node::nearest_nic`] computes it.
//!
//! Not done yet: bandwidth probing between rails at start-up lives in [`crate::RailProbe`],
//! not here; NVLink and PCIe link speeds are not recorded.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hwloc::Survey;

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

/// How far apart two devices of a node are (a GPU and a NIC), nearest first; NCCL's path
/// types in brackets.
///
/// A device's `pcie` path lists the bridges above it, host bridge first. Two devices below the
/// same host bridge share a prefix of their paths: only the host bridge ([`Locality::HostBridge`]),
/// or also PCIe bridges or switch ports below it ([`Locality::Switch`]), down to the parent of
/// both ([`Locality::Bridge`]). Otherwise their NUMA nodes and packages decide. Different NUMA
/// nodes with a package unknown count as [`Locality::System`], the cautious answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Locality {
    /// Both directly below one PCIe bridge or switch port (PIX).
    Bridge,
    /// Below a common PCIe bridge or switch, through several bridges, not through the host
    /// bridge (PXB).
    Switch,
    /// Through their common host bridge (PHB).
    HostBridge,
    /// Different host bridges of one NUMA node (NODE).
    Numa,
    /// Different NUMA nodes of one package (sub-NUMA clustering, NPS modes).
    Package,
    /// Across packages, over the inter-socket link (SYS).
    System,
    /// One of the two has neither a PCIe path, a NUMA node nor a package.
    Unknown,
}

impl std::fmt::Display for Locality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Locality::Bridge => "bridge",
            Locality::Switch => "switch",
            Locality::HostBridge => "host-bridge",
            Locality::Numa => "numa",
            Locality::Package => "package",
            Locality::System => "system",
            Locality::Unknown => "unknown",
        })
    }
}

/// The locality fields a NIC and a GPU have alike.
struct Place<'a> {
    numa: Option<u32>,
    package: Option<u32>,
    pcie: &'a [String],
}

impl Locality {
    fn between(a: Place<'_>, b: Place<'_>) -> Locality {
        let shared = a
            .pcie
            .iter()
            .zip(b.pcie)
            .take_while(|(x, y)| x == y)
            .count();
        match shared {
            0 => {}
            1 => return Locality::HostBridge,
            k if a.pcie.len() == k && b.pcie.len() == k => return Locality::Bridge,
            _ => return Locality::Switch,
        }
        match (a.numa, b.numa, a.package, b.package) {
            (Some(x), Some(y), ..) if x == y => Locality::Numa,
            (.., Some(p), Some(q)) if p == q => Locality::Package,
            (.., Some(_), Some(_)) | (Some(_), Some(_), ..) => Locality::System,
            _ => Locality::Unknown,
        }
    }
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
    /// Package (socket) the NIC hangs off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<u32>,
    /// The PCIe bridges above the NIC, host bridge first (see [`Locality`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pcie: Vec<String>,
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
    /// Package (socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<u32>,
    /// PCI address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci: Option<String>,
    /// The PCIe bridges above the GPU, host bridge first (see [`Locality`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pcie: Vec<String>,
    /// The NIC this GPU should use, by name, where a file pins it; otherwise
    /// [`Node::nearest_nic`] computes it from locality.
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
    /// Number of packages (sockets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packages: Option<u32>,
    /// Number of cores (the ones this process's cgroup allows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<u32>,
    /// The hwloc version that placed the devices, when discovery used hwloc.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hwloc: Option<String>,
    /// Why discovery did not use hwloc.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hwloc_skipped: Option<String>,
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

impl Nic {
    fn place(&self) -> Place<'_> {
        Place {
            numa: self.numa,
            package: self.package,
            pcie: &self.pcie,
        }
    }
}

impl Gpu {
    fn place(&self) -> Place<'_> {
        Place {
            numa: self.numa,
            package: self.package,
            pcie: &self.pcie,
        }
    }

    /// How far this GPU is from `nic` ([`Locality`]).
    pub fn locality(&self, nic: &Nic) -> Locality {
        Locality::between(self.place(), nic.place())
    }
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

    /// The GPU with index `gpu`.
    pub fn gpu(&self, gpu: u32) -> Option<&Gpu> {
        self.gpus.iter().find(|g| g.index == gpu)
    }

    /// The rail GPU `gpu` should prefer, as an index into [`Node::rails`]:
    /// 1. the data NIC its `nic` field names, where a file pins one;
    /// 2. otherwise, among the rails of the node's class ([`Node::class`], so heavy traffic
    ///    stays on one network), the nearest by [`Locality`], then the fastest, then the first.
    ///
    /// `None` if there is no such GPU or no data NIC.
    pub fn nearest_rail(&self, gpu: u32) -> Option<usize> {
        let g = self.gpu(gpu)?;
        if let Some(name) = &g.nic {
            if let Some(i) = self.rails().position(|n| &n.name == name) {
                return Some(i);
            }
        }
        let class = self.class()?;
        self.rails()
            .enumerate()
            .filter(|(_, n)| n.class == class)
            .min_by(|(i, a), (j, b)| {
                g.locality(a)
                    .cmp(&g.locality(b))
                    .then(
                        b.gbit
                            .unwrap_or(0.0)
                            .partial_cmp(&a.gbit.unwrap_or(0.0))
                            .unwrap_or(std::cmp::Ordering::Equal),
                    )
                    .then(i.cmp(j))
            })
            .map(|(i, _)| i)
    }

    /// The NIC of [`Node::nearest_rail`].
    pub fn nearest_nic(&self, gpu: u32) -> Option<&Nic> {
        self.rails().nth(self.nearest_rail(gpu)?)
    }

    /// Applies the entries of `over` (a node description from a file) to this one: NICs with
    /// the same name take every field `over` sets (class and role always, the optional ones where
    /// present); GPUs with the same index are replaced; NICs and GPUs that only `over` lists are
    /// added; `ranks`, `numa_nodes`, `packages` and `cores` are taken where `over` has them.
    pub fn patch(&mut self, over: &Node) {
        for o in &over.nics {
            match self.nics.iter_mut().find(|n| n.name == o.name) {
                Some(n) => {
                    n.class = o.class;
                    n.role = o.role;
                    n.gbit = o.gbit.or(n.gbit);
                    n.numa = o.numa.or(n.numa);
                    n.pci = o.pci.clone().or(n.pci.take());
                    n.package = o.package.or(n.package);
                    if !o.pcie.is_empty() {
                        n.pcie = o.pcie.clone();
                    }
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
        self.packages = over.packages.or(self.packages);
        self.cores = over.cores.or(self.cores);
    }

    /// This host: [`Node::discover_in`] `/` (sysfs), then [`Node::enrich_from_hwloc`]. No ranks.
    pub fn discover() -> Node {
        let mut node = Self::discover_in(Path::new("/"));
        node.enrich_from_hwloc();
        node
    }

    /// Adds what hwloc knows about this machine: each NIC's and GPU's package, PCIe path, and
    /// NUMA node and PCI address where sysfs had none; GPU models; the package, core and (where
    /// sysfs had none) NUMA node counts; GPUs sysfs missed. Sets `hwloc` to hwloc's version, or,
    /// where hwloc cannot load the topology, leaves the node as it was and says why in
    /// `hwloc_skipped` (also logged).
    pub fn enrich_from_hwloc(&mut self) {
        match Survey::of_this_machine() {
            Ok(s) => s.merge_into(self),
            Err(why) => {
                tracing::warn!("topology discovery without hwloc: {why}");
                self.hwloc = None;
                self.hwloc_skipped = Some(why);
            }
        }
    }

    /// [`Node::enrich_from_hwloc`] from an hwloc XML export (`lstopo --of xml`, from this
    /// machine or another); an error, leaving the node as it was, if hwloc cannot load it.
    pub fn enrich_from_hwloc_xml(&mut self, xml: &str) -> Result<()> {
        let s = Survey::of_xml(xml).map_err(Error::Topology)?;
        s.merge_into(self);
        Ok(())
    }

    /// This host as sysfs describes it under `root` (`/`, or a recorded copy of `/sys` and
    /// `/proc` for tests): NICs from `/sys/class/net` (class from the link type and a bound RDMA
    /// device, speed, NUMA node, PCI address; `lo` left out), NVIDIA GPUs from
    /// `/sys/bus/pci/devices`, and the NUMA node count. No ranks, no hwloc.
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
                package: None,
                pcie: Vec::new(),
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
                    package: None,
                    pci: Some(dev),
                    pcie: Vec::new(),
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
            numa_nodes,
            nics,
            gpus,
            ..Node::default()
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
    /// `0..n` without gaps, bandwidths are positive and finite, GPU indices are unique on their
    /// node, and a GPU's `nic` names a data NIC of its node.
    pub fn validate(&self) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for n in &self.nodes {
            if !seen.insert(&n.name) {
                return Err(Error::Topology(format!(
                    "node {:?} is listed twice",
                    n.name
                )));
            }
            let mut gpus = std::collections::HashSet::new();
            for g in &n.gpus {
                if !gpus.insert(g.index) {
                    return Err(Error::Topology(format!(
                        "node {:?}: GPU {} is listed twice",
                        n.name, g.index
                    )));
                }
                if let Some(nic) = &g.nic {
                    if !n.rails().any(|x| &x.name == nic) {
                        return Err(Error::Topology(format!(
                            "node {:?}: GPU {} names NIC {nic:?}, which is not a data NIC of the node",
                            n.name, g.index
                        )));
                    }
                }
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

    /// The rail the rank `rank` should prefer ([`Node::nearest_rail`] of its GPU), where local
    /// rank `i` of a node drives that node's GPU `i` (one rank per GPU). `None` for a rank
    /// on no node, a local rank without a GPU of that index, or a node without data NICs.
    pub fn rail_of_rank(&self, rank: usize) -> Option<usize> {
        let node = &self.nodes[self.node_of(rank)?];
        let local = node.ranks.iter().position(|&r| r == rank)?;
        node.nearest_rail(u32::try_from(local).ok()?)
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
                package: None,
                pcie: Vec::new(),
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
