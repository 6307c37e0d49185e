"""PyTorch baseline for `ferry-bench gather`: gathering feature rows from a pinned CPU table.

Table: a pinned uint8 CPU tensor [rows, row_bytes] of --table-gib GiB. For each distribution
(--dist, comma-separated) and row size, 1M indices drawn as the Rust benchmark draws them
(uniform, or Zipf-like with exponent --zipf-exponent, ranks scattered over the table):
  tuned: torch.index_select into a preallocated pinned buffer with all CPU threads, then
         .cuda(non_blocking=True) into a preallocated device tensor, synchronize;
  naive: table[idx].cuda().
GB/s = batch rows x row_bytes / median time. Each result is checked against table[idx].
Prints a table and writes JSON lines {dist, row_bytes, table_gib, torch_tuned_gbs,
torch_naive_gbs, torch, threads} to --json, which `ferry-bench gather --torch-json PATH` reads.
"""

import argparse
import json
import os
import statistics
import time

import torch


def zipf_rank(u, rows, s):
    """Continuous Zipf ranks (0-based) on 1..rows by the inverse CDF, as ferry-bench draws them."""
    n = float(rows)
    if abs(s - 1.0) < 1e-9:
        x = torch.pow(torch.tensor(n, dtype=torch.float64), u)
    else:
        x = torch.pow((n ** (1.0 - s) - 1.0) * u + 1.0, 1.0 / (1.0 - s))
    return torch.clamp(x.to(torch.int64).clamp(min=1) - 1, max=rows - 1)


def make_indices(dist, n, rows, s, gen):
    if dist == "uniform":
        return torch.randint(0, rows, (n,), generator=gen, dtype=torch.int64)
    if dist == "powerlaw":
        u = torch.rand(n, generator=gen, dtype=torch.float64)
        rank = zipf_rank(u, rows, s)
        mult = 2654435761 % max(rows, 2)
        while torch.gcd(torch.tensor(mult), torch.tensor(rows)).item() != 1:
            mult += 1
        return (rank * mult) % rows
    raise SystemExit(f"unknown --dist {dist!r} (uniform or powerlaw)")


def timed(fn, reps):
    fn()  # Warm-up, twice: allocator and thread pool.
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table-gib", type=float, default=4.0)
    ap.add_argument("--batch", type=int, default=1 << 20)
    ap.add_argument("--dist", default="uniform")
    ap.add_argument("--zipf-exponent", type=float, default=1.0)
    ap.add_argument("--naive-reps", type=int, default=3)
    ap.add_argument("--row-bytes", default="64,128,256,512,1024,4096")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gather_torch.py needs a GPU, and there is no GPU")
    torch.set_num_threads(os.cpu_count() or 1)
    table_bytes = int(args.table_gib * (1 << 30)) // 4096 * 4096
    flat = torch.empty(table_bytes, dtype=torch.uint8, pin_memory=True)
    # Random bytes for the first GiB, copied over the rest (drawing 32 GiB of random bytes
    # takes minutes; the checks compare with table[idx], so repeated content is fine).
    chunk = 1 << 30
    first = min(chunk, table_bytes)
    flat[:first].copy_(torch.randint(0, 256, (first,), dtype=torch.uint8))
    for off in range(first, table_bytes, chunk):
        end = min(off + chunk, table_bytes)
        flat[off:end].copy_(flat[: end - off])
    print(f"table of {table_bytes} bytes pinned and filled", flush=True)
    dev = torch.device("cuda")
    records = []
    threads = torch.get_num_threads()
    print(f"{'dist':>8} {'row_bytes':>9} {'tuned':>10} {'naive':>10}  "
          f"(GB/s, torch {torch.__version__}, {threads} threads, {args.table_gib} GiB table)")
    for dist in args.dist.split(","):
        for rb in (int(s) for s in args.row_bytes.split(",")):
            rows = table_bytes // rb
            table = flat[: rows * rb].view(rows, rb)
            gen = torch.Generator().manual_seed(args.seed ^ rb)
            idx = make_indices(dist, args.batch, rows, args.zipf_exponent, gen)
            n = idx.numel()
            staging = torch.empty((n, rb), dtype=torch.uint8, pin_memory=True)
            out = torch.empty((n, rb), dtype=torch.uint8, device=dev)

            def tuned():
                torch.index_select(table, 0, idx, out=staging)
                out.copy_(staging, non_blocking=True)

            def naive():
                return table[idx].cuda()

            t_tuned = timed(tuned, args.reps)
            expect = table[idx]
            assert torch.equal(out.cpu(), expect), f"tuned gather is wrong at row_bytes {rb}"
            t_naive = timed(naive, args.naive_reps)
            assert torch.equal(naive().cpu(), expect), f"naive gather is wrong at row_bytes {rb}"
            bytes_moved = n * rb
            rec = {
                "bench": "gather-torch",
                "dist": dist,
                "row_bytes": rb,
                "table_gib": args.table_gib,
                "batch": n,
                "torch_tuned_gbs": bytes_moved / t_tuned / 1e9,
                "torch_naive_gbs": bytes_moved / t_naive / 1e9,
                "torch": torch.__version__,
                "threads": threads,
                "gpu": torch.cuda.get_device_name(0),
            }
            records.append(rec)
            print(f"{dist:>8} {rb:>9} {rec['torch_tuned_gbs']:>10.2f} {rec['torch_naive_gbs']:>10.2f}",
                  flush=True)
            del staging, out, expect
            if args.json:  # After every case, so a run stopped by a time limit keeps them.
                with open(args.json, "w") as f:
                    for r in records:
                        f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
