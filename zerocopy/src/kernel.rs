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
/// 2. An index outside `0..rows` is not read: lane 0 lowers `*bad` to its position in the
///    caller's batch (`out_pos[k]` when the batch was reordered, else `k`), so the smallest bad
///    position is reported whatever the order.
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
                        atomicMin(bad, (unsigned long long)(out_pos ? out_pos[k] : k));
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

/// Bucketing of indices on the GPU, so the gather visits the table in address order window by
/// window (a one-pass counting sort on `idx >> SHIFT`): random rows of a large table otherwise
/// cost the GPU one address translation each. Kernels:
/// 1. `ferry_bucket_zero`: clears the `nb` bucket counters.
/// 2. `ferry_bucket_count`: counts indices per bucket (out-of-range ones go to the last bucket;
///    the gather reports them).
/// 3. `ferry_bucket_scan`: one block turns counts into exclusive offsets, in place.
/// 4. `ferry_bucket_scatter`: writes each index and its original position to its bucket's
///    next slot.
pub(crate) const BUCKET_SRC: &str = r#"
#if IDX_BITS == 64
typedef long long idx_t;
#else
typedef int idx_t;
#endif

__device__ long long bucket_of(long long r, int shift, long long nb) {
    if (r < 0) return nb - 1;
    long long b = r >> shift;
    return b < nb ? b : nb - 1;
}

extern "C" __global__ void ferry_bucket_zero(unsigned int* counts, long long nb) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < nb;
         i += (long long)gridDim.x * blockDim.x) {
        counts[i] = 0u;
    }
}

extern "C" __global__ void ferry_bucket_count(
    const idx_t* __restrict__ idx, long long n, int shift, unsigned int* counts, long long nb)
{
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < n;
         k += (long long)gridDim.x * blockDim.x) {
        atomicAdd(&counts[bucket_of((long long)idx[k], shift, nb)], 1u);
    }
}

extern "C" __global__ void ferry_bucket_scan(unsigned int* counts, long long nb) {
    __shared__ unsigned long long part[1024];
    const long long per = (nb + 1023) / 1024;
    const long long lo = (long long)threadIdx.x * per;
    const long long hi = lo + per < nb ? lo + per : nb;
    unsigned long long sum = 0;
    for (long long i = lo; i < hi; ++i) sum += counts[i];
    part[threadIdx.x] = sum;
    __syncthreads();
    for (int off = 1; off < 1024; off <<= 1) {
        unsigned long long v = threadIdx.x >= off ? part[threadIdx.x - off] : 0ull;
        __syncthreads();
        part[threadIdx.x] += v;
        __syncthreads();
    }
    unsigned long long run = threadIdx.x > 0 ? part[threadIdx.x - 1] : 0ull;
    for (long long i = lo; i < hi; ++i) {
        unsigned int c = counts[i];
        counts[i] = (unsigned int)run;
        run += c;
    }
}

extern "C" __global__ void ferry_bucket_scatter(
    const idx_t* __restrict__ idx, long long n, int shift, unsigned int* cursor, long long nb,
    idx_t* __restrict__ sorted, long long* __restrict__ pos)
{
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < n;
         k += (long long)gridDim.x * blockDim.x) {
        const idx_t r = idx[k];
        const unsigned int p = atomicAdd(&cursor[bucket_of((long long)r, shift, nb)], 1u);
        sorted[p] = r;
        pos[p] = k;
    }
}
"#;
