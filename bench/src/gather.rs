//! `ferry-bench gather`: ferry's zero-copy gather of feature rows from a pinned, mapped host
//! table beside its variants (no 128-byte alignment, with index sort), the CPU gather + copy
//! baseline, a sequential SM read of the mapped table (the ceiling for zero-copy reads) and a
//! pinned host-to-device copy of the same bytes (the link ceiling).
//!
//! GB/s counts useful bytes: batch rows x row bytes / time, the median of `--reps` runs. GPU
//! methods are timed with events around the kernel or copy (the host sort of the "with sort"
//! variant is not counted); the CPU baseline with the wall clock. Every method's output is
//! compared with the table before its number is reported.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use ferry_gpu::{DeviceBuffer, Gpu};
use ferry_zerocopy::{CpuGather, GatherOptions, Gatherer, HostTable, TableView, stream_copy};

use crate::report::write_json_lines;

/// Options of `ferry-bench gather`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Size of the feature table in GiB.
    #[arg(long, default_value_t = 4.0)]
    table_gib: f64,
    /// Indices per batch.
    #[arg(long, default_value_t = 1 << 20)]
    batch: usize,
    /// Index distribution: `uniform` or `powerlaw` (hot rows, scattered over the table).
    #[arg(long, default_value = "uniform")]
    dist: String,
    /// Row sizes in bytes, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [64usize, 128, 256, 512, 1024, 4096])]
    row_bytes: Vec<usize>,
    /// Timed repetitions of each method; the median is reported.
    #[arg(long, default_value_t = 7)]
    reps: usize,
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
    /// Seed of the index generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Write one JSON record per row size to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// JSON lines from bench/gather_torch.py, to report ferry / tuned torch.
    #[arg(long)]
    torch_json: Option<PathBuf>,
}

#[derive(serde::Serialize, Debug)]
struct Record {
    bench: &'static str,
    row_bytes: usize,
    table_rows: usize,
    batch: usize,
    dist: String,
    ferry_gbs: f64,
    /// Without the GPU bucketing of indices.
    ferry_unsorted_gbs: f64,
    ferry_no_align_gbs: f64,
    ferry_sort_gbs: f64,
    cpu_gbs: f64,
    sm_read_gbs: f64,
    h2d_gbs: f64,
    /// ferry (default options: GPU bucketing included in the time) GB/s / sequential SM read.
    fraction_of_sm_read: f64,
    /// ferry GB/s / tuned torch GB/s, when `--torch-json` is given.
    vs_torch: Option<f64>,
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

/// `n` indices below `rows`: uniform, or power-law (rank `rows * u^4`, so a few rows are hot)
/// scattered over the table by a fixed multiplicative permutation.
fn make_indices(dist: &str, n: usize, rows: usize, seed: u64) -> Result<Vec<i64>, String> {
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
                    let rank = ((rng.unit().powi(4) * rows as f64) as u64).min(rows64 - 1);
                    ((rank as u128 * mult as u128 % rows64 as u128) as u64) as i64
                })
                .collect())
        }
        other => Err(format!("unknown --dist '{other}' (uniform or powerlaw)")),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn gbs(bytes: usize, ms: f64) -> f64 {
    bytes as f64 / (ms * 1e-3) / 1e9
}

/// Compares a gathered batch with the table's rows; names the first wrong row.
fn check_gather(
    what: &str,
    view: TableView<'_>,
    idx: &[i64],
    out: &DeviceBuffer<u8>,
) -> Result<(), String> {
    let got = out.clone_dtoh().map_err(|e| e.to_string())?;
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

fn check_prefix(what: &str, view: TableView<'_>, out: &DeviceBuffer<u8>) -> Result<(), String> {
    let got = out.clone_dtoh().map_err(|e| e.to_string())?;
    if got[..] != view.as_bytes()[..got.len()] {
        return Err(format!("{what}: the copied bytes differ from the table"));
    }
    Ok(())
}

/// Times `reps` runs of ferry's gather with `options`; checks the output of the last.
fn time_ferry(
    gpu: &Gpu,
    options: GatherOptions,
    what: &str,
    view: TableView<'_>,
    idx: &[i64],
    out: &mut DeviceBuffer<u8>,
    reps: usize,
) -> Result<f64, String> {
    let err = |e: ferry_zerocopy::ZeroCopyError| format!("{what}: {e}");
    let mut g = Gatherer::new(gpu, options).map_err(err)?;
    let batch = g.prepare(idx).map_err(err)?;
    g.gather_batch(view, &batch, out).map_err(err)?; // Warm-up and compile.
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        times.push(g.gather_batch(view, &batch, out).map_err(err)? as f64);
    }
    check_gather(what, view, idx, out)?;
    Ok(gbs(idx.len() * view.row_bytes(), median(times)))
}

fn read_torch(path: &PathBuf) -> Result<HashMap<usize, f64>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut map = HashMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| format!("{}: bad JSON line '{line}': {e}", path.display()))?;
        if let (Some(rb), Some(t)) = (v["row_bytes"].as_u64(), v["torch_tuned_gbs"].as_f64()) {
            map.insert(rb as usize, t);
        }
    }
    Ok(map)
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
    eprintln!(
        "gather: pinning and filling a {table_bytes}-byte table on {}",
        gpu.name()
    );
    let mut table = if args.hugetlb {
        HostTable::alloc_hugetlb(&gpu, table_bytes / 64, 64)
    } else if args.huge_pages {
        HostTable::alloc_registered(&gpu, table_bytes / 64, 64, true)
    } else {
        HostTable::alloc(&gpu, table_bytes / 64, 64)
    }
    .map_err(|e| e.to_string())?;
    table.fill_pattern(args.seed);
    let max_batch_bytes = args.batch * max_rb;
    let mut cpu = CpuGather::new(&gpu, max_batch_bytes).map_err(|e| e.to_string())?;
    let stream = gpu.new_stream().map_err(|e| e.to_string())?;

    println!(
        "{:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8}",
        "row_bytes",
        "ferry",
        "unsorted",
        "no_align",
        "with_sort",
        "cpu",
        "sm_read",
        "h2d",
        "of_sm",
        "vs_torch"
    );
    let mut records = Vec::new();
    for &rb in &args.row_bytes {
        let rows = table_bytes / rb;
        let view = table.view_at(0, rows, rb).map_err(|e| e.to_string())?;
        let idx = make_indices(&args.dist, args.batch, rows, args.seed ^ rb as u64)?;
        let bytes = idx.len() * rb;
        let mut out: DeviceBuffer<u8> = stream.alloc_zeros(bytes).map_err(|e| e.to_string())?;

        let default = GatherOptions {
            unroll: args.unroll,
            max_threads: args.max_threads,
            ..Default::default()
        };
        let ferry = time_ferry(&gpu, default, "ferry", view, &idx, &mut out, reps)?;
        let no_align = GatherOptions {
            align_lines: false,
            ..default
        };
        let ferry_no_align = time_ferry(&gpu, no_align, "no_align", view, &idx, &mut out, reps)?;
        let sort = GatherOptions {
            sort: true,
            ..default
        };
        let ferry_sort = time_ferry(&gpu, sort, "with_sort", view, &idx, &mut out, reps)?;
        let unsorted = GatherOptions {
            bucket: false,
            ..default
        };
        let ferry_unsorted = time_ferry(&gpu, unsorted, "unsorted", view, &idx, &mut out, reps)?;

        let mut times = Vec::with_capacity(reps);
        for _ in 0..=reps {
            let t = Instant::now();
            cpu.gather(view, &idx, &mut out)
                .map_err(|e| format!("cpu: {e}"))?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.remove(0);
        check_gather("cpu", view, &idx, &out)?;
        let cpu_gbs = gbs(bytes, median(times));

        // The ceilings move the same number of bytes (or the whole table, if smaller).
        let seq_bytes = bytes.min(table_bytes) / 16 * 16;
        let mut seq: DeviceBuffer<u8> = stream.alloc_zeros(seq_bytes).map_err(|e| e.to_string())?;
        let mut times = Vec::with_capacity(reps);
        for r in 0..=reps {
            let ms = stream_copy(&stream, table.view(), &mut seq).map_err(|e| e.to_string())?;
            if r > 0 {
                times.push(ms as f64);
            }
        }
        check_prefix("sm_read", table.view(), &seq)?;
        let sm_read = gbs(seq_bytes, median(times));

        let src = &table.as_bytes()[..seq_bytes];
        let mut times = Vec::with_capacity(reps);
        for r in 0..=reps {
            let start = seq.stream().record_event().map_err(|e| e.to_string())?;
            seq.copy_htod(src).map_err(|e| e.to_string())?;
            let end = seq.stream().record_event().map_err(|e| e.to_string())?;
            let ms = start.elapsed_ms(&end).map_err(|e| e.to_string())?;
            if r > 0 {
                times.push(ms as f64);
            }
        }
        check_prefix("h2d", table.view(), &seq)?;
        let h2d = gbs(seq_bytes, median(times));

        let vs_torch = torch.as_ref().and_then(|t| t.get(&rb)).map(|&t| ferry / t);
        let record = Record {
            bench: "gather",
            row_bytes: rb,
            table_rows: rows,
            batch: idx.len(),
            dist: args.dist.clone(),
            ferry_gbs: ferry,
            ferry_no_align_gbs: ferry_no_align,
            ferry_sort_gbs: ferry_sort,
            ferry_unsorted_gbs: ferry_unsorted,
            cpu_gbs,
            sm_read_gbs: sm_read,
            h2d_gbs: h2d,
            fraction_of_sm_read: ferry / sm_read,
            vs_torch,
            checked: true,
        };
        println!(
            "{:>9} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>8.3} {:>8}",
            rb,
            ferry,
            ferry_unsorted,
            ferry_no_align,
            ferry_sort,
            cpu_gbs,
            sm_read,
            h2d,
            record.fraction_of_sm_read,
            vs_torch.map_or("-".to_string(), |v| format!("{v:.2}"))
        );
        records.push(record);
    }
    println!(
        "(GB/s of gathered rows; ferry buckets indices on the GPU and that is timed; unsorted \
         without it; with_sort sorts on the host, untimed; of_sm = ferry / sm_read; \
         vs_torch = ferry / tuned torch)"
    );
    if let Some(path) = &args.json {
        write_json_lines(path, &records)?;
    }
    Ok(())
}
