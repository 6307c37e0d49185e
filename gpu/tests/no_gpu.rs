//! Tests that run on every machine: without a driver, opening a device is an error (not a
//! panic) that says so, and every pointer is host memory.

use ferry_gpu::{Gpu, GpuError, MemoryKind, classify, gpu_available, try_classify};

#[test]
fn open_without_driver_is_an_error_not_a_panic() {
    match Gpu::open(0) {
        Ok(gpu) => {
            println!(
                "a GPU is present ({}), so the no-driver branch does not apply here",
                gpu.name()
            );
            assert!(gpu_available().is_ok());
            assert!(Gpu::device_count().unwrap() >= 1);
        }
        Err(e) => {
            let text = e.to_string();
            println!("Gpu::open(0) failed as expected: {text}");
            match &e {
                GpuError::NoDriver { .. } => {
                    assert!(text.contains("driver"), "{text}");
                    assert!(matches!(
                        Gpu::device_count(),
                        Err(GpuError::NoDriver { .. })
                    ));
                }
                GpuError::NoDevice { ordinal, count } => {
                    assert_eq!((*ordinal, *count), (0, 0));
                    assert!(text.contains("driver"), "{text}");
                }
                other => panic!("unexpected error kind: {other:?}"),
            }
            assert_eq!(gpu_available(), Err(text));
            // A second attempt gives the same answer (the probe is cached, not repeated).
            assert_eq!(Gpu::open(0).unwrap_err(), e);
        }
    }
}

#[test]
fn far_ordinal_is_no_device() {
    match Gpu::open(4096) {
        Ok(_) => panic!("device 4096 should not exist"),
        Err(GpuError::NoDevice { ordinal, .. }) => assert_eq!(ordinal, 4096),
        Err(GpuError::NoDriver { detail }) => println!("no driver here: {detail}"),
        Err(other) => panic!("unexpected error kind: {other:?}"),
    }
}

#[test]
fn plain_host_memory_is_host() {
    let on_stack = [1u64, 2, 3];
    let on_heap: Vec<f32> = vec![0.5; 1000];
    let boxed = Box::new(7u8);
    assert_eq!(classify(on_stack.as_ptr()), MemoryKind::Host);
    assert_eq!(classify(on_heap.as_ptr()), MemoryKind::Host);
    assert_eq!(classify(&*boxed as *const u8), MemoryKind::Host);
    assert_eq!(classify(std::ptr::null::<u8>()), MemoryKind::Host);
    assert_eq!(try_classify(on_heap.as_ptr()), Ok(MemoryKind::Host));
}
