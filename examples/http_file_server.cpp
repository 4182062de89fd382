// http_file_server.cpp - a static file server: HTTP/1.1 and 1.0, GET and
// HEAD, keep-alive and pipelining, single byte ranges; files read with
// POSIX AIO so a slow disk never blocks the loop.
//
//     http_file_server [--root DIR] [--port N] [--bind ADDR]
//     then: curl -v http://127.0.0.1:PORT/some/file
//
// The design of the chapter this library grew from, piece by piece:
//   - One entry of a continuation_table per connection holds everything a
//     request needs between events: the socket, the parser's input, the
//     open file and the buffer its chunks are read into. Callbacks capture
//     only the entry's id (8 bytes) and look it up; a stale id is refused.
//   - A chunk is read with aio<N> into that buffer; the socket's watcher is
//     paused meanwhile. The chunk is written when select() says the socket is
//     writable, and the next chunk is read only when the socket has taken all
//     of this one: a slow client costs one buffer, never more.
//   - The root is a jail: the path is percent-decoded first; NUL bytes, ".."
//     segments and targets not starting with '/' are refused; the target is
//     resolved with realpath() and must lie under the real root, so a symlink
//     that leads outside is refused too (403).
//   - Slow clients cannot hold a connection: a deadline for the request head
//     (slowloris), an idle timeout between keep-alive requests, and a send
//     timeout (no progress writing); one timer sweeps them all.
//   - A full connection table answers 503 and closes; accept() out of
//     descriptors pauses the listening watcher and retries on a timer.
// Nothing is allocated per request (or after start-up at all).
#define MICROLOOP_WITH_AIO
#include <microloop.hpp>

#include "http_parser.hpp"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

using namespace std::chrono;

namespace {

// ---- limits: sized at compile time ------------------------------------------------
const int max_conns = 128;              // then 503
const size_t max_request_line = 1024;   // then 414
const size_t max_head = 4096;           // the whole request head; then 431
const size_t chunk_size = 16 * 1024;    // one buffer per connection: response head + file chunks
const int64_t head_timeout_ms = 5000;   // from the first byte of a request to its end
const int64_t idle_timeout_ms = 10000;  // between keep-alive requests
const int64_t send_timeout_ms = 10000;  // without any progress writing
const int64_t linger_timeout_ms = 1000; // reading what a client still sends after our last answer
const milliseconds sweep_period(250);
const milliseconds accept_retry(100);

typedef microloop::loop<max_conns + 1, 4, 2, 0> http_loop;

enum conn_state {
    reading_head, // waiting for (the rest of) a request head
    sending,      // writing buf[out_start, out_end); more of the file may follow
    reading_disk, // an AIO read into buf is in flight; the socket is not watched
    lingering     // last answer sent, our side shut down: draining until EOF, then close
};

// Everything one connection needs between events: the continuation.
struct conn {
    microloop::continuation_id id;
    int sock;
    int file; // -1: none
    microloop::io_handle io;
    conn_state state;
    bool keep_alive;   // after this answer, read the next request
    bool gone;         // closed while an AIO read was in flight: release when it completes
    int64_t deadline_ns;
    size_t in_len;     // bytes in `in`
    size_t consumed;   // bytes of `in` the request being answered used
    uint64_t file_pos, file_end; // the part of the file still to send
    size_t out_start, out_end;
    char in[max_head];
    char buf[chunk_size];
};

typedef microloop::continuation_table<max_conns, sizeof(conn)> conn_table;

struct server {
    http_loop loop;
    conn_table conns;        // before disk: destroyed after it, so no read lands in a freed buffer
    microloop::aio<max_conns> disk;
    int listener;
    microloop::io_handle accept_io;
    bool out_of_fds;
    char root[PATH_MAX];     // the real path of --root
    size_t root_len;
    unsigned long long requests, bytes_sent, rejected_full, timeouts;

    server() : disk(loop) {}
};

server srv; // at namespace scope: 2.6 MB of tables off the stack, and no guard

int64_t now_ns() { return static_cast<int64_t>(srv.loop.now().count()); }
int64_t ms_from_now(int64_t ms) { return now_ns() + ms * 1000000; }

void on_io(microloop::continuation_id id, unsigned events);
void process_input(conn& c);
void on_writable(conn& c);

void close_conn(conn& c) {
    srv.loop.unwatch(c.io);
    close(c.sock);
    c.sock = -1;
    if (c.file >= 0) close(c.file);
    c.file = -1;
    if (c.state == reading_disk) c.gone = true; // the read still writes into c.buf
    else srv.conns.release(c.id);
    if (srv.out_of_fds) return;
    srv.loop.modify(srv.accept_io, microloop::readable);
}

void watch_for(conn& c, unsigned events) { srv.loop.modify(c.io, events); }

// The answer is out. Keep-alive: the next request (maybe already here,
// pipelined). Otherwise shut our side down and drain what the client still
// sends, so closing does not reset the connection under our last answer.
void answer_done(conn& c) {
    if (c.file >= 0) close(c.file);
    c.file = -1;
    memmove(c.in, c.in + c.consumed, c.in_len - c.consumed);
    c.in_len -= c.consumed;
    c.consumed = 0;
    if (!c.keep_alive) {
        shutdown(c.sock, SHUT_WR);
        c.state = lingering;
        c.deadline_ns = ms_from_now(linger_timeout_ms);
        watch_for(c, microloop::readable);
        return;
    }
    c.state = reading_head;
    c.deadline_ns = ms_from_now(c.in_len ? head_timeout_ms : idle_timeout_ms);
    process_input(c);
}

void start_disk_read(conn& c) {
    uint64_t left = c.file_end - c.file_pos;
    size_t room = chunk_size - c.out_end;
    size_t len = left < room ? static_cast<size_t>(left) : room;
    microloop::continuation_id id = c.id;
    microloop::aio_handle h = srv.disk.read(
        c.file, c.buf + c.out_end, len, static_cast<off_t>(c.file_pos), [id](microloop::aio_event ev) {
            conn* cp = srv.conns.get<conn>(id);
            if (!cp) return;
            conn& k = *cp;
            bool gone = k.gone;
            k.state = sending;
            if (gone) { // the client left while the disk was busy
                srv.conns.release(id);
                return;
            }
            if (ev.error || ev.result <= 0) { // an I/O error, or the file shrank: the length promised is a lie now
                close_conn(k);
                return;
            }
            k.out_end += static_cast<size_t>(ev.result);
            k.file_pos += static_cast<uint64_t>(ev.result);
            on_writable(k); // usually the socket takes it at once
        });
    if (!h) { // no AIO slot: cannot happen with one read per connection, but do not hang
        close_conn(c);
        return;
    }
    c.state = reading_disk;
    watch_for(c, 0);
}

void on_writable(conn& c) {
    while (c.out_start < c.out_end) {
        ssize_t n = send(c.sock, c.buf + c.out_start, c.out_end - c.out_start, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                watch_for(c, microloop::writable);
                return;
            }
            close_conn(c);
            return;
        }
        c.out_start += static_cast<size_t>(n);
        srv.bytes_sent += static_cast<unsigned long long>(n);
        c.deadline_ns = ms_from_now(send_timeout_ms);
    }
    c.out_start = c.out_end = 0;
    if (c.file_pos < c.file_end) start_disk_read(c); // the socket drained: the next chunk
    else answer_done(c);
}

const char* reason(int status) {
    switch (status) {
    case 200: return "OK";
    case 206: return "Partial Content";
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 414: return "URI Too Long";
    case 416: return "Range Not Satisfiable";
    case 431: return "Request Header Fields Too Large";
    case 503: return "Service Unavailable";
    }
    return "Error";
}

// An error answer, whole, in c.buf; it closes the connection unless the
// request was well formed (404 and the like keep it).
void answer_error(conn& c, int status, bool head_only, bool keep) {
    c.keep_alive = keep;
    int body = snprintf(c.buf + 1024, 64, "%d %s\n", status, reason(status));
    int n = snprintf(c.buf, 1024,
                     "HTTP/1.1 %d %s\r\nServer: microloop\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                     "%sConnection: %s\r\n\r\n",
                     status, reason(status), body, status == 405 ? "Allow: GET, HEAD\r\n" : "",
                     keep ? "keep-alive" : "close");
    if (!head_only) memmove(c.buf + n, c.buf + 1024, static_cast<size_t>(body));
    c.out_start = 0;
    c.out_end = static_cast<size_t>(n + (head_only ? 0 : body));
    c.file_pos = c.file_end = 0;
    c.state = sending;
    on_writable(c);
}

// Resolves a decoded path under the root: 0 and the real path in out, or
// the status to answer (403 outside the root, 404 missing).
int resolve(const char* path, char* out) {
    char joined[PATH_MAX];
    if (snprintf(joined, sizeof joined, "%s%s", srv.root, path) >= static_cast<int>(sizeof joined)) return 404;
    if (!realpath(joined, out)) return errno == EACCES ? 403 : 404;
    // Under the root: the root itself, or the root and a '/'.
    if (strncmp(out, srv.root, srv.root_len) != 0 || (out[srv.root_len] != '/' && out[srv.root_len] != '\0'))
        return 403;
    return 0;
}

void answer(conn& c, const http::request& r) {
    ++srv.requests;
    bool head_only = r.verb == http::method::head;
    bool keep = r.keep_alive && !r.has_body; // a body we do not read would be taken for the next request
    if (r.verb == http::method::other) return answer_error(c, 405, false, keep);
    char path[PATH_MAX], real[PATH_MAX];
    if (http::decode_path(r.target, r.target_len, path, sizeof path) < 0) return answer_error(c, 400, head_only, false);
    if (http::path_climbs(path)) return answer_error(c, 403, head_only, keep);
    if (int status = resolve(path, real)) return answer_error(c, status, head_only, keep);
    struct stat st;
    if (stat(real, &st) != 0) return answer_error(c, 404, head_only, keep);
    if (S_ISDIR(st.st_mode)) { // its index.html, or nothing
        char index[PATH_MAX];
        if (snprintf(index, sizeof index, "%s/index.html", real) >= static_cast<int>(sizeof index) ||
            resolve(index + srv.root_len, real) != 0 || stat(real, &st) != 0)
            return answer_error(c, 404, head_only, keep);
    }
    if (!S_ISREG(st.st_mode)) return answer_error(c, 404, head_only, keep);
    int fd = open(real, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0 || fstat(fd, &st) != 0) {
        if (fd >= 0) close(fd);
        return answer_error(c, errno == EACCES ? 403 : 404, head_only, keep);
    }
    uint64_t size = static_cast<uint64_t>(st.st_size), first = 0, last = size ? size - 1 : 0;
    int status = 200;
    char content_range[80] = "";
    if (r.range) {
        http::range_status rs = http::parse_range(r.range, r.range_len, size, first, last);
        if (rs == http::range_status::unsatisfiable) {
            close(fd);
            c.keep_alive = keep;
            int n = snprintf(c.buf, chunk_size,
                             "HTTP/1.1 416 Range Not Satisfiable\r\nServer: microloop\r\nContent-Range: bytes */%llu\r\n"
                             "Content-Length: 0\r\nConnection: %s\r\n\r\n",
                             static_cast<unsigned long long>(size), keep ? "keep-alive" : "close");
            c.out_start = 0;
            c.out_end = static_cast<size_t>(n);
            c.file_pos = c.file_end = 0;
            c.state = sending;
            return on_writable(c);
        }
        if (rs == http::range_status::ok) {
            status = 206;
            snprintf(content_range, sizeof content_range, "Content-Range: bytes %llu-%llu/%llu\r\n",
                     static_cast<unsigned long long>(first), static_cast<unsigned long long>(last),
                     static_cast<unsigned long long>(size));
        }
    }
    uint64_t length = size ? last - first + 1 : 0;
    c.keep_alive = keep;
    c.file = fd;
    int n = snprintf(c.buf, chunk_size,
                     "HTTP/1.1 %d %s\r\nServer: microloop\r\nContent-Type: %s\r\nContent-Length: %llu\r\n"
                     "%sAccept-Ranges: bytes\r\nConnection: %s\r\n\r\n",
                     status, reason(status), http::content_type(real), static_cast<unsigned long long>(length),
                     content_range, keep ? "keep-alive" : "close");
    c.out_start = 0;
    c.out_end = static_cast<size_t>(n);
    c.file_pos = first;
    c.file_end = head_only ? first : first + length;
    c.state = sending;
    if (c.file_pos < c.file_end) start_disk_read(c); // the first chunk goes out with the head
    else on_writable(c);
}

// Parses what has arrived; answers a complete request, or waits for more.
void process_input(conn& c) {
    if (c.in_len == 0) {
        watch_for(c, microloop::readable);
        return;
    }
    http::request r;
    switch (http::parse_request(c.in, c.in_len, max_request_line, max_head, r)) {
    case http::parse_status::incomplete: watch_for(c, microloop::readable); return;
    case http::parse_status::bad_request: return answer_error(c, 400, false, false);
    case http::parse_status::uri_too_long: return answer_error(c, 414, false, false);
    case http::parse_status::headers_too_large: return answer_error(c, 431, false, false);
    case http::parse_status::complete: break;
    }
    c.consumed = r.head_len;
    answer(c, r);
}

void on_io(microloop::continuation_id id, unsigned events) {
    conn* cp = srv.conns.get<conn>(id);
    if (!cp) return;
    conn& c = *cp;
    if (events & microloop::io_error) return close_conn(c);
    if (c.state == sending && (events & microloop::writable)) return on_writable(c);
    if (!(events & microloop::readable)) return;
    if (c.state == lingering) {
        char sink[512];
        ssize_t n = recv(c.sock, sink, sizeof sink, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) close_conn(c);
        return;
    }
    if (c.state != reading_head) return;
    ssize_t n = recv(c.sock, c.in + c.in_len, max_head - c.in_len, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) return close_conn(c);
    if (n < 0) return;
    if (c.in_len == 0) c.deadline_ns = ms_from_now(head_timeout_ms); // a request starts: its head has a deadline
    c.in_len += static_cast<size_t>(n);
    process_input(c);
}

const char busy_answer[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

void on_accept() {
    for (int i = 0; i < 16; ++i) {
        int fd = accept4(srv.listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                srv.out_of_fds = true; // the backlog waits; a timer tries again
                srv.loop.modify(srv.accept_io, 0);
                srv.loop.after(accept_retry, [](microloop::timer_event) {
                    srv.out_of_fds = false;
                    srv.loop.modify(srv.accept_io, microloop::readable);
                });
            }
            return;
        }
        microloop::made<conn> c = srv.conns.make<conn>();
        if (!c) { // table full: say so and close
            ++srv.rejected_full;
            if (send(fd, busy_answer, sizeof busy_answer - 1, MSG_NOSIGNAL) < 0) { /* closing anyway */ }
            close(fd);
            continue;
        }
        microloop::continuation_id id = c.id();
        c->id = id;
        c->sock = fd;
        c->file = -1;
        c->state = reading_head;
        c->deadline_ns = ms_from_now(idle_timeout_ms);
        c->io = srv.loop.watch(fd, microloop::readable, [id](microloop::io_event ev) { on_io(id, ev.events); });
        if (!c->io) {
            close(fd);
            srv.conns.release(id);
        }
    }
}

// Every sweep_period: close the connections whose deadline passed.
void sweep() {
    microloop::continuation_id expired[max_conns];
    size_t n = 0;
    int64_t now = now_ns();
    srv.conns.for_each([&](microloop::continuation_id id) {
        conn* c = srv.conns.get<conn>(id);
        if (c && c->state != reading_disk && c->sock >= 0 && c->deadline_ns < now) expired[n++] = id;
    });
    for (size_t i = 0; i < n; ++i)
        if (conn* c = srv.conns.get<conn>(expired[i])) {
            ++srv.timeouts;
            close_conn(*c);
        }
}

void usage(FILE* f) {
    fprintf(f, "usage: http_file_server [--root DIR] [--port N] [--bind ADDR]\n"
               "  --root DIR   the directory served (default .)\n"
               "  --port N     TCP port (default 8080; 0 picks a free one)\n"
               "  --bind ADDR  IPv4 address to listen on (default 127.0.0.1)\n");
}

int listen_on(const char* addr, int port) {
    sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1) {
        fprintf(stderr, "http_file_server: bad address %s\n", addr);
        return -1;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    socklen_t len = sizeof sa;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || listen(fd, 128) != 0 ||
        getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) != 0) {
        perror("http_file_server: listen");
        if (fd >= 0) close(fd);
        return -1;
    }
    printf("listening on %s:%d\n", addr, ntohs(sa.sin_port));
    fflush(stdout);
    return fd;
}

} // namespace

int main(int argc, char** argv) {
    int port = 8080;
    const char* bind_addr = "127.0.0.1";
    const char* root = ".";
    for (int i = 1; i < argc; ++i) {
        char* end = nullptr;
        if (strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
            long p = strtol(argv[++i], &end, 10);
            if (*end || end == argv[i] || p < 0 || p > 65535) {
                usage(stderr);
                return 2;
            }
            port = static_cast<int>(p);
        } else if (strcmp(argv[i], "--bind") == 0 && i + 1 < argc) {
            bind_addr = argv[++i];
        } else if (strcmp(argv[i], "--root") == 0 && i + 1 < argc) {
            root = argv[++i];
        } else {
            usage(stderr);
            return 2;
        }
    }
    struct stat st;
    if (!realpath(root, srv.root) || stat(srv.root, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "http_file_server: %s: not a directory\n", root);
        return 1;
    }
    srv.root_len = strlen(srv.root);
    if (srv.root_len == 1) srv.root_len = 0; // "/": every path is under it
    microloop::ignore_sigpipe();
    srv.listener = listen_on(bind_addr, port);
    if (srv.listener < 0) return 1;
    srv.accept_io = srv.loop.watch(srv.listener, microloop::readable, [](microloop::io_event) { on_accept(); });
    microloop::timer_handle sweeper = srv.loop.every(sweep_period, [](microloop::timer_event) { sweep(); });
    auto stop = [](microloop::signal_event) { srv.loop.stop(); };
    microloop::signal_handle term = srv.loop.on_signal(SIGTERM, stop);
    microloop::signal_handle intr = srv.loop.on_signal(SIGINT, stop);
    if (!srv.accept_io || !sweeper || !term || !intr) {
        fprintf(stderr, "http_file_server: cannot set up the loop\n");
        return 1;
    }
    microloop::error_code e = srv.loop.run();
    // Stopped: no more accepting, every connection closed. Reads still in
    // flight complete into their buffers before the AIO module is gone.
    srv.loop.unwatch(srv.accept_io);
    close(srv.listener);
    srv.out_of_fds = true; // do not resume accepting while closing
    microloop::continuation_id all[max_conns];
    size_t n = 0;
    srv.conns.for_each([&](microloop::continuation_id id) { all[n++] = id; });
    for (size_t i = 0; i < n; ++i)
        if (conn* c = srv.conns.get<conn>(all[i]))
            if (c->sock >= 0) close_conn(*c);
    printf("http_file_server: %llu requests, %llu bytes sent, %llu turned away (full), %llu timed out; "
           "at most %zu connections\n",
           srv.requests, srv.bytes_sent, srv.rejected_full, srv.timeouts, srv.conns.stats().high_water);
    if (e) {
        fprintf(stderr, "http_file_server: loop: %s\n", e.message());
        return 1;
    }
    return 0;
}
