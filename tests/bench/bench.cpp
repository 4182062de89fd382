// tests/bench/bench.cpp - microloop against a hand-written select() loop, libev,
// libevent and libuv. Compiled once per library with -DBENCH_LIB=<n>; the
// workload code is shared, only the thin adapter below differs.
//
//   bench ring   <variant> <N> <A> <W> <runs>   pipe ring (libevent's bench.c);
//                                               microloop's variant "stall":
//                                               with on_stall(10 ms) on
//   bench timers <variant> <timers> <ops> <runs> [rearm|restart]
//                                               timer churn: re-arm an armed
//                                               timer, or stop it and start
//                                               a new one (a protocol timeout)
//   bench heap   <variant>                      allocations per phase (needs
//                                               LD_PRELOAD=heapcount.so)
//   bench jitter <variant> <ticks> <period_us>  lateness of a periodic timer
//                                               (floor: a timerfd; microloop:
//                                               default or slack; libev: select)
//
// Every mode prints one "key=value ..." line per result, for bench/run.sh.
#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <new>
#include <vector>

#define BENCH_FLOOR 0
#define BENCH_MICROLOOP 1
#define BENCH_LIBEV 2
#define BENCH_LIBEVENT 3
#define BENCH_LIBUV 4

#if BENCH_LIB == BENCH_MICROLOOP
#include <microloop.hpp>
#elif BENCH_LIB == BENCH_LIBEV
#include <ev.h>
#elif BENCH_LIB == BENCH_LIBEVENT
#include <event2/event.h>
#elif BENCH_LIB == BENCH_LIBUV
#include <uv.h>
#endif

namespace {

int64_t now_ns() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    size_t n = v.size();
    return n == 0 ? 0.0 : (n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2);
}

void die(const char* what) {
    fprintf(stderr, "bench: %s: %s\n", what, strerror(errno));
    exit(2);
}

// ---- the pipe ring's work, identical for every library ---------------------
// Each read callback takes its byte and, while writes remain, sends one to the
// next pair, so A bytes chase each other around the ring.
int g_pairs;
bool g_any_fd; // the backend takes fds >= FD_SETSIZE
int* g_rd;
int* g_wr;
int g_writes, g_fired, g_count, g_failures;

inline void ring_read(int fd, int idx) {
    unsigned char ch;
    if (read(fd, &ch, 1) == 1) ++g_count;
    else ++g_failures;
    if (g_writes > 0) {
        int next = idx + 1;
        if (next >= g_pairs) next -= g_pairs;
        if (write(g_wr[next], "e", 1) != 1) ++g_failures;
        --g_writes;
        ++g_fired;
    }
}

// ---- the timer churn's inputs --------------------------------------------------
struct churn_op {
    int timer;
    int timeout_ms; // 1 000 .. 100 000
};
int g_ntimers;
std::vector<int> g_initial_ms;
std::vector<churn_op> g_ops;
std::vector<double> g_churn_ns;
bool g_restart; // the churn's form: false = re-arm in place, true = stop, then start anew

uint64_t g_rng = 0x9e3779b97f4a7c15ull;
uint32_t rnd() { // xorshift64*: the same sequence on every library
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return static_cast<uint32_t>((g_rng * 0x2545f4914f6cdd1dull) >> 32);
}

void make_churn(int ntimers, int nops) {
    g_ntimers = ntimers;
    g_initial_ms.resize(ntimers);
    for (int i = 0; i < ntimers; ++i) g_initial_ms[i] = 1000 + static_cast<int>(rnd() % 99001);
    std::vector<int> perm(ntimers);
    for (int i = 0; i < ntimers; ++i) perm[i] = i;
    for (int i = ntimers - 1; i > 0; --i) std::swap(perm[i], perm[rnd() % (i + 1)]);
    g_ops.resize(nops);
    for (int i = 0; i < nops; ++i) {
        g_ops[i].timer = perm[rnd() % (ntimers / 2)]; // a fixed random half
        g_ops[i].timeout_ms = 1000 + static_cast<int>(rnd() % 99001);
    }
}

// ---- the jitter part's bookkeeping, identical for every library --------------
// A periodic timer of g_jperiod_ns; each adapter knows the ideal deadline a
// fire was for (first deadline + k periods, k advanced by the periods the
// library says it covered) and calls jitter_fire() with the time its handler
// started. The first g_jwarm fires are not counted.
int g_jticks, g_jfires, g_early;
const int g_jwarm = 10;
int64_t g_jperiod_ns;
std::vector<double> g_late_us; // in firing order

// True when the last counted tick has fired.
inline bool jitter_fire(int64_t now, int64_t deadline) {
    if (g_jfires++ >= g_jwarm) {
        double late = static_cast<double>(now - deadline) / 1e3;
        g_late_us.push_back(late);
        if (late < 0) ++g_early;
    }
    return g_jfires >= g_jwarm + g_jticks;
}

// ---- heap phases (LD_PRELOAD=heapcount.so) -----------------------------------------
typedef void (*heapcount_fn)(unsigned long*, unsigned long*);
heapcount_fn g_heapcount;
unsigned long g_calls0, g_bytes0;

void heap_mark() {
    if (g_heapcount) g_heapcount(&g_calls0, &g_bytes0);
}
__attribute__((unused)) void heap_report(const char* phase) {
    unsigned long c = 0, b = 0;
    if (g_heapcount) g_heapcount(&c, &b);
    printf("phase=%s calls=%lu bytes=%lu\n", phase, c - g_calls0, b - g_bytes0);
    fflush(stdout);
    heap_mark(); // printf's own buffer is not charged to the next phase
}

// ============================================================================
// Adapters: one per library. Each provides
//   init(variant), watch_ring(), run_nowait(), timers_setup(), run_churn(),
//   heap phases: heap_create(), heap_fds(fds), heap_timers(), heap_iterate()
// ============================================================================

#if BENCH_LIB == BENCH_FLOOR
// The floor: what a careful C programmer writes by hand for this job (Redis
// ae_select.c style). A master fd_set of which only the words select() will
// read are copied each iteration; ready fds are found a word at a time and the
// scan stops once select()'s count is used up; the handler is called directly.
const int word_bits = static_cast<int>(8 * sizeof(unsigned long));
fd_set g_master;
int g_maxfd = -1;
int g_idx_of[FD_SETSIZE];

const char* lib_name(const char*) { return "floor"; }
bool init(const char*) {
    FD_ZERO(&g_master);
    return true;
}
void watch_ring() {
    for (int i = 0; i < g_pairs; ++i) {
        FD_SET(g_rd[i], &g_master);
        g_idx_of[g_rd[i]] = i;
        if (g_rd[i] > g_maxfd) g_maxfd = g_rd[i];
    }
}
void run_nowait() {
    fd_set r;
    const int nwords = g_maxfd / word_bits + 1;
    memcpy(&r, &g_master, nwords * sizeof(unsigned long));
    struct timeval tv = {0, 0};
    int n = select(g_maxfd + 1, &r, NULL, NULL, &tv);
    if (n <= 0) return;
    const unsigned long* w = reinterpret_cast<const unsigned long*>(&r);
    for (int i = 0; i < nwords && n > 0; ++i) {
        unsigned long bits = w[i];
        while (bits) {
            int fd = i * word_bits + __builtin_ctzl(bits);
            bits &= bits - 1;
            --n;
            ring_read(fd, g_idx_of[fd]);
        }
    }
}
bool has_timers() { return false; }
void run_churn(int) {}
void heap_phases(int*, int) {}
// The jitter floor: a blocking read() on a timerfd with the period as its
// interval, armed on an absolute deadline. timerfd expiries ignore the
// thread's timer slack: as punctual as the kernel's timers get.
const char* jitter_name(const char*) { return "timerfd"; }
bool run_jitter(const char*) {
    int fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
    if (fd < 0) die("timerfd_create");
    const int64_t base = now_ns() + g_jperiod_ns;
    struct itimerspec its;
    its.it_value.tv_sec = static_cast<time_t>(base / 1000000000);
    its.it_value.tv_nsec = static_cast<long>(base % 1000000000);
    its.it_interval.tv_sec = static_cast<time_t>(g_jperiod_ns / 1000000000);
    its.it_interval.tv_nsec = static_cast<long>(g_jperiod_ns % 1000000000);
    if (timerfd_settime(fd, TFD_TIMER_ABSTIME, &its, NULL) != 0) die("timerfd_settime");
    int64_t k = 0;
    for (;;) {
        uint64_t expiries;
        if (read(fd, &expiries, sizeof expiries) != static_cast<ssize_t>(sizeof expiries)) die("read timerfd");
        bool done = jitter_fire(now_ns(), base + k * g_jperiod_ns);
        k += static_cast<int64_t>(expiries);
        if (done) break;
    }
    close(fd);
    return true;
}

#elif BENCH_LIB == BENCH_MICROLOOP
typedef microloop::loop<512, 16> ring_loop_t;
// Variant "epoll": the same ring on the epoll backend, room for 10,000 fds.
typedef microloop::epoll_loop<10240, 16> ring_eloop_t;
typedef microloop::loop<16, 10240> churn_loop_t;
typedef microloop::loop<128, 128> heap_loop_t;
// Static storage: a microloop loop is meant to live on the stack or in .bss.
alignas(ring_loop_t) unsigned char g_ring_mem[sizeof(ring_loop_t)];
alignas(ring_eloop_t) unsigned char g_ering_mem[sizeof(ring_eloop_t)];
alignas(churn_loop_t) unsigned char g_churn_mem[sizeof(churn_loop_t)];
alignas(heap_loop_t) unsigned char g_heap_mem[sizeof(heap_loop_t)];
ring_loop_t* g_loop;
ring_eloop_t* g_eloop;
churn_loop_t* g_churn;
std::vector<microloop::timer_handle> g_th;

bool g_stall, g_epoll;
const char* lib_name(const char*) { return g_stall ? "microloop-stall" : g_epoll ? "microloop-epoll" : "microloop"; }
bool init(const char* variant) {
    g_stall = strcmp(variant, "stall") == 0;
    g_epoll = strcmp(variant, "epoll") == 0;
    g_any_fd = g_epoll;
    return true;
}
template <class Loop>
void watch_ring_on(Loop* l) {
    if (g_stall && l->on_stall(std::chrono::milliseconds(10), [](const microloop::stall_report&) {
            fprintf(stderr, "bench: stall reported\n");
        })) {
        fprintf(stderr, "on_stall failed\n");
        exit(2);
    }
    for (int i = 0; i < g_pairs; ++i) {
        microloop::io_handle h = l->watch(g_rd[i], microloop::readable,
                                          [i](microloop::io_event ev) { ring_read(ev.fd, i); });
        if (!h) {
            fprintf(stderr, "watch: %s\n", h.error().message());
            exit(2);
        }
    }
}
void watch_ring() {
    if (g_epoll)
        watch_ring_on(g_eloop = new (g_ering_mem) ring_eloop_t);
    else
        watch_ring_on(g_loop = new (g_ring_mem) ring_loop_t);
}
void run_nowait() {
    if (g_epoll)
        g_eloop->poll();
    else
        g_loop->poll();
}
bool has_timers() { return true; }
void run_churn(int runs) {
    g_churn = new (g_churn_mem) churn_loop_t;
    g_th.resize(g_ntimers);
    for (int i = 0; i < g_ntimers; ++i)
        g_th[i] = g_churn->after(std::chrono::milliseconds(g_initial_ms[i]), [](microloop::timer_event) {});
    for (int r = 0; r < runs; ++r) {
        g_churn->after(std::chrono::nanoseconds(0), [](microloop::timer_event) {
            int64_t t0 = now_ns();
            if (g_restart) {
                for (size_t k = 0; k < g_ops.size(); ++k) {
                    microloop::timer_handle& h = g_th[g_ops[k].timer];
                    g_churn->cancel(h);
                    h = g_churn->after(std::chrono::milliseconds(g_ops[k].timeout_ms), [](microloop::timer_event) {});
                }
            } else {
                for (size_t k = 0; k < g_ops.size(); ++k)
                    g_churn->rearm(g_th[g_ops[k].timer], std::chrono::milliseconds(g_ops[k].timeout_ms));
            }
            g_churn_ns.push_back(static_cast<double>(now_ns() - t0) / g_ops.size());
        });
        g_churn->run_once();
    }
}
// variant "default": the thread's timer slack as it is; "slack":
// set_timer_slack(1 ns) first.
typedef microloop::loop<4, 4> jitter_loop_t;
alignas(jitter_loop_t) unsigned char g_jitter_mem[sizeof(jitter_loop_t)];
jitter_loop_t* g_jl;
int64_t g_jbase, g_jk;
const char* jitter_name(const char* variant) {
    return strcmp(variant, "slack") == 0 ? "microloop-slack1ns" : "microloop";
}
bool run_jitter(const char* variant) {
    g_jl = new (g_jitter_mem) jitter_loop_t;
    if (strcmp(variant, "slack") == 0) {
        if (microloop::error_code e = g_jl->set_timer_slack(std::chrono::nanoseconds(1))) {
            fprintf(stderr, "set_timer_slack: %s (errno %d)\n", e.message(), e.sys());
            exit(2);
        }
    } else if (strcmp(variant, "default") != 0) {
        return false;
    }
    microloop::timer_handle h = g_jl->every(std::chrono::nanoseconds(g_jperiod_ns), [](microloop::timer_event ev) {
        bool done = jitter_fire(now_ns(), g_jbase + g_jk * g_jperiod_ns);
        g_jk += 1 + static_cast<int64_t>(ev.overruns);
        if (done) g_jl->cancel(ev.handle);
    });
    if (!h) return false;
    g_jl->for_each_timer([](microloop::timer_handle, std::chrono::nanoseconds deadline, std::chrono::nanoseconds) {
        g_jbase = static_cast<int64_t>(deadline.count());
    });
    if (microloop::error_code e = g_jl->run()) {
        fprintf(stderr, "run: %s (errno %d)\n", e.message(), e.sys());
        exit(2);
    }
    return true;
}
typedef microloop::epoll_loop<128, 128> heap_eloop_t;
alignas(heap_eloop_t) unsigned char g_eheap_mem[sizeof(heap_eloop_t)];
template <class Loop>
void heap_phases_on(Loop* l, int* fds, int nfds);
void heap_phases(int* fds, int nfds) {
    heap_mark();
    if (g_epoll)
        heap_phases_on(new (g_eheap_mem) heap_eloop_t, fds, nfds);
    else
        heap_phases_on(new (g_heap_mem) heap_loop_t, fds, nfds);
}
template <class Loop>
void heap_phases_on(Loop* l, int* fds, int nfds) {
    heap_report("create");
    for (int i = 0; i < nfds; ++i) l->watch(fds[i], microloop::readable, [](microloop::io_event) {});
    heap_report("fds");
    for (int i = 0; i < 100; ++i) l->after(std::chrono::seconds(10 + i), [](microloop::timer_event) {});
    heap_report("timers");
    l->poll();
    heap_report("iterate");
}

#elif BENCH_LIB == BENCH_LIBEV
struct ev_loop* g_loop;
unsigned g_flags;
std::vector<ev_io> g_io;
std::vector<ev_timer> g_timers;

const char* lib_name(const char* variant) { return strcmp(variant, "select") == 0 ? "libev-select" : "libev-epoll"; }
bool init(const char* variant) {
    g_flags = strcmp(variant, "select") == 0 ? EVBACKEND_SELECT : EVBACKEND_EPOLL;
    g_loop = ev_loop_new(g_flags | EVFLAG_NOENV);
    if (!g_loop || ev_backend(g_loop) != g_flags) {
        fprintf(stderr, "libev: backend %s unavailable\n", variant);
        return false;
    }
    return true;
}
void io_cb(struct ev_loop*, ev_io* w, int) { ring_read(w->fd, static_cast<int>(reinterpret_cast<intptr_t>(w->data))); }
void watch_ring() {
    g_io.resize(g_pairs);
    for (int i = 0; i < g_pairs; ++i) {
        ev_io_init(&g_io[i], io_cb, g_rd[i], EV_READ);
        g_io[i].data = reinterpret_cast<void*>(static_cast<intptr_t>(i));
        ev_io_start(g_loop, &g_io[i]);
    }
}
void run_nowait() { ev_run(g_loop, EVRUN_NOWAIT); }
bool has_timers() { return true; }
void nop_timer(struct ev_loop*, ev_timer*, int) {}
void kick_cb(struct ev_loop* loop, ev_timer*, int) {
    int64_t t0 = now_ns();
    if (g_restart) {
        for (size_t k = 0; k < g_ops.size(); ++k) {
            ev_timer* w = &g_timers[g_ops[k].timer];
            ev_timer_stop(loop, w);
            ev_timer_set(w, g_ops[k].timeout_ms * 1e-3, 0.);
            ev_timer_start(loop, w);
        }
    } else {
        for (size_t k = 0; k < g_ops.size(); ++k) {
            ev_timer* w = &g_timers[g_ops[k].timer];
            w->repeat = g_ops[k].timeout_ms * 1e-3; // ev_timer_again re-arms from now with `repeat`
            ev_timer_again(loop, w);
        }
    }
    g_churn_ns.push_back(static_cast<double>(now_ns() - t0) / g_ops.size());
}
void run_churn(int runs) {
    g_timers.resize(g_ntimers);
    for (int i = 0; i < g_ntimers; ++i) {
        ev_timer_init(&g_timers[i], nop_timer, g_initial_ms[i] * 1e-3, 0.);
        ev_timer_start(g_loop, &g_timers[i]);
    }
    ev_timer kick;
    for (int r = 0; r < runs; ++r) {
        ev_timer_init(&kick, kick_cb, 0., 0.);
        ev_timer_start(g_loop, &kick);
        ev_run(g_loop, EVRUN_ONCE);
    }
}
// ev_timer with repeat = the period, on the backend init() chose. Its
// deadline is ev_at (the `at` member), on libev's monotonic time in seconds.
ev_timer g_jw;
int64_t g_jbase, g_jk;
const char* jitter_name(const char* variant) { return lib_name(variant); }
void jitter_cb(struct ev_loop* loop, ev_timer* w, int) {
    bool done = jitter_fire(now_ns(), g_jbase + g_jk * g_jperiod_ns);
    ++g_jk; // libev reports no skipped periods
    if (done) ev_timer_stop(loop, w);
}
bool run_jitter(const char*) {
    const double period = static_cast<double>(g_jperiod_ns) * 1e-9;
    ev_now_update(g_loop);
    ev_timer_init(&g_jw, jitter_cb, period, period);
    ev_timer_start(g_loop, &g_jw);
    g_jbase = static_cast<int64_t>(llround(g_jw.at * 1e9));
    ev_run(g_loop, 0);
    return true;
}
void heap_phases(int* fds, int nfds) {
    heap_mark();
    struct ev_loop* l = ev_loop_new(g_flags | EVFLAG_NOENV);
    heap_report("create");
    static ev_io ios[128];
    static ev_timer tms[128];
    for (int i = 0; i < nfds; ++i) {
        ev_io_init(&ios[i], io_cb, fds[i], EV_READ);
        ev_io_start(l, &ios[i]);
    }
    heap_report("fds");
    for (int i = 0; i < 100; ++i) {
        ev_timer_init(&tms[i], nop_timer, 10. + i, 0.);
        ev_timer_start(l, &tms[i]);
    }
    heap_report("timers");
    ev_run(l, EVRUN_NOWAIT);
    heap_report("iterate");
}

#elif BENCH_LIB == BENCH_LIBEVENT
struct event_base* g_base;
bool g_select;
std::vector<struct event*> g_events;

const char* lib_name(const char* variant) {
    return strcmp(variant, "select") == 0 ? "libevent-select" : "libevent-epoll";
}
struct event_base* new_base() {
    struct event_config* cfg = event_config_new();
    if (g_select) {
        event_config_avoid_method(cfg, "epoll");
        event_config_avoid_method(cfg, "poll");
    }
    struct event_base* b = event_base_new_with_config(cfg);
    event_config_free(cfg);
    return b;
}
bool init(const char* variant) {
    g_select = strcmp(variant, "select") == 0;
    g_base = new_base();
    const char* want = g_select ? "select" : "epoll";
    if (!g_base || strcmp(event_base_get_method(g_base), want) != 0) {
        fprintf(stderr, "libevent: backend %s unavailable\n", want);
        return false;
    }
    return true;
}
void ev_cb(evutil_socket_t fd, short, void* arg) { ring_read(fd, static_cast<int>(reinterpret_cast<intptr_t>(arg))); }
void watch_ring() {
    for (int i = 0; i < g_pairs; ++i) {
        struct event* e = event_new(g_base, g_rd[i], EV_READ | EV_PERSIST, ev_cb,
                                    reinterpret_cast<void*>(static_cast<intptr_t>(i)));
        event_add(e, NULL);
    }
}
void run_nowait() { event_base_loop(g_base, EVLOOP_ONCE | EVLOOP_NONBLOCK); }
bool has_timers() { return true; }
void nop_timer(evutil_socket_t, short, void*) {}
void kick_cb(evutil_socket_t, short, void*) {
    int64_t t0 = now_ns();
    for (size_t k = 0; k < g_ops.size(); ++k) {
        int ms = g_ops[k].timeout_ms;
        struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
        if (g_restart) evtimer_del(g_events[g_ops[k].timer]);
        evtimer_add(g_events[g_ops[k].timer], &tv); // re-adding a pending timer re-schedules it
    }
    g_churn_ns.push_back(static_cast<double>(now_ns() - t0) / g_ops.size());
}
void run_churn(int runs) {
    g_events.resize(g_ntimers);
    for (int i = 0; i < g_ntimers; ++i) {
        g_events[i] = evtimer_new(g_base, nop_timer, NULL);
        struct timeval tv = {g_initial_ms[i] / 1000, (g_initial_ms[i] % 1000) * 1000};
        evtimer_add(g_events[i], &tv);
    }
    struct event* kick = evtimer_new(g_base, kick_cb, NULL);
    for (int r = 0; r < runs; ++r) {
        struct timeval zero = {0, 0};
        evtimer_add(kick, &zero);
        event_base_loop(g_base, EVLOOP_ONCE);
    }
}
const char* jitter_name(const char* variant) { return lib_name(variant); }
bool run_jitter(const char*) { return false; }
void heap_phases(int* fds, int nfds) {
    heap_mark();
    struct event_base* b = new_base();
    heap_report("create");
    for (int i = 0; i < nfds; ++i) event_add(event_new(b, fds[i], EV_READ | EV_PERSIST, ev_cb, NULL), NULL);
    heap_report("fds");
    for (int i = 0; i < 100; ++i) {
        struct timeval tv = {10 + i, 0};
        evtimer_add(evtimer_new(b, nop_timer, NULL), &tv);
    }
    heap_report("timers");
    event_base_loop(b, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    heap_report("iterate");
}

#elif BENCH_LIB == BENCH_LIBUV
uv_loop_t g_loop;
std::vector<uv_poll_t> g_polls;
std::vector<uv_timer_t> g_timers;

const char* lib_name(const char*) { return "libuv-epoll"; }
bool init(const char*) { return uv_loop_init(&g_loop) == 0; }
void poll_cb(uv_poll_t* h, int, int) {
    int idx = static_cast<int>(reinterpret_cast<intptr_t>(h->data));
    ring_read(g_rd[idx], idx);
}
void watch_ring() {
    g_polls.resize(g_pairs);
    for (int i = 0; i < g_pairs; ++i) {
        uv_poll_init(&g_loop, &g_polls[i], g_rd[i]);
        g_polls[i].data = reinterpret_cast<void*>(static_cast<intptr_t>(i));
        uv_poll_start(&g_polls[i], UV_READABLE, poll_cb);
    }
}
void run_nowait() { uv_run(&g_loop, UV_RUN_NOWAIT); }
bool has_timers() { return true; }
void nop_timer(uv_timer_t*) {}
void kick_cb(uv_timer_t*) {
    int64_t t0 = now_ns();
    for (size_t k = 0; k < g_ops.size(); ++k) {
        if (g_restart) uv_timer_stop(&g_timers[g_ops[k].timer]);
        uv_timer_start(&g_timers[g_ops[k].timer], nop_timer, g_ops[k].timeout_ms, 0); // restarts if active
    }
    g_churn_ns.push_back(static_cast<double>(now_ns() - t0) / g_ops.size());
}
void run_churn(int runs) {
    g_timers.resize(g_ntimers);
    for (int i = 0; i < g_ntimers; ++i) {
        uv_timer_init(&g_loop, &g_timers[i]);
        uv_timer_start(&g_timers[i], nop_timer, g_initial_ms[i], 0);
    }
    uv_timer_t kick;
    uv_timer_init(&g_loop, &kick);
    for (int r = 0; r < runs; ++r) {
        uv_timer_start(&kick, kick_cb, 0, 0);
        uv_run(&g_loop, UV_RUN_ONCE);
    }
}
const char* jitter_name(const char* variant) { return lib_name(variant); }
bool run_jitter(const char*) { return false; }
void heap_phases(int* fds, int nfds) {
    static uv_loop_t l;
    static uv_poll_t polls[128];
    static uv_timer_t tms[128];
    heap_mark();
    uv_loop_init(&l);
    heap_report("create");
    for (int i = 0; i < nfds; ++i) {
        uv_poll_init(&l, &polls[i], fds[i]);
        uv_poll_start(&polls[i], UV_READABLE, poll_cb);
    }
    heap_report("fds");
    for (int i = 0; i < 100; ++i) {
        uv_timer_init(&l, &tms[i]);
        uv_timer_start(&tms[i], nop_timer, 10000 + 1000 * i, 0);
    }
    heap_report("timers");
    uv_run(&l, UV_RUN_NOWAIT);
    heap_report("iterate");
}
#else
#error "BENCH_LIB must be 0..4"
#endif

void make_pairs(int n) {
    g_pairs = n;
    g_rd = new int[n];
    g_wr = new int[n];
    for (int i = 0; i < n; ++i) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) die("socketpair");
        if (sv[0] >= FD_SETSIZE && !g_any_fd) {
            fprintf(stderr, "bench: fd %d >= FD_SETSIZE\n", sv[0]);
            exit(2);
        }
        g_rd[i] = sv[0];
        g_wr[i] = sv[1];
    }
}

int usage() {
    fprintf(stderr,
            "usage: bench ring <variant> <pairs> <active> <writes> <runs>\n"
            "       bench timers <variant> <timers> <ops> <runs> [rearm|restart]\n"
            "       bench heap <variant>\n"
            "       bench jitter <variant> <ticks> <period_us>\n");
    return 2;
}

} // namespace

int main(int argc, char** argv) {
    if (argc < 3) return usage();
    const char* mode = argv[1];
    const char* variant = argv[2];
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    if (strcmp(mode, "heap") == 0) {
        g_heapcount = reinterpret_cast<heapcount_fn>(dlsym(RTLD_DEFAULT, "heapcount_read"));
        if (!g_heapcount) fprintf(stderr, "bench: heapcount.so not preloaded, counts are 0\n");
        if (!init(variant)) return 3;
        make_pairs(100);
        printf("lib=%s\n", lib_name(variant));
        heap_phases(g_rd, 100);
        return 0;
    }
    if (!init(variant)) return 3;
    if (strcmp(variant, "epoll") == 0) g_any_fd = true; // every library's epoll takes fds >= FD_SETSIZE

    if (strcmp(mode, "ring") == 0) {
        if (argc < 7) return usage();
        int pairs = atoi(argv[3]), active = atoi(argv[4]), writes = atoi(argv[5]), runs = atoi(argv[6]);
        if (pairs < 1 || active < 1 || active > pairs || writes < 0 || runs < 1) return usage();
        make_pairs(pairs);
        watch_ring();
        run_nowait(); // settle: first iteration of every library does one-time work
        std::vector<double> us_iter, ns_event;
        long iters_total = 0, events_total = 0;
        int space = pairs / active;
        for (int r = 0; r < runs + 2; ++r) { // two warm-up runs
            g_fired = 0;
            for (int i = 0; i < active; ++i, ++g_fired)
                if (write(g_wr[i * space], "e", 1) != 1) ++g_failures;
            g_count = 0;
            g_writes = writes;
            long iters = 0;
            int64_t t0 = now_ns();
            do {
                run_nowait();
                ++iters;
            } while (g_count != g_fired);
            int64_t dt = now_ns() - t0;
            if (r < 2) continue;
            us_iter.push_back(dt / 1e3 / iters);
            ns_event.push_back(static_cast<double>(dt) / g_count);
            iters_total += iters;
            events_total += g_count;
        }
        printf("lib=%s pairs=%d active=%d writes=%d runs=%d us_per_iter=%.4f ns_per_event=%.1f iters=%.1f "
               "events=%.1f failures=%d\n",
               lib_name(variant), pairs, active, writes, runs, median(us_iter), median(ns_event),
               static_cast<double>(iters_total) / runs, static_cast<double>(events_total) / runs, g_failures);
        return g_failures ? 1 : 0;
    }
    if (strcmp(mode, "jitter") == 0) {
        if (argc < 5) return usage();
        g_jticks = atoi(argv[3]);
        int period_us = atoi(argv[4]);
        if (g_jticks < 10 || period_us < 1) return usage();
        g_jperiod_ns = static_cast<int64_t>(period_us) * 1000;
        g_late_us.reserve(static_cast<size_t>(g_jticks));
        if (!run_jitter(variant)) return 3;
        const int slack_ns = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0); // as the run left it
        std::vector<double> sorted(g_late_us);
        std::sort(sorted.begin(), sorted.end());
        const size_t n = sorted.size();
        const size_t i99 = static_cast<size_t>(std::ceil(0.99 * static_cast<double>(n))) - 1;
        // Drift: how far the lateness moved from the first tenth of the run
        // to the last (0 for a timer whose deadlines do not slide).
        const size_t tenth = n / 10;
        std::vector<double> first(g_late_us.begin(), g_late_us.begin() + static_cast<long>(tenth));
        std::vector<double> last(g_late_us.end() - static_cast<long>(tenth), g_late_us.end());
        printf("lib=%s ticks=%d period_us=%d p50_us=%.2f p99_us=%.2f max_us=%.2f min_us=%.2f drift_us=%.2f "
               "early=%d slack_ns=%d\n",
               jitter_name(variant), g_jticks, period_us, median(g_late_us), sorted[i99], sorted[n - 1], sorted[0],
               median(last) - median(first), g_early, slack_ns);
        return 0;
    }
    if (strcmp(mode, "timers") == 0) {
        if (argc < 6) return usage();
        int ntimers = atoi(argv[3]), nops = atoi(argv[4]), runs = atoi(argv[5]);
        if (ntimers < 2 || nops < 1 || runs < 1) return usage();
        const char* form = argc > 6 ? argv[6] : "rearm";
        if (strcmp(form, "rearm") != 0 && strcmp(form, "restart") != 0) return usage();
        g_restart = strcmp(form, "restart") == 0;
        if (!has_timers()) return 3;
        make_churn(ntimers, nops);
        run_churn(runs + 1);
        g_churn_ns.erase(g_churn_ns.begin()); // warm-up
        printf("lib=%s form=%s timers=%d ops=%d runs=%d ns_per_op=%.2f\n", lib_name(variant), form, ntimers, nops,
               runs, median(g_churn_ns));
        return 0;
    }
    return usage();
}
