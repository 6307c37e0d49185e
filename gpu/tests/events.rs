//! Events time GPU work. Skips when there is no GPU.

mod common;

use common::gpu_or_skip;
use ferry_gpu::{Event, LaunchConfig};

#[test]
fn events_measure_positive_time() {
    let Some(gpu) = gpu_or_skip("events_measure_positive_time") else {
        return;
    };
    let spin = gpu
        .kernel(
            r#"
extern "C" __global__ void spin(float *out, int iters) {
    float v = threadIdx.x;
    for (int i = 0; i < iters; ++i) v = v * 0.999f + 1.0f;
    out[blockIdx.x * blockDim.x + threadIdx.x] = v;
}
"#,
            "spin",
        )
        .unwrap();
    let stream = gpu.new_stream().unwrap();
    let blocks = 256u32;
    let mut out = stream.alloc_zeros::<f32>(blocks as usize * 256).unwrap();
    let iters = 20_000i32;
    let start = stream.record_event().unwrap();
    // SAFETY: (float*, int) matches; one element per thread of the grid.
    unsafe {
        spin.launch_builder(&stream)
            .arg_buffer_mut(&mut out)
            .arg(&iters)
            .launch(LaunchConfig {
                grid_dim: (blocks, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            })
            .unwrap();
    }
    let end = gpu.new_event().unwrap();
    end.record(&stream).unwrap();
    let ms = Event::elapsed_ms(&start, &end).unwrap();
    println!("spin kernel: {ms:.3} ms");
    assert!(ms > 0.0, "elapsed {ms} ms");
    assert!(end.is_complete().unwrap());
    assert!(start.elapsed_ms(&end).unwrap() > 0.0);

    // A second stream waits for the first through an event.
    let other = gpu.new_stream().unwrap();
    other.wait_event(&end).unwrap();
    other.synchronize().unwrap();
    stream.synchronize().unwrap();
    let v = out.clone_dtoh().unwrap();
    assert!(v.iter().all(|x| x.is_finite() && *x > 0.0));
}
