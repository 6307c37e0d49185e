//! Helpers shared by the integration tests: opening the GPU or skipping, seeded data, kernels.

#![allow(dead_code, unreachable_pub)]

use ferry_gpu::Gpu;

/// Opens device 0, or prints `skipped: no GPU: <error>` and returns `None`.
pub fn gpu_or_skip(test: &str) -> Option<Gpu> {
    match Gpu::open(0) {
        Ok(gpu) => Some(gpu),
        Err(e) => {
            println!("skipped: no GPU: {e} ({test})");
            None
        }
    }
}

/// A small, seeded xorshift generator; the seed is printed so a failure can be replayed with
/// `FERRY_TEST_SEED=<seed>`.
pub struct Rng(u64);

impl Rng {
    pub fn new(test: &str) -> Rng {
        let seed = std::env::var("FERRY_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0x5eed)
            });
        println!("{test}: seed = {seed}");
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    pub fn vec_f32(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
}

/// y[i] = a * x[i] + y[i].
pub const SAXPY: &str = r#"
extern "C" __global__ void saxpy(float a, const float *x, float *y, unsigned long long n) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + y[i];
}
"#;

/// out[i] = 2 * in[i] + 1, reading `in` from anywhere the device can address.
pub const TWICE_PLUS_ONE: &str = r#"
extern "C" __global__ void twice_plus_one(const float *in, float *out, unsigned long long n) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i < n) out[i] = 2.0f * in[i] + 1.0f;
}
"#;

/// out[i] = hash(i, seed), writing anywhere the device can address.
pub const FILL_HASH: &str = r#"
extern "C" __global__ void fill_hash(unsigned int *out, unsigned long long n, unsigned int seed) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i < n) out[i] = ((unsigned int)i * 2654435761u) ^ seed;
}
"#;

/// The host side of FILL_HASH.
pub fn fill_hash(i: usize, seed: u32) -> u32 {
    (i as u32).wrapping_mul(2654435761u32) ^ seed
}

/// |got - want| within a relative tolerance.
pub fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * w.abs().max(1.0),
            "element {i}: got {g}, want {w}"
        );
    }
}
