// Handles and their slot pool: a kept handle is refused once its source is
// gone, for every handle type, also across generation wraps; handles never
// come from an errc by accident. Wrap paths are reached in milliseconds by
// starting the generations near their limits (detail::test_access).
#include <microloop.hpp>

#include <errno.h>
#include <signal.h>
#include <stdint.h>

#include <chrono>
#include <type_traits>

#include "catch.hpp"
#include "test_util.hpp"

using namespace std::chrono;
using microloop::errc;
using microloop::io_event;
using microloop::timer_event;
using microloop::detail::test_access;
using test::noop_io;
using test::noop_timer;
using test::small_loop;

TEST_CASE("stale and invalid handles are refused and never touch a newer source", "[error]") {
    small_loop loop;
    test::fd_pair p = test::make_pipe();
    REQUIRE(p.ok());
    test::io_log log;
    microloop::io_handle old = loop.watch(p.a.get(), microloop::readable, [&log](io_event ev) { log.add(ev); });
    REQUIRE(old);
    REQUIRE(!loop.unwatch(old));
    CHECK(loop.unwatch(old) == errc::stale_handle); // twice

    // The slot is reused by the next watcher; the old handle names it no more.
    microloop::io_handle fresh = loop.watch(p.a.get(), microloop::readable, [&log](io_event ev) {
        log.add(ev);
        test::drain(ev.fd);
    });
    REQUIRE(fresh);
    CHECK((fresh.id() & 0xffffu) == (old.id() & 0xffffu)); // same slot
    CHECK(fresh != old);
    CHECK(loop.unwatch(old) == errc::stale_handle);
    CHECK(loop.modify(old, 0) == errc::stale_handle);
    REQUIRE(test::put_byte(p.b.get()));
    loop.run_once(seconds(1));
    REQUIRE(log.n == 1);
    CHECK(log.e[0].id == fresh.id());

    // Default-constructed, failed and forged handles.
    CHECK(loop.unwatch(microloop::io_handle()) == errc::stale_handle);
    CHECK(loop.modify(microloop::io_handle(), microloop::readable) == errc::stale_handle);
    CHECK(loop.unwatch(microloop::io_handle(errc::bad_fd)) == errc::stale_handle);
    CHECK(loop.unwatch(microloop::io_handle::from_id(0xffffffffu)) == errc::stale_handle);
    CHECK(loop.unwatch(microloop::io_handle::from_id(fresh.id() + 0x10000u)) == errc::stale_handle);
    CHECK(loop.unwatch(microloop::io_handle::from_id((fresh.id() & 0xffff0000u) | 3u)) == errc::stale_handle);
    CHECK(loop.cancel(microloop::timer_handle()) == errc::stale_handle);
    CHECK(loop.rearm(microloop::timer_handle(), milliseconds(1)) == errc::stale_handle);
    CHECK(loop.cancel(microloop::timer_handle::from_id(fresh.id())) == errc::stale_handle); // slot 0 has no timer

    // Timers the same way.
    microloop::timer_handle t_old = loop.after(seconds(10), noop_timer);
    REQUIRE(t_old);
    REQUIRE(!loop.cancel(t_old));
    int fired = 0;
    microloop::timer_handle t_new = loop.after(milliseconds(1), [&fired](timer_event) { ++fired; });
    REQUIRE(t_new);
    CHECK(loop.cancel(t_old) == errc::stale_handle);
    CHECK(loop.rearm(t_old, seconds(10)) == errc::stale_handle);
    CHECK(loop.remaining(t_old) == nanoseconds::zero());
    test::run_until(loop, [&fired] { return fired > 0; });
    CHECK(fired == 1);

    CHECK(loop.active() == 1); // the fresh watcher
    CHECK(!loop.unwatch(fresh));
}

// ---- handle generations -------------------------------------------------------------

TEST_CASE("a kept handle stays stale after 32,768 and more reuses of its slot", "[robust]") {
    microloop::loop<1, 1, 1, 1> loop;
    test::fd_pair p = test::make_pipe();
    REQUIRE(p.ok());
    const int cycles = 32768; // the 16-bit generation of 1.0 came back here

    microloop::io_handle io0 = loop.watch(p.a.get(), microloop::readable, noop_io);
    REQUIRE(!loop.unwatch(io0));
    microloop::timer_handle t0 = loop.after(seconds(1), noop_timer);
    REQUIRE(!loop.cancel(t0));
    microloop::signal_handle s0 = loop.on_signal(SIGUSR1, [](microloop::signal_event) {});
    REQUIRE(!loop.unwatch(s0));
    microloop::continuation_table<1> table;
    microloop::continuation_id c0 = table.emplace<int>(1);
    REQUIRE(!table.release(c0));
    int failures = 0;
    for (int i = 1; i < cycles; ++i) {
        failures += static_cast<bool>(loop.unwatch(loop.watch(p.a.get(), microloop::readable, noop_io)));
        failures += static_cast<bool>(loop.cancel(loop.after(seconds(1), noop_timer)));
        failures += static_cast<bool>(table.release(table.emplace<int>(i)));
        failures += static_cast<bool>(loop.unwatch(loop.on_signal(SIGUSR1, [](microloop::signal_event) {})));
    }
    REQUIRE(failures == 0);
    microloop::io_handle io1 = loop.watch(p.a.get(), microloop::readable, noop_io);
    microloop::timer_handle t1 = loop.after(seconds(1), noop_timer);
    microloop::signal_handle s1 = loop.on_signal(SIGUSR1, [](microloop::signal_event) {});
    microloop::continuation_id c1 = table.emplace<int>(7);
    REQUIRE((io1 && t1 && s1 && c1));
    CHECK(loop.unwatch(io0) == errc::stale_handle); // before the fix: removed io1
    CHECK(loop.cancel(t0) == errc::stale_handle);
    CHECK(loop.unwatch(s0) == errc::stale_handle);
    CHECK(table.release(c0) == errc::stale_handle);
    CHECK(table.get<int>(c0) == nullptr);
    CHECK(loop.stats().io.used == 1);
    CHECK(!loop.unwatch(io1));
    CHECK(!loop.cancel(t1));
    CHECK(!loop.unwatch(s1));
    CHECK(!table.release(c1));
}

TEST_CASE("the generation wraps after 2^48 - 1 reuses, skipping 0", "[robust]") {
    microloop::detail::slot_pool<1> pool;
    const uint64_t max = microloop::detail::slot_pool<1>::max_generation;
    test_access::set_generation(pool, 0, max - 1u);
    uint64_t a = pool.acquire();
    CHECK((a >> 16) == max);
    CHECK(microloop::io_handle::from_id(a).valid());
    pool.release(0);
    uint64_t b = pool.acquire();
    CHECK((b >> 16) == 1u); // not 0: 0 never names a live source
    CHECK(microloop::io_handle::from_id(b).valid());
    CHECK(pool.lookup(a) == pool.none);
    CHECK(pool.lookup(b) == 0);

    // The same through a loop: a handle from just before the wrap is stale after it.
    microloop::loop<1, 1> loop;
    test_access::set_generation(test_access::timer_pool(loop), 0, max - 1u);
    microloop::timer_handle last = loop.after(seconds(1), noop_timer);
    REQUIRE(last);
    REQUIRE(!loop.cancel(last));
    microloop::timer_handle first = loop.after(seconds(1), noop_timer);
    REQUIRE(first);
    CHECK((first.id() >> 16) == 1u);
    CHECK(loop.cancel(last) == errc::stale_handle);
    CHECK(!loop.cancel(first));
}

TEST_CASE("handles: no implicit construction from an errc; failures carry errno", "[robust]") {
    static_assert(!std::is_convertible<errc, microloop::io_handle>::value, "io_handle h = errc::ok must not compile");
    static_assert(!std::is_convertible<errc, microloop::timer_handle>::value, "");
    CHECK(microloop::io_handle(errc::ok).error() == errc::stale_handle); // never a handle that says "ok"
    CHECK(!microloop::io_handle(errc::ok).valid());
    microloop::io_handle sys(microloop::error_code(errc::system, EMFILE));
    CHECK(sys.error() == errc::system);
    CHECK(sys.error().sys() == EMFILE);
    // A failed on_child() says why in the handle, not only in errno.
    microloop::loop<1, 1, 1, 1> loop;
    microloop::child_handle not_ours = loop.on_child(1, [](microloop::child_event) {}); // init is nobody's child here
    CHECK(not_ours.error() == errc::bad_argument);
    CHECK(not_ours.error().sys() == ECHILD);
}
