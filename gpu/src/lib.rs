//! ferry-gpu: the CUDA runtime layer of ferry (being written).
