//! The bytes `TcpComm` puts on the wire: the rail handshake, data frames, and the rendezvous
//! registration. Everything is little-endian and every length a peer sends is checked against
//! a bound before anything is allocated for it.

use crate::error::{Error, Result};

/// First bytes of a rail handshake (version 1).
pub(crate) const HELLO_MAGIC: &[u8; 8] = b"FERRYTC1";
/// First bytes of a rendezvous registration (version 1).
pub(crate) const RENDEZVOUS_MAGIC: &[u8; 8] = b"FERRYRV1";
/// The longest job token accepted, in bytes.
pub(crate) const MAX_TOKEN: usize = 256;
/// The longest rail address string ("ip:port") accepted.
pub(crate) const MAX_ADDR: usize = 64;
/// The most rails per rank.
pub(crate) const MAX_RAILS: usize = 64;
/// The most ranks in one job.
pub(crate) const MAX_RANKS: usize = 1 << 16;

/// Handshake verdicts sent back to a connecting rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Verdict {
    Accepted = 0,
    BadToken = 1,
    UnknownPeer = 2,
    WrongJob = 3,
    Duplicate = 4,
    BadMagic = 5,
}

impl Verdict {
    pub(crate) fn from_u8(b: u8) -> Verdict {
        match b {
            0 => Verdict::Accepted,
            1 => Verdict::BadToken,
            2 => Verdict::UnknownPeer,
            3 => Verdict::WrongJob,
            4 => Verdict::Duplicate,
            _ => Verdict::BadMagic,
        }
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            Verdict::Accepted => "accepted",
            Verdict::BadToken => "wrong job token",
            Verdict::UnknownPeer => "unknown peer (rank, rail or address not in the job's table)",
            Verdict::WrongJob => "job size or rail count differs",
            Verdict::Duplicate => "a connection for this rank and rail already exists",
            Verdict::BadMagic => "not a ferry TCP handshake",
        }
    }
}

/// What a connecting rank says first on a rail connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Hello {
    pub(crate) rank: u32,
    pub(crate) size: u32,
    pub(crate) rail: u32,
    pub(crate) rails: u32,
    pub(crate) token: Vec<u8>,
}

/// Fixed part of a hello: magic, rank, size, rail, rails, token length.
pub(crate) const HELLO_FIXED: usize = 8 + 4 * 4 + 2;

impl Hello {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HELLO_FIXED + self.token.len());
        b.extend_from_slice(HELLO_MAGIC);
        for v in [self.rank, self.size, self.rail, self.rails] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&(self.token.len() as u16).to_le_bytes());
        b.extend_from_slice(&self.token);
        b
    }

    /// Decodes the fixed part; returns the hello without its token and the token's length,
    /// or `None` for a bad magic or an over-long token.
    pub(crate) fn decode_fixed(b: &[u8; HELLO_FIXED]) -> Option<(Hello, usize)> {
        if &b[..8] != HELLO_MAGIC {
            return None;
        }
        let u = |i: usize| u32::from_le_bytes(b[8 + 4 * i..12 + 4 * i].try_into().expect("4"));
        let token_len = u16::from_le_bytes([b[24], b[25]]) as usize;
        if token_len > MAX_TOKEN {
            return None;
        }
        Some((
            Hello {
                rank: u(0),
                size: u(1),
                rail: u(2),
                rails: u(3),
                token: Vec::new(),
            },
            token_len,
        ))
    }
}

/// Compares two tokens in time independent of where they differ.
pub(crate) fn token_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Frame kinds.
pub(crate) const KIND_DATA: u8 = 1;
/// The sender will send nothing more on this connection (a clean close).
pub(crate) const KIND_BYE: u8 = 2;

/// Length of an encoded [`FrameHeader`].
pub(crate) const HEADER_BYTES: usize = 64;

/// The header in front of every frame on a rail connection.
///
/// A message of `total` bytes is cut into *shares* (one per rail it is striped over), and each
/// share into frames of at most the frame limit; `offset` places this frame in the message and
/// (`share_offset`, `share_len`) name its share, so the receiver can time each share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct FrameHeader {
    pub(crate) kind: u8,
    /// The sender's rank in the communicator of `ctx`.
    pub(crate) source: u32,
    pub(crate) tag: i32,
    /// Payload bytes after this header.
    pub(crate) len: u32,
    pub(crate) ctx: u64,
    /// Per (sender, receiver) message number, counting from 0 over all communicators.
    pub(crate) seq: u64,
    pub(crate) total: u64,
    pub(crate) offset: u64,
    pub(crate) share_offset: u64,
    pub(crate) share_len: u64,
}

impl FrameHeader {
    pub(crate) fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[0] = self.kind;
        b[4..8].copy_from_slice(&self.source.to_le_bytes());
        b[8..12].copy_from_slice(&self.tag.to_le_bytes());
        b[12..16].copy_from_slice(&self.len.to_le_bytes());
        for (i, v) in [
            self.ctx,
            self.seq,
            self.total,
            self.offset,
            self.share_offset,
            self.share_len,
        ]
        .into_iter()
        .enumerate()
        {
            b[16 + 8 * i..24 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// Decodes and checks a header against the frame and message limits.
    pub(crate) fn decode(
        b: &[u8; HEADER_BYTES],
        max_frame: usize,
        max_message: usize,
    ) -> Result<FrameHeader> {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8"));
        let h = FrameHeader {
            kind: b[0],
            source: u32_at(4),
            tag: u32_at(8) as i32,
            len: u32_at(12),
            ctx: u64_at(16),
            seq: u64_at(24),
            total: u64_at(32),
            offset: u64_at(40),
            share_offset: u64_at(48),
            share_len: u64_at(56),
        };
        let bad = |why: String| Err(Error::InvalidArgument(format!("bad frame header: {why}")));
        match h.kind {
            KIND_BYE => return Ok(h),
            KIND_DATA => {}
            k => return bad(format!("unknown kind {k}")),
        }
        if h.len as usize > max_frame {
            return bad(format!(
                "frame of {} bytes over the limit {max_frame}",
                h.len
            ));
        }
        if h.total > max_message as u64 {
            return bad(format!(
                "message of {} bytes over the limit {max_message}",
                h.total
            ));
        }
        let frame_end = h.offset.checked_add(h.len as u64);
        let share_end = h.share_offset.checked_add(h.share_len);
        match (frame_end, share_end) {
            (Some(fe), Some(se))
                if h.offset >= h.share_offset && fe <= se && se <= h.total && h.tag >= 0 => {}
            _ => {
                return bad(format!(
                    "frame [{}, +{}) of share [{}, +{}) does not fit a message of {} bytes (tag {})",
                    h.offset, h.len, h.share_offset, h.share_len, h.total, h.tag
                ));
            }
        }
        Ok(h)
    }
}

/// Encodes a length-prefixed string list entry (address).
pub(crate) fn put_str(b: &mut Vec<u8>, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(MAX_ADDR)];
    b.push(bytes.len() as u8);
    b.extend_from_slice(bytes);
}

/// A cursor over received bytes whose reads fail instead of panicking.
pub(crate) struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Self {
        Self { b }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.b.len() < n {
            return Err(Error::InvalidArgument("truncated bootstrap message".into()));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    pub(crate) fn str(&mut self) -> Result<String> {
        let n = self.u8()? as usize;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| Error::InvalidArgument("address is not UTF-8".into()))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.b.is_empty()
    }
}

/// The address table of a job: `table[rank][rail]` is "ip:port" of that rail's listener.
pub(crate) type Table = Vec<Vec<String>>;

/// Encodes an address table (size, rails, then every address).
pub(crate) fn encode_table(table: &Table) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(table.len() as u32).to_le_bytes());
    for row in table {
        b.extend_from_slice(&(row.len() as u16).to_le_bytes());
        for a in row {
            put_str(&mut b, a);
        }
    }
    b
}

/// Decodes an address table, bounding its dimensions.
pub(crate) fn decode_table(b: &[u8]) -> Result<Table> {
    let mut r = Reader::new(b);
    let n = r.u32()? as usize;
    if n == 0 || n > MAX_RANKS {
        return Err(Error::InvalidArgument(format!(
            "address table of {n} ranks"
        )));
    }
    let mut table = Vec::with_capacity(n);
    for _ in 0..n {
        let k = r.u16()? as usize;
        if k > MAX_RAILS {
            return Err(Error::InvalidArgument(format!(
                "{k} rails in address table"
            )));
        }
        let row = (0..k).map(|_| r.str()).collect::<Result<Vec<_>>>()?;
        table.push(row);
    }
    if !r.is_empty() {
        return Err(Error::InvalidArgument(
            "trailing bytes after the address table".into(),
        ));
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_bounds() {
        let h = FrameHeader {
            kind: KIND_DATA,
            source: 3,
            tag: 7,
            len: 100,
            ctx: 2,
            seq: 9,
            total: 1000,
            offset: 400,
            share_offset: 400,
            share_len: 600,
        };
        assert_eq!(
            FrameHeader::decode(&h.encode(), 1 << 20, 1 << 30).unwrap(),
            h
        );
        let over = FrameHeader {
            total: u64::MAX,
            ..h
        };
        assert!(FrameHeader::decode(&over.encode(), 1 << 20, 1 << 30).is_err());
        let frame = FrameHeader { len: 2 << 20, ..h };
        assert!(FrameHeader::decode(&frame.encode(), 1 << 20, 1 << 30).is_err());
        let outside = FrameHeader { offset: 950, ..h };
        assert!(FrameHeader::decode(&outside.encode(), 1 << 20, 1 << 30).is_err());
        let wrap = FrameHeader {
            offset: u64::MAX - 10,
            share_offset: u64::MAX - 10,
            ..h
        };
        assert!(FrameHeader::decode(&wrap.encode(), 1 << 20, 1 << 30).is_err());
        let mut junk = h.encode();
        junk[0] = 77;
        assert!(FrameHeader::decode(&junk, 1 << 20, 1 << 30).is_err());
    }

    #[test]
    fn hello_and_table_round_trip() {
        let h = Hello {
            rank: 2,
            size: 4,
            rail: 1,
            rails: 2,
            token: b"secret".to_vec(),
        };
        let b = h.encode();
        let (fixed, n) = Hello::decode_fixed(b[..HELLO_FIXED].try_into().unwrap()).unwrap();
        assert_eq!(n, 6);
        assert_eq!(fixed.rank, 2);
        assert_eq!(&b[HELLO_FIXED..], b"secret");
        let t = vec![vec!["127.0.0.1:5".to_string(), "127.0.0.2:6".to_string()]; 3];
        assert_eq!(decode_table(&encode_table(&t)).unwrap(), t);
        assert!(decode_table(&[0, 0, 0]).is_err());
        assert!(token_eq(b"abc", b"abc") && !token_eq(b"abc", b"abd") && !token_eq(b"a", b"ab"));
    }
}
