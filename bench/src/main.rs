//! ferry-bench (being written).
fn main() {}
