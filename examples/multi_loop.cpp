// multi_loop.cpp - one loop per core: an echo server whose acceptor hands
// each connection to a worker loop through that worker's mailbox.
//
//     multi_loop [--workers N] [--port N] [--bind ADDR]   (N: default the number of CPUs)
//     then: nc 127.0.0.1 PORT
//
// How microloop uses several cores: not one loop shared by threads, but one
// loop per thread. The main thread's loop accepts connections and handles
// SIGINT/SIGTERM; it gives each new socket to the next worker, round-robin,
// with box.post() - the only cross-thread call. A worker owns its sockets
// from then on: its loop, its client table, its counters are touched by its
// thread alone, so it takes no locks. On SIGTERM the main loop stops, stops
// every worker's loop (stop() may be called from any thread), joins the
// threads, reports which worker served how many connections, and exits 0.
// Workers and their tables are sized at compile time; the threads are made at
// start-up, and nothing is allocated after.
#include <microloop.hpp>

#include "server_setup.hpp"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

using namespace std::chrono;

namespace {

// ---- limits: sized at compile time ------------------------------------------------
const int max_workers = 8;
const int clients_per_worker = 64; // a full worker closes what it is handed
const size_t buffer_size = 4096;
const milliseconds accept_retry(100);

typedef microloop::loop<clients_per_worker, 2, 0, 0> worker_loop;
typedef microloop::loop<1, 2, 2, 0> acceptor_loop;

struct client {
    int fd; // -1: free
    microloop::io_handle io;
    size_t start, end;
    bool eof;
    char buf[buffer_size];
};

struct worker {
    worker_loop loop;
    microloop::mailbox<64> box; // the acceptor posts sockets here
    pthread_t thread;
    int index;
    unsigned long connections; // written by this worker's thread only
    unsigned long long bytes;
    client clients[clients_per_worker];

    worker() : box(loop) {}
};

struct acceptor {
    acceptor_loop loop;
    int listener;
    microloop::io_handle accept_io;
    int nworkers, next;
    unsigned long handed, refused;
};

// At namespace scope: the acceptor's loop first, then the workers'.
acceptor main_loop;
worker workers[max_workers];

// ---- a worker: an echo server for the sockets it is handed -------------------------
void close_client(worker& w, client& c) {
    w.loop.unwatch(c.io);
    close(c.fd);
    c.fd = -1;
}

void on_client(worker& w, client& c, unsigned events) {
    if (events & microloop::io_error) return close_client(w, c);
    if ((events & microloop::readable) && c.end < buffer_size) {
        ssize_t n = recv(c.fd, c.buf + c.end, buffer_size - c.end, 0);
        if (n > 0) c.end += static_cast<size_t>(n);
        else if (n == 0) c.eof = true;
        else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return close_client(w, c);
    }
    while (c.start < c.end) {
        ssize_t n = send(c.fd, c.buf + c.start, c.end - c.start, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno == EINTR) continue;
            return close_client(w, c);
        }
        c.start += static_cast<size_t>(n);
        w.bytes += static_cast<unsigned long long>(n);
    }
    if (c.start == c.end) c.start = c.end = 0;
    if (c.eof && c.start == c.end) return close_client(w, c);
    // Backpressure: no reading while the buffer is full, writable only while there is output.
    w.loop.modify(c.io, (!c.eof && c.end < buffer_size ? microloop::readable : 0u) |
                            (c.start < c.end ? microloop::writable : 0u));
}

// Runs in the worker's thread (posted through its mailbox).
void adopt(worker& w, int fd) {
    client* c = nullptr;
    for (int k = 0; k < clients_per_worker && !c; ++k)
        if (w.clients[k].fd < 0) c = &w.clients[k];
    if (!c) { // this worker is full
        close(fd);
        return;
    }
    worker* wp = &w;
    c->io = w.loop.watch(fd, microloop::readable, [wp, c](microloop::io_event ev) { on_client(*wp, *c, ev.events); });
    if (!c->io) {
        close(fd);
        return;
    }
    c->fd = fd;
    c->start = c->end = 0;
    c->eof = false;
    ++w.connections;
}

void* run_worker(void* arg) {
    worker& w = *static_cast<worker*>(arg);
    microloop::block_signals(); // signals are the acceptor's
    microloop::error_code e = w.loop.run();
    if (e) fprintf(stderr, "multi_loop: worker %d: %s\n", w.index, e.message());
    for (int k = 0; k < clients_per_worker; ++k)
        if (w.clients[k].fd >= 0) close_client(w, w.clients[k]);
    return nullptr;
}

// ---- the acceptor ------------------------------------------------------------------
void on_accept() {
    for (int i = 0; i < 16; ++i) {
        int fd = accept4(main_loop.listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                main_loop.loop.modify(main_loop.accept_io, 0);
                main_loop.loop.after(accept_retry, [](microloop::timer_event) {
                    main_loop.loop.modify(main_loop.accept_io, microloop::readable);
                });
            }
            return;
        }
        worker* w = &workers[main_loop.next];
        main_loop.next = (main_loop.next + 1) % main_loop.nworkers;
        // 16 bytes of capture: the worker and the socket.
        if (w->box.post([w, fd] { adopt(*w, fd); })) { // its mailbox is full: that worker is far behind
            close(fd);
            ++main_loop.refused;
            continue;
        }
        ++main_loop.handed;
    }
}

void usage(FILE* f) {
    fprintf(f, "usage: multi_loop [--workers N] [--port N] [--bind ADDR]\n"
               "  --workers N  worker loops, 1..%d (default: the number of CPUs)\n"
               "  --port N     TCP port (default 7002; 0 picks a free one)\n"
               "  --bind ADDR  IPv4 address to listen on (default 127.0.0.1)\n",
            max_workers);
}

} // namespace

int main(int argc, char** argv) {
    long long nworkers = sysconf(_SC_NPROCESSORS_ONLN);
    example::listen_options opt = {7002, "127.0.0.1"};
    auto other_option = [&nworkers](const char* name, const char* value) -> size_t {
        if (strcmp(name, "--workers") != 0 || !value) return 0;
        nworkers = example::parse_number(value, 1, max_workers);
        return nworkers < 0 ? 0 : 2;
    };
    int status = example::parse_options(argc, argv, opt, usage, other_option);
    if (status >= 0) return status;
    if (nworkers < 1) nworkers = 1;
    if (nworkers > max_workers) nworkers = max_workers;
    main_loop.nworkers = static_cast<int>(nworkers);
    microloop::ignore_sigpipe();
    main_loop.listener = example::listen_on("multi_loop", opt.bind_addr, opt.port);
    if (main_loop.listener < 0) return 1;
    main_loop.accept_io =
        main_loop.loop.watch(main_loop.listener, microloop::readable, [](microloop::io_event) { on_accept(); });
    if (!main_loop.accept_io || !example::stop_on_signals(main_loop.loop)) {
        fprintf(stderr, "multi_loop: cannot set up the loop\n");
        return 1;
    }
    int started = 0;
    for (; started < main_loop.nworkers; ++started) {
        worker& w = workers[started];
        w.index = started;
        for (int k = 0; k < clients_per_worker; ++k) w.clients[k].fd = -1;
        if (pthread_create(&w.thread, nullptr, run_worker, &w) != 0) {
            fprintf(stderr, "multi_loop: cannot start worker %d\n", started);
            main_loop.loop.stop();
            break;
        }
    }
    microloop::error_code e = main_loop.loop.run();
    // Stop accepting, then stop every worker (stop() is thread-safe) and wait for it.
    main_loop.loop.unwatch(main_loop.accept_io);
    close(main_loop.listener);
    for (int i = 0; i < started; ++i) {
        workers[i].loop.stop();
        pthread_join(workers[i].thread, nullptr);
    }
    for (int i = 0; i < started; ++i)
        printf("worker %d: %lu connections, %llu bytes echoed\n", i, workers[i].connections, workers[i].bytes);
    printf("multi_loop: %lu connections handed to %d workers, %lu refused\n", main_loop.handed, started,
           main_loop.refused);
    if (e) {
        fprintf(stderr, "multi_loop: loop: %s\n", e.message());
        return 1;
    }
    return 0;
}
