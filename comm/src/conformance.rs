//! The conformance suite every `Comm` backend passes: ordering, wildcards, sizes, many
//! outstanding requests, sub-communicators and the error cases.
//!
//! Each case is collective: every rank of the communicator runs it, does all of its
//! communication before it checks anything (so one rank's failure cannot leave a peer waiting),
//! and reports a failure as a message. [`run_suite`] runs the cases with a barrier between them.
//! `cargo test` runs it over [`crate::ThreadComm`] at 2, 3 and 4 ranks; the
//! `ferry-comm-conformance` binary runs it over [`crate::MpiComm`] under `mpirun`.

use crate::comm::{Comm, Source, TagMatch};
use crate::error::Error;

/// One case's outcome on this rank.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The case's name.
    pub name: &'static str,
    /// `None` if it passed, else what went wrong.
    pub failure: Option<String>,
}

type CaseFn<C> = fn(&C, &Options) -> Result<(), String>;

/// Knobs for the suite.
#[derive(Debug, Clone)]
pub struct Options {
    /// Bytes of the large-message case (at least 256 MiB in CI).
    pub large_bytes: usize,
    /// Requests each rank keeps outstanding in the many-requests case.
    pub outstanding: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            large_bytes: (256 << 20) + 3,
            outstanding: 512,
        }
    }
}

/// The cases, in the order they run.
pub fn cases<C: Comm>() -> Vec<(&'static str, CaseFn<C>)> {
    vec![
        ("ring exchange", ring_exchange::<C>),
        ("send to self", send_to_self::<C>),
        ("order per (source, tag)", order_per_source_tag::<C>),
        ("any source", any_source::<C>),
        ("any tag and probe", any_tag_and_probe::<C>),
        ("zero-length messages", zero_length::<C>),
        ("large message", large_message::<C>),
        ("hundreds of outstanding requests", many_outstanding::<C>),
        ("test polls to completion", test_polls::<C>),
        ("barrier waits for the last rank", barrier_waits::<C>),
        ("split into sub-communicators", split::<C>),
        ("error: rank out of range", error_rank::<C>),
        ("error: invalid tag", error_tag::<C>),
        ("error: truncation, and recv_vec", error_truncation::<C>),
        (
            "error: non-blocking truncation",
            error_truncation_nonblocking::<C>,
        ),
    ]
}

/// Runs every case on `comm`, separated by barriers; returns one result per case.
/// A barrier failure ends the suite early (the communicator is broken).
pub fn run_suite<C: Comm>(comm: &C, options: &Options) -> Vec<CaseResult> {
    let mut results = Vec::new();
    for (name, case) in cases::<C>() {
        let failure = case(comm, options).err();
        results.push(CaseResult { name, failure });
        if let Err(e) = comm.barrier() {
            results.push(CaseResult {
                name: "barrier between cases",
                failure: Some(e.to_string()),
            });
            break;
        }
    }
    results
}

fn ensure(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what()) }
}

fn e2s(e: Error) -> String {
    e.to_string()
}

/// A byte pattern that differs per (sender, message, position).
fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seed.wrapping_mul(131)) % 251) as u8)
        .collect()
}

fn ring_exchange<C: Comm>(c: &C, _: &Options) -> Result<(), String> {
    let (r, n) = (c.rank(), c.size());
    let right = (r + 1) % n;
    let left = (r + n - 1) % n;
    let out = pattern(r, 1000 + r);
    let mut got = vec![0u8; 1000 + left];
    let st = c
        .sendrecv(
            right,
            7,
            &out,
            Source::Rank(left),
            TagMatch::Tag(7),
            &mut got,
        )
        .map_err(e2s)?;
    ensure(
        st.source == left && st.tag == 7 && st.bytes == 1000 + left,
        || format!("status {st:?}"),
    )?;
    ensure(got == pattern(left, 1000 + left), || {
        "payload differs".into()
    })
}

fn send_to_self<C: Comm>(c: &C, _: &Options) -> Result<(), String> {
    let out = pattern(c.rank() + 77, 333);
    let mut got = vec![0u8; 333];
    let st = c
        .sendrecv(
            c.rank(),
            3,
            &out,
            Source::Rank(c.rank()),
            TagMatch::Tag(3),
            &mut got,
        )
        .map_err(e2s)?;
    ensure(st.source == c.rank() && got == out, || {
        format!("self message wrong: {st:?}")
    })
}

fn order_per_source_tag<C: Comm>(c: &C, _: &Options) -> Result<(), String> {
    // Every rank sends 64 numbered messages to its right neighbour, alternating tags 1 and 2.
    // The receiver takes all of tag 2 first, then tag 1: within a tag the numbers must ascend.
    let (r, n) = (c.rank(), c.size());
    let right = (r + 1) % n;
    let left = (r + n - 1) % n;
    let msgs: Vec<[u8; 8]> = (0u64..64).map(|i| i.to_le_bytes()).collect();
    let mut seen = Vec::new();
    c.scope(|s| -> Result<(), String> {
        let mut sends = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            sends.push(s.isend(right, 1 + (i % 2) as i32, m).map_err(e2s)?);
        }
        for tag in [2, 1] {
            for _ in 0..32 {
                let mut b = [0u8; 8];
                c.recv(Source::Rank(left), TagMatch::Tag(tag), &mut b)
                    .map_err(e2s)?;
                seen.push((tag, u64::from_le_bytes(b)));
            }
        }
        for q in sends {
            q.wait().map_err(e2s)?;
        }
        Ok(())
    })
    .map_err(e2s)??;
    let expect: Vec<(i32, u64)> = (0..32u64)
        .map(|k| (2, 2 * k + 1))
        .chain((0..32u64).map(|k| (1, 2 * k)))
        .collect();
    ensure(seen == expect, || format!("order broken: {seen:?}"))
}

fn any_source<C: Comm>(c: &C, _: &Options) -> Result<(), String> {
    let (r, n) = (c.rank(), c.size());
    if r != 0 {
        return c.send(0, 5, &(r as u64).to_le_bytes()).map_err(e2s);
    }
    let mut sources = Vec::new();
    for _ in 1..n {
        let mut b = [0u8; 8];
        let st = c.recv(Source::Any, TagMatch::Tag(5), &mut b).map_err(e2s)?;
        ensure(u64::from_le_bytes(b) == st.source as u64, || {
            format!("payload {b:?} vs {st:?}")
        })?;
        sources.push(st.source);
    }
    sources.sort_unstable();
    ensure(sources == (1..n).collect::<Vec<_>>(), || {
        format!("sources {sources:?}")
    })
}

fn any_tag_and_probe<C: Comm>(c: &C, _: &Options) -> Result<(), String> {
    let (r, n) = (c.rank(), c.size());
    if r == 1 % n && n > 1 {
        c.send(0, 42, &pattern(42, 1234)).map_err(e2s)?;
    }
    if r != 0 || n == 1 {
        return Ok(());
    }
    let st = c.probe(Source::Any, TagMatch::Any).map_err(e2s)?;
    ensure(st.source == 1 && st.tag == 42 && st.bytes == 1234, || {
        format!("probe {st:?}")
    })?;
    let again = c.iprobe(Source::Rank(1), TagMatch::Tag(42)).map_err(e2s)?;
    ensure(again == Some(st), || {
        format!("iprobe after probe: {again:?}")
    })?;
    let none = c.iprobe(Source::Rank(1), TagMatch::Tag(43)).map_err(e2s)?;
    ensure(none.is_none(), || {
        format!("iprobe of an unsent tag: {none:?}")
    })?;
    let mut b = vec![0u8; 4096];
    let got = c.recv(Source::Any, TagMatch::Any, &mut b).map_err(e2s)?;
    ensure(got == st && b[..1234] == pattern(42, 1234)[..], || {
        format!("recv {got:?}")
    })
}

fn zero_length<C: Comm>(c: &C, _: &Options) -> Result<(), String> {
    let (r, n) = (c.rank(), c.size());
    let right = (r + 1) % n;
    let left = (r + n - 1) % n;
    let mut nothing = [0u8; 0];
    let st = c
        .sendrecv(
            right,
            9,
            &[],
            Source::Rank(left),
            TagMatch::Tag(9),
            &mut nothing,
        )
        .map_err(e2s)?;
    ensure(st.bytes == 0 && st.source == left, || format!("{st:?}"))?;
    // A zero-length message also matches a larger buffer and reports 0 bytes.
    let mut big = [7u8; 16];
    let st = c
        .sendrecv(
            right,
            10,
            &[],
            Source::Rank(left),
            TagMatch::Tag(10),
            &mut big,
        )
        .map_err(e2s)?;
    ensure(st.bytes == 0 && big == [7u8; 16], || {
        format!("{st:?} {big:?}")
    })
}

fn large_message<C: Comm>(c: &C, o: &Options) -> Result<(), String> {
    if c.size() < 2 || c.rank() > 1 {
        return Ok(());
    }
    let len = o.large_bytes;
    if c.rank() == 0 {
        let buf = pattern(9, len);
        c.send(1, 11, &buf).map_err(e2s)
    } else {
        let mut buf = vec![0u8; len];
        let st = c
            .recv(Source::Rank(0), TagMatch::Tag(11), &mut buf)
            .map_err(e2s)?;
        ensure(st.bytes == len, || format!("{st:?}"))?;
        ensure(buf == pattern(9, len), || "large payload differs".into())
    }
}

fn many_outstanding<C: Comm>(c: &C, o: &Options) -> Result<(), String> {
    let (r, n) = (c.rank(), c.size());
    let right = (r + 1) % n;
    let left = (r + n - 1) % n;
    let k = o.outstanding;
    let outs: Vec<Vec<u8>> = (0..k)
        .map(|i| pattern(r * 100_000 + i, 16 + i % 50))
        .collect();
    let mut ins: Vec<Vec<u8>> = (0..k).map(|i| vec![0u8; 16 + i % 50]).collect();
    let mut bad = Vec::new();
    c.scope(|s| -> Result<(), String> {
        // Receives are posted first, with distinct tags, then all sends; waits run in reverse.
        let mut recvs = Vec::new();
        for (i, b) in ins.iter_mut().enumerate() {
            recvs.push(
                s.irecv(Source::Rank(left), TagMatch::Tag(i as i32), b)
                    .map_err(e2s)?,
            );
        }
        let mut sends = Vec::new();
        for (i, b) in outs.iter().enumerate() {
            sends.push(s.isend(right, i as i32, b).map_err(e2s)?);
        }
        ensure(s.pending() >= k, || format!("only {} pending", s.pending()))?;
        for (i, q) in recvs.into_iter().enumerate().rev() {
            let (st, got) = q.wait().map_err(e2s)?;
            if st.tag != i as i32 || got != &pattern(left * 100_000 + i, 16 + i % 50)[..] {
                bad.push(i);
            }
        }
        for q in sends {
            q.wait().map_err(e2s)?;
        }
        Ok(())
    })
    .map_err(e2s)??;
    ensure(bad.is_empty(), || {
        format!("{} wrong messages, first {:?}", bad.len(), bad.first())
    })
}

fn test_polls<C: Comm>(c: &C, _: &Options) -> Result<(), String> {
    let (r, n) = (c.rank(), c.size());
    let right = (r + 1) % n;
    let left = (r + n - 1) % n;
    let out = pattern(r + 5, 77);
    let mut got = vec![0u8; 77];
    c.scope(|s| -> Result<(), String> {
        let mut recv = s
            .irecv(Source::Rank(left), TagMatch::Tag(21), &mut got)
            .map_err(e2s)?;
        let send = s.isend(right, 21, &out).map_err(e2s)?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let (st, buf) = loop {
            match recv.test().map_err(e2s)? {
                Ok(done) => break done,
                Err(pending) => recv = pending,
            }
            ensure(std::time::Instant::now() < deadline, || {
                "test never completed".into()
            })?;
            std::thread::yield_now();
        };
        ensure(st.bytes == 77 && buf == &pattern(left + 5, 77)[..], || {
            format!("{st:?}")
        })?;
        send.wait().map_err(e2s)?;
        Ok(())
    })
    .map_err(e2s)?
}

fn barrier_waits<C: Comm>(c: &C, _: &Options) -> Result<(), String> {
    // The last rank arrives 150 ms late; nobody may leave the barrier before it arrives.
    let last = c.size() - 1;
    let start = std::time::Instant::now();
    if c.rank() == last {
        std::thread::sleep(std::time::Duration::from_millis(150));
    }
    c.barrier().map_err(e2s)?;
    let waited = start.elapsed();
    ensure(waited >= std::time::Duration::from_millis(140), || {
        format!("left the barrier after {waited:?}")
    })
}

fn split<C: Comm>(c: &C, _: &Options) -> Result<(), String> {
    let (r, n) = (c.rank(), c.size());
    // Colour by parity, reversed order by key; the last rank of an odd-sized world opts out.
    let color = if n % 2 == 1 && r == n - 1 && n > 1 {
        None
    } else {
        Some((r % 2) as u32)
    };
    let sub = c.split(color, -(r as i32)).map_err(e2s)?;
    // A parent message with the same tag must not be seen by the sub-communicator.
    let right = (r + 1) % n;
    let left = (r + n - 1) % n;
    let parent_out = pattern(r + 1000, 40);
    let mut parent_in = vec![0u8; 40];
    let result = c.scope(|s| -> Result<(), String> {
        let pending = s.isend(right, 0, &parent_out).map_err(e2s)?;
        let sub_check = match (&sub, color) {
            (None, None) => Ok(()),
            (Some(sub), Some(col)) => {
                let members: Vec<usize> = (0..n)
                    .filter(|&q| q % 2 == col as usize && !(n % 2 == 1 && q == n - 1 && n > 1))
                    .rev()
                    .collect();
                let want_rank = members.iter().position(|&q| q == r).expect("member");
                let (sr, sn) = (sub.rank(), sub.size());
                let mut failure = None;
                if sr != want_rank || sn != members.len() {
                    failure = Some(format!(
                        "sub rank/size {sr}/{sn}, want {want_rank}/{}",
                        members.len()
                    ));
                }
                let out = pattern(members[sr] + 500, 64);
                let mut got = vec![0u8; 64];
                let from = (sr + sn - 1) % sn;
                let st = sub
                    .sendrecv(
                        (sr + 1) % sn,
                        0,
                        &out,
                        Source::Rank(from),
                        TagMatch::Tag(0),
                        &mut got,
                    )
                    .map_err(e2s)?;
                sub.barrier().map_err(e2s)?;
                if st.source != from || got != pattern(members[from] + 500, 64) {
                    failure.get_or_insert(format!("sub message wrong: {st:?}"));
                }
                failure.map_or(Ok(()), Err)
            }
            (got, want) => Err(format!(
                "split gave {} for colour {want:?}",
                if got.is_some() {
                    "a communicator"
                } else {
                    "none"
                }
            )),
        };
        let st = c
            .recv(Source::Rank(left), TagMatch::Tag(0), &mut parent_in)
            .map_err(e2s)?;
        pending.wait().map_err(e2s)?;
        sub_check?;
        ensure(
            st.bytes == 40 && parent_in == pattern(left + 1000, 40),
            || "parent message wrong".into(),
        )
    });
    drop(sub);
    result.map_err(e2s)?
}

fn error_rank<C: Comm>(c: &C, _: &Options) -> Result<(), String> {
    let n = c.size();
    let e = c.send(n, 0, b"x").err();
    ensure(
        matches!(e, Some(Error::InvalidRank { rank, size }) if rank == n && size == n),
        || format!("send: {e:?}"),
    )?;
    let mut b = [0u8; 1];
    let e = c.recv(Source::Rank(n + 5), TagMatch::Any, &mut b).err();
    ensure(matches!(e, Some(Error::InvalidRank { .. })), || {
        format!("recv: {e:?}")
    })?;
    let e = c
        .scope(|s| s.isend(usize::MAX, 0, b"x").err())
        .map_err(e2s)?;
    ensure(matches!(e, Some(Error::InvalidRank { .. })), || {
        format!("isend: {e:?}")
    })?;
    let e = c.probe(Source::Rank(n), TagMatch::Any).err();
    ensure(matches!(e, Some(Error::InvalidRank { .. })), || {
        format!("probe: {e:?}")
    })
}

fn error_tag<C: Comm>(c: &C, _: &Options) -> Result<(), String> {
    let e = c.send(c.rank(), -1, b"x").err();
    ensure(matches!(e, Some(Error::InvalidTag { tag: -1, .. })), || {
        format!("send: {e:?}")
    })?;
    let mut b = [0u8; 1];
    let e = c.recv(Source::Any, TagMatch::Tag(-7), &mut b).err();
    ensure(matches!(e, Some(Error::InvalidTag { tag: -7, .. })), || {
        format!("recv: {e:?}")
    })?;
    if c.tag_ub() < i32::MAX {
        let over = c.tag_ub() + 1;
        let e = c.send(c.rank(), over, b"x").err();
        ensure(matches!(e, Some(Error::InvalidTag { .. })), || {
            format!("tag_ub+1: {e:?}")
        })?;
    }
    ensure(c.tag_ub() >= 32767, || {
        format!("tag_ub {} below the standard's minimum", c.tag_ub())
    })
}

fn error_truncation<C: Comm>(c: &C, _: &Options) -> Result<(), String> {
    // A short buffer: a typed error, the message's prefix delivered, the message consumed
    // (MPI §3.2.4). A message of unknown length arrives whole through `recv_vec`.
    let (r, n) = (c.rank(), c.size());
    let right = (r + 1) % n;
    let left = (r + n - 1) % n;
    let first = pattern(r + 3, 100);
    let second = pattern(r + 30, 3000);
    c.scope(|s| -> Result<(), String> {
        let a = s.isend(right, 13, &first).map_err(e2s)?;
        let b = s.isend(right, 13, &second).map_err(e2s)?;
        let mut small = [0u8; 10];
        let e = c.recv(Source::Rank(left), TagMatch::Tag(13), &mut small).err();
        let (st, whole) = c.recv_vec(Source::Rank(left), TagMatch::Tag(13)).map_err(e2s)?;
        a.wait().map_err(e2s)?;
        b.wait().map_err(e2s)?;
        ensure(
            matches!(e, Some(Error::Truncated { buffer_bytes: 10, source_rank, tag: 13, .. }) if source_rank == left),
            || format!("short recv gave {e:?}"),
        )?;
        ensure(small[..] == pattern(left + 3, 100)[..10], || "truncated prefix wrong".into())?;
        ensure(st.bytes == 3000 && whole == pattern(left + 30, 3000), || format!("recv_vec gave {st:?}"))
    })
    .map_err(e2s)?
}

fn error_truncation_nonblocking<C: Comm>(c: &C, _: &Options) -> Result<(), String> {
    let (r, n) = (c.rank(), c.size());
    let right = (r + 1) % n;
    let left = (r + n - 1) % n;
    let out = pattern(r + 4, 100);
    let mut small = [0u8; 10];
    let e = c
        .scope(|s| -> Result<Option<Error>, String> {
            let recv = s
                .irecv(Source::Rank(left), TagMatch::Tag(14), &mut small)
                .map_err(e2s)?;
            let send = s.isend(right, 14, &out).map_err(e2s)?;
            let e = recv.wait().err();
            send.wait().map_err(e2s)?;
            Ok(e)
        })
        .map_err(e2s)??;
    ensure(
        matches!(
            e,
            Some(Error::Truncated {
                buffer_bytes: 10,
                ..
            })
        ),
        || format!("irecv gave {e:?}"),
    )?;
    ensure(small[..] == pattern(left + 4, 100)[..10], || {
        "truncated prefix wrong".into()
    })
}
