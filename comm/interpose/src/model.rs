//! The measured choice between ferry's engine and the library's for MPI_Pack and MPI_Unpack.
//!
//! Both engines produce the same bytes (checked in every CI run by `ferry-datatype-check` and
//! `ddt_exchange`), so which one serves a call is only a question of speed, and that depends
//! on the type, the size and the machine in ways a single rule does not capture (bench/RESULTS.md:
//! ferry is 2-8x Open MPI on small blocks, level on large ones, and below it on some unpacks of
//! 16-128 B blocks). So each committed type measures instead:
//! 1. Calls are grouped into cells by direction and size class (packed bytes rounded down to a
//!    power of two), so the size at which one engine overtakes the other is found per type.
//! 2. The first [`TRIALS`] calls of a cell alternate between ferry and the library, ferry
//!    first, each timed. A cell keeps each engine's best time per byte (the minimum, which
//!    ignores calls that a page fault or a preemption slowed).
//! 3. From then on the cell's calls go to the engine with the lower best; a tie goes to ferry.
//!
//! Sends and receives are not measured this way: their time includes waiting for the peer,
//! which says nothing about either engine; they keep the block-size rule
//! (`FERRY_LIBRARY_BLOCK_BYTES`), which, when set, also overrides this model.
//!
//! Not done yet: cells never measure again, so a choice made while the machine was busy
//! stays; the model is per process and per committed handle (a type committed again starts
//! over).

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Timed calls per cell before it decides: half through each engine.
pub(crate) const TRIALS: u32 = 8;

/// Size classes: packed bytes below `2^CLASSES` (MPI_Pack counts are C ints).
const CLASSES: usize = 32;

/// Which way a call moves bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    Pack = 0,
    Unpack = 1,
}

/// Who serves a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Engine {
    Ferry = 0,
    Library = 1,
}

/// What [`Model::pick`] decided: the engine, and whether to time the call and report it
/// through [`Model::record`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pick {
    pub(crate) engine: Engine,
    pub(crate) timed: bool,
}

const UNDECIDED: u8 = 0;
const FERRY: u8 = 1;
const LIBRARY: u8 = 2;

/// One (direction, size class): the calls seen, each engine's best picoseconds per byte, and
/// the decision once made.
struct Cell {
    calls: AtomicU32,
    best: [AtomicU64; 2],
    choice: AtomicU8,
}

impl Cell {
    const fn new() -> Cell {
        Cell {
            calls: AtomicU32::new(0),
            best: [AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)],
            choice: AtomicU8::new(UNDECIDED),
        }
    }
}

/// The measurements of one committed type. Shared by every thread that uses the type; the
/// counters are atomics, and a race only changes which call is timed.
pub(crate) struct Model {
    cells: [[Cell; CLASSES]; 2],
}

impl Model {
    pub(crate) fn new() -> Model {
        Model {
            cells: [const { [const { Cell::new() }; CLASSES] }; 2],
        }
    }

    fn cell(&self, direction: Direction, bytes: usize) -> &Cell {
        let class = (bytes.max(1).ilog2() as usize).min(CLASSES - 1);
        &self.cells[direction as usize][class]
    }

    /// Which engine serves a call moving `bytes` bytes (steps 2 and 3 of the module doc).
    pub(crate) fn pick(&self, direction: Direction, bytes: usize) -> Pick {
        let cell = self.cell(direction, bytes);
        match cell.choice.load(Ordering::Relaxed) {
            FERRY => return untimed(Engine::Ferry),
            LIBRARY => return untimed(Engine::Library),
            _ => {}
        }
        let n = cell.calls.fetch_add(1, Ordering::Relaxed);
        if n < TRIALS {
            let engine = if n % 2 == 0 {
                Engine::Ferry
            } else {
                Engine::Library
            };
            return Pick {
                engine,
                timed: true,
            };
        }
        let best = |e: Engine| cell.best[e as usize].load(Ordering::Relaxed);
        let (ferry, library) = (best(Engine::Ferry), best(Engine::Library));
        if ferry == u64::MAX || library == u64::MAX {
            // Another thread's trials have not reported yet: the library, unmeasured.
            return untimed(Engine::Library);
        }
        let engine = if ferry <= library {
            Engine::Ferry
        } else {
            Engine::Library
        };
        let code = if engine == Engine::Ferry {
            FERRY
        } else {
            LIBRARY
        };
        cell.choice.store(code, Ordering::Relaxed);
        tracing::debug!(
            ?direction,
            bytes,
            ferry_ps_per_byte = ferry,
            library_ps_per_byte = library,
            ?engine,
            "measured"
        );
        untimed(engine)
    }

    /// Reports a timed call of [`Model::pick`].
    pub(crate) fn record(
        &self,
        direction: Direction,
        bytes: usize,
        engine: Engine,
        took: Duration,
    ) {
        let per_byte = (took.as_nanos() * 1000 / bytes.max(1) as u128).min(u64::MAX as u128 - 1);
        self.cell(direction, bytes).best[engine as usize]
            .fetch_min(per_byte as u64, Ordering::Relaxed);
    }
}

fn untimed(engine: Engine) -> Pick {
    Pick {
        engine,
        timed: false,
    }
}

#[cfg(test)]
mod tests {
    use super::{Direction, Engine, Model, TRIALS};
    use std::time::Duration;

    /// Drives one cell through its trials with fixed times per engine; returns the picks.
    fn run(
        model: &Model,
        direction: Direction,
        bytes: usize,
        ferry_us: u64,
        library_us: u64,
    ) -> Vec<Engine> {
        let mut picks = Vec::new();
        for _ in 0..TRIALS + 3 {
            let p = model.pick(direction, bytes);
            if p.timed {
                let us = if p.engine == Engine::Ferry {
                    ferry_us
                } else {
                    library_us
                };
                model.record(direction, bytes, p.engine, Duration::from_micros(us));
            }
            picks.push(p.engine);
        }
        picks
    }

    #[test]
    fn trials_alternate_then_the_faster_engine_stays() {
        let m = Model::new();
        let picks = run(&m, Direction::Pack, 4096, 10, 20);
        let trials: Vec<_> = (0..TRIALS)
            .map(|i| {
                if i % 2 == 0 {
                    Engine::Ferry
                } else {
                    Engine::Library
                }
            })
            .collect();
        assert_eq!(picks[..TRIALS as usize], trials[..]);
        assert!(picks[TRIALS as usize..].iter().all(|&e| e == Engine::Ferry));
        // The other direction and other size classes measure on their own.
        let picks = run(&m, Direction::Unpack, 4096, 30, 20);
        assert!(
            picks[TRIALS as usize..]
                .iter()
                .all(|&e| e == Engine::Library)
        );
        let picks = run(&m, Direction::Pack, 100, 30, 20);
        assert!(
            picks[TRIALS as usize..]
                .iter()
                .all(|&e| e == Engine::Library)
        );
        // Sizes within a class share its decision.
        assert_eq!(m.pick(Direction::Pack, 8191).engine, Engine::Ferry);
        assert!(!m.pick(Direction::Pack, 8191).timed);
    }

    #[test]
    fn the_best_time_per_byte_decides_and_ties_go_to_ferry() {
        let m = Model::new();
        // One slow ferry call (a page fault) does not lose the cell for ferry.
        for (i, (engine, us)) in [
            (Engine::Ferry, 500),
            (Engine::Library, 20),
            (Engine::Ferry, 10),
            (Engine::Library, 20),
        ]
        .into_iter()
        .enumerate()
        {
            let p = m.pick(Direction::Pack, 1 << 20);
            assert!(p.timed && p.engine == engine, "call {i}");
            m.record(Direction::Pack, 1 << 20, engine, Duration::from_micros(us));
        }
        for _ in 4..TRIALS {
            let p = m.pick(Direction::Pack, 1 << 20);
            m.record(
                Direction::Pack,
                1 << 20,
                p.engine,
                Duration::from_micros(20),
            );
        }
        assert_eq!(m.pick(Direction::Pack, 1 << 20).engine, Engine::Ferry);
        let tie = Model::new();
        let picks = run(&tie, Direction::Unpack, 1 << 20, 20, 20);
        assert_eq!(picks.last(), Some(&Engine::Ferry));
    }

    #[test]
    fn unreported_trials_leave_the_call_to_the_library() {
        let m = Model::new();
        for _ in 0..TRIALS {
            assert!(m.pick(Direction::Pack, 64).timed);
        }
        let p = m.pick(Direction::Pack, 64);
        assert_eq!((p.engine, p.timed), (Engine::Library, false));
    }
}
