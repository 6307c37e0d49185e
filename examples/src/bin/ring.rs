//! A token goes once around a ring of MPI ranks through ferry-comm; each rank adds its rank.
//! Run it with `mpirun -np 4 target/release/ring`. Exits non-zero if the sum comes back wrong.

use ferry_comm::{Comm, MpiRuntime, Source, TagMatch};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    ferry_comm::init_logging();
    let runtime = MpiRuntime::init()?;
    let world = runtime.world()?;
    let (rank, size) = (world.rank(), world.size());
    let next = (rank + 1) % size;
    let prev = (rank + size - 1) % size;

    let mut token = [0u8; 8];
    if rank == 0 {
        world.send(next, 0, &0u64.to_le_bytes())?;
        world.recv(Source::Rank(prev), TagMatch::Tag(0), &mut token)?;
        let sum = u64::from_le_bytes(token);
        let want = (size * (size - 1) / 2) as u64;
        println!("ring of {size} ranks: token came back as {sum} (expected {want})");
        if sum != want {
            return Err(format!("token {sum} != {want}").into());
        }
    } else {
        world.recv(Source::Rank(prev), TagMatch::Tag(0), &mut token)?;
        let sum = u64::from_le_bytes(token) + rank as u64;
        world.send(next, 0, &sum.to_le_bytes())?;
    }

    // Non-blocking: every rank sends its rank to everyone and receives from everyone at once.
    let mine = (rank as u64).to_le_bytes();
    let mut inbox = vec![[0u8; 8]; size];
    world.scope(|s| -> ferry_comm::Result<()> {
        let mut recvs = Vec::new();
        for (src, slot) in inbox.iter_mut().enumerate() {
            recvs.push(s.irecv(Source::Rank(src), TagMatch::Tag(1), slot)?);
        }
        for dest in 0..size {
            s.isend(dest, 1, &mine)?.wait()?;
        }
        ferry_comm::wait_all(recvs)?;
        Ok(())
    })??;
    let heard: Vec<u64> = inbox.iter().map(|b| u64::from_le_bytes(*b)).collect();
    if heard != (0..size as u64).collect::<Vec<_>>() {
        return Err(format!("rank {rank} heard {heard:?}").into());
    }
    world.barrier()?;
    if rank == 0 {
        println!("all-to-all of ranks through scoped isend/irecv: ok on {size} ranks");
    }
    Ok(())
}
