//! NVRTC kernels on the GPU: results against a CPU reference, compile errors with the log,
//! and launches on several streams. Each test skips when there is no GPU.

mod common;

use common::{Rng, SAXPY, TWICE_PLUS_ONE, assert_close, gpu_or_skip};
use ferry_gpu::{GpuError, LaunchConfig};

#[test]
fn saxpy_matches_cpu_reference() {
    let Some(gpu) = gpu_or_skip("saxpy_matches_cpu_reference") else {
        return;
    };
    println!(
        "device {}: {} (sm_{}{})",
        gpu.ordinal(),
        gpu.name(),
        gpu.compute_capability().0,
        gpu.compute_capability().1
    );
    let mut rng = Rng::new("saxpy_matches_cpu_reference");
    let saxpy = gpu.kernel(SAXPY, "saxpy").expect("compile saxpy");
    let (major, minor) = gpu.compute_capability();
    println!("saxpy compiled for {}", saxpy.target());
    assert!(
        saxpy.target().ends_with(&format!("{major}{minor}"))
            || saxpy.target().starts_with("compute_")
    );

    for n in [1usize, 17, 1075, 65536, 1_000_003] {
        let a = rng.f32() * 4.0;
        let x = rng.vec_f32(n);
        let y = rng.vec_f32(n);
        let stream = gpu.default_stream();
        let dx = stream.clone_htod(&x).unwrap();
        let mut dy = stream.clone_htod(&y).unwrap();
        let n64 = n as u64;
        // SAFETY: (float, const float*, float*, u64) matches saxpy, which stays below n.
        unsafe {
            saxpy
                .launch_builder(&stream)
                .arg(&a)
                .arg_buffer(&dx)
                .arg_buffer_mut(&mut dy)
                .arg(&n64)
                .launch(LaunchConfig::for_num_elems(n as u32))
                .unwrap();
        }
        let got = dy.clone_dtoh().unwrap();
        let want: Vec<f32> = x.iter().zip(&y).map(|(x, y)| a.mul_add(*x, *y)).collect();
        assert_close(&got, &want, 1e-6);
        let mut partial = vec![0f32; n / 2];
        dy.copy_dtoh(&mut partial).unwrap();
        assert_eq!(partial[..], got[..n / 2]);
    }
    assert!(gpu.take_drop_errors().is_empty());
}

#[test]
fn kernels_run_on_new_streams_and_raw_pointers() {
    let Some(gpu) = gpu_or_skip("kernels_run_on_new_streams_and_raw_pointers") else {
        return;
    };
    let mut rng = Rng::new("kernels_run_on_new_streams_and_raw_pointers");
    let k = gpu.kernel(TWICE_PLUS_ONE, "twice_plus_one").unwrap();
    let s1 = gpu.new_stream().unwrap();
    let s2 = gpu.new_stream().unwrap();
    let n = 4099usize;
    let input = rng.vec_f32(n);
    let din = s1.clone_htod(&input).unwrap();
    let mut dout = s2.alloc_zeros::<f32>(n).unwrap();
    // Raw addresses: the buffers' copies above finished (they block), so no ordering is missing.
    let (pin, pout, n64) = (din.device_ptr(), dout.device_ptr(), n as u64);
    // SAFETY: (const float*, float*, u64) matches; both allocations hold n floats and stay
    // alive until s2 is synchronized below.
    unsafe {
        k.launch_builder(&s2)
            .arg(&pin)
            .arg(&pout)
            .arg(&n64)
            .launch(LaunchConfig::for_num_elems(n as u32))
            .unwrap();
    }
    s2.synchronize().unwrap();
    let want: Vec<f32> = input.iter().map(|v| 2.0 * v + 1.0).collect();
    assert_close(&dout.clone_dtoh().unwrap(), &want, 1e-6);

    // The same kernel again with tracked buffers across streams: s1 reads what s2 wrote.
    let mut dout2 = s1.alloc_zeros::<f32>(n).unwrap();
    // SAFETY: as above, with tracked buffers.
    unsafe {
        k.launch_builder(&s1)
            .arg_buffer(&dout)
            .arg_buffer_mut(&mut dout2)
            .arg(&n64)
            .launch(LaunchConfig::for_num_elems(n as u32))
            .unwrap();
    }
    let want2: Vec<f32> = want.iter().map(|v| 2.0 * v + 1.0).collect();
    assert_close(&dout2.clone_dtoh().unwrap(), &want2, 1e-6);

    // Host -> device copies into a buffer that is then read back.
    let fresh = rng.vec_f32(n);
    dout.copy_htod(&fresh).unwrap();
    assert_eq!(dout.clone_dtoh().unwrap(), fresh);
    assert!(matches!(
        dout.copy_htod(&vec![0.0; n + 1]),
        Err(GpuError::InvalidArgument { .. })
    ));
}

#[test]
fn empty_buffers_are_allowed() {
    let Some(gpu) = gpu_or_skip("empty_buffers_are_allowed") else {
        return;
    };
    let stream = gpu.default_stream();
    let empty = stream.alloc_zeros::<f32>(0).unwrap();
    assert!(empty.is_empty());
    assert_eq!(empty.device_ptr(), 0);
    assert_eq!(empty.clone_dtoh().unwrap(), Vec::<f32>::new());
    let also_empty = stream.clone_htod::<u32>(&[]).unwrap();
    assert_eq!(also_empty.len(), 0);
}

#[test]
fn compile_error_returns_nvrtc_log() {
    let Some(gpu) = gpu_or_skip("compile_error_returns_nvrtc_log") else {
        return;
    };
    let bad = r#"extern "C" __global__ void broken(float *x) { x[0] = undefined_name + ; }"#;
    match gpu.kernel(bad, "broken") {
        Err(GpuError::Compile { name, log }) => {
            println!("NVRTC log:\n{log}");
            assert_eq!(name, "broken");
            assert!(log.contains("error"), "{log}");
            assert!(log.contains("undefined_name"), "{log}");
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
}

#[test]
fn missing_entry_point_is_reported() {
    let Some(gpu) = gpu_or_skip("missing_entry_point_is_reported") else {
        return;
    };
    // Compiles fine, but C++ linkage mangles the name.
    let src = "__global__ void mangled(float *x) { x[0] = 1.0f; }";
    match gpu.kernel(src, "mangled") {
        Err(GpuError::Compile { log, .. }) => assert!(log.contains("extern"), "{log}"),
        other => panic!("expected a missing-kernel error, got {other:?}"),
    }
}

#[test]
fn options_reach_nvrtc() {
    let Some(gpu) = gpu_or_skip("options_reach_nvrtc") else {
        return;
    };
    let src = r#"
extern "C" __global__ void put_value(int *out) { out[0] = VALUE; }
"#;
    let stream = gpu.default_stream();
    for value in [3, 41] {
        let define = format!("-DVALUE={value}");
        let k = gpu
            .kernel_with_options(src, "put_value", &[define.as_str()])
            .unwrap();
        let mut out = stream.alloc_zeros::<i32>(1).unwrap();
        // SAFETY: (int*) matches; one thread writes the one element.
        unsafe {
            k.launch_builder(&stream)
                .arg_buffer_mut(&mut out)
                .launch(LaunchConfig::for_num_elems(1))
                .unwrap();
        }
        assert_eq!(out.clone_dtoh().unwrap(), [value]);
    }
    // Without the define the source does not compile.
    assert!(matches!(
        gpu.kernel(src, "put_value"),
        Err(GpuError::Compile { .. })
    ));
}
