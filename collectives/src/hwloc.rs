//! Topology discovery through hwloc: where each NIC and GPU sits (PCI address, NUMA node,
//! package, the PCIe bridges above it) and the machine's packages, cores and NUMA nodes,
//! merged into a sysfs-discovered [`Node`].
//!
//! hwloc is reached through the `hwlocality` binding, which finds the system's libhwloc (2.x)
//! with pkg-config and links it dynamically (`libhwloc.so.15`, which Open MPI already depends
//! on); its `vendored` feature is never turned on. Nothing here is `unsafe`: hwlocality is the
//! checked layer, and this module only reads the topology it builds.
//!
//! 1. [`Survey::of_this_machine`] loads this machine's topology with I/O objects (hwloc's
//!    "important" filter: network, GPU and OpenFabrics devices, the PCI devices and bridges
//!    above them); [`Survey::of_xml`] loads an XML export instead (`lstopo --of xml`, from
//!    any machine).
//! 2. The survey lists each network OS device by interface name and each NVIDIA display or 3D
//!    controller (vendor 0x10de, PCI class 0x0300 or 0x0302), with its [`Placement`].
//! 3. [`Survey::merge_into`] fills what sysfs left empty: sysfs stays the source of the
//!    interface list, classes and speeds, and of NUMA nodes and PCI addresses where it knows
//!    them; hwloc adds packages, PCIe paths, counts, and GPU models.
//!
//! Not done yet: CUDA/NVML OS devices are used only for the model name (Debian's hwloc has
//! no CUDA plugin, so GPUs are found as PCI devices); NVLink and PCIe link speeds are not
//! recorded.

use hwlocality::Topology as HwTopology;
use hwlocality::object::TopologyObject;
use hwlocality::object::attributes::{DownstreamAttributes, ObjectAttributes, UpstreamAttributes};
use hwlocality::object::types::{OSDeviceType, ObjectType};
use hwlocality::topology::builder::{TopologyBuilder, TypeFilter};

use crate::topology::{Gpu, Node};

/// Where a device sits, as hwloc sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Placement {
    /// PCI address (`0000:3b:00.0`) of the device (for a NIC, of its PCI function).
    pub(crate) pci: Option<String>,
    /// The NUMA node of the CPU-side object the device hangs off, when that is one node.
    pub(crate) numa: Option<u32>,
    /// The package (socket) it hangs off.
    pub(crate) package: Option<u32>,
    /// The bridges above it, host bridge first ([`crate::Nic::pcie`]).
    pub(crate) pcie: Vec<String>,
}

/// What hwloc reports about one machine.
#[derive(Clone, Debug, Default)]
pub(crate) struct Survey {
    /// hwloc's version (the root object's `hwlocVersion`), or its API version.
    pub(crate) version: String,
    /// Packages (sockets), cores and NUMA nodes hwloc counts (those the cgroup allows).
    pub(crate) packages: u32,
    pub(crate) cores: u32,
    pub(crate) numa_nodes: u32,
    /// Network interfaces by name.
    pub(crate) nics: Vec<(String, Placement)>,
    /// NVIDIA GPUs in PCI order, with a model name where hwloc has one.
    pub(crate) gpus: Vec<(Placement, Option<String>)>,
}

fn io_builder() -> Result<TopologyBuilder, String> {
    TopologyBuilder::new()
        .with_io_type_filter(TypeFilter::KeepImportant)
        .map_err(|e| format!("hwloc refused the I/O filter: {e}"))
}

impl Survey {
    /// This machine, as hwloc discovers it.
    pub(crate) fn of_this_machine() -> Result<Survey, String> {
        let topo = io_builder()?
            .build()
            .map_err(|e| format!("hwloc could not load this machine's topology: {e}"))?;
        Ok(Self::of(&topo))
    }

    /// The machine an hwloc XML export describes.
    pub(crate) fn of_xml(xml: &str) -> Result<Survey, String> {
        let topo = io_builder()?
            .from_xml(xml)
            .map_err(|e| format!("hwloc cannot take this XML: {e}"))?
            .build()
            .map_err(|e| format!("hwloc could not load the XML topology: {e}"))?;
        Ok(Self::of(&topo))
    }

    fn of(topo: &HwTopology) -> Survey {
        let count = |ty| topo.objects_with_type(ty).len() as u32;
        let root = topo.root_object();
        let version = root
            .info("hwlocVersion")
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_else(|| {
                let v = hwlocality::hwloc_api_version();
                format!("API {}.{}.{}", v >> 16, (v >> 8) & 0xff, v & 0xff)
            });
        let packages: Vec<&TopologyObject> = topo.objects_with_type(ObjectType::Package).collect();
        let mut nics = Vec::new();
        let mut gpus = Vec::new();
        for obj in topo.objects_with_type(ObjectType::OSDevice) {
            let Some(ObjectAttributes::OSDevice(a)) = obj.attributes() else {
                continue;
            };
            if a.device_type() != OSDeviceType::Network {
                continue;
            }
            let Some(name) = obj.name() else { continue };
            // A network OS device hangs off its PCI function where it has one.
            let dev = obj
                .parent()
                .filter(|p| p.object_type() == ObjectType::PCIDevice);
            let place = match dev {
                Some(d) => placement(d, &packages),
                None => Placement {
                    pcie: Vec::new(),
                    pci: None,
                    ..placement(obj, &packages)
                },
            };
            nics.push((name.to_string_lossy().into_owned(), place));
        }
        for dev in topo.pci_devices() {
            let Some(ObjectAttributes::PCIDevice(p)) = dev.attributes() else {
                continue;
            };
            // NVIDIA (0x10de) VGA (0x0300) or 3D (0x0302) controllers.
            if p.vendor_id() != 0x10de || !matches!(p.class_id(), 0x0300 | 0x0302) {
                continue;
            }
            let model = dev
                .io_children()
                .find_map(|c| c.info("GPUModel"))
                .or_else(|| dev.info("PCIDevice"))
                .map(|m| m.to_string_lossy().into_owned());
            gpus.push((placement(dev, &packages), model));
        }
        gpus.sort_by(|a, b| a.0.pci.cmp(&b.0.pci));
        Survey {
            version,
            packages: packages.len() as u32,
            cores: count(ObjectType::Core),
            numa_nodes: count(ObjectType::NUMANode),
            nics,
            gpus,
        }
    }

    /// Merges the survey into `node` (see the module doc for who wins) and marks the node as
    /// enriched by this hwloc.
    pub(crate) fn merge_into(&self, node: &mut Node) {
        for (name, place) in &self.nics {
            // Interfaces come from sysfs; hwloc only places them.
            if let Some(n) = node.nics.iter_mut().find(|n| &n.name == name) {
                n.pci = n.pci.take().or_else(|| place.pci.clone());
                n.numa = n.numa.or(place.numa);
                n.package = n.package.or(place.package);
                if n.pcie.is_empty() {
                    n.pcie = place.pcie.clone();
                }
            }
        }
        for (place, model) in &self.gpus {
            let same = |g: &&mut Gpu| {
                g.pci.as_deref().map(str::to_ascii_lowercase).as_ref() == place.pci.as_ref()
            };
            match node.gpus.iter_mut().find(same) {
                Some(g) => {
                    g.model = g.model.take().or_else(|| model.clone());
                    g.numa = g.numa.or(place.numa);
                    g.package = g.package.or(place.package);
                    if g.pcie.is_empty() {
                        g.pcie = place.pcie.clone();
                    }
                }
                None => node.gpus.push(Gpu {
                    index: node.gpus.len() as u32,
                    model: model.clone(),
                    numa: place.numa,
                    package: place.package,
                    pci: place.pci.clone(),
                    pcie: place.pcie.clone(),
                    nic: None,
                }),
            }
        }
        let some = |n: u32| Some(n).filter(|&n| n > 0);
        node.numa_nodes = node.numa_nodes.or(some(self.numa_nodes));
        node.packages = some(self.packages).or(node.packages);
        node.cores = some(self.cores).or(node.cores);
        node.hwloc = Some(self.version.clone());
        node.hwloc_skipped = None;
    }
}

/// `dddd:bb:dd.f`, as sysfs and lspci write it.
fn bus_id(p: &hwlocality::object::attributes::PCIDeviceAttributes) -> String {
    format!(
        "{:04x}:{:02x}:{:02x}.{:x}",
        p.domain(),
        p.bus_id(),
        p.bus_device(),
        p.function()
    )
}

/// A bridge's name in a PCIe path: a PCI-to-PCI bridge by its bus id, a host bridge by the
/// buses below it (`0000:[16-1f]`, as lstopo prints it).
fn bridge_name(b: &TopologyObject) -> String {
    let Some(ObjectAttributes::Bridge(a)) = b.attributes() else {
        return format!("bridge#{}", b.logical_index());
    };
    if let Some(UpstreamAttributes::PCI(p)) = a.upstream_attributes() {
        return bus_id(p);
    }
    match a.downstream_attributes() {
        Some(DownstreamAttributes::PCI(d)) => format!(
            "{:04x}:[{:02x}-{:02x}]",
            d.domain(),
            d.secondary_bus(),
            d.subordinate_bus()
        ),
        None => format!("hostbridge#{}", b.logical_index()),
    }
}

/// Where `dev` (a PCI device, or any I/O object) sits: its bridges, host bridge first, and
/// the NUMA node and package of the CPU-side object it hangs off (`packages`: all of them).
fn placement(dev: &TopologyObject, packages: &[&TopologyObject]) -> Placement {
    let mut pcie: Vec<String> = dev
        .ancestors()
        .take_while(|a| a.object_type() == ObjectType::Bridge)
        .map(bridge_name)
        .collect();
    pcie.reverse();
    let pci = match dev.attributes() {
        Some(ObjectAttributes::PCIDevice(p)) => Some(bus_id(p)),
        _ => None,
    };
    let cpu_side = dev.first_non_io_ancestor();
    let numa = cpu_side
        .and_then(|o| o.nodeset())
        .filter(|s| s.weight() == Some(1))
        .and_then(|s| s.first_set())
        .map(|i| usize::from(i) as u32);
    // hwloc hangs I/O off the Machine where the package is the whole machine: the one
    // package whose CPUs include the CPU-side object's is then the device's.
    let package = cpu_side.and_then(|o| {
        let p = if o.object_type() == ObjectType::Package {
            Some(o)
        } else {
            o.first_ancestor_with_type(ObjectType::Package)
        };
        let p = p.or_else(|| {
            let cpus = o.cpuset()?;
            let mut covering = packages.iter().filter(|p| p.covers_cpuset(&*cpus));
            let one = covering.next()?;
            covering.next().is_none().then_some(*one)
        });
        p.and_then(|p| p.os_index()).map(|i| i as u32)
    });
    Placement {
        pci,
        numa,
        package,
        pcie,
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{Nic, NicClass, NicRole, Topology};

    fn fixtures() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
    }

    fn nic(name: &str, class: NicClass, pci: &str) -> Nic {
        Nic {
            name: name.into(),
            class,
            gbit: Some(200.0),
            numa: None,
            package: None,
            pci: Some(pci.into()),
            pcie: Vec::new(),
            address: None,
            role: NicRole::Data,
        }
    }

    /// g0 as sysfs alone would see it: NICs with class and PCI address, two of the four GPUs.
    fn sysfs_g0() -> Node {
        let gpu = |index, pci: &str| Gpu {
            index,
            model: None,
            numa: Some(0),
            package: None,
            pci: Some(pci.into()),
            pcie: Vec::new(),
            nic: None,
        };
        Node {
            name: "g0".into(),
            nics: vec![
                Nic {
                    role: NicRole::Management,
                    ..nic("eth0", NicClass::Ethernet, "0000:02:00.0")
                },
                nic("ib0", NicClass::Infiniband, "0000:19:00.0"),
                nic("ib1", NicClass::Infiniband, "0000:9a:00.0"),
            ],
            gpus: vec![gpu(0, "0000:17:00.0"), gpu(1, "0000:18:00.0")],
            ..Node::default()
        }
    }

    #[test]
    fn an_xml_export_places_every_device_as_the_fixture_records() {
        let xml =
            std::fs::read_to_string(fixtures().join("hwloc-two-socket-4gpu-2nic.xml")).unwrap();
        let want = Topology::load(fixtures().join("two-socket-4gpu-2nic.toml")).unwrap();
        let want = &want.nodes[0];
        let mut got = sysfs_g0();
        got.enrich_from_hwloc_xml(&xml).unwrap();
        assert_eq!(got.hwloc.as_deref(), Some("2.9.0"));
        assert_eq!(
            (got.packages, got.cores, got.numa_nodes),
            (Some(2), Some(4), Some(2))
        );
        for w in &want.nics {
            let g = got.nics.iter().find(|n| n.name == w.name).unwrap();
            assert_eq!(
                (&g.pci, g.numa, g.package, &g.pcie),
                (&w.pci, w.numa, w.package, &w.pcie),
                "NIC {}",
                w.name
            );
        }
        assert_eq!(got.gpus.len(), 4, "hwloc adds the two GPUs sysfs missed");
        for w in &want.gpus {
            let g = got.gpu(w.index).unwrap();
            assert_eq!(
                (&g.pci, g.numa, g.package, &g.pcie),
                (&w.pci, w.numa, w.package, &w.pcie),
                "GPU {}",
                w.index
            );
        }
        assert_eq!(got.gpus[0].model.as_deref(), Some("GH100 [H100 SXM5 80GB]"));
        assert_eq!(got.gpus[3].model.as_deref(), Some("NVIDIA H100 80GB HBM3"));
        let rails: Vec<_> = (0..4).map(|g| got.nearest_rail(g)).collect();
        assert_eq!(rails, [0, 0, 1, 1].map(Some));
        // What sysfs knows stays: a NUMA node sysfs reported is not replaced.
        let mut disagree = sysfs_g0();
        disagree.nics[1].numa = Some(7);
        disagree.enrich_from_hwloc_xml(&xml).unwrap();
        assert_eq!(
            (disagree.nics[1].numa, disagree.nics[1].package),
            (Some(7), Some(0))
        );
    }

    #[test]
    fn xml_hwloc_cannot_load_is_an_error_and_changes_nothing() {
        let mut n = sysfs_g0();
        let e = n
            .enrich_from_hwloc_xml("<topology version=\"2.0\">")
            .unwrap_err();
        assert!(e.to_string().contains("hwloc"), "{e}");
        assert_eq!(n, sysfs_g0());
    }

    /// hwloc on this machine: cores, NUMA nodes, and the same PCI NICs and GPUs as sysfs.
    /// Skips, saying why, where hwloc cannot load the topology.
    #[test]
    fn hwloc_on_this_machine_agrees_with_sysfs() {
        let survey = match Survey::of_this_machine() {
            Ok(s) => s,
            Err(why) => {
                println!("skipped: {why}");
                let n = Node::discover();
                assert_eq!(n.hwloc_skipped.as_deref(), Some(why.as_str()));
                return;
            }
        };
        let sysfs = Node::discover_in(std::path::Path::new("/"));
        let node = Node::discover();
        println!("{survey:#?}");
        assert!(node.hwloc.is_some() && node.hwloc_skipped.is_none());
        let cpus = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count() as u32;
        let cores = node.cores.unwrap();
        assert!((1..=cpus).contains(&cores), "{cores} cores, {cpus} CPUs");
        assert!(node.packages.unwrap() >= 1 && survey.numa_nodes >= 1);
        // Every NIC sysfs finds on a PCI function, hwloc finds on the same function.
        for n in sysfs.nics.iter().filter(|n| n.pci.is_some()) {
            let h = survey.nics.iter().find(|(name, _)| name == &n.name);
            let h = h.unwrap_or_else(|| panic!("hwloc does not list {}", n.name));
            assert_eq!(h.1.pci, n.pci, "{}", n.name);
            assert!(!h.1.pcie.is_empty(), "{} has no host bridge", n.name);
            if survey.packages == 1 {
                assert_eq!(h.1.package, Some(0), "{} on the only package", n.name);
            }
        }
        let hw: Vec<_> = survey.gpus.iter().map(|g| g.0.pci.clone()).collect();
        let sys: Vec<_> = sysfs.gpus.iter().map(|g| g.pci.clone()).collect();
        assert_eq!(hw, sys, "hwloc and sysfs see the same NVIDIA GPUs");
    }
}
