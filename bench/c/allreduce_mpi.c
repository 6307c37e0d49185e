/* Open MPI's MPI_Allreduce as a baseline for ferry's all-reduce: a size sweep in the manner of
 * nccl-tests' all_reduce_perf, checked before it reports.
 *
 * Usage: allreduce_mpi [--min-bytes B] [--max-bytes B] [--target-seconds S]
 *                      [--max-seconds S] [--max-iters N] [--label TEXT]
 * Defaults: 4 B to 256 MiB in powers of two, about 1 s of timed operations per size, at most
 * 1000 iterations, and the sweep stops before a size whose predicted time would pass 600 s of
 * total run time. Byte counts take K, M, G suffixes (powers of 1024).
 *
 * Each size:
 *  1. fills the send buffer with int32 values (rank r, element i: (r + 1) * (i % 1021 + 1)) and
 *     the receive buffer with a sentinel;
 *  2. runs one warm-up MPI_Allreduce (sum) and checks every element against
 *     (i % 1021 + 1) * p (p + 1) / 2; where that took under 2.5% of the target, times up to
 *     10 more warm-ups for a steadier estimate;
 *  3. picks the iteration count from the warm-up of the slowest rank (the same on every rank);
 *  4. refills the sentinel, times `iters` operations between barriers, and checks the last
 *     result again;
 *  5. prints one JSON line (rank 0): bytes, iters, time_us (per operation, the slowest rank),
 *     algbw_gbps = bytes * 8 / time, busbw_gbps = algbw * 2 (p - 1) / p, errors.
 * Any wrong element makes the program exit 1 after the line is printed.
 */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long long parse_bytes(const char *s) {
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (end == s || v < 0) return -1;
    switch (*end) {
    case 'k': case 'K': v <<= 10; end++; break;
    case 'm': case 'M': v <<= 20; end++; break;
    case 'g': case 'G': v <<= 30; end++; break;
    default: break;
    }
    if (*end == 'i' && end[1] == 'B') end += 2;
    else if (*end == 'B') end++;
    return *end ? -1 : v;
}

static void fill(int32_t *send, int32_t *recv, size_t count, int rank) {
    for (size_t i = 0; i < count; i++) {
        send[i] = (int32_t)((rank + 1) * (int)(i % 1021 + 1));
        recv[i] = INT32_MIN;
    }
}

static long long check(const int32_t *recv, size_t count, int p) {
    long long bad = 0;
    int64_t tri = (int64_t)p * (p + 1) / 2;
    for (size_t i = 0; i < count; i++)
        if ((int64_t)recv[i] != (int64_t)(i % 1021 + 1) * tri) bad++;
    return bad;
}

static void usage(int rank) {
    if (rank == 0)
        fprintf(stderr, "usage: allreduce_mpi [--min-bytes B] [--max-bytes B] [--target-seconds S] "
                        "[--max-seconds S] [--max-iters N] [--label TEXT]\n");
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, p;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &p);

    long long min_bytes = 4, max_bytes = 256LL << 20;
    double target = 1.0, budget = 600.0;
    long max_iters = 1000;
    const char *label = "";
    for (int a = 1; a < argc; a++) {
        const char *v = a + 1 < argc ? argv[a + 1] : NULL;
        int ok = v != NULL;
        if (ok && !strcmp(argv[a], "--min-bytes")) ok = (min_bytes = parse_bytes(v)) >= 4;
        else if (ok && !strcmp(argv[a], "--max-bytes")) ok = (max_bytes = parse_bytes(v)) >= 4;
        else if (ok && !strcmp(argv[a], "--target-seconds")) ok = (target = atof(v)) > 0;
        else if (ok && !strcmp(argv[a], "--max-seconds")) ok = (budget = atof(v)) > 0;
        else if (ok && !strcmp(argv[a], "--max-iters")) ok = (max_iters = atol(v)) >= 1;
        else if (ok && !strcmp(argv[a], "--label")) label = v;
        else ok = 0;
        if (!ok) {
            if (rank == 0) fprintf(stderr, "allreduce_mpi: bad argument '%s'\n", argv[a]);
            usage(rank);
            MPI_Finalize();
            return 2;
        }
        a++;
    }
    if (min_bytes > max_bytes || min_bytes % 4 || max_bytes % 4) {
        if (rank == 0) fprintf(stderr, "allreduce_mpi: sizes must be multiples of 4 with min <= max\n");
        MPI_Finalize();
        return 2;
    }

    size_t max_count = (size_t)(max_bytes / 4);
    int32_t *send = malloc(max_count * sizeof *send);
    int32_t *recv = malloc(max_count * sizeof *recv);
    if (!send || !recv) {
        fprintf(stderr, "allreduce_mpi: rank %d cannot allocate 2 x %lld bytes\n", rank, max_bytes);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    double factor = p > 1 ? 2.0 * (p - 1) / p : 1.0;
    double start = MPI_Wtime();
    long long total_errors = 0;
    double last_op = 0; /* seconds per operation at the previous size */

    for (long long bytes = min_bytes; bytes <= max_bytes; bytes *= 2) {
        size_t count = (size_t)(bytes / 4);
        /* Stop before a size whose warm-up and one timed operation (predicted at twice the
         * last size's time) would pass the budget. Rank 0 decides for everyone. */
        int go = 1;
        if (rank == 0) go = (MPI_Wtime() - start) + 2 * (2 * last_op) <= budget;
        MPI_Bcast(&go, 1, MPI_INT, 0, MPI_COMM_WORLD);
        if (!go) {
            if (rank == 0)
                fprintf(stderr, "allreduce_mpi: stopping before %lld bytes: the %g s budget would pass\n",
                        bytes, budget);
            break;
        }

        fill(send, recv, count, rank);
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = MPI_Wtime();
        MPI_Allreduce(send, recv, (int)count, MPI_INT32_T, MPI_SUM, MPI_COMM_WORLD);
        double warm = MPI_Wtime() - t0, warm_max;
        long long errors = check(recv, count, p);
        MPI_Allreduce(&warm, &warm_max, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        /* One operation is a noisy estimate where it is short (connection set-up, a descheduled
         * rank): time a few more, up to about 5% of the target. */
        long extra = warm_max > 0 ? (long)(0.05 * target / warm_max) : 10;
        if (extra > 10) extra = 10;
        if (extra >= 2) {
            MPI_Barrier(MPI_COMM_WORLD);
            t0 = MPI_Wtime();
            for (long it = 0; it < extra; it++)
                MPI_Allreduce(send, recv, (int)count, MPI_INT32_T, MPI_SUM, MPI_COMM_WORLD);
            warm = (MPI_Wtime() - t0) / extra;
            MPI_Allreduce(&warm, &warm_max, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        }

        long iters = warm_max > 0 ? (long)(target / warm_max) : max_iters;
        if (iters < 1) iters = 1;
        if (iters > max_iters) iters = max_iters;
        double left = budget - (MPI_Wtime() - start);
        if (warm_max > 0 && iters * warm_max > left) iters = left / warm_max > 1 ? (long)(left / warm_max) : 1;
        MPI_Bcast(&iters, 1, MPI_LONG, 0, MPI_COMM_WORLD);

        for (size_t i = 0; i < count; i++) recv[i] = INT32_MIN;
        MPI_Barrier(MPI_COMM_WORLD);
        t0 = MPI_Wtime();
        for (long it = 0; it < iters; it++)
            MPI_Allreduce(send, recv, (int)count, MPI_INT32_T, MPI_SUM, MPI_COMM_WORLD);
        double elapsed = MPI_Wtime() - t0, elapsed_max;
        errors += check(recv, count, p);
        MPI_Allreduce(&elapsed, &elapsed_max, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        long long all_errors = 0;
        MPI_Allreduce(&errors, &all_errors, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
        total_errors += all_errors;

        double t = elapsed_max / iters;
        last_op = t;
        if (rank == 0) {
            double algbw = bytes * 8.0 / t / 1e9;
            printf("{\"bench\": \"allreduce\", \"impl\": \"openmpi\", \"label\": \"%s\", \"ranks\": %d, "
                   "\"bytes\": %lld, \"dtype\": \"int32\", \"op\": \"sum\", \"iters\": %ld, "
                   "\"time_us\": %.3f, \"algbw_gbps\": %.6f, \"busbw_gbps\": %.6f, \"errors\": %lld}\n",
                   label, p, bytes, iters, t * 1e6, algbw, algbw * factor, all_errors);
            fflush(stdout);
        }
        if (bytes > max_bytes / 2) break; /* no overflow past the top size */
    }
    free(send);
    free(recv);
    MPI_Finalize();
    if (total_errors) {
        if (rank == 0) fprintf(stderr, "allreduce_mpi: %lld wrong elements\n", total_errors);
        return 1;
    }
    return 0;
}
