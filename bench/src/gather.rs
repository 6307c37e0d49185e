//! `ferry-bench gather`: ferry's zero-copy gather of feature rows from a pinned, mapped host
//! table beside its variants (without GPU bucketing, without 128-byte alignment, with a host
//! sort), the double-buffered `GatherPipeline`, the CPU gather + copy baseline, a sequential SM
//! read of the mapped table (the ceiling for zero-copy reads), a pinned host-to-device copy of
//! the same bytes (the link ceiling) and, from `--torch-json`, PyTorch's tuned and naive paths.
//! With `--pin-timing` it also times pinning a table of the same size (allocated pinned vs
//! registered in place); with `--interference-caps` the slowdown of a compute-bound kernel
//! running beside a gather held to a thread cap on another stream.
//!
//! GB/s counts useful bytes: batch rows x row bytes / time, the median of `--reps` runs after
//! a warm-up of `--warmup-ms` of gathering (clocks up, kernels compiled) and two untimed runs
//! of each method. GPU methods are timed with events around the kernels or copy (ferry's GPU
//! bucketing is inside the timed region; the host sort of the "with sort" variant is not); the
//! CPU baseline and the pipeline with the wall clock. Every method's output is compared with
//! the table before its number is reported.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_gpu::{DeviceBuffer, Gpu, LaunchConfig};
use ferry_zerocopy::{
    CpuGather, GatherOptions, GatherPipeline, Gatherer, HostTable, TableView, stream_copy,
};

use crate::report::{median, read_json_lines, write_json_lines};

/// Options of `ferry-bench gather`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Size of the feature table in GiB (4 to 32 in the issue; the table, a pinned staging
    /// buffer of one batch and, with --pin-timing, a second table-sized buffer must fit in
    /// host memory).
    #[arg(long, default_value_t = 4.0)]
    table_gib: f64,
    /// Indices per batch.
    #[arg(long, default_value_t = 1 << 20)]
    batch: usize,
    /// Index distributions, comma-separated: `uniform`, `powerlaw` (Zipf-like: row rank r
    /// drawn with probability about r^-s, s = --zipf-exponent, ranks scattered over the table).
    #[arg(long, value_delimiter = ',', default_values_t = ["uniform".to_string()])]
    dist: Vec<String>,
    /// Exponent s of the power-law distribution.
    #[arg(long, default_value_t = 1.0)]
    zipf_exponent: f64,
    /// Row sizes in bytes, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [64usize, 128, 256, 512, 1024, 4096])]
    row_bytes: Vec<usize>,
    /// Timed repetitions of each method; the median is reported.
    #[arg(long, default_value_t = 7)]
    reps: usize,
    /// Milliseconds of gathering before the first measurement (GPU clocks, caches, compiles).
    #[arg(long, default_value_t = 1500)]
    warmup_ms: u64,
    /// Batches the pipeline measurement runs through `GatherPipeline` (0: skip it).
    #[arg(long, default_value_t = 8)]
    pipeline_batches: usize,
    /// Also run the pipeline with this many batches gathered per pass
    /// (`GatherPipeline::grouped`; 1: skip), held to --group-max-gib of output per slot.
    #[arg(long, default_value_t = 1)]
    group: usize,
    /// Most GiB of gathered rows one pipeline slot holds when grouping (two slots are
    /// allocated on the GPU).
    #[arg(long, default_value_t = 2.0)]
    group_max_gib: f64,
    /// Rows each group of lanes keeps in flight in ferry's kernel (1 to 8).
    #[arg(long, default_value_t = 4)]
    unroll: u32,
    /// Cap on the threads ferry's kernel launches (default: 8 blocks of 256 per SM).
    #[arg(long)]
    max_threads: Option<usize>,
    /// Build the table in anonymous memory with transparent huge pages, pinned in place,
    /// instead of `cuMemHostAlloc`.
    #[arg(long)]
    huge_pages: bool,
    /// Build the table from reserved 2 MiB huge pages (MAP_HUGETLB), pinned in place; reserve
    /// them first (`echo N > /proc/sys/vm/nr_hugepages`).
    #[arg(long)]
    hugetlb: bool,
    /// Build the table with CUDA's virtual memory management API (`cuMemCreate` on the GPU's
    /// host NUMA node, 2 MiB granularity, mapped for CPU and GPU) instead of `cuMemHostAlloc`.
    #[arg(long)]
    vmm: bool,
    /// Before the gathers, time pinning a table of --table-gib: `cuMemHostAlloc` (with its
    /// zero fill) vs `cuMemHostRegister` of memory already allocated and touched.
    #[arg(long)]
    pin_timing: bool,
    /// Thread caps at which to measure a compute-bound kernel's slowdown beside a gather of
    /// --interference-row-bytes rows on another stream (comma-separated; empty: skip).
    #[arg(long, value_delimiter = ',')]
    interference_caps: Vec<usize>,
    /// Row size of the gather in the interference measurement.
    #[arg(long, default_value_t = 512)]
    interference_row_bytes: usize,
    /// Seed of the index generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Write the JSON records (one per distribution and row size, plus pin and interference
    /// records) to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// JSON lines from bench/gather_torch.py (same table size and distributions), to report
    /// PyTorch's figures and ferry / tuned torch.
    #[arg(long)]
    torch_json: Option<PathBuf>,
}

#[derive(serde::Serialize, Debug)]
struct Record {
    bench: &'static str,
    row_bytes: usize,
    table_gib: f64,
    table_rows: usize,
    /// How the table's memory was made: `cuMemHostAlloc`, `vmm`, `thp` or `hugetlb`.
    table_memory: &'static str,
    batch: usize,
    dist: String,
    /// ferry's default: GPU bucketing (timed) + line-aligned gather.
    ferry_gbs: f64,
    /// Without the GPU bucketing of indices (the sorting/bucketing technique's gain is
    /// ferry / this).
    ferry_unsorted_gbs: f64,
    /// Bucketed, without 128-byte line alignment (the alignment's gain is ferry / this).
    ferry_no_align_gbs: f64,
    /// Sorted on the host (untimed) instead of bucketed on the GPU.
    ferry_sort_gbs: f64,
    /// `GatherPipeline` over `pipeline_batches` batches, wall clock with host checks and
    /// index uploads (0 when skipped).
    pipeline_gbs: f64,
    /// Batches per pass of the grouped pipeline (1: not run).
    pipeline_group: usize,
    /// `GatherPipeline::grouped` with `pipeline_group` batches per pass, over at least two
    /// groups of batches, wall clock like `pipeline_gbs` (0 when not run).
    pipeline_grouped_gbs: f64,
    /// `pipeline_group` batches gathered by one event-timed `Gatherer` call (bucketing
    /// included): the GPU's part of the grouped pipeline (0 when not run).
    grouped_kernel_gbs: f64,
    /// pipeline_grouped_gbs / sequential SM read, and / tuned torch (when run).
    grouped_fraction_of_sm_read: Option<f64>,
    grouped_vs_torch: Option<f64>,
    cpu_gbs: f64,
    sm_read_gbs: f64,
    h2d_gbs: f64,
    torch_tuned_gbs: Option<f64>,
    torch_naive_gbs: Option<f64>,
    /// ferry GB/s / sequential SM read.
    fraction_of_sm_read: f64,
    /// ferry GB/s / tuned torch GB/s, when `--torch-json` has this case.
    vs_torch: Option<f64>,
    checked: bool,
}

#[derive(serde::Serialize, Debug)]
struct PinRecord {
    bench: &'static str,
    table_bytes: usize,
    /// `cuMemHostAlloc(PORTABLE | DEVICEMAP)` plus ferry-gpu's zero fill.
    alloc_pinned_s: f64,
    /// Allocating and touching ordinary memory (what registering in place starts from).
    alloc_touch_s: f64,
    /// `cuMemHostRegister(PORTABLE | DEVICEMAP)` of that memory.
    register_s: f64,
    /// `cuMemCreate` on a host NUMA node + map + zero fill (`HostTable::alloc_vmm`).
    alloc_vmm_s: f64,
}

#[derive(serde::Serialize, Debug)]
struct InterferenceRecord {
    bench: &'static str,
    row_bytes: usize,
    max_threads: usize,
    compute_alone_ms: f64,
    compute_beside_gather_ms: f64,
    /// compute beside / compute alone - 1 (target: at most 0.10).
    slowdown: f64,
    /// The capped gather alone.
    gather_capped_gbs: f64,
    /// The capped gather while the compute kernel ran (pipeline wall clock).
    gather_beside_compute_gbs: f64,
    checked: bool,
}

/// xorshift64*, so runs are reproducible from `--seed`.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The rank (0-based) of a continuous Zipf variable on `1..=rows` with exponent `s`, by its
/// inverse CDF at `u` in `[0, 1)`: P(rank r) is about r^-s. `bench/gather_torch.py` draws the same.
fn zipf_rank(u: f64, rows: u64, s: f64) -> u64 {
    let n = rows as f64;
    let x = if (s - 1.0).abs() < 1e-9 {
        n.powf(u)
    } else {
        ((n.powf(1.0 - s) - 1.0) * u + 1.0).powf(1.0 / (1.0 - s))
    };
    ((x as u64).max(1) - 1).min(rows - 1)
}

/// `n` indices below `rows`: uniform, or power-law ([`zipf_rank`]) scattered over the table by
/// a fixed multiplicative permutation (so hot rows are not neighbours).
fn make_indices(dist: &str, n: usize, rows: usize, s: f64, seed: u64) -> Result<Vec<i64>, String> {
    let mut rng = Rng(seed | 1);
    let rows64 = rows as u64;
    match dist {
        "uniform" => Ok((0..n).map(|_| (rng.next_u64() % rows64) as i64).collect()),
        "powerlaw" => {
            let mut mult = 2_654_435_761u64 % rows64.max(2);
            while gcd(mult, rows64) != 1 {
                mult += 1;
            }
            Ok((0..n)
                .map(|_| {
                    let rank = zipf_rank(rng.unit(), rows64, s);
                    ((rank as u128 * mult as u128 % rows64 as u128) as u64) as i64
                })
                .collect())
        }
        other => Err(format!("unknown --dist '{other}' (uniform or powerlaw)")),
    }
}

fn gbs(bytes: usize, ms: f64) -> f64 {
    bytes as f64 / (ms * 1e-3) / 1e9
}

fn es<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Compares a gathered batch with the table's rows; names the first wrong row.
fn check_rows(what: &str, view: TableView<'_>, idx: &[i64], got: &[u8]) -> Result<(), String> {
    let rb = view.row_bytes();
    for (k, &i) in idx.iter().enumerate() {
        if got[k * rb..(k + 1) * rb] != *view.row(i as usize) {
            return Err(format!(
                "{what}: row {k} (index {i}) of {rb} bytes differs from the table"
            ));
        }
    }
    Ok(())
}

fn check_gather(
    what: &str,
    view: TableView<'_>,
    idx: &[i64],
    out: &DeviceBuffer<u8>,
) -> Result<(), String> {
    check_rows(what, view, idx, &out.clone_dtoh().map_err(es)?)
}

fn check_prefix(what: &str, view: TableView<'_>, out: &DeviceBuffer<u8>) -> Result<(), String> {
    let got = out.clone_dtoh().map_err(es)?;
    if got[..] != view.as_bytes()[..got.len()] {
        return Err(format!("{what}: the copied bytes differ from the table"));
    }
    Ok(())
}

/// Poisons `out` with `junk` (at least as long) so a method that writes nothing cannot pass
/// the check.
fn poison(out: &mut DeviceBuffer<u8>, junk: &[u8]) -> Result<(), String> {
    out.copy_htod(&junk[..out.len()]).map_err(es)
}

/// Times `reps` runs of ferry's gather with `options` (two untimed first); checks the output.
#[allow(clippy::too_many_arguments)] // One benchmark case's inputs, each used once.
fn time_ferry(
    gpu: &Gpu,
    options: GatherOptions,
    what: &str,
    view: TableView<'_>,
    idx: &[i64],
    out: &mut DeviceBuffer<u8>,
    junk: &[u8],
    reps: usize,
) -> Result<f64, String> {
    let err = |e: ferry_zerocopy::ZeroCopyError| format!("{what}: {e}");
    let mut g = Gatherer::new(gpu, options).map_err(err)?;
    let batch = g.prepare(idx).map_err(err)?;
    poison(out, junk)?;
    for _ in 0..2 {
        g.gather_batch(view, &batch, out).map_err(err)?;
    }
    check_gather(what, view, idx, out)?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        times.push(g.gather_batch(view, &batch, out).map_err(err)? as f64);
    }
    Ok(gbs(idx.len() * view.row_bytes(), median(times)))
}

/// Runs `batches` batches (cycling through `sets`, which must hold distinct index sets for at
/// least two groups so that no pass sees a batch twice) through a `GatherPipeline` that
/// gathers `group` batches per pass; the first run checks a batch of every group, the second
/// is timed with the wall clock. GB/s of gathered rows.
fn time_pipeline(
    gpu: &Gpu,
    options: GatherOptions,
    view: TableView<'_>,
    sets: &[Vec<i64>],
    batches: usize,
    group: usize,
) -> Result<f64, String> {
    let err = |e: ferry_zerocopy::ZeroCopyError| format!("pipeline: {e}");
    let n = sets.iter().map(Vec::len).max().unwrap_or(0);
    let mut p = GatherPipeline::<i64>::grouped(gpu, view, n, group, options).map_err(err)?;
    let list: Vec<&[i64]> = (0..batches).map(|b| &sets[b % sets.len()][..]).collect();
    let mut bad = None;
    p.run(&list, |b, got| {
        // Check one batch in each group (each is a copy back to the host).
        if bad.is_none() && b % group == 0 {
            if let Err(e) = check_rows("pipeline", view, list[b], &got.to_host()?) {
                bad = Some(e);
            }
        }
        Ok(())
    })
    .map_err(err)?;
    if let Some(e) = bad {
        return Err(e);
    }
    let start = Instant::now();
    p.run(&list, |_, _| Ok(())).map_err(err)?;
    let secs = start.elapsed().as_secs_f64();
    let bytes: usize = list.iter().map(|s| s.len() * view.row_bytes()).sum();
    Ok(bytes as f64 / secs / 1e9)
}

/// PyTorch figures by (distribution, row bytes): (tuned, naive) GB/s.
type TorchMap = HashMap<(String, usize), (f64, f64)>;

fn read_torch(path: &std::path::Path) -> Result<TorchMap, String> {
    let mut map = HashMap::new();
    for v in read_json_lines::<serde_json::Value>(path)? {
        let dist = v["dist"].as_str().unwrap_or("uniform").to_string();
        if let (Some(rb), Some(t), Some(n)) = (
            v["row_bytes"].as_u64(),
            v["torch_tuned_gbs"].as_f64(),
            v["torch_naive_gbs"].as_f64(),
        ) {
            map.insert((dist, rb as usize), (t, n));
        }
    }
    Ok(map)
}

/// Times pinning `bytes`: allocated pinned by the driver, and registered in place.
fn pin_timing(gpu: &Gpu, bytes: usize) -> Result<PinRecord, String> {
    let t = Instant::now();
    let table = HostTable::alloc(gpu, bytes / 64, 64).map_err(es)?;
    let alloc_pinned_s = t.elapsed().as_secs_f64();
    drop(table);
    let t = Instant::now();
    let mut data = vec![0u64; bytes / 8];
    // Touch every page: `vec!` of zeros maps them lazily.
    for page in data.chunks_mut(512) {
        page[0] = 1;
    }
    let alloc_touch_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let table = HostTable::register(gpu, data, 8).map_err(es)?;
    let register_s = t.elapsed().as_secs_f64();
    drop(table);
    let t = Instant::now();
    let table = HostTable::alloc_vmm(gpu, bytes / 64, 64).map_err(es)?;
    let alloc_vmm_s = t.elapsed().as_secs_f64();
    drop(table);
    Ok(PinRecord {
        bench: "gather-pin",
        table_bytes: bytes,
        alloc_pinned_s,
        alloc_touch_s,
        register_s,
        alloc_vmm_s,
    })
}

/// A compute-bound kernel: four independent FMA chains per thread, `iters` steps.
const BURN_SRC: &str = r#"
extern "C" __global__ void ferry_burn(float* out, int iters) {
    const int tid = blockIdx.x * blockDim.x + threadIdx.x;
    float x0 = tid * 1e-7f, x1 = x0 + 0.25f, x2 = x0 + 0.5f, x3 = x0 + 0.75f;
    const float m = 0.999999f, k = 1e-6f;
    for (int i = 0; i < iters; ++i) {
        x0 = fmaf(x0, m, k); x1 = fmaf(x1, m, k); x2 = fmaf(x2, m, k); x3 = fmaf(x3, m, k);
    }
    out[tid] = x0 + x1 + x2 + x3;
}
"#;

/// Runs the compute kernel once on `stream`; returns its event time in milliseconds.
fn burn(
    gpu: &Gpu,
    stream: &ferry_gpu::Stream,
    out: &mut DeviceBuffer<f32>,
    iters: i32,
) -> Result<f64, String> {
    let kernel = gpu.kernel(BURN_SRC, "ferry_burn").map_err(es)?;
    let blocks = (out.len() / 256) as u32;
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let start = stream.record_event().map_err(es)?;
    // SAFETY: (float*, int) matches `ferry_burn`; it writes one float per thread and the grid
    // has exactly `out.len()` threads; the stream is synchronized before `out` is read.
    unsafe {
        kernel
            .launch_builder(stream)
            .arg_buffer_mut(out)
            .arg(&iters)
            .launch(cfg)
    }
    .map_err(es)?;
    let end = stream.record_event().map_err(es)?;
    stream.synchronize().map_err(es)?;
    Ok(start.elapsed_ms(&end).map_err(es)? as f64)
}

/// For each cap: a compute-bound kernel alone, then beside a capped gather running without
/// pause in a `GatherPipeline` on its own stream (another thread).
fn interference(
    gpu: &Gpu,
    view: TableView<'_>,
    idx: &[i64],
    caps: &[usize],
    reps: usize,
) -> Result<Vec<InterferenceRecord>, String> {
    let stream = gpu.new_stream().map_err(es)?;
    let sms = gpu.multiprocessor_count().map_err(es)? as usize;
    let mut out: DeviceBuffer<f32> = stream.alloc_zeros(sms * 8 * 256).map_err(es)?;
    // Calibrate to about 200 ms alone.
    let probe = 20_000;
    burn(gpu, &stream, &mut out, probe)?;
    let ms = burn(gpu, &stream, &mut out, probe)?;
    let iters = ((probe as f64 * 200.0 / ms.max(1e-3)) as i64).clamp(1, i32::MAX as i64) as i32;
    let alone: Vec<f64> = (0..reps.max(3))
        .map(|_| burn(gpu, &stream, &mut out, iters))
        .collect::<Result<_, _>>()?;
    let want = out.clone_dtoh().map_err(es)?;
    let alone = median(alone);
    let bytes = idx.len() * view.row_bytes();
    let mut records = Vec::new();
    for &cap in caps {
        let options = GatherOptions {
            max_threads: Some(cap),
            ..Default::default()
        };
        let mut gout: DeviceBuffer<u8> = stream.alloc_zeros(bytes).map_err(es)?;
        let junk = vec![0xA5u8; bytes];
        let capped = time_ferry(gpu, options, "capped", view, idx, &mut gout, &junk, reps)?;
        drop(gout);
        let stop = AtomicBool::new(false);
        let started = AtomicBool::new(false);
        let (beside, gathered) = std::thread::scope(|s| -> Result<(Vec<f64>, f64), String> {
            let worker = s.spawn(|| -> Result<f64, String> {
                let mut p =
                    GatherPipeline::<i64>::new(gpu, view, idx.len(), options).map_err(es)?;
                let batches = std::iter::from_fn(|| (!stop.load(Ordering::Relaxed)).then_some(idx));
                let mut count = 0usize;
                let t = Instant::now();
                let mut since = None;
                p.run(batches, |_, _| {
                    count += 1;
                    if count == 2 {
                        started.store(true, Ordering::Release);
                        since = Some((Instant::now(), count));
                    }
                    Ok(())
                })
                .map_err(es)?;
                let (t0, c0) = since.unwrap_or((t, 0));
                Ok(((count - c0) * bytes) as f64 / t0.elapsed().as_secs_f64() / 1e9)
            });
            let deadline = Instant::now() + Duration::from_secs(30);
            while !started.load(Ordering::Acquire) && !worker.is_finished() {
                if Instant::now() > deadline {
                    stop.store(true, Ordering::Relaxed);
                    return Err("the gather beside the compute kernel did not start".into());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let times: Result<Vec<f64>, String> = (0..reps.max(3))
                .map(|_| burn(gpu, &stream, &mut out, iters))
                .collect();
            stop.store(true, Ordering::Relaxed);
            let gathered = worker
                .join()
                .map_err(|_| "the gather thread panicked".to_string())??;
            Ok((times?, gathered))
        })?;
        let checked = out.clone_dtoh().map_err(es)? == want;
        if !checked {
            return Err("the compute kernel's result changed beside the gather".into());
        }
        let beside = median(beside);
        records.push(InterferenceRecord {
            bench: "gather-interference",
            row_bytes: view.row_bytes(),
            max_threads: cap,
            compute_alone_ms: alone,
            compute_beside_gather_ms: beside,
            slowdown: beside / alone - 1.0,
            gather_capped_gbs: capped,
            gather_beside_compute_gbs: gathered,
            checked,
        });
    }
    Ok(records)
}

pub(crate) fn run(args: &Args) -> Result<(), String> {
    let gpu = Gpu::open(0).map_err(|e| format!("gather needs a GPU, and there is no GPU: {e}"))?;
    let torch = match &args.torch_json {
        Some(p) => Some(read_torch(p)?),
        None => None,
    };
    let reps = args.reps.max(1);
    let max_rb = args.row_bytes.iter().copied().max().unwrap_or(64);
    let table_bytes = ((args.table_gib * (1u64 << 30) as f64) as usize) / 4096 * 4096;
    if table_bytes < max_rb {
        return Err(format!(
            "a table of {table_bytes} bytes holds no row of {max_rb}"
        ));
    }
    for d in &args.dist {
        make_indices(d, 1, 1, args.zipf_exponent, 1)?;
    }
    let mut json: Vec<serde_json::Value> = Vec::new();
    // Rewritten after every record, so a run stopped by a time limit keeps what it measured.
    let save = |json: &[serde_json::Value]| match &args.json {
        Some(path) => write_json_lines(path, json),
        None => Ok(()),
    };
    if args.pin_timing {
        let pin = pin_timing(&gpu, table_bytes)?;
        println!(
            "pinning {table_bytes} bytes: cuMemHostAlloc + zero fill {:.2} s; allocate + touch \
             {:.2} s then cuMemHostRegister {:.2} s; cuMemCreate (host) + zero fill {:.2} s",
            pin.alloc_pinned_s, pin.alloc_touch_s, pin.register_s, pin.alloc_vmm_s
        );
        json.push(serde_json::to_value(pin).map_err(es)?);
        save(&json)?;
    }
    eprintln!(
        "gather: pinning and filling a {table_bytes}-byte table on {}",
        gpu.name()
    );
    let table_memory = if args.vmm {
        "vmm"
    } else if args.hugetlb {
        "hugetlb"
    } else if args.huge_pages {
        "thp"
    } else {
        "cuMemHostAlloc"
    };
    let mut table = if args.vmm {
        HostTable::alloc_vmm(&gpu, table_bytes / 64, 64)
    } else if args.hugetlb {
        HostTable::alloc_hugetlb(&gpu, table_bytes / 64, 64)
    } else if args.huge_pages {
        HostTable::alloc_registered(&gpu, table_bytes / 64, 64, true)
    } else {
        HostTable::alloc(&gpu, table_bytes / 64, 64)
    }
    .map_err(es)?;
    table.fill_pattern(args.seed);
    let max_batch_bytes = args.batch * max_rb;
    let mut cpu = CpuGather::new(&gpu, max_batch_bytes).map_err(es)?;
    let stream = gpu.new_stream().map_err(es)?;
    let default = GatherOptions {
        unroll: args.unroll,
        max_threads: args.max_threads,
        ..Default::default()
    };

    // Warm-up: gather the first case until --warmup-ms have passed.
    if let (Some(&rb), Some(d)) = (args.row_bytes.first(), args.dist.first()) {
        let rows = table_bytes / rb;
        let view = table.view_at(0, rows, rb).map_err(es)?;
        let idx = make_indices(d, args.batch, rows, args.zipf_exponent, args.seed)?;
        let mut out: DeviceBuffer<u8> = stream.alloc_zeros(idx.len() * rb).map_err(es)?;
        let mut g = Gatherer::new(&gpu, default).map_err(es)?;
        let batch = g.prepare(&idx).map_err(es)?;
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(args.warmup_ms) {
            g.gather_batch(view, &batch, &mut out).map_err(es)?;
        }
    }

    println!(
        "{:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>14} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6}",
        "row_bytes",
        "dist",
        "ferry",
        "unsorted",
        "no_align",
        "w_sort",
        "pipeline",
        "grouped",
        "cpu",
        "sm_read",
        "h2d",
        "torch",
        "t_naive",
        "of_sm",
        "vs_t"
    );
    for dist in &args.dist {
        for &rb in &args.row_bytes {
            let rows = table_bytes / rb;
            let view = table.view_at(0, rows, rb).map_err(es)?;
            let seed = args.seed ^ rb as u64;
            let idx = make_indices(dist, args.batch, rows, args.zipf_exponent, seed)?;
            let bytes = idx.len() * rb;
            let mut out: DeviceBuffer<u8> = stream.alloc_zeros(bytes).map_err(es)?;
            let junk = vec![0xA5u8; bytes];
            let t = |o: GatherOptions, what: &str, out: &mut DeviceBuffer<u8>| {
                time_ferry(&gpu, o, what, view, &idx, out, &junk, reps)
            };

            let ferry = t(default, "ferry", &mut out)?;
            let no_align = GatherOptions {
                align_lines: false,
                ..default
            };
            let ferry_no_align = t(no_align, "no_align", &mut out)?;
            let sort = GatherOptions {
                sort: true,
                ..default
            };
            let ferry_sort = t(sort, "with_sort", &mut out)?;
            let unsorted = GatherOptions {
                bucket: false,
                ..default
            };
            let ferry_unsorted = t(unsorted, "unsorted", &mut out)?;
            let pipeline = if args.pipeline_batches > 0 {
                let other = make_indices(dist, args.batch, rows, args.zipf_exponent, !seed)?;
                let sets = [idx.clone(), other];
                time_pipeline(&gpu, default, view, &sets, args.pipeline_batches, 1)?
            } else {
                0.0
            };
            // Batches per pass: as asked, held to --group-max-gib of rows per slot.
            let max_group = (args.group_max_gib * (1u64 << 30) as f64 / bytes as f64) as usize;
            let group = args.group.min(max_group).max(1);
            let (pipeline_grouped, grouped_kernel) = if group > 1 {
                // Distinct batches for two whole groups: a batch repeated inside a pass would
                // be served from the GPU's caches and inflate the figure.
                let sets = (0..2 * group as u64)
                    .map(|k| {
                        make_indices(
                            dist,
                            args.batch,
                            rows,
                            args.zipf_exponent,
                            seed.wrapping_add((k + 1) * 0x9E37_79B9_7F4A_7C15),
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let batches = args.pipeline_batches.max(2 * group);
                let piped = time_pipeline(&gpu, default, view, &sets, batches, group)?;
                // One group as one event-timed kernel call: the GPU's share of the work.
                let all: Vec<i64> = sets[..group].concat();
                let mut big: DeviceBuffer<u8> = stream.alloc_zeros(all.len() * rb).map_err(es)?;
                let big_junk = vec![0xA5u8; all.len() * rb];
                let kernel = time_ferry(
                    &gpu, default, "grouped", view, &all, &mut big, &big_junk, reps,
                )?;
                (piped, kernel)
            } else {
                (0.0, 0.0)
            };

            let mut times = Vec::with_capacity(reps);
            poison(&mut out, &junk)?;
            for _ in 0..=reps {
                let t = Instant::now();
                cpu.gather(view, &idx, &mut out)
                    .map_err(|e| format!("cpu: {e}"))?;
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            times.remove(0);
            check_gather("cpu", view, &idx, &out)?;
            let cpu_gbs = gbs(bytes, median(times));
            drop(out);

            // The ceilings move the same number of bytes (or the whole table, if smaller).
            let seq_bytes = bytes.min(table_bytes) / 16 * 16;
            let mut seq: DeviceBuffer<u8> = stream.alloc_zeros(seq_bytes).map_err(es)?;
            let mut times = Vec::with_capacity(reps);
            for r in 0..reps + 2 {
                let ms = stream_copy(&stream, table.view(), &mut seq).map_err(es)?;
                if r > 1 {
                    times.push(ms as f64);
                }
            }
            check_prefix("sm_read", table.view(), &seq)?;
            let sm_read = gbs(seq_bytes, median(times));

            let src = &table.as_bytes()[..seq_bytes];
            poison(&mut seq, &junk)?;
            let mut times = Vec::with_capacity(reps);
            for r in 0..reps + 2 {
                let start = seq.stream().record_event().map_err(es)?;
                seq.copy_htod(src).map_err(es)?;
                let end = seq.stream().record_event().map_err(es)?;
                let ms = start.elapsed_ms(&end).map_err(es)?;
                if r > 1 {
                    times.push(ms as f64);
                }
            }
            check_prefix("h2d", table.view(), &seq)?;
            let h2d = gbs(seq_bytes, median(times));

            let t = torch
                .as_ref()
                .and_then(|t| t.get(&(dist.clone(), rb)))
                .copied();
            let record = Record {
                bench: "gather",
                row_bytes: rb,
                table_gib: args.table_gib,
                table_rows: rows,
                table_memory,
                batch: idx.len(),
                dist: dist.clone(),
                ferry_gbs: ferry,
                ferry_unsorted_gbs: ferry_unsorted,
                ferry_no_align_gbs: ferry_no_align,
                ferry_sort_gbs: ferry_sort,
                pipeline_gbs: pipeline,
                pipeline_group: group,
                pipeline_grouped_gbs: pipeline_grouped,
                grouped_kernel_gbs: grouped_kernel,
                grouped_fraction_of_sm_read: (group > 1).then(|| pipeline_grouped / sm_read),
                grouped_vs_torch: t.filter(|_| group > 1).map(|t| pipeline_grouped / t.0),
                cpu_gbs,
                sm_read_gbs: sm_read,
                h2d_gbs: h2d,
                torch_tuned_gbs: t.map(|t| t.0),
                torch_naive_gbs: t.map(|t| t.1),
                fraction_of_sm_read: ferry / sm_read,
                vs_torch: t.map(|t| ferry / t.0),
                checked: true,
            };
            let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
            println!(
                "{:>9} {:>8} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>14} {:>8.2} {:>8.2} {:>8.2} {:>8} {:>8} {:>6.3} {:>6}",
                rb,
                dist,
                ferry,
                ferry_unsorted,
                ferry_no_align,
                ferry_sort,
                pipeline,
                format!("{pipeline_grouped:.1}|{grouped_kernel:.1}/{group}"),
                cpu_gbs,
                sm_read,
                h2d,
                opt(record.torch_tuned_gbs),
                opt(record.torch_naive_gbs),
                record.fraction_of_sm_read,
                opt(record.vs_torch)
            );
            json.push(serde_json::to_value(record).map_err(es)?);
            save(&json)?;
        }
    }
    println!(
        "(GB/s of gathered rows; ferry buckets indices on the GPU and that is timed; unsorted \
         without it; w_sort sorts on the host, untimed; pipeline: GatherPipeline, wall clock; \
         grouped: GatherPipeline::grouped | one kernel call of the group, GB/s / batches per pass; of_sm = ferry / sm_read; vs_t = ferry / tuned torch)"
    );
    if !args.interference_caps.is_empty() {
        let rb = args.interference_row_bytes;
        let rows = table_bytes / rb;
        let view = table.view_at(0, rows, rb).map_err(es)?;
        let idx = make_indices("uniform", args.batch, rows, args.zipf_exponent, args.seed)?;
        println!(
            "{:>11} {:>10} {:>10} {:>9} {:>11} {:>11}",
            "max_threads", "alone_ms", "beside_ms", "slowdown", "capped_gbs", "beside_gbs"
        );
        for r in interference(&gpu, view, &idx, &args.interference_caps, reps)? {
            println!(
                "{:>11} {:>10.2} {:>10.2} {:>8.1}% {:>11.2} {:>11.2}",
                r.max_threads,
                r.compute_alone_ms,
                r.compute_beside_gather_ms,
                100.0 * r.slowdown,
                r.gather_capped_gbs,
                r.gather_beside_compute_gbs
            );
            json.push(serde_json::to_value(r).map_err(es)?);
        }
        println!(
            "(a compute-bound FMA kernel filling the GPU, alone and beside a {rb}-byte-row \
             gather capped at max_threads on another stream)"
        );
    }
    save(&json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_ranks_stay_in_range_and_favour_low_ranks() {
        for s in [0.8, 1.0, 1.2] {
            let mut rng = Rng(7);
            let rows = 1_000_000u64;
            let ranks: Vec<u64> = (0..100_000)
                .map(|_| zipf_rank(rng.unit(), rows, s))
                .collect();
            assert!(ranks.iter().all(|&r| r < rows), "s {s}");
            let top = ranks.iter().filter(|&&r| r < 1000).count();
            // Uniform would put 0.1% below rank 1000; a power law puts far more there.
            assert!(top > 10_000, "s {s}: {top} of 100000 below rank 1000");
        }
        assert_eq!(zipf_rank(0.0, 10, 1.0), 0);
        assert!(zipf_rank(0.999_999, 10, 1.0) <= 9);
    }

    #[test]
    fn indices_are_reproducible_and_in_range() {
        for dist in ["uniform", "powerlaw"] {
            let a = make_indices(dist, 5000, 12345, 1.0, 9).unwrap();
            let b = make_indices(dist, 5000, 12345, 1.0, 9).unwrap();
            assert_eq!(a, b);
            assert!(a.iter().all(|&i| (0..12345).contains(&i)), "{dist}");
        }
        assert!(make_indices("gaussian", 1, 10, 1.0, 1).is_err());
    }
}
