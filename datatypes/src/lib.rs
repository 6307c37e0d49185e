//! ferry-datatypes: the MPI derived-datatype engine.
//!
//! This crate will hold the datatype IR (byte-displacement kinds only: named, contiguous,
//! hvector, block-hindexed, hindexed, struct, resized, subarray), the canonical layout
//! (TEMPI's strided block, or a coalesced block list), and the CPU and GPU pack/unpack engines
//! with the send-method model. It links no MPI; `ferry-comm` turns MPI handles into this IR.
//!
//! Not done yet: everything above; the datatype-engine issue fills it. It compiles today so
//! the workspace has its final shape.
