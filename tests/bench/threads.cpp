// tests/bench/threads.cpp - microloop's worker pool and mailbox against libuv's
// uv_queue_work and uv_async_send. Compiled once per library with
// -DBENCH_LIB=1 (microloop) or 4 (libuv); run by tests/bench/threads.sh.
//
//   threads submit  <n>            round trip of an empty job: submit in the
//                                  loop's thread -> worker -> done in the loop's
//                                  thread, one at a time; p50/p99 in ns
//   threads mailbox <posters> <n>  <posters> threads each hand <n> items to the
//                                  loop; items per second, end to end
//
// libuv has no bounded multi-producer mailbox: its peer is what libuv programs
// write, a mutex-protected queue plus uv_async_send() (which coalesces wake-ups
// and carries no data). Both queues hold 1024 items and a full one is retried.
// Each mode prints one "key=value ..." line.
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <vector>

#define BENCH_MICROLOOP 1
#define BENCH_LIBUV 4

#if BENCH_LIB == BENCH_MICROLOOP
#include <microloop.hpp>
#elif BENCH_LIB == BENCH_LIBUV
#include <uv.h>
#else
#error "BENCH_LIB must be 1 (microloop) or 4 (libuv)"
#endif

namespace {

int64_t now_ns() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

const char* lib_name() { return BENCH_LIB == BENCH_MICROLOOP ? "microloop" : "libuv"; }

void report_latency(std::vector<int64_t>& v) {
    std::sort(v.begin(), v.end());
    size_t n = v.size();
    printf("submit lib=%s n=%zu p50_ns=%lld p99_ns=%lld min_ns=%lld\n", lib_name(), n,
           static_cast<long long>(v[n / 2]), static_cast<long long>(v[n * 99 / 100]), static_cast<long long>(v[0]));
}

// ---- the posters, shared ----------------------------------------------------------
struct poster_args {
    int count;
    std::atomic<bool>* go;
    long retries;
};
std::atomic<long> g_received(0);
long g_expected;
int64_t g_t0;

bool post_one(); // per library: false when the queue is full

void* poster(void* p) {
    poster_args* a = static_cast<poster_args*>(p);
    while (!a->go->load()) {
    }
    for (int i = 0; i < a->count; ++i)
        while (!post_one()) {
            ++a->retries;
            sched_yield();
        }
    return nullptr;
}

#if BENCH_LIB == BENCH_MICROLOOP

microloop::loop<> g_loop;
microloop::worker_pool<4, 16>* g_pool;
microloop::mailbox<1024>* g_box;
std::vector<int64_t>* g_lat;
int g_left;
int64_t g_sent;

void submit_next() {
    g_sent = now_ns();
    if (g_pool->submit([] {}, [](microloop::work_event) {
            g_lat->push_back(now_ns() - g_sent);
            if (--g_left > 0) submit_next();
        }))
        abort();
}

void bench_submit(int n) {
    microloop::worker_pool<4, 16> pool(g_loop);
    std::vector<int64_t> lat;
    lat.reserve(static_cast<size_t>(n));
    g_pool = &pool;
    g_lat = &lat;
    g_left = n;
    submit_next();
    g_loop.run();
    report_latency(lat);
}

bool post_one() {
    return !g_box->post([] {
        if (g_received.fetch_add(1, std::memory_order_relaxed) + 1 == g_expected) g_loop.stop();
    });
}

void setup_mailbox() {
    static microloop::mailbox<1024> box(g_loop);
    g_box = &box;
}
void run_mailbox_loop() { g_loop.run(); }

#else // libuv

uv_loop_t* g_loop;
std::vector<int64_t>* g_lat;
int g_left;
int64_t g_sent;
uv_work_t g_req;

void work_cb(uv_work_t*) {}
void after_cb(uv_work_t*, int) {
    g_lat->push_back(now_ns() - g_sent);
    if (--g_left > 0) {
        g_sent = now_ns();
        uv_queue_work(g_loop, &g_req, work_cb, after_cb);
    }
}

void bench_submit(int n) {
    g_loop = uv_default_loop();
    std::vector<int64_t> lat;
    lat.reserve(static_cast<size_t>(n));
    g_lat = &lat;
    g_left = n;
    g_sent = now_ns();
    uv_queue_work(g_loop, &g_req, work_cb, after_cb);
    uv_run(g_loop, UV_RUN_DEFAULT);
    report_latency(lat);
}

// The usual libuv mailbox: a locked ring of function pointers and an async
// handle to wake the loop.
typedef void (*item_fn)();
uv_async_t g_async;
uv_mutex_t g_lock;
item_fn g_ring[1024];
size_t g_head, g_tail;

void count_item() {
    if (g_received.fetch_add(1, std::memory_order_relaxed) + 1 == g_expected) uv_close(reinterpret_cast<uv_handle_t*>(&g_async), nullptr);
}

bool post_one() {
    uv_mutex_lock(&g_lock);
    bool ok = g_tail - g_head < 1024;
    if (ok) g_ring[g_tail++ % 1024] = count_item;
    uv_mutex_unlock(&g_lock);
    if (ok) uv_async_send(&g_async);
    return ok;
}

void drain_cb(uv_async_t*) {
    for (;;) {
        item_fn batch[64];
        size_t n = 0;
        uv_mutex_lock(&g_lock);
        while (n < 64 && g_head != g_tail) batch[n++] = g_ring[g_head++ % 1024];
        uv_mutex_unlock(&g_lock);
        if (n == 0) return;
        for (size_t i = 0; i < n; ++i) batch[i]();
    }
}

void setup_mailbox() {
    g_loop = uv_default_loop();
    uv_mutex_init(&g_lock);
    uv_async_init(g_loop, &g_async, drain_cb);
}
void run_mailbox_loop() { uv_run(g_loop, UV_RUN_DEFAULT); }

#endif

void bench_mailbox(int posters, int per_poster) {
    std::atomic<bool> go(false);
    std::vector<pthread_t> threads(static_cast<size_t>(posters));
    std::vector<poster_args> args(static_cast<size_t>(posters));
    g_expected = static_cast<long>(posters) * per_poster;
    setup_mailbox();
    for (int i = 0; i < posters; ++i) {
        args[static_cast<size_t>(i)] = poster_args{per_poster, &go, 0};
        pthread_create(&threads[static_cast<size_t>(i)], nullptr, poster, &args[static_cast<size_t>(i)]);
    }
    // The loop runs in this thread; the posters start once it exists.
    struct starter {
        static void* run(void* p) {
            struct timespec ts = {0, 20 * 1000 * 1000};
            nanosleep(&ts, nullptr); // let the loop reach its wait
            g_t0 = now_ns();
            static_cast<std::atomic<bool>*>(p)->store(true);
            return nullptr;
        }
    };
    pthread_t st;
    pthread_create(&st, nullptr, starter::run, &go);
    run_mailbox_loop();
    int64_t took = now_ns() - g_t0;
    long retries = 0;
    for (int i = 0; i < posters; ++i) {
        pthread_join(threads[static_cast<size_t>(i)], nullptr);
        retries += args[static_cast<size_t>(i)].retries;
    }
    pthread_join(st, nullptr);
    printf("mailbox lib=%s posters=%d items=%ld ns_per_item=%.1f mitems_per_s=%.2f full_retries=%ld\n", lib_name(),
           posters, g_expected, static_cast<double>(took) / static_cast<double>(g_expected),
           static_cast<double>(g_expected) * 1000.0 / static_cast<double>(took), retries);
}

} // namespace

int main(int argc, char** argv) {
    if (argc >= 3 && strcmp(argv[1], "submit") == 0) {
        bench_submit(atoi(argv[2]));
        return 0;
    }
    if (argc >= 4 && strcmp(argv[1], "mailbox") == 0) {
        bench_mailbox(atoi(argv[2]), atoi(argv[3]));
        return 0;
    }
    fprintf(stderr, "usage: threads submit <n> | threads mailbox <posters> <items per poster>\n");
    return 2;
}
