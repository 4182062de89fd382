// The GLib adapter (include/microloop/adapters/glib.hpp): GLib's timeouts,
// idles, GIO watches and child watches driven by loop.run() next to the
// loop's own timer; wake-ups from other threads; one fd polled twice by
// GLib; sources removed while running; the GPollFD capacity; set-up errors;
// a destructor that leaves nothing behind. Every test is bounded by a loop
// timer that stops the loop.
#include <microloop.hpp>
#include <microloop/adapters/glib.hpp>

#include <glib.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "../catch.hpp"

using namespace std::chrono;
using microloop::errc;

namespace {

typedef microloop::loop<> test_loop;
typedef microloop::glib_adapter<test_loop> adapter;

struct pipe_fds {
    int r, w;
    pipe_fds() : r(-1), w(-1) {
        int p[2];
        REQUIRE(pipe(p) == 0);
        r = p[0];
        w = p[1];
    }
    ~pipe_fds() {
        if (r >= 0) close(r);
        if (w >= 0) close(w);
    }
};

void put(int fd) {
    char c = 'x';
    REQUIRE(write(fd, &c, 1) == 1);
}

// A GIO watch on fd; the channel is kept alive by the watch.
guint io_watch(int fd, GIOCondition cond, GIOFunc f, void* data, int prio = G_PRIORITY_DEFAULT) {
    GIOChannel* ch = g_io_channel_unix_new(fd);
    guint id = g_io_add_watch_full(ch, prio, cond, f, data, nullptr);
    g_io_channel_unref(ch);
    return id;
}

size_t watched_fds(test_loop& loop) {
    size_t n = 0;
    loop.for_each_io([&n](microloop::io_handle, int, unsigned) { ++n; });
    return n;
}

// Fails the test, and ends it, if it ran for longer than `limit`.
struct guard {
    bool fired;
    microloop::timer_handle h;
    test_loop& loop;
    guard(test_loop& l, milliseconds limit) : fired(false), loop(l) {
        h = loop.after(limit, [this](microloop::timer_event) {
            fired = true;
            loop.stop();
        });
    }
    ~guard() { loop.cancel(h); }
};

// ---- everything at once --------------------------------------------------------------

struct all_state {
    test_loop* loop;
    int pipe_r;
    int timeouts, idles, reads, children, child_status;
    bool stopped_by_glib;
};

gboolean on_timeout(gpointer p) {
    ++static_cast<all_state*>(p)->timeouts;
    return G_SOURCE_CONTINUE;
}
gboolean on_idle(gpointer p) {
    ++static_cast<all_state*>(p)->idles;
    return G_SOURCE_REMOVE;
}
gboolean on_pipe(GIOChannel*, GIOCondition cond, gpointer p) {
    all_state* s = static_cast<all_state*>(p);
    if (cond & G_IO_IN) {
        char buf[64];
        ssize_t n = read(s->pipe_r, buf, sizeof buf);
        if (n > 0) s->reads += static_cast<int>(n);
    }
    return G_SOURCE_CONTINUE;
}
void on_child(GPid, gint status, gpointer p) {
    all_state* s = static_cast<all_state*>(p);
    ++s->children;
    s->child_status = status;
}
gboolean on_end(gpointer p) {
    all_state* s = static_cast<all_state*>(p);
    s->stopped_by_glib = true;
    s->loop->stop();
    return G_SOURCE_REMOVE;
}

} // namespace

TEST_CASE("glib: timeouts, idles, a GIO watch and a child watch fire while the loop's own timer keeps its period",
          "[glib]") {
    test_loop loop;
    pipe_fds p;
    all_state s = {&loop, p.r, 0, 0, 0, 0, -1, false};
    adapter glib(loop);
    REQUIRE(!glib.error());

    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        usleep(50000);
        _exit(7);
    }
    const guint t = g_timeout_add(20, on_timeout, &s);
    g_idle_add(on_idle, &s);
    const guint w = io_watch(p.r, static_cast<GIOCondition>(G_IO_IN | G_IO_HUP), on_pipe, &s);
    g_child_watch_add(pid, on_child, &s);
    g_timeout_add(500, on_end, &s); // run() ends from a GLib callback

    int ticks = 0, writes = 0;
    const int pipe_fd = p.w;
    loop.every(milliseconds(10), [&ticks](microloop::timer_event) { ++ticks; });
    loop.every(milliseconds(25), [&writes, pipe_fd](microloop::timer_event) {
        put(pipe_fd);
        ++writes;
    });
    guard g(loop, milliseconds(5000));

    const steady_clock::time_point t0 = steady_clock::now();
    REQUIRE(!loop.run());
    const double ms = static_cast<double>(duration_cast<microseconds>(steady_clock::now() - t0).count()) / 1000.0;
    g_source_remove(t);
    g_source_remove(w);

    CHECK(!g.fired);
    CHECK(s.stopped_by_glib);
    CHECK(s.idles == 1);
    CHECK(s.timeouts >= static_cast<int>(ms / 20.0 * 0.6));
    CHECK(s.timeouts <= static_cast<int>(ms / 20.0) + 1);
    CHECK(s.reads >= writes - 1); // the last byte may be in flight
    CHECK(s.reads >= 10);
    CHECK(s.children == 1);
    CHECK(WIFEXITED(s.child_status));
    CHECK(WEXITSTATUS(s.child_status) == 7);
    // The loop's own 10 ms timer kept its period while GLib ran.
    CHECK(ticks >= static_cast<int>(ms / 10.0 * 0.7));
    CHECK(ticks <= static_cast<int>(ms / 10.0) + 1);
    CHECK(glib.stats().dispatches > 0);
    CHECK(glib.stats().overflows == 0);
    CHECK(glib.stats().refused == 0);
}

// ---- other threads --------------------------------------------------------------

namespace {
struct wake_state {
    test_loop* loop;
    std::thread::id loop_thread;
    int runs;
    bool in_loop_thread;
};
gboolean from_thread(gpointer p) {
    wake_state* s = static_cast<wake_state*>(p);
    ++s->runs;
    s->in_loop_thread = std::this_thread::get_id() == s->loop_thread;
    s->loop->stop();
    return G_SOURCE_REMOVE;
}
} // namespace

TEST_CASE("glib: g_idle_add and g_main_context_invoke from another thread wake the loop", "[glib][thread]") {
    test_loop loop;
    adapter glib(loop);
    REQUIRE(!glib.error());
    guard g(loop, milliseconds(5000)); // the only loop timer: nothing else ends the wait
    wake_state s = {&loop, std::this_thread::get_id(), 0, false};

    SECTION("g_idle_add") {
        std::thread t([&s] {
            std::this_thread::sleep_for(milliseconds(50));
            g_idle_add(from_thread, &s);
        });
        const steady_clock::time_point t0 = steady_clock::now();
        REQUIRE(!loop.run());
        t.join();
        CHECK(steady_clock::now() - t0 < milliseconds(2000));
    }
    SECTION("g_main_context_invoke") {
        std::thread t([&s] {
            std::this_thread::sleep_for(milliseconds(50));
            g_main_context_invoke(nullptr, from_thread, &s);
        });
        const steady_clock::time_point t0 = steady_clock::now();
        REQUIRE(!loop.run());
        t.join();
        CHECK(steady_clock::now() - t0 < milliseconds(2000));
    }
    CHECK(!g.fired);
    CHECK(s.runs == 1);
    CHECK(s.in_loop_thread);
}

// ---- one fd, polled twice ---------------------------------------------------------

namespace {
struct twice_state {
    test_loop* loop;
    int fd;
    int a, b;
    unsigned a_cond, b_cond;
};
gboolean twice_a(GIOChannel*, GIOCondition cond, gpointer p) {
    twice_state* s = static_cast<twice_state*>(p);
    ++s->a;
    s->a_cond |= cond;
    return G_SOURCE_REMOVE; // leaves the byte to the other watch
}
gboolean twice_b(GIOChannel*, GIOCondition cond, gpointer p) {
    twice_state* s = static_cast<twice_state*>(p);
    ++s->b;
    s->b_cond |= cond;
    if (s->a > 0 && s->b > 0) s->loop->stop();
    return G_SOURCE_CONTINUE;
}
gboolean reader_in(GIOChannel*, GIOCondition cond, gpointer p) {
    twice_state* s = static_cast<twice_state*>(p);
    ++s->a;
    s->a_cond |= cond;
    char c;
    if (read(s->fd, &c, 1) == 1) s->loop->stop();
    return G_SOURCE_CONTINUE;
}
gboolean writer_out(GIOChannel*, GIOCondition cond, gpointer p) {
    twice_state* s = static_cast<twice_state*>(p);
    ++s->b;
    s->b_cond |= cond;
    return G_SOURCE_REMOVE; // once
}
} // namespace

TEST_CASE("glib: one fd polled twice by GLib gets one watcher, and both requests fire", "[glib]") {
    test_loop loop;
    adapter glib(loop);
    REQUIRE(!glib.error());
    guard g(loop, milliseconds(5000));

    // GLib 2.74 merges the two GPollFDs of one fd in its query itself.
    SECTION("two G_IO_IN watches on one pipe, at two priorities") {
        pipe_fds p;
        twice_state s = {&loop, p.r, 0, 0, 0, 0};
        io_watch(p.r, G_IO_IN, twice_a, &s, G_PRIORITY_HIGH);
        const guint b = io_watch(p.r, G_IO_IN, twice_b, &s, G_PRIORITY_LOW);
        loop.poll();
        CHECK(glib.stats().fds == 2); // GLib's wake-up fd and the pipe
        CHECK(watched_fds(loop) == 2);
        put(p.w);
        REQUIRE(!loop.run());
        g_source_remove(b);
        CHECK(!g.fired);
        CHECK(s.a == 1);
        CHECK(s.b >= 1);
        CHECK(s.a_cond == G_IO_IN);
        CHECK(s.b_cond == G_IO_IN);
    }
    SECTION("G_IO_IN and G_IO_OUT on one socket: the union is watched, each gets its own share") {
        int sv[2];
        REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
        twice_state s = {&loop, sv[0], 0, 0, 0, 0};
        const guint a = io_watch(sv[0], G_IO_IN, reader_in, &s);
        io_watch(sv[0], G_IO_OUT, writer_out, &s, G_PRIORITY_HIGH);
        unsigned interest = 0;
        loop.poll();
        CHECK(glib.stats().fds == 2);
        loop.for_each_io([&](microloop::io_handle, int fd, unsigned ev) {
            if (fd == sv[0]) interest = ev;
        });
        // The writer may have fired in that poll already.
        CHECK((interest == (microloop::readable | microloop::writable) || interest == microloop::readable));
        const int peer = sv[1];
        loop.after(milliseconds(50), [peer](microloop::timer_event) { put(peer); });
        REQUIRE(!loop.run());
        g_source_remove(a);
        CHECK(!g.fired);
        CHECK(s.b == 1);
        CHECK(s.b_cond == G_IO_OUT); // the readiness of the reader's fd is not the writer's
        CHECK(s.a >= 1);
        CHECK(s.a_cond == G_IO_IN);
        // The writer is gone: its share of the watcher went with it.
        loop.for_each_io([&](microloop::io_handle, int fd, unsigned ev) {
            if (fd == sv[0]) interest = ev;
        });
        CHECK(interest == microloop::readable);
        close(sv[0]);
        close(sv[1]);
    }
}

// GLib as older versions are, handing one fd over in more than one GPollFD:
// each GPollFD GLib's query gives is split in two, its G_IO_IN/G_IO_PRI part
// and its G_IO_OUT part, and folded back for GLib's check. A revents bit a
// GPollFD did not ask for is counted as stray.
namespace {
struct split_api {
    static GPollFD real[64];
    static gint n_real;
    static int stray, split_checks;
    static gboolean prepare(GMainContext* c, gint* p) { return g_main_context_prepare(c, p); }
    static gint query(GMainContext* c, gint maxp, gint* timeout, GPollFD* fds, gint n) {
        n_real = g_main_context_query(c, maxp, timeout, real, 64);
        REQUIRE(n_real <= 64);
        gint out = 0;
        for (gint i = 0; i < n_real; ++i)
            for (int half = 0; half < 2; ++half) {
                if (out < n) {
                    fds[out] = real[i];
                    fds[out].events = static_cast<gushort>(real[i].events & (half == 0 ? (G_IO_IN | G_IO_PRI) : G_IO_OUT));
                }
                ++out;
            }
        return out;
    }
    static gboolean check(GMainContext* c, gint maxp, GPollFD* fds, gint n) {
        ++split_checks;
        for (gint i = 0; i < n_real; ++i) {
            real[i].revents = 0;
            for (int half = 0; half < 2; ++half) {
                const gint k = 2 * i + half;
                if (k >= n) continue;
                if (fds[k].revents & ~(fds[k].events | G_IO_ERR | G_IO_HUP | G_IO_NVAL)) ++stray;
                real[i].revents = static_cast<gushort>(real[i].revents | fds[k].revents);
            }
        }
        return g_main_context_check(c, maxp, real, n_real);
    }
    static void dispatch(GMainContext* c) { g_main_context_dispatch(c); }
};
GPollFD split_api::real[64];
gint split_api::n_real = 0;
int split_api::stray = 0;
int split_api::split_checks = 0;
} // namespace

TEST_CASE("glib: GPollFDs that name one fd are merged into one watcher, each gets its share", "[glib]") {
    test_loop loop;
    microloop::glib_adapter<test_loop, 16, split_api> glib(loop);
    REQUIRE(!glib.error());
    guard g(loop, milliseconds(5000));
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    twice_state s = {&loop, sv[0], 0, 0, 0, 0};
    const guint a = io_watch(sv[0], G_IO_IN, reader_in, &s);
    io_watch(sv[0], G_IO_OUT, writer_out, &s);
    loop.poll();
    CHECK(glib.stats().pollfds == 4); // GLib's wake-up fd and the socket, each in two GPollFDs
    CHECK(glib.stats().fds == 2);     // one watcher each
    CHECK(watched_fds(loop) == 2);
    const int peer = sv[1];
    loop.after(milliseconds(50), [peer](microloop::timer_event) { put(peer); });
    REQUIRE(!loop.run());
    g_source_remove(a);
    CHECK(!g.fired);
    CHECK(split_api::split_checks > 0);
    CHECK(split_api::stray == 0);
    CHECK(s.b == 1);
    CHECK(s.b_cond == G_IO_OUT);
    CHECK(s.a >= 1);
    CHECK(s.a_cond == G_IO_IN);
    unsigned interest = 0;
    loop.for_each_io([&](microloop::io_handle, int fd, unsigned ev) {
        if (fd == sv[0]) interest = ev;
    });
    CHECK(interest == microloop::readable); // the writer's share went with it
    close(sv[0]);
    close(sv[1]);
}

// ---- removal while running ---------------------------------------------------------

namespace {
struct removal_state {
    test_loop* loop;
    int fd;
    guint victim_timeout, victim_watch;
    int victim_runs, watch_runs, killer_runs;
};
gboolean victim(gpointer p) {
    ++static_cast<removal_state*>(p)->victim_runs;
    return G_SOURCE_CONTINUE;
}
gboolean victim_io(GIOChannel*, GIOCondition, gpointer p) {
    ++static_cast<removal_state*>(p)->watch_runs;
    return G_SOURCE_CONTINUE;
}
gboolean killer(gpointer p) {
    removal_state* s = static_cast<removal_state*>(p);
    ++s->killer_runs;
    g_source_remove(s->victim_timeout);
    g_source_remove(s->victim_watch);
    return G_SOURCE_REMOVE;
}
gboolean finish(gpointer p) {
    static_cast<removal_state*>(p)->loop->stop();
    return G_SOURCE_REMOVE;
}
} // namespace

TEST_CASE("glib: sources removed while running stop firing and their fds are unwatched", "[glib]") {
    test_loop loop;
    adapter glib(loop);
    REQUIRE(!glib.error());
    guard g(loop, milliseconds(5000));
    pipe_fds p;
    removal_state s = {&loop, p.r, 0, 0, 0, 0, 0};
    s.victim_timeout = g_timeout_add(100, victim, &s);
    s.victim_watch = io_watch(p.r, G_IO_IN, victim_io, &s);
    g_timeout_add(30, killer, &s); // removes both before the victim's first firing
    g_timeout_add(300, finish, &s);
    loop.poll();
    CHECK(loop.watcher(p.r));
    const int pipe_fd = p.w;
    // After the killer ran: a watch still there would fire at every iteration.
    loop.after(milliseconds(100), [pipe_fd](microloop::timer_event) { put(pipe_fd); });

    REQUIRE(!loop.run());
    CHECK(!g.fired);
    CHECK(s.killer_runs == 1);
    CHECK(s.victim_runs == 0);
    CHECK(s.watch_runs == 0);
    CHECK(loop.watcher(p.r).error() == errc::not_watched);
    CHECK(glib.stats().fds == 1); // GLib's wake-up fd alone
}

// ---- the destructor -------------------------------------------------------------

namespace {
gboolean never(gpointer) { return G_SOURCE_CONTINUE; }
gboolean never_io(GIOChannel*, GIOCondition, gpointer) { return G_SOURCE_CONTINUE; }
} // namespace

TEST_CASE("glib: the adapter's destructor leaves the loop with nothing watched", "[glib]") {
    test_loop loop;
    pipe_fds p;
    guint t, w;
    {
        adapter glib(loop);
        REQUIRE(!glib.error());
        t = g_timeout_add(1000, never, nullptr);
        w = io_watch(p.r, G_IO_IN, never_io, nullptr);
        loop.poll();
        CHECK(watched_fds(loop) == 2);
        CHECK(loop.stats().timers.used == 1);
        CHECK(loop.stats().hooks.used == 2);
        CHECK(g_main_context_is_owner(g_main_context_default()));
    }
    CHECK(watched_fds(loop) == 0);
    CHECK(loop.stats().timers.used == 0);
    CHECK(loop.stats().hooks.used == 0);
    CHECK(loop.active() == 0);
    CHECK(!g_main_context_is_owner(g_main_context_default())); // released
    CHECK(!loop.run());                                         // returns at once: nothing left
    g_source_remove(t);
    g_source_remove(w);
}

// ---- capacity and set-up errors ---------------------------------------------------

namespace {
struct cap_state {
    test_loop* loop;
    int fired;
};
gboolean cap_io(GIOChannel* ch, GIOCondition, gpointer p) {
    ++static_cast<cap_state*>(p)->fired;
    char c;
    if (read(g_io_channel_unix_get_fd(ch), &c, 1) != 1) return G_SOURCE_REMOVE;
    return G_SOURCE_CONTINUE;
}
gboolean cap_end(gpointer p) {
    static_cast<cap_state*>(p)->loop->stop();
    return G_SOURCE_REMOVE;
}
} // namespace

TEST_CASE("glib: more GPollFDs than the capacity are counted and reported, the rest keeps working", "[glib]") {
    test_loop loop;
    GMainContext* ctx = g_main_context_new();
    {
        microloop::glib_adapter<test_loop, 2> glib(loop, ctx);
        REQUIRE(!glib.error());
        guard g(loop, milliseconds(5000));
        pipe_fds p1, p2, p3;
        cap_state s = {&loop, 0};
        GSource* sources[3];
        int fds[3] = {p1.r, p2.r, p3.r};
        for (int i = 0; i < 3; ++i) {
            GIOChannel* ch = g_io_channel_unix_new(fds[i]);
            sources[i] = g_io_create_watch(ch, G_IO_IN);
            g_source_set_callback(sources[i], reinterpret_cast<GSourceFunc>(reinterpret_cast<void (*)(void)>(cap_io)), &s,
                                  nullptr);
            g_source_attach(sources[i], ctx);
            g_io_channel_unref(ch);
        }
        GSource* end = g_timeout_source_new(200);
        g_source_set_callback(end, cap_end, &s, nullptr);
        g_source_attach(end, ctx);
        put(p1.w);
        put(p2.w);
        put(p3.w);
        REQUIRE(!loop.run());
        CHECK(!g.fired);
        CHECK(glib.stats().overflows > 0);
        CHECK(glib.stats().pollfds == 2);
        CHECK(glib.stats().pollfds_high_water == 4);
        CHECK(glib.last_error() == errc::table_full);
        CHECK(s.fired > 0); // a pipe that fitted still fired
        for (int i = 0; i < 3; ++i) {
            g_source_destroy(sources[i]);
            g_source_unref(sources[i]);
        }
        g_source_unref(end);
    }
    CHECK(watched_fds(loop) == 0);
    g_main_context_unref(ctx);
}

TEST_CASE("glib: a context another thread owns, or a loop without hook slots, is an error and leaves nothing",
          "[glib]") {
    SECTION("another thread owns the context") {
        test_loop loop;
        GMainContext* ctx = g_main_context_new();
        std::atomic<int> phase(0);
        std::thread owner([&] {
            g_main_context_acquire(ctx);
            phase = 1;
            while (phase != 2) std::this_thread::sleep_for(milliseconds(1));
            g_main_context_release(ctx);
        });
        while (phase != 1) std::this_thread::sleep_for(milliseconds(1));
        {
            adapter glib(loop, ctx);
            CHECK(glib.error() == errc::already_watched);
            CHECK(loop.stats().hooks.used == 0);
            CHECK(watched_fds(loop) == 0);
        }
        phase = 2;
        owner.join();
        g_main_context_unref(ctx);
    }
    SECTION("no hook slot left") {
        microloop::basic_loop<microloop::capacity<8, 8, 1, 1, 1> > small;
        small.on_prepare([](microloop::hook_event) {});
        GMainContext* ctx = g_main_context_new();
        {
            microloop::glib_adapter<microloop::basic_loop<microloop::capacity<8, 8, 1, 1, 1> > > glib(small, ctx);
            CHECK(glib.error() == errc::table_full);
            CHECK(small.stats().hooks.used == 1); // only the application's own
            CHECK(!g_main_context_is_owner(ctx));
        }
        g_main_context_unref(ctx);
    }
}
