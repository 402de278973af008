/* An MPI job across nodes: every rank reports its host, and rank 0 checks that a value
 * reduced over all ranks is what it must be (so a wrong or partial run cannot pass).
 * Build on the head as a cluster user:  mpicc -O2 -o mpi_hello mpi_hello.c
 * Run from a job:  mpirun --hostfile "$(ck-machinefile)" ./mpi_hello
 */
#include <mpi.h>
#include <stdio.h>

int main(int argc, char **argv) {
    int rank, size, len;
    char host[MPI_MAX_PROCESSOR_NAME];
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Get_processor_name(host, &len);
    long mine = rank + 1, total = 0;
    MPI_Reduce(&mine, &total, 1, MPI_LONG, MPI_SUM, 0, MPI_COMM_WORLD);
    printf("rank %d of %d on %s\n", rank, size, host);
    fflush(stdout);
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) {
        long want = (long)size * (size + 1) / 2;
        printf("sum %ld expected %ld %s\n", total, want, total == want ? "OK" : "WRONG");
    }
    MPI_Finalize();
    return 0;
}
