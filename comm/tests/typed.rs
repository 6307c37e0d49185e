//! Typed send and receive with derived datatypes, over ThreadComm (the MPI run is the
//! `typed_columns` example under mpirun in scripts/test.sh).

use ferry_comm::{Comm, Error, Source, TagMatch, ThreadComm};
use ferry_datatypes::Type;

#[test]
fn a_strided_column_arrives_in_place() {
    let column = Type::vector(5, 1, 4, &Type::named(4)).unwrap().commit();
    let out = ThreadComm::run(2, |comm| {
        let mut grid: Vec<u32> = (0..20).map(|i| i + 100 * comm.rank() as u32).collect();
        let peer = 1 - comm.rank();
        let sent = grid.clone();
        // ThreadComm sends are eager, so both ranks may send first.
        comm.send_typed(peer, 1, &sent, 3, &column, 1).unwrap();
        let st = comm
            .recv_typed(
                Source::Rank(peer),
                TagMatch::Tag(1),
                &mut grid,
                0,
                &column,
                1,
            )
            .unwrap();
        assert_eq!(st.bytes, 20);
        grid
    });
    // Rank 0's column 0 now holds rank 1's column 3 and vice versa; the rest is unchanged.
    for (rank, grid) in out.iter().enumerate() {
        let other = 100 * (1 - rank as u32);
        for row in 0..5u32 {
            assert_eq!(
                grid[(row * 4) as usize],
                other + row * 4 + 3,
                "rank {rank} row {row}"
            );
            for col in 1..4u32 {
                assert_eq!(
                    grid[(row * 4 + col) as usize],
                    100 * rank as u32 + row * 4 + col
                );
            }
        }
    }
}

#[test]
fn a_buffer_too_small_for_the_type_is_an_error_and_loses_nothing() {
    let column = Type::vector(5, 1, 4, &Type::named(4)).unwrap().commit();
    let out = ThreadComm::run(2, |comm| {
        if comm.rank() == 1 {
            let grid = vec![7u32; 20];
            comm.send_typed(0, 2, &grid, 0, &column, 1).unwrap();
            let short = vec![0u32; 10];
            return comm
                .send_typed(0, 2, &short, 0, &column, 1)
                .err()
                .map(|e| e.to_string());
        }
        let mut short = vec![0u32; 10];
        let e = comm
            .recv_typed(Source::Rank(1), TagMatch::Tag(2), &mut short, 0, &column, 1)
            .err();
        assert!(matches!(e, Some(Error::Datatype(_))), "{e:?}");
        let mut grid = vec![0u32; 20];
        comm.recv_typed(Source::Rank(1), TagMatch::Tag(2), &mut grid, 0, &column, 1)
            .unwrap();
        assert_eq!((0..5).map(|r| grid[r * 4]).collect::<Vec<_>>(), vec![7; 5]);
        None
    });
    assert!(
        out[1].as_deref().is_some_and(|m| m.contains("outside")),
        "{:?}",
        out[1]
    );
}
