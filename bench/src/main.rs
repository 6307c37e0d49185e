//! ferry-bench: one binary, one subcommand per benchmark. Each benchmark checks its result
//! before it reports, runs its baseline in the same process, prints a table of ratios and can
//! write one JSON record per case (`--json PATH`).
//!
//! Not done yet: `gnn`, `fabric-sim`, `calibrate`; the
//! issues that build those capabilities add their subcommands here.

mod allreduce;
mod chart;
mod gather;
mod halo3d;
mod launch;
mod p2p;
mod pack;
mod pingpong_ddt;
mod plot;
mod plot_allreduce;
mod report;

use clap::{Parser, Subcommand};

/// ferry's benchmarks.
#[derive(Parser)]
#[command(name = "ferry-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// All-reduce (all-gather, reduce-scatter) over ferry's multi-rail TcpComm on the test bed.
    Allreduce(allreduce::Args),
    /// Zero-copy GPU gather of feature rows from mapped host memory beside CPU gather + copy.
    Gather(gather::Args),
    /// 26-neighbour 3D halo exchange (examples/halo3d.c) through Open MPI and through ferry.
    Halo3d(halo3d::Args),
    /// Point-to-point ping-pong through ferry-comm's MpiComm beside plain rsmpi, under mpirun.
    P2p(p2p::Args),
    /// ferry's pack/unpack beside Open MPI's MPI_Pack/MPI_Unpack on application datatypes.
    Pack(pack::Args),
    /// Derived-type ping-pong through Open MPI and through libferry_mpi.so, beside contiguous.
    PingpongDdt(pingpong_ddt::Args),
    /// PNG of `gather --json` records: GB/s against row size, one line per method.
    PlotGather(plot::Args),
    /// PNG of scripts/bench-allreduce.sh's merged records: busbw against size, per method.
    PlotAllreduce(plot_allreduce::Args),
}

fn main() {
    ferry_comm::init_logging();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Allreduce(args) => allreduce::run(&args),
        Command::Gather(args) => gather::run(&args),
        Command::Halo3d(args) => halo3d::run(&args),
        Command::P2p(args) => p2p::run(&args),
        Command::Pack(args) => pack::run(&args),
        Command::PingpongDdt(args) => pingpong_ddt::run(&args),
        Command::PlotGather(args) => plot::run(&args),
        Command::PlotAllreduce(args) => plot_allreduce::run(&args),
    };
    if let Err(e) = outcome {
        eprintln!("ferry-bench: {e}");
        std::process::exit(1);
    }
}
