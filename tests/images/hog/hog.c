/*
 * hog: a memory hog that grows at a set rate, for memwatch's tests and benchmarks.
 *
 *   hog --rate MIB_PER_S [--step KIB] [--max MIB] [--start MIB] [--hold]
 *   hog --sleep            (a sleeper: allocate --start MiB, then sleep forever)
 *
 * It mallocs --step KiB at a time and writes every page so the memory is really
 * resident (counted in the cgroup's working set), pacing itself against the
 * monotonic clock so the rate holds regardless of how long a page fault takes.
 * With --hold it stops growing at --max and sleeps; without it, it exits 0 at --max.
 * Each second it prints one line: "hog: rss_mib=N t=S" on stdout (unbuffered).
 * Built static (gcc -static -O2) so it runs in a one-layer image.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void touch(char *p, size_t n) {
    long page = sysconf(_SC_PAGESIZE);
    for (size_t i = 0; i < n; i += (size_t)page) p[i] = (char)(i | 1);
}

int main(int argc, char **argv) {
    double rate = 100.0;   /* MiB/s */
    long step_kib = 1024;  /* allocation step */
    long max_mib = 1L << 20;
    long start_mib = 0;
    int hold = 0, sleeper = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--rate") && i + 1 < argc) rate = atof(argv[++i]);
        else if (!strcmp(argv[i], "--step") && i + 1 < argc) step_kib = atol(argv[++i]);
        else if (!strcmp(argv[i], "--max") && i + 1 < argc) max_mib = atol(argv[++i]);
        else if (!strcmp(argv[i], "--start") && i + 1 < argc) start_mib = atol(argv[++i]);
        else if (!strcmp(argv[i], "--hold")) hold = 1;
        else if (!strcmp(argv[i], "--sleep")) sleeper = 1;
        else {
            fprintf(stderr, "usage: hog --rate MIB_PER_S [--step KIB] [--max MIB] [--start MIB] [--hold] | --sleep [--start MIB]\n");
            return 2;
        }
    }
    if (rate <= 0 || step_kib <= 0 || max_mib <= 0 || start_mib < 0) {
        fprintf(stderr, "hog: rate, step and max must be positive\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IONBF, 0);
    size_t step = (size_t)step_kib * 1024;
    size_t total = 0;
    if (start_mib > 0) {
        size_t n = (size_t)start_mib << 20;
        char *p = malloc(n);
        if (!p) { perror("malloc"); return 1; }
        touch(p, n);
        total = n;
    }
    printf("hog: start rss_mib=%zu rate=%.1f step_kib=%ld max_mib=%ld\n", total >> 20, rate, step_kib, max_mib);
    if (sleeper) for (;;) pause();
    double t0 = now(), last_print = t0;
    size_t grown = 0;
    while (total < ((size_t)max_mib << 20)) {
        char *p = malloc(step);
        if (!p) { perror("malloc"); return 1; }
        touch(p, step);
        total += step;
        grown += step;
        /* pace: `grown` bytes should have taken grown/rate seconds */
        double due = t0 + (grown / 1048576.0) / rate;
        double t = now();
        if (due > t) usleep((useconds_t)((due - t) * 1e6));
        if (t - last_print >= 1.0) {
            printf("hog: rss_mib=%zu t=%.2f\n", total >> 20, t - t0);
            last_print = t;
        }
    }
    printf("hog: reached max_mib=%ld\n", max_mib);
    if (hold) for (;;) pause();
    return 0;
}
