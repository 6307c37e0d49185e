//! Halo exchange: a neighbour all-to-all of byte buffers, and of regions of one array
//! described by derived datatypes (packed with ferry-datatypes on the way out, unpacked on the
//! way in), as MPI_Neighbor_alltoallw does for stencil codes.
//!
//! Messages are matched by *channel*: what a rank sends on channel `c` to peer `q` arrives in
//! the buffer `q` posted for channel `c` from that rank. Channels make a periodic domain of
//! two ranks (where left and right are the same peer) unambiguous: send-left and
//! receive-from-right share one channel, send-right and receive-from-left another.

use ferry_comm::{Comm, Source, TagMatch};
use ferry_datatypes::Committed;

use crate::algo::{Run, tags};
use crate::error::{Result, invalid};

/// The largest channel number (tags `16384 + channel` stay under MPI's guaranteed 32767).
pub const MAX_CHANNEL: u16 = 15000;

/// One outgoing halo buffer.
#[derive(Debug)]
pub struct HaloSend<'a> {
    /// Destination rank.
    pub peer: usize,
    /// Channel (see the module docs).
    pub channel: u16,
    /// Bytes to send.
    pub data: &'a [u8],
}

/// One incoming halo buffer; the message must fill it exactly.
#[derive(Debug)]
pub struct HaloRecv<'a> {
    /// Source rank.
    pub peer: usize,
    /// Channel.
    pub channel: u16,
    /// Where the bytes go.
    pub data: &'a mut [u8],
}

/// One region of the array, as `count` elements of a committed datatype at the array's origin.
#[derive(Clone, Debug)]
pub struct HaloRegion {
    /// The peer rank.
    pub peer: usize,
    /// Channel.
    pub channel: u16,
    /// The region's datatype.
    pub ty: Committed,
    /// Elements of `ty`.
    pub count: usize,
}

fn check_peer<C: Comm>(comm: &C, peer: usize, channel: u16) -> Result<()> {
    if peer >= comm.size() {
        return Err(invalid(format!(
            "halo peer {peer} of a communicator of {}",
            comm.size()
        )));
    }
    if channel > MAX_CHANNEL {
        return Err(invalid(format!(
            "halo channel {channel} is over {MAX_CHANNEL}"
        )));
    }
    Ok(())
}

impl<C: Comm> Run<'_, C> {
    /// Posts every receive, then every send, and waits for all; each receive must be filled
    /// exactly. Arguments are checked before any message moves.
    pub(crate) fn halo_bytes(
        &self,
        sends: &[HaloSend<'_>],
        recvs: &mut [HaloRecv<'_>],
    ) -> Result<()> {
        for s in sends {
            check_peer(self.comm, s.peer, s.channel)?;
        }
        for r in recvs.iter() {
            check_peer(self.comm, r.peer, r.channel)?;
        }
        self.comm.scope(|sc| -> Result<()> {
            let mut pending = Vec::new();
            for r in recvs.iter_mut() {
                let want = r.data.len();
                let tag = tags::HALO + i32::from(r.channel);
                pending.push((
                    r.peer,
                    want,
                    sc.irecv(Source::Rank(r.peer), TagMatch::Tag(tag), &mut *r.data)?,
                ));
            }
            for s in sends {
                let _sent = sc.isend(s.peer, tags::HALO + i32::from(s.channel), s.data)?;
            }
            for (peer, want, rq) in pending {
                let (status, _) = rq.wait()?;
                if status.bytes != want {
                    return Err(invalid(format!(
                        "halo from rank {peer}: {} bytes arrived for a {want}-byte region",
                        status.bytes
                    )));
                }
            }
            Ok(())
        })?
    }

    /// Packs each send region of `buf`, exchanges, unpacks into each receive region.
    pub(crate) fn halo_typed(
        &self,
        buf: &mut [u8],
        origin: usize,
        sends: &[HaloRegion],
        recvs: &[HaloRegion],
    ) -> Result<()> {
        // Check every receive region's footprint before anything moves.
        for r in recvs {
            if let Some((lo, hi)) = r.ty.footprint(r.count)? {
                if origin as isize + lo < 0 || origin as isize + hi > buf.len() as isize {
                    return Err(invalid(format!(
                        "halo region from rank {} spans bytes [{lo}, {hi}) around {origin}, outside a buffer of {} bytes",
                        r.peer,
                        buf.len()
                    )));
                }
            }
        }
        let mut packed = Vec::with_capacity(sends.len());
        for s in sends {
            let n =
                s.ty.packed_size(s.count)
                    .ok_or_else(|| invalid("halo region size overflows"))?;
            let mut out = vec![0u8; n];
            s.ty.pack(buf, origin, s.count, &mut out)?;
            packed.push(out);
        }
        let mut incoming: Vec<Vec<u8>> = recvs
            .iter()
            .map(|r| {
                r.ty.packed_size(r.count)
                    .map(|n| vec![0u8; n])
                    .ok_or_else(|| invalid("halo region size overflows"))
            })
            .collect::<Result<_>>()?;
        {
            let out: Vec<HaloSend<'_>> = sends
                .iter()
                .zip(&packed)
                .map(|(s, p)| HaloSend {
                    peer: s.peer,
                    channel: s.channel,
                    data: p,
                })
                .collect();
            let mut inc: Vec<HaloRecv<'_>> = recvs
                .iter()
                .zip(incoming.iter_mut())
                .map(|(r, p)| HaloRecv {
                    peer: r.peer,
                    channel: r.channel,
                    data: p,
                })
                .collect();
            self.halo_bytes(&out, &mut inc)?;
        }
        for (r, p) in recvs.iter().zip(&incoming) {
            r.ty.unpack(p, buf, origin, r.count)?;
        }
        Ok(())
    }
}
