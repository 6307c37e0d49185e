//! ferry-datatypes: the MPI derived-datatype engine (after TEMPI and yaksa).
//!
//! A [`Type`] is an immutable IR tree of byte-displacement constructors, one per MPI-3.1
//! §4.1 constructor, that knows its size and bounds exactly as Open MPI 4.1 computes them.
//! Committing it lowers it once to a canonical [`Layout`] (a block list repeated over
//! strided levels, TEMPI's `StridedBlock` when there is one block), which the CPU engine
//! packs with loops specialised for the layout's shape. Packed bytes are always in MPI's
//! type-map order, so they equal `MPI_Pack`'s output byte for byte.
//!
//! | MPI concept                                  | ferry                                        |
//! |----------------------------------------------|----------------------------------------------|
//! | `MPI_Datatype`, predefined types             | [`Type`], [`Type::named`]                    |
//! | `MPI_Type_contiguous` / `vector` / `hvector` | [`Type::contiguous`], [`Type::vector`], [`Type::hvector`] |
//! | `MPI_Type_indexed` / `create_hindexed`       | [`Type::indexed`], [`Type::hindexed`]        |
//! | `MPI_Type_create_(h)indexed_block`           | [`Type::indexed_block`], [`Type::hindexed_block`] |
//! | `MPI_Type_create_struct`                     | [`Type::struct_`]                            |
//! | `MPI_Type_create_subarray` / `darray`        | [`Type::subarray`], [`Type::darray`] ([`Order`], [`Distribution`], [`Darg`]) |
//! | `MPI_Type_create_resized`, `MPI_Type_dup`    | [`Type::resized`], [`Type::dup`]             |
//! | `MPI_Type_size`, `get_extent`, `get_true_extent` | [`Type::size`], [`Type::lb`]/[`Type::extent`], [`Type::true_lb`]/[`Type::true_extent`] |
//! | `MPI_Type_commit`                            | [`Type::commit`] → [`Committed`]             |
//! | `MPI_Pack` / `MPI_Unpack`                    | [`Committed::pack`] / [`Committed::unpack`]  |
//! | `MPI_Pack` with `position`, pipelined segments | [`Committed::pack_range`] / [`Committed::unpack_range`] |
//! | `MPI_Pack_size`                              | [`Committed::packed_size`]                   |
//! | the buffer pointer (interposer)              | [`Committed::pack_raw`] / [`Committed::unpack_raw`] |
//!
//! ```
//! use ferry_datatypes::Type;
//!
//! // Two ints out of every eight, four times: MPI_Type_vector(4, 2, 8, MPI_INT).
//! let v = Type::vector(4, 2, 8, &Type::named(4))?.commit();
//! assert_eq!(v.layout().to_string(), "strided{start=0, block=8, levels=[(4,32)]}");
//! let src: Vec<u8> = (0..128).collect();
//! let mut packed = vec![0u8; v.packed_size(1).unwrap()];
//! v.pack(&src, 0, 1, &mut packed)?;
//! assert_eq!(&packed[8..16], &src[32..40]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Packing speed: one narrow block (1, 2, 4 or 8 bytes) at a small stride (up to 4 to 8
//! times the block) takes AVX2 shuffle kernels where the CPU has AVX2 (unpacking 1- and
//! 2-byte blocks stays scalar). A pack or unpack call that moves at least
//! [`pack_parallel_bytes`] packed bytes (256 KiB unless [`FERRY_PACK_PARALLEL_BYTES`] says
//! otherwise) is split into contiguous byte ranges copied on [`pack_threads`] threads: the
//! cores of the process's affinity mask, at most 8, unless [`FERRY_PACK_THREADS`] says
//! otherwise (`1` turns it off). The threads are the engine's own (no rayon pool, so never
//! the application's), and spin [`FERRY_PACK_SPIN_US`] (1 ms) for the next call before they
//! sleep; a process bound to one core never splits.
//!
//! Bounds follow Open MPI 4.1 where it differs from a literal reading of the standard
//! (alignment rounding applied run by run, zero-size members still moving `ub`); packing
//! follows MPI-3.1 where Open MPI 4.1 packs wrongly (see `testing` for the cases).
//! The crate links no MPI and no GPU code; `ferry-comm` turns MPI handles into this IR.
//! The `testing` feature adds `ferry_datatypes::testing`: seeded random types with the
//! constructor recipes that build them, for comparisons against an MPI library.
//!
//! Not done yet: the GPU pack kernels and the send-method model (device / one-shot / staged),
//! which come with the GPU-datatype issue together with the dependency on `ferry-gpu`.

mod array;
mod bounds;
mod commit;
mod error;
mod ir;
mod layout;
mod narrow;
mod pack;
mod parallel;
#[cfg(test)]
mod reference;
mod stream;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use crate::array::{Darg, Distribution, Order};
pub use crate::commit::Committed;
pub use crate::error::{PackError, TypeError};
pub use crate::ir::Type;
pub use crate::layout::{Block, Layout, Level};
pub use crate::parallel::{
    FERRY_PACK_PARALLEL_BYTES, FERRY_PACK_SPIN_US, FERRY_PACK_THREADS, pack_parallel_bytes,
    pack_threads,
};
pub use crate::stream::{StreamThresholds, set_stream_thresholds, stream_thresholds};
