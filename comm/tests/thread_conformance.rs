//! Runs the conformance suite over `ThreadComm` at 1 to 4 ranks, plus the thread backend's own
//! vanished-peer behaviour.

use ferry_comm::conformance::{Options, run_suite};
use ferry_comm::{Comm, Error, Source, TagMatch, ThreadComm};

fn suite_at(n: usize) {
    let results = ThreadComm::run(n, |comm| run_suite(&comm, &Options::default()));
    let mut failures = Vec::new();
    for (rank, rs) in results.iter().enumerate() {
        assert_eq!(
            rs.len(),
            ferry_comm::conformance::cases::<ThreadComm>().len(),
            "rank {rank} ran every case"
        );
        for r in rs {
            if let Some(f) = &r.failure {
                failures.push(format!("rank {rank}: {}: {f}", r.name));
            }
        }
    }
    assert!(failures.is_empty(), "{n} ranks:\n{}", failures.join("\n"));
}

#[test]
fn conformance_1_rank() {
    suite_at(1);
}

#[test]
fn conformance_2_ranks() {
    suite_at(2);
}

#[test]
fn conformance_3_ranks() {
    suite_at(3);
}

#[test]
fn conformance_4_ranks() {
    suite_at(4);
}

#[test]
fn receive_from_a_vanished_rank_fails_instead_of_hanging() {
    let out = ThreadComm::run(2, |comm| {
        if comm.rank() == 1 {
            return None; // Rank 1 ends without sending anything.
        }
        let mut b = [0u8; 4];
        let named = comm.recv(Source::Rank(1), TagMatch::Any, &mut b).err();
        let any = comm.recv(Source::Any, TagMatch::Any, &mut b).err();
        let nonblocking = comm
            .scope(|s| {
                s.irecv(Source::Rank(1), TagMatch::Tag(3), &mut b)
                    .and_then(|r| r.wait())
                    .err()
            })
            .unwrap();
        Some((named, any, nonblocking))
    });
    let (named, any, nonblocking) = out[0].clone().unwrap();
    assert!(
        matches!(named, Some(Error::PeerGone { rank: 1, .. })),
        "{named:?}"
    );
    assert!(matches!(any, Some(Error::PeerGone { .. })), "{any:?}");
    assert!(
        matches!(nonblocking, Some(Error::PeerGone { rank: 1, .. })),
        "{nonblocking:?}"
    );
}

#[test]
fn messages_sent_before_a_rank_ends_are_still_delivered() {
    let out = ThreadComm::run(2, |comm| {
        if comm.rank() == 1 {
            comm.send(0, 4, b"last words").unwrap();
            return Vec::new();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut b = vec![0u8; 32];
        let st = comm
            .recv(Source::Rank(1), TagMatch::Tag(4), &mut b)
            .unwrap();
        b.truncate(st.bytes);
        b
    });
    assert_eq!(out[0], b"last words");
}

#[test]
fn a_panicking_rank_is_reraised_and_its_peer_does_not_hang() {
    let caught = std::panic::catch_unwind(|| {
        ThreadComm::run(2, |comm| {
            if comm.rank() == 1 {
                panic!("rank 1 fails on purpose");
            }
            let mut b = [0u8; 1];
            comm.recv(Source::Rank(1), TagMatch::Any, &mut b).err()
        })
    });
    assert!(caught.is_err(), "the panic of rank 1 reaches the caller");
}

#[test]
fn requests_left_pending_are_completed_by_the_scope() {
    let out = ThreadComm::run(2, |comm| {
        let peer = 1 - comm.rank();
        let mut got = [0u8; 3];
        let sent = [comm.rank() as u8; 3];
        comm.scope(|s| {
            // Dropped without waiting: the scope must still complete both.
            let _ = s
                .irecv(Source::Rank(peer), TagMatch::Tag(1), &mut got)
                .unwrap();
            let _ = s.isend(peer, 1, &sent).unwrap();
        })
        .unwrap();
        got
    });
    assert_eq!(out, vec![[1u8; 3], [0u8; 3]]);
}
