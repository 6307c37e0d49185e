//! The `Comm::split` protocol shared by the backends that carry their own context ids
//! (`ThreadComm`, `TcpComm`): all-gather (colour, key) on the communicator's internal context,
//! order each colour's members by (key, old rank), and let the group's first member allocate
//! the new context and tell the others (MPI_Comm_split, MPI-3.1 §6.4.2).

use crate::comm::Tag;
use crate::error::Result;

/// Tag of the (colour, key) all-gather on the internal context (the backends' barrier uses 1).
pub(crate) const TAG_SPLIT_COLORS: Tag = 2;
/// Tag of the leader's new context id.
pub(crate) const TAG_SPLIT_CONTEXT: Tag = 3;

/// The point-to-point operations the protocol needs, on the communicator's internal context.
pub(crate) trait SplitTransport {
    /// Sends `buf` to `dest` with `tag` (blocking until the buffer may be reused).
    fn split_send(&self, dest: usize, tag: Tag, buf: &[u8]) -> Result<()>;
    /// Receives exactly `buf.len()` bytes from `source` with `tag`.
    fn split_recv(&self, source: usize, tag: Tag, buf: &mut [u8]) -> Result<()>;
}

/// What a rank that joined a group learns: the new context, the members' old ranks in new-rank
/// order, and its own new rank.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Joined {
    pub(crate) ctx: u64,
    pub(crate) members: Vec<usize>,
    pub(crate) rank: usize,
}

/// Runs the protocol for rank `rank` of `size`; `alloc_ctx` is called on the group's leader
/// only. Returns `None` for a rank that passed no colour (it takes part but joins nothing).
pub(crate) fn split(
    t: &impl SplitTransport,
    rank: usize,
    size: usize,
    color: Option<u32>,
    key: i32,
    alloc_ctx: impl FnOnce() -> u64,
) -> Result<Option<Joined>> {
    // 1. All-gather (colour, key) by sending to every rank.
    let mine = encode(color, key);
    for dest in 0..size {
        t.split_send(dest, TAG_SPLIT_COLORS, &mine)?;
    }
    let mut all = Vec::with_capacity(size);
    for src in 0..size {
        let mut b = [0u8; 12];
        t.split_recv(src, TAG_SPLIT_COLORS, &mut b)?;
        all.push(decode(&b));
    }
    // 2. My group, ordered by (key, old rank).
    let Some(color) = color else { return Ok(None) };
    let mut members: Vec<usize> = (0..size).filter(|&r| all[r].0 == Some(color)).collect();
    members.sort_by_key(|&r| (all[r].1, r));
    // 3. The group's first member allocates the context and tells the others.
    let leader = members[0];
    let ctx = if rank == leader {
        let ctx = alloc_ctx();
        for &m in &members[1..] {
            t.split_send(m, TAG_SPLIT_CONTEXT, &ctx.to_le_bytes())?;
        }
        ctx
    } else {
        let mut b = [0u8; 8];
        t.split_recv(leader, TAG_SPLIT_CONTEXT, &mut b)?;
        u64::from_le_bytes(b)
    };
    let new_rank = members
        .iter()
        .position(|&r| r == rank)
        .expect("a rank with a colour is a member of its group");
    Ok(Some(Joined {
        ctx,
        members,
        rank: new_rank,
    }))
}

fn encode(color: Option<u32>, key: i32) -> [u8; 12] {
    let mut b = [0u8; 12];
    let c: i64 = color.map_or(-1, i64::from);
    b[..8].copy_from_slice(&c.to_le_bytes());
    b[8..].copy_from_slice(&key.to_le_bytes());
    b
}

fn decode(b: &[u8; 12]) -> (Option<u32>, i32) {
    let c = i64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
    let key = i32::from_le_bytes(b[8..].try_into().expect("4 bytes"));
    (u32::try_from(c).ok(), key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_and_key_round_trip() {
        for (c, k) in [(None, 0), (Some(0), -5), (Some(u32::MAX), i32::MAX)] {
            assert_eq!(decode(&encode(c, k)), (c, k));
        }
    }
}
