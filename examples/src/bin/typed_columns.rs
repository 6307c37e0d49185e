//! Typed send and receive with a derived datatype: each rank owns a row-major grid of f64 and
//! sends its last interior column to the right neighbour, which stores it in its left ghost
//! column. The column is `vector(rows, 1, cols)` of 8-byte elements, packed by ferry.
//! Run with `mpirun -np 3 target/release/typed_columns`; exits non-zero if a value is wrong.

use ferry_comm::{Comm, MpiRuntime, Source, TagMatch};
use ferry_datatypes::Type;

fn value(rank: usize, row: usize, col: usize) -> f64 {
    (rank * 1_000_000 + row * 1000 + col) as f64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    ferry_comm::init_logging();
    let runtime = MpiRuntime::init()?;
    let world = runtime.world()?;
    let (rank, size) = (world.rank(), world.size());
    let (rows, cols) = (64, 34); // 32 interior columns plus one ghost column on each side
    let mut grid = vec![-1.0f64; rows * cols];
    for r in 0..rows {
        for c in 1..cols - 1 {
            grid[r * cols + c] = value(rank, r, c);
        }
    }
    // One column: `rows` blocks of one f64, `cols` elements apart.
    let column = Type::vector(rows, 1, cols as isize, &Type::named(8))?.commit();
    let right = (rank + 1) % size;
    let left = (rank + size - 1) % size;

    // Send the last interior column (index cols-2); receive into the left ghost column (0).
    let sent = grid.clone();
    // Even ranks send first and odd ranks receive first; with an odd number of ranks the last
    // and the first rank are both even, which eager delivery of this small message allows.
    if rank % 2 == 0 {
        world.send_typed(right, 7, &sent, cols - 2, &column, 1)?;
        world.recv_typed(
            Source::Rank(left),
            TagMatch::Tag(7),
            &mut grid,
            0,
            &column,
            1,
        )?;
    } else {
        world.recv_typed(
            Source::Rank(left),
            TagMatch::Tag(7),
            &mut grid,
            0,
            &column,
            1,
        )?;
        world.send_typed(right, 7, &sent, cols - 2, &column, 1)?;
    }

    let mut wrong = 0;
    for r in 0..rows {
        if grid[r * cols] != value(left, r, cols - 2) {
            wrong += 1;
        }
        if grid[r * cols + cols - 1] != -1.0 {
            wrong += 1; // the right ghost column must be untouched
        }
    }
    world.barrier()?;
    if wrong > 0 {
        return Err(format!("rank {rank}: {wrong} wrong cells").into());
    }
    if rank == 0 {
        println!(
            "typed column exchange on {size} ranks: every ghost cell holds its neighbour's value"
        );
    }
    Ok(())
}
