//! Pinned memory on the GPU: kernels write and read mapped host buffers and registered host
//! memory through their device pointers; managed memory round trips. Each test skips when there
//! is no GPU.

mod common;

use common::{FILL_HASH, Rng, TWICE_PLUS_ONE, assert_close, fill_hash, gpu_or_skip};
use ferry_gpu::{
    GpuError, HostRegistration, Kernel, LaunchConfig, ManagedBuffer, MappedHostBuffer, Stream,
    VmmHostBuffer,
};

fn assert_send_sync<T: Send + Sync>() {}

/// Runs `fill_hash` over `n` u32 at `dptr` on `stream` and waits for it.
///
/// # Safety
/// `dptr..dptr+4n` is device-writable memory that stays valid and that the host does not
/// touch until this returns.
unsafe fn fill_and_wait(fill: &Kernel, stream: &Stream, dptr: u64, n: usize, seed: u32) {
    let n64 = n as u64;
    // SAFETY: (unsigned*, u64, unsigned) matches the kernel, which writes n u32 from dptr:
    // the caller's contract.
    unsafe {
        fill.launch_builder(stream)
            .arg(&dptr)
            .arg(&n64)
            .arg(&seed)
            .launch(LaunchConfig::for_num_elems(n as u32))
            .unwrap();
    }
    stream.synchronize().unwrap();
}

#[test]
fn buffers_are_send_and_sync() {
    assert_send_sync::<MappedHostBuffer>();
    assert_send_sync::<VmmHostBuffer>();
    assert_send_sync::<HostRegistration<'static>>();
    assert_send_sync::<ManagedBuffer<f32>>();
    assert_send_sync::<ferry_gpu::DeviceBuffer<f32>>();
    assert_send_sync::<ferry_gpu::Gpu>();
    assert_send_sync::<ferry_gpu::Kernel>();
}

#[test]
fn kernel_writes_mapped_buffer_and_host_sees_it() {
    let Some(gpu) = gpu_or_skip("kernel_writes_mapped_buffer_and_host_sees_it") else {
        return;
    };
    let mut rng = Rng::new("kernel_writes_mapped_buffer_and_host_sees_it");
    let fill = gpu.kernel(FILL_HASH, "fill_hash").unwrap();
    let stream = gpu.new_stream().unwrap();
    for n in [1usize, 1075, 65536 + 3] {
        let seed = rng.next_u64() as u32;
        let mut mapped = MappedHostBuffer::new(&gpu, n * 4).unwrap();
        assert_eq!(mapped.len(), n * 4);
        assert!(mapped.as_slice().iter().all(|&b| b == 0), "not zero-filled");
        assert_eq!(mapped.host_ptr() as usize % 4096, 0, "not page-aligned");
        assert_ne!(mapped.device_ptr(), 0);
        // SAFETY: the mapping holds n u32 and lives past the call; the host leaves it alone.
        unsafe { fill_and_wait(&fill, &stream, mapped.device_ptr(), n, seed) };
        let got = mapped.as_typed::<u32>();
        assert_eq!(got.len(), n);
        for (i, v) in got.iter().enumerate() {
            assert_eq!(*v, fill_hash(i, seed), "element {i} of {n}");
        }
        // The host can overwrite what the device wrote.
        mapped.as_typed_mut::<u32>().fill(7);
        assert!(mapped.as_typed::<u32>().iter().all(|&v| v == 7));
    }
    assert!(gpu.take_drop_errors().is_empty());
}

#[test]
fn kernel_writes_vmm_host_buffer_and_host_sees_it() {
    let Some(gpu) = gpu_or_skip("kernel_writes_vmm_host_buffer_and_host_sees_it") else {
        return;
    };
    let fill = gpu.kernel(FILL_HASH, "fill_hash").unwrap();
    let stream = gpu.new_stream().unwrap();
    let gran = VmmHostBuffer::granularity(&gpu, 0).unwrap();
    // One element, and a length just past one granule (the mapping rounds up).
    for n in [1usize, gran / 4 + 5] {
        let seed = 0x5eed ^ n as u32;
        let mut buf = VmmHostBuffer::new(&gpu, n * 4, 0).unwrap();
        assert_eq!(buf.len(), n * 4);
        assert!(buf.as_slice().iter().all(|&b| b == 0), "not zero-filled");
        assert_eq!(buf.host_ptr() as u64, buf.device_ptr());
        // SAFETY: the buffer holds n u32 and lives past the call; the host leaves it alone.
        unsafe { fill_and_wait(&fill, &stream, buf.device_ptr(), n, seed) };
        for (i, w) in buf.as_slice().chunks_exact(4).enumerate() {
            let v = u32::from_ne_bytes(w.try_into().unwrap());
            assert_eq!(v, fill_hash(i, seed), "element {i} of {n}");
        }
        buf.as_mut_slice().fill(7);
        assert!(buf.as_slice().iter().all(|&b| b == 7));
    }
    assert!(matches!(
        VmmHostBuffer::new(&gpu, 0, 0),
        Err(GpuError::InvalidArgument { .. })
    ));
    assert!(gpu.take_drop_errors().is_empty());
}

#[test]
fn host_writes_mapped_buffer_and_kernel_reads_it() {
    let Some(gpu) = gpu_or_skip("host_writes_mapped_buffer_and_kernel_reads_it") else {
        return;
    };
    let mut rng = Rng::new("host_writes_mapped_buffer_and_kernel_reads_it");
    let k = gpu.kernel(TWICE_PLUS_ONE, "twice_plus_one").unwrap();
    let stream = gpu.default_stream();
    let n = 100_003usize;
    let mut mapped = MappedHostBuffer::new(&gpu, n * 4).unwrap();
    let input = rng.vec_f32(n);
    mapped.as_typed_mut::<f32>().copy_from_slice(&input);
    let mut out = stream.alloc_zeros::<f32>(n).unwrap();
    let (src, n64) = (mapped.device_ptr(), n as u64);
    // SAFETY: (const float*, float*, u64) matches; the kernel reads n floats of the mapping,
    // which the host leaves alone until clone_dtoh (which waits for the stream) returns.
    unsafe {
        k.launch_builder(&stream)
            .arg(&src)
            .arg_buffer_mut(&mut out)
            .arg(&n64)
            .launch(LaunchConfig::for_num_elems(n as u32))
            .unwrap();
    }
    let want: Vec<f32> = input.iter().map(|v| 2.0 * v + 1.0).collect();
    assert_close(&out.clone_dtoh().unwrap(), &want, 1e-6);

    // Copies between device buffers and mapped memory (pinned source and destination).
    let dev = stream.clone_htod(mapped.as_typed::<f32>()).unwrap();
    let mut back = MappedHostBuffer::new(&gpu, n * 4).unwrap();
    dev.copy_dtoh(back.as_typed_mut::<f32>()).unwrap();
    assert_eq!(back.as_typed::<f32>(), &input[..]);
}

#[test]
fn zero_length_mapped_buffer_and_registration() {
    let Some(gpu) = gpu_or_skip("zero_length_mapped_buffer_and_registration") else {
        return;
    };
    let empty = MappedHostBuffer::new(&gpu, 0).unwrap();
    assert!(empty.is_empty());
    assert_eq!(empty.device_ptr(), 0);
    assert!(empty.as_slice().is_empty());
    let mut nothing: [f32; 0] = [];
    let reg = HostRegistration::new(&gpu, &mut nothing).unwrap();
    assert!(reg.is_empty());
    drop(reg);
    drop(empty);
    assert!(gpu.take_drop_errors().is_empty());
}

#[test]
fn registered_vec_is_read_and_written_by_kernels() {
    let Some(gpu) = gpu_or_skip("registered_vec_is_read_and_written_by_kernels") else {
        return;
    };
    let mut rng = Rng::new("registered_vec_is_read_and_written_by_kernels");
    let k = gpu.kernel(TWICE_PLUS_ONE, "twice_plus_one").unwrap();
    let stream = gpu.default_stream();
    let n = 1 << 18; // 1 MiB of f32
    let input = rng.vec_f32(n);
    let mut host_in = input.clone();
    let mut host_out = vec![0f32; n];
    {
        let reg_in = HostRegistration::new(&gpu, &mut host_in).unwrap();
        let reg_out = HostRegistration::new(&gpu, &mut host_out).unwrap();
        assert_eq!(reg_in.len(), n * 4);
        assert_ne!(reg_in.device_ptr(), 0);
        let (src, dst, n64) = (reg_in.device_ptr(), reg_out.device_ptr(), n as u64);
        // SAFETY: (const float*, float*, u64) matches; both registered regions hold n floats,
        // stay registered until the synchronize below, and the host does not touch them.
        unsafe {
            k.launch_builder(&stream)
                .arg(&src)
                .arg(&dst)
                .arg(&n64)
                .launch(LaunchConfig::for_num_elems(n as u32))
                .unwrap();
        }
        stream.synchronize().unwrap();
        assert_eq!(reg_in.as_typed::<f32>(), &input[..]);
    }
    let want: Vec<f32> = input.iter().map(|v| 2.0 * v + 1.0).collect();
    assert_close(&host_out, &want, 1e-6);
    assert!(gpu.take_drop_errors().is_empty());

    // Raw registration of a region we own.
    let mut raw = vec![0u8; 3 * 4096 + 5];
    // SAFETY: `raw` outlives the registration (dropped at the end of the block) and is only
    // touched through it meanwhile.
    let mut reg = unsafe { HostRegistration::from_raw(&gpu, raw.as_mut_ptr(), raw.len()) }.unwrap();
    reg.as_mut_slice()[3 * 4096 + 4] = 9;
    assert_eq!(reg.as_slice()[3 * 4096 + 4], 9);
    drop(reg);
    assert_eq!(raw[3 * 4096 + 4], 9);
    assert!(gpu.take_drop_errors().is_empty());
}

#[test]
fn managed_buffer_round_trip() {
    let Some(gpu) = gpu_or_skip("managed_buffer_round_trip") else {
        return;
    };
    if !gpu.supports_managed_memory().unwrap() {
        println!("skipped: device {} has no managed memory", gpu.ordinal());
        return;
    }
    let mut rng = Rng::new("managed_buffer_round_trip");
    let k = gpu.kernel(TWICE_PLUS_ONE, "twice_plus_one").unwrap();
    let n = (1 << 20) / 4; // 1 MiB
    let mut src = ManagedBuffer::<f32>::zeros(&gpu, n).unwrap();
    let dst = ManagedBuffer::<f32>::zeros(&gpu, n).unwrap();
    assert!(src.as_slice().unwrap().iter().all(|&v| v == 0.0));
    let input = rng.vec_f32(n);
    src.as_mut_slice().unwrap().copy_from_slice(&input);
    let stream = gpu.default_stream();
    let (s, d, n64) = (src.device_ptr(), dst.device_ptr(), n as u64);
    // SAFETY: (const float*, float*, u64) matches; both managed buffers hold n floats and
    // outlive the kernel; as_slice below waits for the device before the host reads.
    unsafe {
        k.launch_builder(&stream)
            .arg(&s)
            .arg(&d)
            .arg(&n64)
            .launch(LaunchConfig::for_num_elems(n as u32))
            .unwrap();
    }
    let want: Vec<f32> = input.iter().map(|v| 2.0 * v + 1.0).collect();
    assert_close(dst.as_slice().unwrap(), &want, 1e-6);
    drop((src, dst));
    assert!(gpu.take_drop_errors().is_empty());
}
