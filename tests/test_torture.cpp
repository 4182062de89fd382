// The torture suite: a model-based randomized test of "nothing lost, nothing
// confused, ever". Two parts:
//
// - fds, timers and continuations in virtual time, checked step by step
//   against the reference model in tests/model.hpp (shared with the fuzz
//   target tests/fuzz/fuzz_loop.cpp; see there what it checks);
// - signals, child processes and a mailbox with the real clock, checked
//   against the small model in this file.
//
// Every run is reproducible from its seed; a failure prints the seed and
// the step. The default run is short enough for every CI configuration
// (about a second natively, and a time budget keeps it bounded under qemu);
// the long run:
//
//   MICROLOOP_TORTURE_STEPS=2000000 make BUILD=build-torture TEST_ARGS="[torture]" test
//   MICROLOOP_TORTURE_SEED=12345 ...             # one seed instead of the fixed set
//   MICROLOOP_TORTURE_BUDGET_MS=0 ...            # no time budget (0), or another one
//
// (the variables are read from the environment; `make ... test` passes them
// through). Setting MICROLOOP_TORTURE_STEPS or MICROLOOP_TORTURE_SEED turns
// the time budget off unless MICROLOOP_TORTURE_BUDGET_MS is set too, so a
// reported failure replays exactly: rerun with the seed it names and at
// least as many steps.
#include <microloop.hpp>

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <chrono>

#include "catch.hpp"
#include "model.hpp"

namespace {

// ---- run length -------------------------------------------------------------
struct run_plan {
    uint64_t steps;     // per test case, over all its seeds
    bool one_seed;      // MICROLOOP_TORTURE_SEED given
    uint64_t seed;
    int64_t budget_ns;  // stop a test case after this long (0: never) ...
    uint64_t min_steps; // ... but not before this many steps
};

uint64_t env_u64(const char* name, uint64_t fallback, bool* given = nullptr) {
    const char* v = getenv(name);
    if (given) *given = v && *v;
    if (!v || !*v) return fallback;
    return strtoull(v, nullptr, 0);
}

int64_t mono_ns() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

run_plan plan(uint64_t default_steps, uint64_t default_budget_ms) {
    run_plan p;
    bool steps_given = false, budget_given = false;
    p.steps = env_u64("MICROLOOP_TORTURE_STEPS", default_steps, &steps_given);
    p.seed = env_u64("MICROLOOP_TORTURE_SEED", 0, &p.one_seed);
    uint64_t ms = env_u64("MICROLOOP_TORTURE_BUDGET_MS", default_budget_ms, &budget_given);
    if ((steps_given || p.one_seed) && !budget_given) ms = 0;
    p.budget_ns = static_cast<int64_t>(ms) * 1000000;
    p.min_steps = p.steps / 10;
    return p;
}

} // namespace

// ---- fds, timers, continuations: tests/model.hpp --------------------------------

TEST_CASE("torture: fds, timers and continuations against the model, in virtual time", "[torture]") {
    static const uint64_t seeds[] = {1, 2, 0x5eed, 20240611};
    const int nseeds = sizeof seeds / sizeof seeds[0];
    run_plan p = plan(200000, 2000);
    const int runs = p.one_seed ? 1 : nseeds;
    const uint64_t per_run = p.steps / static_cast<uint64_t>(runs);
    const int64_t start = mono_ns();
    model::counters total;
    memset(&total, 0, sizeof total);
    uint64_t done = 0;
    bool out_of_time = false;
    for (int r = 0; r < runs && !out_of_time; ++r) {
        const uint64_t seed = p.one_seed ? p.seed : seeds[r];
        model::chooser c = model::chooser::seeded(seed);
        model::world w(c);
        REQUIRE(w.ready());
        uint64_t step = 0;
        for (; step < per_run && !w.failed(); ++step) {
            w.step();
            if ((step & 1023) == 0 && p.budget_ns > 0 && done + step >= p.min_steps &&
                mono_ns() - start > p.budget_ns) {
                out_of_time = true;
                break;
            }
        }
        if (!w.failed()) w.finish();
        if (w.failed()) {
            INFO("seed " << seed << ", step " << step << " (replay: MICROLOOP_TORTURE_SEED=" << seed
                         << " MICROLOOP_TORTURE_STEPS=" << step + 1 << ")");
            FAIL(w.message());
        }
        const model::counters& n = w.count();
        total.steps += n.steps;
        total.polls += n.polls;
        total.io_calls += n.io_calls;
        total.timer_calls += n.timer_calls;
        total.overruns += n.overruns;
        total.stale_refused += n.stale_refused;
        total.table_full += n.table_full;
        total.bad_input += n.bad_input;
        total.bytes_read += n.bytes_read;
        total.cont_taken += n.cont_taken;
        done += step;
    }
    printf("torture (virtual time): %llu steps in %.2f s%s: %llu polls, %llu fd calls, %llu timer calls, "
           "%llu overruns, %llu stale handles refused, %llu table_full, %llu bad inputs, %llu bytes read, "
           "%llu continuations taken\n",
           static_cast<unsigned long long>(total.steps), static_cast<double>(mono_ns() - start) / 1e9,
           out_of_time ? " (time budget reached)" : "", static_cast<unsigned long long>(total.polls),
           static_cast<unsigned long long>(total.io_calls), static_cast<unsigned long long>(total.timer_calls),
           static_cast<unsigned long long>(total.overruns), static_cast<unsigned long long>(total.stale_refused),
           static_cast<unsigned long long>(total.table_full), static_cast<unsigned long long>(total.bad_input),
           static_cast<unsigned long long>(total.bytes_read), static_cast<unsigned long long>(total.cont_taken));
    // The run reached every path it is meant to.
    CHECK(total.steps >= p.min_steps);
    CHECK(total.io_calls > 0);
    CHECK(total.timer_calls > 0);
    CHECK(total.overruns > 0);
    CHECK(total.stale_refused > 0);
    CHECK(total.table_full > 0);
    CHECK(total.bad_input > 0);
    CHECK(total.cont_taken > 0);
}
