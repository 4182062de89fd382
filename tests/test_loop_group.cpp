// Loop groups: one loop per thread, each serving its own sockets; posts
// from many threads; stop() joins them.
#include "catch.hpp"

#include <microloop.hpp>

#include <poll.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "test_util.hpp"

using namespace std::chrono;
using test::scale;

namespace {

typedef microloop::loop_group<4, microloop::loop<8, 8> > group4;

struct echo_fixture {
    group4* group;
    test::fd_pair pair[4];
    pthread_t thread[4];
    std::atomic<int> ready;
    microloop::io_handle watcher[4];
};

} // namespace

TEST_CASE("loop_group: 4 loops on 4 threads serve their own sockets at once; stop() joins them", "[pool][thread]") {
    group4 group;
    echo_fixture fx;
    fx.group = &group;
    fx.ready.store(0);
    for (int i = 0; i < 4; ++i) {
        fx.pair[i] = test::make_socketpair();
        REQUIRE(fx.pair[i].ok());
    }
    CHECK(group.size() == 0);
    CHECK(group.post(0, [] {}) == microloop::errc::canceled); // not started
    REQUIRE_FALSE(group.start(4));
    CHECK(group.size() == 4);
    CHECK(group.start(4) == microloop::errc::bad_argument); // already running
    CHECK(group.post(4, [] {}) == microloop::errc::bad_argument);
    for (size_t i = 0; i < 4; ++i)
        REQUIRE_FALSE(group.post(i, [&fx, i] {
            fx.thread[i] = pthread_self();
            // An echo server on this loop's end of pair i.
            fx.watcher[i] = fx.group->loop(i).watch(fx.pair[i].a.get(), microloop::readable, [](microloop::io_event ev) {
                char buf[64];
                ssize_t n = read(ev.fd, buf, sizeof buf);
                if (n > 0 && write(ev.fd, buf, static_cast<size_t>(n)) != n) return;
            });
            fx.ready.fetch_add(fx.watcher[i] ? 1 : 100);
        }));
    while (fx.ready.load() < 4) std::this_thread::yield();
    REQUIRE(fx.ready.load() == 4);
    for (int i = 0; i < 4; ++i) {
        CHECK_FALSE(pthread_equal(fx.thread[i], pthread_self()));
        for (int k = 0; k < i; ++k) CHECK_FALSE(pthread_equal(fx.thread[i], fx.thread[k]));
    }
    // Every round: a byte to each of the 4 loops at once, then the 4 echoes.
    const int rounds = 2000 / scale();
    int echoed = 0;
    for (int r = 0; r < rounds; ++r) {
        char c = static_cast<char>('a' + r % 26);
        for (int i = 0; i < 4; ++i) REQUIRE(test::put_byte(fx.pair[i].b.get(), c));
        for (int i = 0; i < 4; ++i) {
            struct pollfd p = {fx.pair[i].b.get(), POLLIN, 0};
            REQUIRE(poll(&p, 1, 10000) == 1);
            char got = 0;
            REQUIRE(read(fx.pair[i].b.get(), &got, 1) == 1);
            echoed += got == c;
        }
    }
    CHECK(echoed == 4 * rounds);
    int64_t t0 = test::now_ns();
    CHECK_FALSE(group.stop());
    int64_t took_ms = (test::now_ns() - t0) / 1000000;
    CHECK(took_ms < 2000);
    CHECK(group.size() == 0);
    for (size_t i = 0; i < 4; ++i) CHECK_FALSE(group.result(i));
    CHECK(group.post(0, [] {}) == microloop::errc::canceled);
    CHECK_FALSE(group.stop()); // again: nothing to do
    // A group starts again after stop().
    REQUIRE_FALSE(group.start(2, true));
    CHECK(group.size() == 2);
    CHECK_FALSE(group.stop());
}

TEST_CASE("loop_group: default size, posts from many threads, stop() from the main loop's signal callback",
          "[pool][thread]") {
    typedef microloop::loop_group<64, microloop::loop<8, 8>, 64> group_t;
    static group_t group; // large: not on the stack
    REQUIRE_FALSE(group.start());
    size_t cpus = microloop::online_cpus();
    CHECK(group.size() == (cpus < 64 ? cpus : 64));
    const int threads = 4, per_thread = 20000 / scale();
    std::atomic<long> ran(0), accepted(0);
    std::thread posters[threads];
    for (int t = 0; t < threads; ++t)
        posters[t] = std::thread([&, t] {
            long ok = 0;
            for (int i = 0; i < per_thread; ++i) {
                microloop::error_code e;
                while ((e = group.post(static_cast<size_t>(i + t) % group.size(), [&ran] { ran.fetch_add(1); })) ==
                       microloop::errc::table_full)
                    std::this_thread::yield();
                if (!e) ++ok;
            }
            accepted.fetch_add(ok);
        });
    for (int t = 0; t < threads; ++t) posters[t].join();
    CHECK(accepted.load() == long(threads) * per_thread);
    while (ran.load() < accepted.load()) std::this_thread::yield();

    static microloop::loop<> main_loop;
    struct outcome {
        bool stopped;
        microloop::error_code result;
    } out = {false, microloop::error_code(microloop::errc::system)};
    auto sig = main_loop.on_signal(SIGUSR2, [&out](microloop::signal_event) {
        out.result = group.stop();
        out.stopped = true;
        main_loop.stop();
    });
    REQUIRE(sig);
    REQUIRE(kill(getpid(), SIGUSR2) == 0);
    auto guard = main_loop.after(seconds(10), [](microloop::timer_event) { main_loop.stop(); });
    REQUIRE_FALSE(main_loop.run());
    CHECK(out.stopped);
    CHECK_FALSE(out.result);
    CHECK(group.size() == 0);
    main_loop.cancel(guard);
    main_loop.unwatch(sig);
}

namespace {
// Waits for pid and returns its exit code, or -1.
int exit_code_of(pid_t pid) {
    int status = 0;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}
} // namespace

TEST_CASE("loop_group: a forked child's post() is refused with errc::forked; the parent's group is untouched",
          "[pool][thread][robust][fork]") {
    static group4 group;
    REQUIRE_FALSE(group.start(2));
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        // No member thread exists here: a post would never run.
        int fail = 0;
        if (group.post(0, [] {}) != microloop::errc::forked) fail |= 1; // before the fix: ok, and lost
        if (group.post(1, [] {}) != microloop::errc::forked) fail |= 2;
        if (group.stop()) fail |= 4; // nothing to join
        if (group.size() != 0) fail |= 8;
        _exit(fail);
    }
    CHECK(exit_code_of(pid) == 0);
    std::atomic<int> ran(0);
    REQUIRE_FALSE(group.post(0, [&ran] { ran.fetch_add(1); }));
    REQUIRE_FALSE(group.post(1, [&ran] { ran.fetch_add(1); }));
    for (int i = 0; i < 5000 && ran.load() < 2; ++i) test::sleep_ms(1);
    CHECK(ran.load() == 2);
    CHECK_FALSE(group.stop());
}

TEST_CASE("loop_group: result(i) may be read while the group runs", "[pool][thread][robust]") {
    static group4 group;
    REQUIRE_FALSE(group.start(2));
    CHECK_FALSE(group.result(0));
    // Loop 0's run() returns (its own code stopped it) while this thread reads
    // result(0): before the fix, a data race.
    REQUIRE_FALSE(group.post(0, [] { group.loop(0).stop(); }));
    int reads = 0;
    for (int i = 0; i < 2000; ++i) reads += group.result(0) ? 0 : 1;
    CHECK(reads == 2000);
    CHECK(group.result(7) == microloop::errc::bad_argument);
    CHECK_FALSE(group.stop());
    CHECK_FALSE(group.result(0));
}
