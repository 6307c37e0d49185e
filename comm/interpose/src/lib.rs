//! ferry-mpi: the MPI interposer, built as `libferry_mpi.so`.
//!
//! Loaded with `LD_PRELOAD` (or linked before libmpi), it will intercept MPI_Init, the datatype
//! calls, point-to-point, completion and the common collectives, route non-contiguous and GPU
//! buffers through ferry's datatype engine, and forward everything else to `PMPI_*` unchanged.
//!
//! Not done yet: it exports no MPI symbols today, so preloading it changes nothing. The
//! datatype-engine issue adds the interception layer and the checked list of exported names.
