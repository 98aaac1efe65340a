// cpu-steal: takes a fixed share of every CPU at a fine grain, as a stand-in
// for a host that gives this VM less of its cores (the "slow phases" in
// docs/PERFORMANCE.md). On each of the first N CPUs a SCHED_FIFO thread spins
// for BUSY µs of every PERIOD µs, so everything else gets the rest, whatever
// its priority under CFS. Needs root (SCHED_FIFO).
//
//   cc -O2 -pthread -o /tmp/cpu-steal scripts/cpu-steal.c
//   /tmp/cpu-steal 300 1000 &   # 30 % of each core; kill it when done
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static long busy_us, period_us;

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void *steal(void *arg) {
    long cpu = (long)arg;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (pthread_setaffinity_np(pthread_self(), sizeof set, &set) != 0) {
        fprintf(stderr, "cpu-steal: cannot pin to CPU %ld\n", cpu);
        exit(1);
    }
    struct sched_param p = {.sched_priority = 1};
    if (pthread_setschedparam(pthread_self(), SCHED_FIFO, &p) != 0) {
        fprintf(stderr, "cpu-steal: SCHED_FIFO needs root\n");
        exit(1);
    }
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    for (;;) {
        long long end = now_ns() + busy_us * 1000;
        while (now_ns() < end) {
        }
        next.tv_nsec += period_us * 1000;
        while (next.tv_nsec >= 1000000000L) {
            next.tv_nsec -= 1000000000L;
            next.tv_sec++;
        }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: cpu-steal BUSY_US PERIOD_US [CPUS]\n");
        return 2;
    }
    busy_us = atol(argv[1]);
    period_us = atol(argv[2]);
    long cpus = argc > 3 ? atol(argv[3]) : sysconf(_SC_NPROCESSORS_ONLN);
    if (busy_us <= 0 || period_us <= busy_us || cpus <= 0) {
        fprintf(stderr, "cpu-steal: need 0 < BUSY_US < PERIOD_US and CPUS > 0\n");
        return 2;
    }
    pthread_t t;
    for (long c = 0; c < cpus; c++) {
        if (pthread_create(&t, NULL, steal, (void *)c) != 0) {
            fprintf(stderr, "cpu-steal: cannot start a thread\n");
            return 1;
        }
    }
    pause();
    return 0;
}
