//! gpu_info: lists the CUDA devices ferry sees and checks a pinned, device-mapped host buffer
//! round trip (host -> device -> host) on device 0. Exits 0 with a message when there is no GPU.
//!
//! Run with `cargo run -p ferry-examples --bin gpu_info`.

use std::process::ExitCode;
use std::time::Instant;

use ferry_gpu::{Gpu, MappedHostBuffer, classify};

fn main() -> ExitCode {
    let count = match Gpu::device_count() {
        Ok(n) => n,
        Err(e) => {
            println!("no GPU: {e}");
            return ExitCode::SUCCESS;
        }
    };
    println!("CUDA devices: {count}");
    if count == 0 {
        println!("no GPU: the CUDA driver is installed but reports no devices");
        return ExitCode::SUCCESS;
    }
    match run(count) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpu_info failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(count: usize) -> Result<(), Box<dyn std::error::Error>> {
    const GIB: f64 = (1u64 << 30) as f64;
    for ordinal in 0..count {
        let gpu = Gpu::open(ordinal)?;
        let (major, minor) = gpu.compute_capability();
        let (free, total) = gpu.memory_info()?;
        println!(
            "  [{ordinal}] {}: compute capability {major}.{minor}, {} SMs, {:.1} GiB memory ({:.1} GiB free), managed memory: {}",
            gpu.name(),
            gpu.multiprocessor_count()?,
            total as f64 / GIB,
            free as f64 / GIB,
            if gpu.supports_managed_memory()? {
                "yes"
            } else {
                "no"
            },
        );
    }

    // Round trip through device 0: mapped host buffer -> device buffer -> another mapped buffer.
    let gpu = Gpu::open(0)?;
    let stream = gpu.default_stream();
    let len = 64usize << 20;
    let mut src = MappedHostBuffer::new(&gpu, len)?;
    for (i, b) in src.as_mut_slice().iter_mut().enumerate() {
        *b = (i.wrapping_mul(31) ^ (i >> 11)) as u8;
    }
    let mut dst = MappedHostBuffer::new(&gpu, len)?;
    let t0 = Instant::now();
    let dev = stream.clone_htod(src.as_slice())?;
    let t1 = Instant::now();
    dev.copy_dtoh(dst.as_mut_slice())?;
    let t2 = Instant::now();
    let gbps = |secs: f64| len as f64 / secs / 1e9;
    println!(
        "mapped host buffer at {:p} ({:?}), device address {:#x}; device buffer at {:#x} ({:?})",
        src.host_ptr(),
        classify(src.host_ptr()),
        src.device_ptr(),
        dev.device_ptr(),
        classify(dev.device_ptr()),
    );
    println!(
        "copy of {} MiB: host->device {:.1} GB/s, device->host {:.1} GB/s (first copies, with allocation)",
        len >> 20,
        gbps((t1 - t0).as_secs_f64()),
        gbps((t2 - t1).as_secs_f64()),
    );
    if src.as_slice() != dst.as_slice() {
        return Err("round trip through the device changed the data".into());
    }
    println!("round trip: ok");
    Ok(())
}
