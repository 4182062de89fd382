// chat_server.cpp - a line-based chat room: every line a client sends goes to
// every other client.
//
//     chat_server [--port N] [--bind ADDR]      (port 0: a free one; ADDR 127.0.0.1)
//     then, in two terminals: nc 127.0.0.1 PORT
//
// What it shows: one slow client must not stall the room. Each client has a
// bounded output buffer; a broadcast only appends to it, and the client's
// watcher asks for writable until it drains. A client that does not read
// fills its buffer; the next line that does not fit gets it a short goodbye
// and it is dropped, while the others carry on. The kernel's send buffer is
// kept small too (SO_SNDBUF), so "does not read" shows up in seconds, not
// megabytes. SIGINT/SIGTERM: stop accepting, close every client, exit 0.
// Nothing is allocated after start-up.
#include <microloop.hpp>

#include "server_setup.hpp"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

using namespace std::chrono;

namespace {

// ---- limits: sized at compile time ------------------------------------------------
const int max_clients = 64;      // then the listening watcher pauses
const size_t max_line = 512;     // a longer line is cut into pieces
const size_t out_size = 8192;    // per client: lines not yet written to it
const int kernel_send_buffer = 16384;
const milliseconds accept_retry(100);

typedef microloop::loop<max_clients + 1, 4, 2, 0> chat_loop;

struct client {
    int fd; // -1: free
    int number;
    microloop::io_handle io;
    size_t in_len;
    size_t out_start, out_end;
    char in[max_line];
    char out[out_size];
};

struct room {
    chat_loop loop;
    int listener;
    microloop::io_handle accept_io;
    int nclients, next_number;
    client clients[max_clients];
    unsigned long long lines, dropped;
};

room chat; // at namespace scope: no guard, no stack

void resume_accepting() { chat.loop.modify(chat.accept_io, microloop::readable); }

void close_client(client& c) {
    chat.loop.unwatch(c.io);
    close(c.fd);
    c.fd = -1;
    --chat.nclients;
    resume_accepting();
}

// false: the client is gone.
bool flush(client& c) {
    while (c.out_start < c.out_end) {
        ssize_t n = send(c.fd, c.out + c.out_start, c.out_end - c.out_start, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            close_client(c);
            return false;
        }
        c.out_start += static_cast<size_t>(n);
    }
    if (c.out_start == c.out_end) c.out_start = c.out_end = 0;
    chat.loop.modify(c.io, microloop::readable | (c.out_start < c.out_end ? microloop::writable : 0u));
    return true;
}

void drop_slow(client& c) {
    static const char bye[] = "* you are not reading: disconnected\n";
    // Best effort: its socket buffer is probably full; no waiting for it.
    if (send(c.fd, bye, sizeof bye - 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) { /* closing anyway */ }
    printf("client %d dropped: its output buffer overflowed\n", c.number);
    fflush(stdout);
    ++chat.dropped;
    close_client(c);
}

// Queues text for c; writing happens when its socket is writable.
void queue(client& c, const char* text, size_t len) {
    if (c.out_end + len > out_size && c.out_start > 0) { // make room at the front
        memmove(c.out, c.out + c.out_start, c.out_end - c.out_start);
        c.out_end -= c.out_start;
        c.out_start = 0;
    }
    if (c.out_end + len > out_size) {
        drop_slow(c);
        return;
    }
    memcpy(c.out + c.out_end, text, len);
    c.out_end += len;
    chat.loop.modify(c.io, microloop::readable | microloop::writable);
}

void broadcast(const client* from, const char* text, size_t len) {
    for (int k = 0; k < max_clients; ++k) {
        client& c = chat.clients[k];
        if (c.fd >= 0 && &c != from) queue(c, text, len);
    }
}

void say(const client& from, const char* line, size_t len) {
    char msg[max_line + 32];
    int n = snprintf(msg, sizeof msg, "[%d] %.*s\n", from.number, static_cast<int>(len), line);
    ++chat.lines;
    broadcast(&from, msg, static_cast<size_t>(n) < sizeof msg ? static_cast<size_t>(n) : sizeof msg - 1);
}

void announce(const client& who, const char* what) {
    char msg[64];
    int n = snprintf(msg, sizeof msg, "* %d %s\n", who.number, what);
    broadcast(&who, msg, static_cast<size_t>(n));
}

void on_client(client& c, unsigned events) {
    if (events & microloop::io_error) return close_client(c);
    if ((events & microloop::writable) && !flush(c)) return;
    if (!(events & microloop::readable)) return;
    ssize_t n = recv(c.fd, c.in + c.in_len, max_line - c.in_len, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        close_client(c);
        announce(c, "left"); // its number is still there; its fd is not: it hears nothing

        return;
    }
    if (n < 0) return;
    c.in_len += static_cast<size_t>(n);
    // Every complete line goes out; a full buffer without one is a line too.
    size_t start = 0;
    for (size_t i = 0; i < c.in_len; ++i) {
        if (c.in[i] != '\n') continue;
        size_t end = i > start && c.in[i - 1] == '\r' ? i - 1 : i;
        say(c, c.in + start, end - start);
        start = i + 1;
    }
    if (start == 0 && c.in_len == max_line) { // no line end in a full buffer: a line of its own
        say(c, c.in, c.in_len);
        start = c.in_len;
    }
    memmove(c.in, c.in + start, c.in_len - start);
    c.in_len -= start;
}

void on_accept() {
    while (chat.nclients < max_clients) {
        int fd = accept4(chat.listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                chat.loop.modify(chat.accept_io, 0); // out of descriptors: try again a little later
                chat.loop.after(accept_retry, [](microloop::timer_event) { resume_accepting(); });
            }
            return;
        }
        int size = kernel_send_buffer;
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
        client* c = nullptr;
        for (int k = 0; k < max_clients && !c; ++k)
            if (chat.clients[k].fd < 0) c = &chat.clients[k];
        c->fd = fd;
        c->number = ++chat.next_number;
        c->in_len = c->out_start = c->out_end = 0;
        c->io = chat.loop.watch(fd, microloop::readable, [c](microloop::io_event ev) { on_client(*c, ev.events); });
        if (!c->io) {
            close(fd);
            c->fd = -1;
            continue;
        }
        ++chat.nclients;
        char hello[64];
        int n = snprintf(hello, sizeof hello, "* welcome, you are %d\n", c->number);
        queue(*c, hello, static_cast<size_t>(n));
        announce(*c, "joined");
    }
    chat.loop.modify(chat.accept_io, 0); // full: resumed when one leaves
}

void usage(FILE* f) {
    fprintf(f, "usage: chat_server [--port N] [--bind ADDR]\n"
               "  --port N     TCP port (default 7001; 0 picks a free one)\n"
               "  --bind ADDR  IPv4 address to listen on (default 127.0.0.1)\n");
}

} // namespace

int main(int argc, char** argv) {
    example::listen_options opt = {7001, "127.0.0.1"};
    int status = example::parse_options(argc, argv, opt, usage);
    if (status >= 0) return status;
    microloop::ignore_sigpipe();
    for (int k = 0; k < max_clients; ++k) chat.clients[k].fd = -1;
    chat.listener = example::listen_on("chat_server", opt.bind_addr, opt.port, 64);
    if (chat.listener < 0) return 1;
    chat.accept_io = chat.loop.watch(chat.listener, microloop::readable, [](microloop::io_event) { on_accept(); });
    if (!chat.accept_io || !example::stop_on_signals(chat.loop)) {
        fprintf(stderr, "chat_server: cannot set up the loop\n");
        return 1;
    }
    microloop::error_code e = chat.loop.run();
    chat.loop.unwatch(chat.accept_io);
    close(chat.listener);
    for (int k = 0; k < max_clients; ++k)
        if (chat.clients[k].fd >= 0) close_client(chat.clients[k]);
    printf("chat_server: %d clients, %llu lines, %llu dropped for not reading\n", chat.next_number, chat.lines,
           chat.dropped);
    if (e) {
        fprintf(stderr, "chat_server: loop: %s\n", e.message());
        return 1;
    }
    return 0;
}
