/*
 * What the C tests share: failing with a message, checking a ViskaError, expecting one, and
 * waiting for a condition with a generous timeout (polling; nothing asserts on timing).
 *
 * Include it first (after any feature-test macro such as _GNU_SOURCE): it includes the system
 * headers it needs, and viska.h.
 */
#ifndef VISKA_TEST_HARNESS_H
#define VISKA_TEST_HARNESS_H

#if !defined(_GNU_SOURCE) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L /* clock_gettime, nanosleep */
#endif

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "viska.h"

/* How long any condition may take to hold: generous for a loaded machine, and only reached
 * when the test fails. */
#ifndef WAIT_MS
#define WAIT_MS 60000
#endif

/* Prints "FAIL: " and the formatted message, and exits with status 1. */
static inline void fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "FAIL: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

/* Fails on an error, with its code and message. */
static inline void check(ViskaError *err, const char *what) {
    if (err != NULL) {
        fprintf(stderr, "FAIL: %s: error %u: %s\n", what, (unsigned)viska_error_code(err),
                viska_error_message(err));
        viska_error_free(err);
        exit(1);
    }
}

/* Expects an error with code `a` or `b`, and a message; prints it and frees it. */
static inline void expect_error(ViskaError *err, ViskaErrorCode a, ViskaErrorCode b,
                                const char *what) {
    if (err == NULL) {
        fail("%s: succeeded, expected an error", what);
    }
    ViskaErrorCode code = viska_error_code(err);
    const char *message = viska_error_message(err);
    if (code != a && code != b) {
        fail("%s: error %u (%s), expected %u or %u", what, (unsigned)code, message, (unsigned)a,
             (unsigned)b);
    }
    if (message == NULL || message[0] == '\0') {
        fail("%s: error without a message", what);
    }
    printf("  ok: %s refused: [%u] %s\n", what, (unsigned)code, message);
    viska_error_free(err);
}

/* Expects an error with `code`. */
static inline void expect(ViskaError *err, ViskaErrorCode code, const char *what) {
    expect_error(err, code, code, what);
}

static inline long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Polls `cond` every 10 ms until it holds; fails after WAIT_MS. */
#define WAIT_FOR(cond, what)                                                                   \
    do {                                                                                       \
        long long t0_ = now_ms();                                                              \
        while (!(cond)) {                                                                      \
            if (now_ms() - t0_ > WAIT_MS) {                                                    \
                fail("timed out waiting for %s", what);                                        \
            }                                                                                  \
            sleep_ms(10);                                                                      \
        }                                                                                      \
        printf("  ok: %s\n", what);                                                            \
    } while (0)

#endif /* VISKA_TEST_HARNESS_H */
