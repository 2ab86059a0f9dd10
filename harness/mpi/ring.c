// harness/mpi/ring.c — an MPI job for wb's verbs tests (built with mpicc by the test that
// uses it: Open MPI is not a build dependency of wb).
//
// ring ITERATIONS [FILE]: every rank sends a 512 KiB block to the next rank and receives one from
// the previous, ITERATIONS times; each block's contents follow from (sender, iteration), and
// the receiver checks every one. Rank 0 prints "READY ranks=N pid=P" after the first round
// and, at the end, "OK ranks=N iterations=I" when every rank saw every block intact (else
// "FAIL bad=B"), also into FILE (mpirun passes the ranks' output on through terminals,
// which a restore elsewhere does not have), and the job exits 0 (or 1).
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define WORDS 65536

static uint64_t word(int from, int it, int i) {
    uint64_t x = ((uint64_t)from << 40) ^ ((uint64_t)it << 20) ^ (uint64_t)i;
    x *= 0x9e3779b97f4a7c15ull;
    return x ^ (x >> 29);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int iterations = argc > 1 ? atoi(argv[1]) : 100;
    static uint64_t out[WORDS], in[WORDS];
    long bad = 0;
    int next = (rank + 1) % size, prev = (rank + size - 1) % size;
    for (int it = 0; it < iterations; it++) {
        for (int i = 0; i < WORDS; i++) out[i] = word(rank, it, i);
        MPI_Sendrecv(out, WORDS, MPI_UINT64_T, next, it, in, WORDS, MPI_UINT64_T, prev, it, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        for (int i = 0; i < WORDS; i++) bad += in[i] != word(prev, it, i);
        if (it == 0 && rank == 0) { printf("READY ranks=%d pid=%d\n", size, getpid()); fflush(stdout); }
    }
    long all = 0;
    MPI_Allreduce(&bad, &all, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0) {
        char line[128];
        if (all == 0) snprintf(line, sizeof line, "OK ranks=%d iterations=%d\n", size, iterations);
        else snprintf(line, sizeof line, "FAIL bad=%ld\n", all);
        fputs(line, stdout);
        fflush(stdout);
        FILE *f = argc > 2 ? fopen(argv[2], "w") : NULL;
        if (f) { fputs(line, f); fclose(f); }
    }
    MPI_Finalize();
    return all == 0 ? 0 : 1;
}
