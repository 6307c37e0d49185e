//! Pointer classification on the GPU: host, device, mapped, registered and managed memory.
//! Skips (after checking host pointers) when there is no GPU.

mod common;

use common::gpu_or_skip;
use ferry_gpu::{
    HostRegistration, ManagedBuffer, MappedHostBuffer, MemoryKind, classify, try_classify,
};

#[test]
fn every_memory_kind_is_recognised() {
    let on_stack = 42u32;
    let on_heap = vec![1u8; 1 << 16];
    assert_eq!(classify(&on_stack as *const u32), MemoryKind::Host);
    assert_eq!(classify(on_heap.as_ptr()), MemoryKind::Host);
    let Some(gpu) = gpu_or_skip("every_memory_kind_is_recognised") else {
        return;
    };
    // Host pointers stay Host once a driver is loaded.
    assert_eq!(try_classify(&on_stack as *const u32), Ok(MemoryKind::Host));
    assert_eq!(try_classify(on_heap.as_ptr()), Ok(MemoryKind::Host));

    let stream = gpu.default_stream();
    let dev = stream.alloc_zeros::<f64>(1000).unwrap();
    assert_eq!(
        classify(dev.device_ptr()),
        MemoryKind::Device { ordinal: 0 }
    );
    assert_eq!(
        classify(dev.device_ptr() + 8 * 500),
        MemoryKind::Device { ordinal: 0 },
        "an interior address"
    );

    let mapped = MappedHostBuffer::new(&gpu, 1 << 16).unwrap();
    assert_eq!(classify(mapped.host_ptr()), MemoryKind::MappedHost);
    assert_eq!(classify(mapped.device_ptr()), MemoryKind::MappedHost);
    assert_eq!(
        classify(mapped.host_ptr().wrapping_add(1000)),
        MemoryKind::MappedHost
    );

    let mut region = vec![0u64; 1 << 15];
    let region_ptr = region.as_ptr();
    {
        let reg = HostRegistration::new(&gpu, &mut region).unwrap();
        assert_eq!(classify(reg.host_ptr()), MemoryKind::MappedHost);
        assert_eq!(classify(region_ptr), MemoryKind::MappedHost);
    }
    assert_eq!(
        classify(region_ptr),
        MemoryKind::Host,
        "after unregistering"
    );

    if gpu.supports_managed_memory().unwrap() {
        let managed = ManagedBuffer::<u8>::zeros(&gpu, 1 << 20).unwrap();
        assert_eq!(classify(managed.device_ptr()), MemoryKind::Managed);
    } else {
        println!("device has no managed memory; managed case not checked");
    }

    // From a thread with no current context, the answers are the same.
    let dptr = dev.device_ptr();
    let hptr = mapped.host_ptr() as usize;
    std::thread::spawn(move || {
        assert_eq!(classify(dptr), MemoryKind::Device { ordinal: 0 });
        assert_eq!(classify(hptr), MemoryKind::MappedHost);
    })
    .join()
    .unwrap();
    assert!(gpu.take_drop_errors().is_empty());
}
