/*
 * util/clock.h - monotonic time in seconds, for durations and deadlines
 * (not wall-clock time).
 */
#ifndef CINFER_UTIL_CLOCK_H
#define CINFER_UTIL_CLOCK_H

#include <time.h>

static inline double util_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

#endif
