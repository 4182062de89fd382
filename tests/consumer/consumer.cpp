// A program that uses an installed or vendored microloop: two timers, one of
// which ends the other; exits 0 only if both fired as expected. Built twice:
// against everything (<microloop.hpp>) and, with MICROLOOP_CONSUMER_CORE,
// against the core alone (<microloop/core.hpp>, linked with nothing).
#if defined(MICROLOOP_CONSUMER_CORE)
#include <microloop/core.hpp>
#else
#include <microloop.hpp>
#endif

#include <stdio.h>

int main() {
    using namespace std::chrono;
    static microloop::loop<4, 4> loop;
    static int ticks = 0;
    microloop::timer_handle tick = loop.every(milliseconds(5), [](microloop::timer_event) { ++ticks; });
    microloop::timer_handle end = loop.after(milliseconds(30), [](microloop::timer_event) { loop.stop(); });
    if (!tick || !end) return 1;
    if (loop.run()) return 1;
    printf("microloop %d.%d.%d: %d ticks\n", MICROLOOP_VERSION_MAJOR, MICROLOOP_VERSION_MINOR,
           MICROLOOP_VERSION_PATCH, ticks);
    return ticks >= 1 ? 0 : 1;
}
