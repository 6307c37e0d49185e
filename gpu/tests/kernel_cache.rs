//! The kernel cache compiles a source once per process and loads it once per device. One test
//! in this binary, so that no other test's compilations move the counters.

mod common;

use common::gpu_or_skip;
use ferry_gpu::{Gpu, kernel_cache_stats};

#[test]
fn second_request_reuses_the_compiled_module() {
    let Some(gpu) = gpu_or_skip("second_request_reuses_the_compiled_module") else {
        return;
    };
    let src = r#"
extern "C" __global__ void add_one(int *x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += 1;
}
"#;
    let s0 = kernel_cache_stats();
    let k1 = gpu.kernel(src, "add_one").unwrap();
    let s1 = kernel_cache_stats();
    assert_eq!(s1.compilations, s0.compilations + 1, "{s0:?} -> {s1:?}");
    assert_eq!(s1.module_loads, s0.module_loads + 1, "{s0:?} -> {s1:?}");

    let k2 = gpu.kernel(src, "add_one").unwrap();
    let s2 = kernel_cache_stats();
    assert_eq!(s2.compilations, s1.compilations, "{s1:?} -> {s2:?}");
    assert_eq!(s2.module_loads, s1.module_loads, "{s1:?} -> {s2:?}");
    assert_eq!(s2.hits, s1.hits + 1, "{s1:?} -> {s2:?}");
    assert!(k1.same_module(&k2));

    // Opening the device again gives the same handle, so the same module.
    let again = Gpu::open(0).unwrap();
    assert!(again.same_device(&gpu));
    let k3 = again.kernel(src, "add_one").unwrap();
    assert!(k3.same_module(&k1));
    assert_eq!(kernel_cache_stats().compilations, s2.compilations);

    // Different options are a different image.
    let k4 = gpu
        .kernel_with_options(src, "add_one", &["-DUNUSED=1"])
        .unwrap();
    assert!(!k4.same_module(&k1));
    let s4 = kernel_cache_stats();
    assert_eq!(s4.compilations, s2.compilations + 1, "{s2:?} -> {s4:?}");

    // Threads racing for a new source compile it once.
    let src2 = src.replace("+= 1", "+= 2");
    let before = kernel_cache_stats();
    let kernels: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let gpu = gpu.clone();
                let src2 = src2.as_str();
                scope.spawn(move || gpu.kernel(src2, "add_one").unwrap())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let after = kernel_cache_stats();
    assert_eq!(
        after.compilations,
        before.compilations + 1,
        "{before:?} -> {after:?}"
    );
    assert!(kernels.windows(2).all(|w| w[0].same_module(&w[1])));
    println!("kernel cache: {after:?}");
}
