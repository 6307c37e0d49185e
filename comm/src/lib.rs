//! ferry-comm (being written).
