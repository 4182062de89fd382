// SPDX-License-Identifier: MIT
// microloop/clock.hpp - what a loop's timers run on: the monotonic clock, or
// a manual one for tests in virtual time (basic_loop's Clock parameter).
#ifndef MICROLOOP_CLOCK_HPP
#define MICROLOOP_CLOCK_HPP

#include <stdint.h>

#include <chrono>

#include "loop_base.hpp" // detail::monotonic_ns

namespace microloop {

// The clock timers run on: CLOCK_MONOTONIC, which never jumps with the
// wall-clock time. A loop's second template parameter may replace it with
// any class that has `int64_t now_ns() const` (nanoseconds, never
// decreasing), such as manual_clock.
struct monotonic_clock {
    int64_t now_ns() const { return detail::monotonic_ns(); }
};

// A clock that moves only when told: timer tests (ours and users') run in
// virtual time, deterministically, with no sleeping. Drive such a loop with
// poll() (or run_once(zero)) after each advance(): a wait for a timer would
// otherwise sleep in real time for the virtual interval.
//
//     microloop::basic_loop<microloop::capacity<4, 4>, microloop::manual_clock> loop;
//     loop.after(seconds(10), cb);
//     loop.clock().advance(seconds(10));
//     loop.poll();                                // cb runs
class manual_clock {
public:
    manual_clock() : now_(0) {}
    int64_t now_ns() const { return now_; }
    void set(int64_t ns) { now_ = ns > now_ ? ns : now_; } // never backwards
    template <class Rep, class Period>
    void advance(std::chrono::duration<Rep, Period> d) {
        set(now_ + static_cast<int64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count()));
    }

private:
    int64_t now_;
};

} // namespace microloop

#endif // MICROLOOP_CLOCK_HPP
