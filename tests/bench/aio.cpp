// tests/bench/aio.cpp - 4 KiB reads at random offsets of a cached file, Q in
// flight: microloop's aio<N> on its thread engine and on POSIX AIO against
// libuv's uv_fs_read (its thread pool, 4 threads). Compiled once per library
// with -DBENCH_LIB=1 (microloop) or 4 (libuv); run by tests/bench/aio.sh.
//
//   aio tput <engine> <file> <Q> <fds> <ops>   ops/s with Q reads in flight,
//                                              spread round-robin over <fds>
//                                              descriptors of the same file
//   aio lat  <engine> <file> <ops>             one read at a time: p50/p99 in ns
//
// engine: thread or posix (microloop), uv (libuv), pread (the floor: a
// blocking pread() loop in the calling thread, Q = 1 only; built with
// microloop). One "key=value" line each. Built with -DMICROLOOP_AIO_NOWAIT=0
// the engines hand every read to a thread (microloop-thread-handoff and
// microloop-posix-handoff: what a read of uncached data costs, and the
// engines before reads from the page cache were served in the loop's thread).
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

#define BENCH_MICROLOOP 1
#define BENCH_LIBUV 4

#if BENCH_LIB == BENCH_MICROLOOP
#include <microloop.hpp>
#include <microloop/aio.hpp>
#elif BENCH_LIB == BENCH_LIBUV
#include <uv.h>
#else
#error "BENCH_LIB must be 1 (microloop) or 4 (libuv)"
#endif

namespace {

const size_t block = 4096;
const size_t max_q = 64;
const int max_fds = 8;

int64_t now_ns() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

uint32_t g_rng = 2463534242u;
uint64_t g_blocks; // blocks in the file
off_t next_offset() {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 17;
    g_rng ^= g_rng << 5;
    return static_cast<off_t>((g_rng % g_blocks) * block);
}

int g_fds[max_fds];
int g_nfds;
long g_left;     // reads still to submit
long g_done;     // reads completed
long g_errors;   // failed or short reads
int64_t g_start; // latency mode: when the read in flight was submitted
std::vector<int64_t> g_lat;
bool g_latency;
alignas(4096) char g_bufs[max_q][block];

void account(ssize_t r) {
    ++g_done;
    if (r != static_cast<ssize_t>(block)) ++g_errors;
    if (g_latency) g_lat.push_back(now_ns() - g_start);
}

#if BENCH_LIB == BENCH_MICROLOOP
template <class Disk>
struct runner {
    microloop::loop<4, 4> loop;
    Disk disk;
    runner() : disk(loop) {}
    void start(size_t slot) {
        if (g_left <= 0) return;
        --g_left;
        int fd = g_fds[g_left % g_nfds];
        if (g_latency) g_start = now_ns();
        runner* self = this;
        microloop::aio_handle h = disk.read(fd, g_bufs[slot], block, next_offset(), [self, slot](microloop::aio_event ev) {
            account(ev.result);
            self->start(slot);
        });
        if (!h) {
            fprintf(stderr, "aio bench: submit: %s (%d)\n", h.error().message(), h.error().sys());
            exit(2);
        }
    }
    void go(size_t q) {
        for (size_t i = 0; i < q; ++i) start(i);
        loop.run();
    }
};
template <class Disk>
void run_engine(size_t q) {
    static runner<Disk> r; // 64 x 4 KiB buffers are global; the module is big for a stack
    r.go(q);
}
// What a program that may block does: one pread() after the other.
void run_pread() {
    while (g_left > 0) {
        --g_left;
        int fd = g_fds[g_left % g_nfds];
        if (g_latency) g_start = now_ns();
        account(pread(fd, g_bufs[0], block, next_offset()));
    }
}
void run(const char* engine, size_t q) {
    if (strcmp(engine, "posix") == 0) run_engine<microloop::aio<max_q, microloop::posix_aio_engine> >(q);
    else if (strcmp(engine, "pread") == 0) run_pread();
    else run_engine<microloop::aio<max_q> >(q);
}
#else
uv_loop_t* g_loop;
uv_fs_t g_reqs[max_q];
void start(size_t slot);
void on_read(uv_fs_t* req) {
    account(req->result);
    uv_fs_req_cleanup(req);
    start(static_cast<size_t>(req - g_reqs));
}
void start(size_t slot) {
    if (g_left <= 0) return;
    --g_left;
    int fd = g_fds[g_left % g_nfds];
    if (g_latency) g_start = now_ns();
    uv_buf_t b = uv_buf_init(g_bufs[slot], static_cast<unsigned>(block));
    if (uv_fs_read(g_loop, &g_reqs[slot], fd, &b, 1, next_offset(), on_read) != 0) {
        fprintf(stderr, "aio bench: uv_fs_read failed\n");
        exit(2);
    }
}
void run(const char*, size_t q) {
    g_loop = uv_default_loop();
    for (size_t i = 0; i < q; ++i) start(i);
    uv_run(g_loop, UV_RUN_DEFAULT);
}
#endif

void open_fds(const char* path, int n) {
    g_nfds = n;
    for (int i = 0; i < n; ++i) {
        g_fds[i] = open(path, O_RDONLY | O_CLOEXEC);
        if (g_fds[i] < 0) {
            perror(path);
            exit(2);
        }
    }
    struct stat st;
    if (fstat(g_fds[0], &st) != 0 || st.st_size < static_cast<off_t>(block)) {
        fprintf(stderr, "aio bench: %s is too small\n", path);
        exit(2);
    }
    g_blocks = static_cast<uint64_t>(st.st_size) / block;
}

const char* lib_name(const char* engine) {
    if (BENCH_LIB == BENCH_LIBUV) return "libuv";
    if (strcmp(engine, "pread") == 0) return "pread-floor";
#if BENCH_LIB == BENCH_MICROLOOP && !MICROLOOP_DETAIL_AIO_NOWAIT
    return strcmp(engine, "posix") == 0 ? "microloop-posix-handoff" : "microloop-thread-handoff";
#else
    return strcmp(engine, "posix") == 0 ? "microloop-posix" : "microloop-thread";
#endif
}

} // namespace

int main(int argc, char** argv) {
    if (argc >= 6 && strcmp(argv[1], "tput") == 0) {
        size_t q = static_cast<size_t>(atoi(argv[4]));
        int fds = atoi(argv[5]);
        long ops = argc > 6 ? atol(argv[6]) : 200000;
        if (q < 1 || q > max_q || fds < 1 || fds > max_fds) return 2;
        if (strcmp(argv[2], "pread") == 0 && q != 1) return 2; // one at a time, by definition
        open_fds(argv[3], fds);
        g_left = ops;
        int64_t t0 = now_ns();
        run(argv[2], q);
        int64_t t1 = now_ns();
        printf("tput lib=%s q=%zu fds=%d ops=%ld errors=%ld ops_per_s=%.0f\n", lib_name(argv[2]), q, fds, g_done,
               g_errors, static_cast<double>(g_done) * 1e9 / static_cast<double>(t1 - t0));
        return g_errors != 0;
    }
    if (argc >= 4 && strcmp(argv[1], "lat") == 0) {
        long ops = argc > 4 ? atol(argv[4]) : 20000;
        open_fds(argv[3], 1);
        g_latency = true;
        g_lat.reserve(static_cast<size_t>(ops));
        g_left = ops;
        run(argv[2], 1);
        std::sort(g_lat.begin(), g_lat.end());
        size_t n = g_lat.size();
        printf("lat lib=%s n=%zu p50_ns=%lld p99_ns=%lld errors=%ld\n", lib_name(argv[2]), n,
               static_cast<long long>(g_lat[n / 2]), static_cast<long long>(g_lat[n * 99 / 100]), g_errors);
        return g_errors != 0;
    }
    fprintf(stderr, "usage: aio tput <thread|posix|uv> <file> <Q> <fds> [ops] | aio lat <engine> <file> [ops]\n");
    return 2;
}
