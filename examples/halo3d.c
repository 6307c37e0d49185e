/* halo3d.c: a 26-neighbour 3D halo exchange with MPI_Type_create_subarray, checked.
 *
 * Each rank owns an N^3 block of a periodic global grid, stored with R ghost layers on every
 * side ((N+2R)^3 doubles per quantity, Q quantities interleaved per cell). For each of the 26
 * directions it sends the interior slab next to that face/edge/corner and receives the ghost
 * slab on the opposite side, with subarray types, Irecv/Isend and Waitall. Every ghost cell is
 * then checked against the value its owner computed. Run it with and without the interposer:
 *
 *   mpicc -O2 -o halo3d examples/halo3d.c
 *   mpirun -np 8 ./halo3d 32 3 8 20
 *   mpirun -np 8 -x LD_PRELOAD=$PWD/target/release/libferry_mpi.so ./halo3d 32 3 8 20
 *
 * Arguments: N (interior cells per side, default 16), R (radius, 2), Q (quantities, 1),
 * iterations (5). Prints the mean time per exchange and per phase (posting the receives,
 * starting the sends, waiting), of the slowest rank, and a JSON line; exits non-zero if any
 * ghost cell is wrong.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

static double cell_value(int gx, int gy, int gz, int q) { return ((gx * 1000.0 + gy) * 1000.0 + gz) * 10.0 + q; }

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int N = argc > 1 ? atoi(argv[1]) : 16, R = argc > 2 ? atoi(argv[2]) : 2;
    int Q = argc > 3 ? atoi(argv[3]) : 1, iters = argc > 4 ? atoi(argv[4]) : 5;
    if (N < 1 || R < 1 || R > N || Q < 1 || iters < 1) {
        if (rank == 0) fprintf(stderr, "halo3d: need N >= R >= 1, Q >= 1, iterations >= 1\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    int dims[3] = {0, 0, 0}, periods[3] = {1, 1, 1}, coords[3];
    MPI_Dims_create(size, 3, dims);
    MPI_Comm cart;
    MPI_Cart_create(MPI_COMM_WORLD, 3, dims, periods, 0, &cart);
    MPI_Cart_coords(cart, rank, 3, coords);

    int L = N + 2 * R; /* allocated cells per side */
    size_t cells = (size_t)L * L * L;
    double *grid = malloc(sizeof(double) * cells * Q);
    MPI_Datatype cell;
    MPI_Type_contiguous(Q, MPI_DOUBLE, &cell);

    /* Interior gets owner values, ghosts a poison. Index (x,y,z) with z fastest (C order). */
    for (int x = 0; x < L; x++)
        for (int y = 0; y < L; y++)
            for (int z = 0; z < L; z++)
                for (int q = 0; q < Q; q++) {
                    int interior = x >= R && x < R + N && y >= R && y < R + N && z >= R && z < R + N;
                    grid[(((size_t)x * L + y) * L + z) * Q + q] = interior
                        ? cell_value(coords[0] * N + x - R, coords[1] * N + y - R, coords[2] * N + z - R, q)
                        : -1.0;
                }

    /* One send type and one receive type per direction. */
    MPI_Datatype send_t[26], recv_t[26];
    int peer_send[26], peer_recv[26], nd = 0;
    for (int dx = -1; dx <= 1; dx++)
        for (int dy = -1; dy <= 1; dy++)
            for (int dz = -1; dz <= 1; dz++) {
                if (!dx && !dy && !dz) continue;
                int d[3] = {dx, dy, dz}, sizes[3] = {L, L, L}, sub[3], s_start[3], r_start[3];
                for (int k = 0; k < 3; k++) {
                    sub[k] = d[k] == 0 ? N : R;
                    s_start[k] = d[k] < 0 ? R : d[k] > 0 ? N : R;      /* interior slab next to the face */
                    r_start[k] = d[k] < 0 ? 0 : d[k] > 0 ? N + R : R;  /* ghost slab on that side */
                }
                MPI_Type_create_subarray(3, sizes, sub, s_start, MPI_ORDER_C, cell, &send_t[nd]);
                MPI_Type_commit(&send_t[nd]);
                MPI_Type_create_subarray(3, sizes, sub, r_start, MPI_ORDER_C, cell, &recv_t[nd]);
                MPI_Type_commit(&recv_t[nd]);
                int to[3], from[3];
                for (int k = 0; k < 3; k++) {
                    to[k] = (coords[k] + d[k] + dims[k]) % dims[k];
                    from[k] = to[k]; /* the ghost slab on side d is filled by the neighbour at d */
                }
                MPI_Cart_rank(cart, to, &peer_send[nd]);
                MPI_Cart_rank(cart, from, &peer_recv[nd]);
                nd++;
            }

    MPI_Request req[52];
    double total = 0, phase[3] = {0, 0, 0};
    for (int it = 0; it < iters; it++) {
        MPI_Barrier(cart);
        double t0 = MPI_Wtime();
        for (int i = 0; i < nd; i++)
            MPI_Irecv(grid, 1, recv_t[i], peer_recv[i], 25 - i, cart, &req[i]);
        double t1 = MPI_Wtime();
        for (int i = 0; i < nd; i++)
            MPI_Isend(grid, 1, send_t[i], peer_send[i], i, cart, &req[nd + i]);
        double t2 = MPI_Wtime();
        MPI_Waitall(2 * nd, req, MPI_STATUSES_IGNORE);
        double t3 = MPI_Wtime();
        total += t3 - t0;
        phase[0] += t1 - t0; phase[1] += t2 - t1; phase[2] += t3 - t2;
    }

    /* Every ghost cell must hold the periodic neighbour's value. */
    long bad = 0;
    int G[3] = {dims[0] * N, dims[1] * N, dims[2] * N};
    for (int x = 0; x < L; x++)
        for (int y = 0; y < L; y++)
            for (int z = 0; z < L; z++) {
                int g[3] = {coords[0] * N + x - R, coords[1] * N + y - R, coords[2] * N + z - R};
                for (int k = 0; k < 3; k++) g[k] = (g[k] % G[k] + G[k]) % G[k];
                for (int q = 0; q < Q; q++)
                    if (grid[(((size_t)x * L + y) * L + z) * Q + q] != cell_value(g[0], g[1], g[2], q)) bad++;
            }
    long all_bad = 0;
    double mine[4] = {total / iters, phase[0] / iters, phase[1] / iters, phase[2] / iters}, worst[4];
    MPI_Reduce(&bad, &all_bad, 1, MPI_LONG, MPI_SUM, 0, cart);
    MPI_Reduce(mine, worst, 4, MPI_DOUBLE, MPI_MAX, 0, cart);
    if (rank == 0) {
        printf("halo3d: %d ranks (%dx%dx%d), N=%d R=%d Q=%d: %.3f ms per exchange (slowest rank; "
               "post %.3f, send %.3f, wait %.3f), %ld wrong cells\n",
               size, dims[0], dims[1], dims[2], N, R, Q, worst[0] * 1e3, worst[1] * 1e3, worst[2] * 1e3,
               worst[3] * 1e3, all_bad);
        printf("{\"bench\":\"halo3d\",\"ranks\":%d,\"n\":%d,\"radius\":%d,\"quantities\":%d,\"total_ms\":%.6f,"
               "\"post_ms\":%.6f,\"send_ms\":%.6f,\"wait_ms\":%.6f,\"wrong_cells\":%ld}\n",
               size, N, R, Q, worst[0] * 1e3, worst[1] * 1e3, worst[2] * 1e3, worst[3] * 1e3, all_bad);
    }
    for (int i = 0; i < nd; i++) { MPI_Type_free(&send_t[i]); MPI_Type_free(&recv_t[i]); }
    MPI_Type_free(&cell);
    MPI_Comm_free(&cart);
    free(grid);
    MPI_Finalize();
    return all_bad == 0 || rank != 0 ? 0 : 1;
}
