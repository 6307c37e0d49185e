//! NUMA placement of feature tables: finds the node nearest a GPU from sysfs and makes the
//! calling thread prefer it (`set_mempolicy(MPOL_PREFERRED)`) while a table's pages are first
//! touched, so the rows the GPU reads cross no socket link.
//!
//! The GPU is found by its PCI address: the NVIDIA driver lists its GPUs under
//! `/proc/driver/nvidia/gpus/<pci address>`; CUDA numbers identical GPUs in PCI order, and
//! `CUDA_VISIBLE_DEVICES` (numeric form) picks among them. The node is
//! `/sys/bus/pci/devices/<pci address>/numa_node`. On a host with one NUMA node there is
//! nothing to place, and [`NumaPlacement::SingleNode`] says so; where any step fails the table
//! is still made, with [`NumaPlacement::Unknown`] naming why. (hwloc would give the same
//! answer from the same files; its bindings need the C library, which this avoids.)
//!
//! Not done yet: mixed GPU models (CUDA's default order is then fastest first), UUID forms of
//! `CUDA_VISIBLE_DEVICES`, explicit node choice.

use std::path::Path;

/// Where a table's pages were asked to live.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NumaPlacement {
    /// The pages were preferred on this node, the GPU's.
    Node(u32),
    /// The host has one NUMA node: nothing to choose.
    SingleNode,
    /// The node could not be found or used; the table is wherever the kernel put it.
    Unknown(String),
}

/// Parses a sysfs node list such as `0`, `0-3` or `0,2-3` into node numbers.
pub(crate) fn parse_node_list(s: &str) -> Option<Vec<u32>> {
    let mut nodes = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                if a > b {
                    return None;
                }
                nodes.extend(a..=b);
            }
            None => nodes.push(part.parse().ok()?),
        }
    }
    Some(nodes)
}

/// The PCI address of CUDA device `ordinal`, given the driver's GPU addresses and
/// `CUDA_VISIBLE_DEVICES`: addresses in PCI order, then the visible list's numeric entries.
pub(crate) fn pci_address_of(
    ordinal: usize,
    mut addresses: Vec<String>,
    visible: Option<&str>,
) -> Option<String> {
    addresses.sort();
    let physical = match visible {
        Some(v) if !v.trim().is_empty() => {
            let list: Vec<usize> = v
                .split(',')
                .map(|x| x.trim().parse().ok())
                .collect::<Option<_>>()?;
            *list.get(ordinal)?
        }
        _ => ordinal,
    };
    addresses.get(physical).cloned()
}

/// The NUMA node nearest CUDA device `ordinal`, or why there is no choice to make.
pub fn gpu_numa_node(ordinal: usize) -> NumaPlacement {
    let online = std::fs::read_to_string("/sys/devices/system/node/online")
        .ok()
        .and_then(|s| parse_node_list(&s));
    match online {
        None => return NumaPlacement::Unknown("no /sys/devices/system/node/online".into()),
        Some(nodes) if nodes.len() <= 1 => return NumaPlacement::SingleNode,
        Some(_) => {}
    }
    let dir = Path::new("/proc/driver/nvidia/gpus");
    let addresses: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect(),
        Err(e) => return NumaPlacement::Unknown(format!("reading {}: {e}", dir.display())),
    };
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    let Some(address) = pci_address_of(ordinal, addresses, visible.as_deref()) else {
        return NumaPlacement::Unknown(format!(
            "no PCI address for CUDA device {ordinal} under {}",
            dir.display()
        ));
    };
    let path = format!("/sys/bus/pci/devices/{address}/numa_node");
    match std::fs::read_to_string(&path).map(|s| s.trim().parse::<i64>()) {
        Ok(Ok(n)) if n >= 0 => NumaPlacement::Node(n as u32),
        Ok(_) => NumaPlacement::Unknown(format!("{path} names no node")),
        Err(e) => NumaPlacement::Unknown(format!("reading {path}: {e}")),
    }
}

/// Runs `f` with the calling thread preferring `placement`'s node for new pages, then restores
/// the default policy. Returns `f`'s result and the placement that held (a failed policy call
/// turns it into [`NumaPlacement::Unknown`]).
pub(crate) fn with_preferred_node<T>(
    placement: NumaPlacement,
    f: impl FnOnce() -> T,
) -> (T, NumaPlacement) {
    let NumaPlacement::Node(node) = placement else {
        return (f(), placement);
    };
    if node >= 64 {
        return (
            f(),
            NumaPlacement::Unknown(format!("node {node} is beyond 63")),
        );
    }
    const MPOL_DEFAULT: i64 = 0;
    const MPOL_PREFERRED: i64 = 1;
    let mask: u64 = 1 << node;
    // SAFETY: set_mempolicy(mode, nodemask, maxnode) reads `maxnode` bits from `mask`, a live
    // u64 (64 bits); it changes only this thread's allocation policy.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_set_mempolicy,
            MPOL_PREFERRED,
            &mask as *const u64,
            64u64,
        )
    };
    if rc != 0 {
        let why = std::io::Error::last_os_error();
        return (
            f(),
            NumaPlacement::Unknown(format!("set_mempolicy for node {node}: {why}")),
        );
    }
    let out = f();
    // SAFETY: MPOL_DEFAULT takes no node mask (null, 0).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_set_mempolicy,
            MPOL_DEFAULT,
            std::ptr::null::<u64>(),
            0u64,
        )
    };
    if rc != 0 {
        tracing::warn!(
            "restoring the default memory policy failed: {}",
            std::io::Error::last_os_error()
        );
    }
    (out, NumaPlacement::Node(node))
}

/// Asks the kernel to place the pages of `ptr..ptr+len` (a whole mapping, not yet touched) on
/// `placement`'s node (`mbind(MPOL_PREFERRED)`); returns the placement that held.
pub(crate) fn prefer_node_for_range(
    placement: NumaPlacement,
    ptr: *mut u8,
    len: usize,
) -> NumaPlacement {
    let NumaPlacement::Node(node) = placement else {
        return placement;
    };
    if node >= 64 {
        return NumaPlacement::Unknown(format!("node {node} is beyond 63"));
    }
    const MPOL_PREFERRED: i64 = 1;
    let mask: u64 = 1 << node;
    // SAFETY: mbind only changes the placement policy of the caller's own mapping
    // `ptr..ptr+len` (page-aligned: it starts a mapping); it reads 64 bits from `mask`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            ptr,
            len,
            MPOL_PREFERRED,
            &mask as *const u64,
            64u64,
            0u32,
        )
    };
    if rc != 0 {
        let why = std::io::Error::last_os_error();
        return NumaPlacement::Unknown(format!("mbind to node {node}: {why}"));
    }
    NumaPlacement::Node(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_lists_parse() {
        assert_eq!(parse_node_list("0\n"), Some(vec![0]));
        assert_eq!(parse_node_list("0-3"), Some(vec![0, 1, 2, 3]));
        assert_eq!(parse_node_list("0,2-3"), Some(vec![0, 2, 3]));
        assert_eq!(parse_node_list("3-1"), None);
        assert_eq!(parse_node_list("x"), None);
    }

    #[test]
    fn cuda_ordinals_map_to_pci_addresses() {
        let addrs = || {
            vec![
                "0000:c1:00.0".to_string(),
                "0000:18:00.0".to_string(),
                "0000:3b:00.0".to_string(),
            ]
        };
        assert_eq!(pci_address_of(0, addrs(), None).unwrap(), "0000:18:00.0");
        assert_eq!(
            pci_address_of(2, addrs(), Some("")).unwrap(),
            "0000:c1:00.0"
        );
        assert_eq!(
            pci_address_of(0, addrs(), Some("2,0")).unwrap(),
            "0000:c1:00.0"
        );
        assert_eq!(
            pci_address_of(1, addrs(), Some("2,0")).unwrap(),
            "0000:18:00.0"
        );
        assert_eq!(pci_address_of(3, addrs(), None), None);
        assert_eq!(pci_address_of(0, addrs(), Some("GPU-1234")), None);
    }

    #[test]
    fn placement_on_this_host_is_reported() {
        // Whatever this host is, the answer is one of the three and never a panic.
        let p = gpu_numa_node(0);
        println!("CUDA device 0: {p:?}");
        let (v, after) = with_preferred_node(p.clone(), || 7);
        assert_eq!(v, 7);
        if let NumaPlacement::Node(n) = p {
            assert_eq!(after, NumaPlacement::Node(n));
        }
    }
}
