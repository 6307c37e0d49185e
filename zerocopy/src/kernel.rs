//! The CUDA C sources of the gather kernels, compiled by NVRTC through [`ferry_gpu::Gpu`] with
//! the launch shape passed as `-D` constants (one cached module per shape).

/// `ferry_gather`: `out[pos(k)] = table[idx[k]]` for `k < n`, one group of `TPR` lanes per row.
///
/// Constants: `VEC` (bytes per load), `TPR` (lanes per row, a power of two up to 32), `UNROLL`
/// (rows a group has in flight: each lane issues that many independent loads before storing),
/// `ALIGN` (1: start each row's reads at the 128-byte line below it, leading lanes idle),
/// `IDX_BITS` (32 or 64).
///
/// Steps, for each group of `TPR` lanes in a grid-stride loop over rows:
/// 1. Take `UNROLL` rows `k0 + u * groups`; read each index once per lane (a broadcast).
/// 2. An index outside `0..rows` is not read: lane 0 lowers `*bad` to its position `k`.
/// 3. For each pass of `TPR` words, load the word of every row in flight, then store them all.
pub(crate) const GATHER_SRC: &str = r#"
#if VEC == 16
typedef uint4 vec_t;
#elif VEC == 8
typedef uint2 vec_t;
#elif VEC == 4
typedef unsigned int vec_t;
#elif VEC == 2
typedef unsigned short vec_t;
#else
typedef unsigned char vec_t;
#endif
#if IDX_BITS == 64
typedef long long idx_t;
#else
typedef int idx_t;
#endif

extern "C" __global__ void ferry_gather(
    const unsigned char* __restrict__ table, long long rows, long long row_bytes,
    const idx_t* __restrict__ idx, long long n,
    const long long* __restrict__ out_pos,
    unsigned char* __restrict__ out,
    unsigned long long* __restrict__ bad)
{
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long nthreads = (long long)gridDim.x * blockDim.x;
    const long long lane = tid % TPR;
    const long long group = tid / TPR;
    const long long groups = nthreads / TPR;
    const long long row_words = row_bytes / VEC;
    for (long long k0 = group; k0 < n; k0 += groups * UNROLL) {
        const unsigned char* src[UNROLL];
        unsigned char* dst[UNROLL];
        long long shift[UNROLL];
        long long span[UNROLL];
        long long max_span = 0;
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const long long k = k0 + (long long)u * groups;
            src[u] = table;
            dst[u] = out;
            shift[u] = 0;
            span[u] = 0;
            if (k < n) {
                const long long r = (long long)idx[k];
                if (r < 0 || r >= rows) {
                    if (lane == 0) {
                        atomicMin(bad, (unsigned long long)k);
                    }
                } else {
                    const unsigned char* row = table + r * row_bytes;
                    long long s = 0;
#if ALIGN
                    s = (long long)(((unsigned long long)row % 128ull) / VEC);
#endif
                    const long long p = out_pos ? out_pos[k] : k;
                    src[u] = row;
                    dst[u] = out + p * row_bytes;
                    shift[u] = s;
                    span[u] = s + row_words;
                    max_span = span[u] > max_span ? span[u] : max_span;
                }
            }
        }
        for (long long j0 = 0; j0 < max_span; j0 += TPR) {
            const long long j = j0 + lane;
            vec_t v[UNROLL];
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                if (j >= shift[u] && j < span[u]) {
                    v[u] = *(const vec_t*)(src[u] + (j - shift[u]) * VEC);
                }
            }
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                if (j >= shift[u] && j < span[u]) {
                    *(vec_t*)(dst[u] + (j - shift[u]) * VEC) = v[u];
                }
            }
        }
    }
}
"#;

/// `ferry_stream_copy`: copies `words` 16-byte words from `src` to `dst`, four loads in flight
/// per thread; the sequential-read ceiling for mapped memory.
pub(crate) const STREAM_COPY_SRC: &str = r#"
extern "C" __global__ void ferry_stream_copy(
    const uint4* __restrict__ src, uint4* __restrict__ dst, long long words)
{
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long nthreads = (long long)gridDim.x * blockDim.x;
    for (long long i = tid; i < words; i += nthreads * 4) {
        uint4 v[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const long long w = i + (long long)u * nthreads;
            if (w < words) {
                v[u] = src[w];
            }
        }
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const long long w = i + (long long)u * nthreads;
            if (w < words) {
                dst[w] = v[u];
            }
        }
    }
}
"#;
