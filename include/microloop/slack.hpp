// SPDX-License-Identifier: MIT
// microloop/slack.hpp - the timer slack a loop was asked for, applied in the
// thread that runs it (internal: the public call is basic_loop::set_timer_slack).
#ifndef MICROLOOP_SLACK_HPP
#define MICROLOOP_SLACK_HPP

#include <errno.h>
#include <stdint.h>
#include <sys/prctl.h>

#include "config.hpp"
#include "error.hpp"

namespace microloop {
namespace detail {

// Linux lets a sleep in select() end up to the thread's "timer slack" late
// (50 us by default), so that wake-ups can be merged. The slack belongs to
// the thread (prctl PR_SET_TIMERSLACK), not to the process, so the loop
// remembers what it was asked for and applies it in the thread that runs it:
// at once when asked from a callback, otherwise when run(), run_once() or
// poll() next starts. Nothing is changed unless asked.
//
// Which thread is which is not told by pthread_self(): a joined thread's
// pthread_t is reused by the next one, so a loop moved to a new thread could
// not tell. Each start asks the thread itself instead (PR_GET_TIMERSLACK,
// one system call, made only once a slack was asked for).
class timer_slack {
public:
    // 0 (the thread's default) up to a second: PR_GET_TIMERSLACK returns an
    // int, and more than a second defeats the timers it is meant to serve.
    static bool valid(int64_t ns) { return ns >= 0 && ns <= 1000000000; }

    timer_slack() : apply_(nullptr), want_ns_(-1), seen_ns_(-1) {}

    // Records `ns` (valid(); 0 is the thread's default slack) and, from the
    // loop's thread, applies it now. From elsewhere it checks only that prctl
    // answers, so that a system without it fails here rather than in run().
    error_code request(int64_t ns, bool in_loop_thread) {
        want_ns_ = static_cast<int32_t>(ns);
        apply_ = &timer_slack::apply_requested;
        if (in_loop_thread) return apply_here();
        if (prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0) == -1) {
            drop();
            return error_code(errc::system, errno);
        }
        seen_ns_ = -1; // applied at the next start, whatever the thread has
        return error_code();
    }

    // At the start of run(), run_once() and poll(): nothing if no slack was
    // asked for, or if this thread has it already. A failure drops the
    // request (the next run goes on with the thread's slack as it is).
    // The work is reached through a pointer that only request() sets, so a
    // program that never asks for a slack links neither it nor prctl().
    error_code apply() {
        if (want_ns_ < 0) return error_code();
        return apply_requested_cold();
    }

private:
    // Out of line and cold: the check above is all that run(), run_once()
    // and poll() carry inline.
    MICROLOOP_DETAIL_COLD error_code apply_requested_cold() {
        return apply_(this);
    }
    static error_code apply_requested(timer_slack* self) {
        int now = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
        if (self->seen_ns_ >= 0 && now == self->seen_ns_) return error_code();
        return self->apply_here();
    }
    error_code apply_here() {
        if (prctl(PR_SET_TIMERSLACK, static_cast<unsigned long>(want_ns_), 0, 0, 0) != 0) {
            int e = errno;
            drop();
            return error_code(errc::system, e);
        }
        // What the thread reports from now on: the value asked for, or for
        // 0 the thread's default.
        seen_ns_ = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
        return error_code();
    }

    void drop() { want_ns_ = -1; } // leave the thread's slack alone

    error_code (*apply_)(timer_slack*); // apply_requested, set by the first request()
    // Both fit an int: valid() stops at a second, and PR_GET_TIMERSLACK
    // returns an int.
    int32_t want_ns_; // asked for, or -1: leave the thread's slack alone
    int32_t seen_ns_; // what PR_GET_TIMERSLACK said after applying it, or -1
};

} // namespace detail
} // namespace microloop

#endif // MICROLOOP_SLACK_HPP
