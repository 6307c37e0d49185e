//! ferry-collectives: collectives over any `ferry_comm::Comm` backend.
//!
//! This crate will hold topology discovery and files, ring / recursive-doubling / hierarchical
//! all-reduce and friends, multi-rail striping, halo exchange, Holmes-style group formation,
//! telemetry, C4-style anomaly detection and traffic planning, and a flow-level fabric simulator.
//!
//! Not done yet: everything above; the heterogeneous-NIC collectives issue fills it.
