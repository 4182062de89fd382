// echo_server.cpp - a TCP echo server on one loop: what every client sends
// comes back to it, byte for byte.
//
//     echo_server [--port N] [--bind ADDR]      (port 0: a free one; ADDR 127.0.0.1)
//     then: nc 127.0.0.1 PORT
//
// What it shows:
//   - accept, read, write back, with every socket non-blocking;
//   - backpressure: a client's bytes wait in its own buffer until they are
//     written back; when the buffer is full the server stops reading from
//     that client (its watcher asks for writable only) until the output
//     drains, so a client that does not read cannot make the server buffer
//     without bound, and the others are not held up;
//   - a clean close: at end of file the rest of the output is written first;
//   - a bounded number of clients: at max_clients the listening watcher is
//     paused (interest 0) and resumed when one leaves;
//   - accept() failing with EMFILE/ENFILE (out of descriptors) does not spin
//     the loop: the listening socket stays readable, so the watcher is paused
//     and a timer resumes it a little later; clients waiting in the backlog
//     are served when descriptors are free again;
//   - SIGINT/SIGTERM: stop accepting, close every client, exit 0.
// Nothing is allocated after start-up: the clients live in a fixed array.
#include <microloop.hpp>

#include "server_setup.hpp"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

using namespace std::chrono;

namespace {

// ---- limits: sized at compile time ------------------------------------------------
const int max_clients = 256;         // more wait in the listen backlog
const size_t buffer_size = 4096;     // per client: bytes read, not yet written back
const int accepts_per_wakeup = 16;   // then let the clients have the loop
const milliseconds accept_retry(100); // after EMFILE/ENFILE

typedef microloop::loop<max_clients + 1, 4, 2, 0> echo_loop;

struct client {
    int fd; // -1: free
    microloop::io_handle io;
    size_t start, end; // buf[start, end) is waiting to be written back
    bool eof;          // the client has shut down its side
    char buf[buffer_size];
};

struct server {
    echo_loop loop;
    int listener;
    microloop::io_handle accept_io;
    microloop::timer_handle retry;
    bool out_of_fds; // accept paused until the retry timer
    int nclients;
    client clients[max_clients];
    unsigned long long accepted, bytes, emfile;
};

server srv; // at namespace scope: no guard, no stack; the loop is built first

void close_client(client& c) {
    srv.loop.unwatch(c.io);
    close(c.fd);
    c.fd = -1;
    if (srv.nclients-- == max_clients && !srv.out_of_fds)
        srv.loop.modify(srv.accept_io, microloop::readable); // room again
}

// Interest follows the buffer: read while there is room, write while there is output.
void update_interest(client& c) {
    if (c.start == c.end) c.start = c.end = 0;
    if (c.eof && c.start == c.end) { // all written back: done
        close_client(c);
        return;
    }
    unsigned want = 0;
    if (!c.eof && c.end < buffer_size) want |= microloop::readable;
    if (c.start < c.end) want |= microloop::writable;
    srv.loop.modify(c.io, want);
}

// false: the client is gone.
bool flush(client& c) {
    while (c.start < c.end) {
        ssize_t n = send(c.fd, c.buf + c.start, c.end - c.start, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return true; // wait for writable
            close_client(c);                                           // EPIPE, ECONNRESET...
            return false;
        }
        c.start += static_cast<size_t>(n);
        srv.bytes += static_cast<unsigned long long>(n);
    }
    return true;
}

void on_client(client& c, unsigned events) {
    if (events & microloop::io_error) {
        close_client(c);
        return;
    }
    if ((events & microloop::readable) && c.end < buffer_size) {
        ssize_t n = recv(c.fd, c.buf + c.end, buffer_size - c.end, 0);
        if (n > 0) {
            c.end += static_cast<size_t>(n);
        } else if (n == 0) {
            c.eof = true;
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            close_client(c);
            return;
        }
    }
    // Write at once rather than wait a round for writable: usually it fits.
    if (!flush(c)) return;
    update_interest(c);
}

void pause_accepting_for_a_while() {
    srv.out_of_fds = true;
    ++srv.emfile;
    srv.loop.modify(srv.accept_io, 0);
    srv.retry = srv.loop.after(accept_retry, [](microloop::timer_event) {
        srv.out_of_fds = false;
        if (srv.nclients < max_clients) srv.loop.modify(srv.accept_io, microloop::readable);
    });
    if (!srv.retry) srv.out_of_fds = false; // no timer: resumed when a client leaves
}

void on_accept() {
    for (int i = 0; i < accepts_per_wakeup && srv.nclients < max_clients; ++i) {
        int fd = accept4(srv.listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                pause_accepting_for_a_while();
                return;
            }
            return; // EAGAIN: none left; ECONNABORTED and the like: the next one
        }
        client* c = nullptr;
        for (int k = 0; k < max_clients; ++k)
            if (srv.clients[k].fd < 0) {
                c = &srv.clients[k];
                break;
            }
        c->fd = fd;
        c->start = c->end = 0;
        c->eof = false;
        c->io = srv.loop.watch(fd, microloop::readable,
                               [c](microloop::io_event ev) { on_client(*c, ev.events); });
        if (!c->io) { // fd beyond FD_SETSIZE, say
            close(fd);
            c->fd = -1;
            continue;
        }
        ++srv.nclients;
        ++srv.accepted;
    }
    if (srv.nclients == max_clients) srv.loop.modify(srv.accept_io, 0); // full: the backlog waits
}

void usage(FILE* f) {
    fprintf(f, "usage: echo_server [--port N] [--bind ADDR]\n"
               "  --port N     TCP port (default 7000; 0 picks a free one)\n"
               "  --bind ADDR  IPv4 address to listen on (default 127.0.0.1)\n");
}

} // namespace

int main(int argc, char** argv) {
    example::listen_options opt = {7000, "127.0.0.1"};
    int status = example::parse_options(argc, argv, opt, usage);
    if (status >= 0) return status;
    microloop::ignore_sigpipe(); // belt and braces: every send() says MSG_NOSIGNAL
    for (int k = 0; k < max_clients; ++k) srv.clients[k].fd = -1;
    srv.listener = example::listen_on("echo_server", opt.bind_addr, opt.port);
    if (srv.listener < 0) return 1;
    srv.accept_io = srv.loop.watch(srv.listener, microloop::readable, [](microloop::io_event) { on_accept(); });
    if (!srv.accept_io || !example::stop_on_signals(srv.loop)) {
        fprintf(stderr, "echo_server: cannot set up the loop\n");
        return 1;
    }
    microloop::error_code e = srv.loop.run();
    // Stopped: no more accepting, every client closed.
    srv.loop.unwatch(srv.accept_io);
    close(srv.listener);
    for (int k = 0; k < max_clients; ++k)
        if (srv.clients[k].fd >= 0) close_client(srv.clients[k]);
    echo_loop::loop_stats st = srv.loop.stats();
    printf("echo_server: %llu clients, %llu bytes echoed, accept out of fds %llu times, at most %zu fd watchers\n",
           srv.accepted, srv.bytes, srv.emfile, st.io.high_water);
    if (e) {
        fprintf(stderr, "echo_server: loop: %s\n", e.message());
        return 1;
    }
    return 0;
}
