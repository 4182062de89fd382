// A second translation unit including microloop: its process-wide signal
// table must be the very one test_signal.cpp sees (one definition, however
// many TUs include the header).
#include <microloop.hpp>

#include <signal.h>

namespace tu2 {

// The address of the process-wide table as this TU sees it.
const void* signal_table_address() { return &microloop::detail::globals::state[0]; }

// Tries to watch `signo` from a loop of this TU; returns why it failed, or
// errc::ok after watching and unwatching it.
microloop::errc try_watch(int signo) {
    microloop::loop<1, 1, 1, 1> loop;
    microloop::signal_handle h = loop.on_signal(signo, [](microloop::signal_event) {});
    if (!h) return h.error().code();
    return loop.unwatch(h).code();
}

} // namespace tu2
