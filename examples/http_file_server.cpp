// http_file_server.cpp - a static file server: HTTP/1.1 and 1.0, GET and
// HEAD, keep-alive and pipelining, single byte ranges; files read with
// aio<N> so a slow disk never blocks the loop.
//
//     http_file_server [--root DIR] [--port N] [--bind ADDR]
//                      [--head-timeout MS] [--idle-timeout MS] [--send-timeout MS]
//     then: curl -v http://127.0.0.1:PORT/some/file
//
// The design of the chapter this library grew from, piece by piece:
//   - One entry of a continuation_table per connection holds everything a
//     request needs between events: the socket, the parser's input, the
//     response head, the open file and the chunk buffer it has borrowed.
//     Callbacks capture only the entry's id (8 bytes) and look it up; a stale
//     id is refused.
//   - File data goes through a few large chunk buffers shared by all
//     connections (chunk_buffers of chunk_size). A connection borrows one
//     only to read a chunk with aio<N> and hand it to send(): never while it
//     waits for its client. When the socket takes only part of a chunk, the
//     rest is given back and read again from the file once the socket is
//     writable, so a client that stops reading holds no buffer, only its
//     connection, until the send timeout. The next chunk is read only when
//     the socket has taken all of this one. A connection that finds every
//     buffer lent waits its turn (first come, first served); the free buffers
//     are a stack, so the same few are reused and the others are never
//     touched: memory follows the work in progress, not the connections.
//   - The root is a jail: the path is percent-decoded first; NUL bytes, ".."
//     segments and targets not starting with '/' are refused; the path is
//     opened one component at a time from the root's descriptor, refusing
//     symbolic links (O_NOFOLLOW). Only a path with a symbolic link in it
//     is resolved with realpath() and must lie under the real root, so a
//     link that leads outside is refused (403). A file opened is kept open
//     for a second (open_files of them) for the requests that follow; its
//     size is read anew (fstat) for each, so a file truncated in place is
//     never promised longer than it is, and one that shrinks under an
//     answer ends that answer short, and the connection with it.
//   - Slow clients cannot hold a connection: a deadline for the request head
//     (slowloris), an idle timeout between keep-alive requests, and a send
//     timeout (no progress writing); one timer sweeps them all.
//   - A full connection table answers 503 and closes, and so does a file
//     that cannot be opened for want of descriptors; accept() out of
//     descriptors pauses the listening watcher and retries on a timer.
// Nothing is allocated per request (or after start-up at all).
#define MICROLOOP_WITH_AIO
#include <microloop.hpp>

#include "http_parser.hpp"
#include "server_setup.hpp"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

using namespace std::chrono;

namespace {

// ---- limits: sized at compile time ------------------------------------------------
const int max_conns = 128;              // then 503
const size_t max_request_line = 1024;   // then 414
const size_t max_head = 4096;           // the whole request head; then 431
const int chunk_buffers = 4;            // file chunks being read or sent at once, all connections together
const size_t chunk_size = 64 * 1024;    // bytes read from a file at a time
const int open_files = 16;              // files kept open for the next requests (at least 1)
const int64_t open_file_ttl_ms = 1000;  // ... for this long: a file replaced or removed is served that long still
const int64_t head_timeout_ms = 5000;   // from the first byte of a request to its end (--head-timeout)
const int64_t idle_timeout_ms = 10000;  // between keep-alive requests (--idle-timeout)
// Without the client taking a byte (--send-timeout). Long: a client that
// limits its rate (curl --limit-rate, a video player reading at its bitrate)
// fills its receive buffer, then takes nothing until its average is back
// down: at 100 KB/s with a 6 MB buffer, up to a minute. lighttpd allows 360 s,
// nginx 60 s. A client that stops reading holds no buffer meanwhile, only
// its connection.
const int64_t send_timeout_ms = 120000;
const int64_t linger_timeout_ms = 1000; // reading what a client still sends after our last answer
const milliseconds sweep_period(250);
const milliseconds accept_retry(100);
const size_t max_response_head = 512;   // room for our own response heads (and error bodies)
const int unsent_low_water = 2 * static_cast<int>(chunk_size); // the socket is writable again below this much unsent

typedef microloop::loop<max_conns + 1, 4, 2, 0> http_loop;

enum conn_state {
    reading_head,  // waiting for (the rest of) a request head
    waiting_chunk, // a chunk of the file is due and every buffer is lent: queued for one
    reading_disk,  // an AIO read into the borrowed chunk is in flight
    sending,       // waiting for the socket to take the rest of the head, or more of the file
    lingering      // last answer sent, our side shut down: draining until EOF, then close
};

// A file kept open for the requests that follow, so that a popular file is
// not looked up, opened and closed every time (the files are read with
// pread(): connections share the descriptor).
struct open_file {
    int fd;             // -1: a free entry
    int users;          // answers reading from it now
    bool index;         // a directory's index.html (for its Content-Type)
    int64_t expires_ns; // not used for new requests after this
    struct stat st;
    char path[256];     // the decoded request path; a longer one is not kept
};

// Everything one connection needs between events: the continuation. Its
// constructor leaves the buffers alone, so a connection makes resident only
// the pages it writes (a struct without a constructor would be zero-filled,
// all of it, by continuation_table::make).
struct conn {
    microloop::continuation_id id;
    int sock;
    int file;          // -1: none
    open_file* cached; // the entry `file` belongs to, or nullptr: the connection closes it
    microloop::io_handle io;
    conn_state state;
    bool keep_alive;   // after this answer, read the next request
    bool gone;         // closed while an AIO read was in flight: release when it completes
    bool pending;      // a request may be waiting in `in` (pipelined): parse it
    int64_t deadline_ns;
    unsigned outq;     // bytes the client had not yet taken at the last sweep (SIOCOUTQ); ~0u after a write
    size_t in_len;     // bytes in `in`
    size_t consumed;   // bytes of `in` the request being answered used
    uint64_t file_pos, file_end; // the part of the file still to send
    size_t head_len, head_sent;  // the response head in `head`
    char* chunk;       // a borrowed chunk buffer, or nullptr
    size_t chunk_len;  // file bytes in it
    conn* next_waiting; // the queue for a chunk buffer
    char head[max_response_head];
    char in[max_head];

    explicit conn(int fd)
        : id(), sock(fd), file(-1), cached(nullptr), state(reading_head), keep_alive(false), gone(false),
          pending(false), deadline_ns(0), outq(~0u), in_len(0), consumed(0), file_pos(0), file_end(0), head_len(0), head_sent(0),
          chunk(nullptr), chunk_len(0), next_waiting(nullptr) {}
};

typedef microloop::continuation_table<max_conns, sizeof(conn)> conn_table;

// The chunk buffers: lent one at a time, last returned first lent.
struct chunk_pool {
    char* free_list[chunk_buffers];
    int free_count;
    conn* first_waiting; // first come, first served
    conn* last_waiting;
    alignas(4096) char buffers[chunk_buffers][chunk_size]; // page-aligned: a chunk's pages are its own

    chunk_pool() : free_count(chunk_buffers), first_waiting(nullptr), last_waiting(nullptr) {
        for (int i = 0; i < chunk_buffers; ++i) free_list[i] = buffers[chunk_buffers - 1 - i];
    }
};

struct server {
    http_loop loop;
    conn_table conns;        // and the chunk buffers: before disk, destroyed after it,
    chunk_pool chunks;       // so that no read lands in freed memory
    open_file files[open_files];
    microloop::aio<max_conns> disk;
    int listener;
    microloop::io_handle accept_io;
    bool out_of_fds;
    int root_fd;             // the root, opened: paths are opened from it
    char root[PATH_MAX];     // the real path of --root
    size_t root_len;
    int64_t head_timeout_ms, idle_timeout_ms, send_timeout_ms;
    time_t date_sec;         // the second `date` was made for
    char date[40];           // now as an IMF-fixdate, for the Date header
    unsigned long long requests, bytes_sent, rejected_full, timeouts, chunk_waits, reread_bytes;

    server()
        : disk(loop), head_timeout_ms(::head_timeout_ms), idle_timeout_ms(::idle_timeout_ms),
          send_timeout_ms(::send_timeout_ms), date_sec(-1) {
        for (int i = 0; i < open_files; ++i) {
            files[i].fd = -1;
            files[i].users = 0;
        }
    }
};

server srv; // at namespace scope: the tables off the stack, and no guard

int64_t now_ns() { return static_cast<int64_t>(srv.loop.now().count()); }
int64_t ms_from_now(int64_t ms) { return now_ns() + ms * 1000000; }

void process_input(conn& c);
void send_out(conn& c);
void start_disk_read(conn& c);

void watch_for(conn& c, unsigned events) { srv.loop.modify(c.io, events); }

// t as an IMF-fixdate (RFC 9110, 5.6.7): "Sun, 06 Nov 1994 08:49:37 GMT",
// the English names whatever the locale.
void format_date(time_t t, char (&out)[40]) {
    static const char days[] = "SunMonTueWedThuFriSat", months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    struct tm tm;
    if (!gmtime_r(&t, &tm)) {
        t = 0;
        gmtime_r(&t, &tm);
    }
    snprintf(out, sizeof out, "%.3s, %02d %.3s %04d %02d:%02d:%02d GMT", days + 3 * (tm.tm_wday % 7), tm.tm_mday,
             months + 3 * (tm.tm_mon % 12), tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

// The Date header's value: the wall clock, formatted once a second.
const char* date_now() {
    timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (ts.tv_sec != srv.date_sec) {
        srv.date_sec = ts.tv_sec;
        format_date(ts.tv_sec, srv.date);
    }
    return srv.date;
}

// The connection is done with its file.
void put_file(conn& c) {
    if (c.file < 0) return;
    if (c.cached) --c.cached->users;
    else close(c.file);
    c.file = -1;
    c.cached = nullptr;
}

// A chunk buffer back: to the first connection waiting for one, else to the stack.
void give_back(char* buf) {
    chunk_pool& p = srv.chunks;
    if (conn* w = p.first_waiting) {
        p.first_waiting = w->next_waiting;
        if (!p.first_waiting) p.last_waiting = nullptr;
        w->next_waiting = nullptr;
        w->chunk = buf;
        start_disk_read(*w);
        return;
    }
    p.free_list[p.free_count++] = buf;
}

void stop_waiting(conn& c) {
    chunk_pool& p = srv.chunks;
    conn* prev = nullptr;
    for (conn* w = p.first_waiting; w; prev = w, w = w->next_waiting)
        if (w == &c) {
            (prev ? prev->next_waiting : p.first_waiting) = c.next_waiting;
            if (p.last_waiting == &c) p.last_waiting = prev;
            c.next_waiting = nullptr;
            return;
        }
}

// Frees the connection's entry, its file and its chunk buffer (which goes to
// the next connection waiting for one).
void release_conn(conn& c) {
    put_file(c);
    if (c.state == waiting_chunk) stop_waiting(c);
    char* buf = c.chunk;
    srv.conns.release(c.id);
    if (buf) give_back(buf);
}

void close_conn(conn& c) {
    srv.loop.unwatch(c.io);
    close(c.sock);
    c.sock = -1;
    if (c.state == reading_disk) c.gone = true; // the read still uses c.file and writes into c.chunk
    else release_conn(c);
    if (srv.out_of_fds) return;
    srv.loop.modify(srv.accept_io, microloop::readable);
}

// The answer is out. Keep-alive: the next request (maybe already here,
// pipelined: parsed by settle(), not from here, so that a long pipeline is a
// loop rather than a recursion). Otherwise shut our side down and drain what
// the client still sends, so closing does not reset the connection under our
// last answer.
void answer_done(conn& c) {
    put_file(c);
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
    c.deadline_ns = ms_from_now(c.in_len ? srv.head_timeout_ms : srv.idle_timeout_ms);
    if (c.in_len) c.pending = true;
    else watch_for(c, microloop::readable);
}

// Answers the requests already received, one after the other.
void settle(microloop::continuation_id id) {
    for (conn* c; (c = srv.conns.get<conn>(id)) && c->state == reading_head && c->pending;) {
        c->pending = false;
        process_input(*c);
    }
}

// The socket can take more: the rest of the head with the next chunk of the
// file (read into a borrowed buffer first), or the head alone, or done.
void next_step(conn& c) {
    if (c.file_pos < c.file_end) {
        chunk_pool& p = srv.chunks;
        if (p.free_count) {
            c.chunk = p.free_list[--p.free_count];
            return start_disk_read(c);
        }
        ++srv.chunk_waits; // every buffer is lent: wait for one, in turn
        c.state = waiting_chunk;
        c.next_waiting = nullptr;
        (p.last_waiting ? p.last_waiting->next_waiting : p.first_waiting) = &c;
        p.last_waiting = &c;
        watch_for(c, 0);
        return;
    }
    if (c.head_sent < c.head_len) return send_out(c);
    answer_done(c);
}

void start_disk_read(conn& c) {
    uint64_t left = c.file_end - c.file_pos;
    size_t len = left < chunk_size ? static_cast<size_t>(left) : chunk_size;
    microloop::continuation_id id = c.id;
    microloop::aio_handle h = srv.disk.read(
        c.file, c.chunk, len, static_cast<off_t>(c.file_pos), [id](microloop::aio_event ev) {
            conn* cp = srv.conns.get<conn>(id);
            if (!cp) return;
            conn& k = *cp;
            k.state = sending;
            if (k.gone) return release_conn(k); // the client left while the disk was busy
            uint64_t asked = k.file_end - k.file_pos < chunk_size ? k.file_end - k.file_pos : chunk_size;
            k.chunk_len = !ev.error && ev.result > 0 ? static_cast<size_t>(ev.result) : 0;
            k.file_pos += k.chunk_len;
            if (k.chunk_len < asked) {
                // An I/O error, or the file shrank under the answer: the length
                // promised cannot be kept. Send the head if it has not gone out
                // yet and what was read, nothing past it, then end the
                // connection cleanly: the client sees a short body.
                k.file_end = k.file_pos;
                k.keep_alive = false;
            }
            k.deadline_ns = ms_from_now(srv.send_timeout_ms); // the wait was ours, not the client's
            send_out(k); // usually the socket takes it at once
            settle(id);
        });
    c.state = reading_disk;
    watch_for(c, 0);
    if (!h) { // no AIO slot: cannot happen with one read per connection, but do not hang
        c.state = sending;
        close_conn(c);
    }
}

// Writes the rest of the head and the borrowed chunk, as far as the socket
// takes them. What it does not take of the chunk is read again later: the
// buffer goes back now, and the connection waits for the socket without it.
void send_out(conn& c) {
    c.state = sending;
    size_t chunk_sent = 0;
    for (;;) {
        iovec iov[2];
        int n = 0;
        if (c.head_sent < c.head_len) {
            iov[n].iov_base = c.head + c.head_sent;
            iov[n++].iov_len = c.head_len - c.head_sent;
        }
        if (chunk_sent < c.chunk_len) {
            iov[n].iov_base = c.chunk + chunk_sent;
            iov[n++].iov_len = c.chunk_len - chunk_sent;
        }
        if (n == 0) break;
        msghdr m;
        memset(&m, 0, sizeof m);
        m.msg_iov = iov;
        m.msg_iovlen = static_cast<size_t>(n);
        ssize_t r = sendmsg(c.sock, &m, MSG_NOSIGNAL);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) return close_conn(c);
            break;
        }
        size_t sent = static_cast<size_t>(r);
        srv.bytes_sent += sent;
        c.deadline_ns = ms_from_now(srv.send_timeout_ms);
        c.outq = ~0u;
        size_t h = c.head_len - c.head_sent < sent ? c.head_len - c.head_sent : sent;
        c.head_sent += h;
        chunk_sent += sent - h;
    }
    bool drained = c.head_sent == c.head_len && chunk_sent == c.chunk_len;
    if (c.chunk) {
        size_t unsent = c.chunk_len - chunk_sent;
        c.file_pos -= unsent; // read again when the socket has room
        srv.reread_bytes += unsent;
        char* buf = c.chunk;
        c.chunk = nullptr;
        c.chunk_len = 0;
        give_back(buf);
    }
    if (!drained) return watch_for(c, microloop::writable);
    next_step(c); // the socket drained: the next chunk
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

// Sends the response head just written to c.head: with the first chunk of
// the file, once it is read, if there is one.
void send_head(conn& c, int len) {
    c.head_len = len <= 0 ? 0 : static_cast<size_t>(len) < sizeof c.head ? static_cast<size_t>(len) : sizeof c.head - 1;
    c.head_sent = 0;
    c.deadline_ns = ms_from_now(srv.send_timeout_ms);
    c.state = sending;
    next_step(c);
}

// An error answer, whole, in c.head; it closes the connection unless the
// request was well formed (404 and the like keep it).
void answer_error(conn& c, int status, bool head_only, bool keep) {
    c.keep_alive = keep;
    c.file_pos = c.file_end = 0;
    char body[64];
    int blen = snprintf(body, sizeof body, "%d %s\n", status, reason(status));
    int n = snprintf(c.head, sizeof c.head,
                     "HTTP/1.1 %d %s\r\nServer: microloop\r\nDate: %s\r\nContent-Type: text/plain\r\n"
                     "Content-Length: %d\r\n%sConnection: %s\r\n\r\n%s",
                     status, reason(status), date_now(), blen, status == 405 ? "Allow: GET, HEAD\r\n" : "",
                     keep ? "keep-alive" : "close", head_only ? "" : body);
    send_head(c, n);
}

// The slow way, for a path with a symbolic link in it: the real path must
// lie under the real root. 0 and the real path in out, or the status.
int resolve(const char* path, char* out) {
    char joined[PATH_MAX];
    if (snprintf(joined, sizeof joined, "%s%s", srv.root, path) >= static_cast<int>(sizeof joined)) return 404;
    if (!realpath(joined, out)) return errno == EACCES ? 403 : 404;
    // Under the root: the root itself, or the root and a '/'.
    if (strncmp(out, srv.root, srv.root_len) != 0 || (out[srv.root_len] != '/' && out[srv.root_len] != '\0'))
        return 403;
    return 0;
}

const int open_flags = O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC; // a FIFO does not block us

// The answer to a failed open: -1 for a symbolic link (resolved the slow
// way), 403, 503 when out of descriptors or memory (the file may well
// exist: come back later, as for a full table), else 404.
int open_failed(int err) {
    if (err == ELOOP) return -1;
    if (err == EACCES) return 403;
    if (err == EMFILE || err == ENFILE || err == ENOMEM) return 503;
    return 404;
}

// A file, opened: its index.html if it is a directory; 0, or the status.
int open_regular(int dir, const char* name, int& fd, struct stat& st, bool& index) {
    fd = openat(dir, name, open_flags);
    if (fd >= 0 && fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
        int d = fd;
        fd = openat(d, "index.html", open_flags);
        close(d);
        index = true;
        if (fd >= 0 && fstat(fd, &st) != 0) st.st_mode = 0;
    }
    if (fd < 0) return open_failed(errno);
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        fd = -1;
        return 404;
    }
    return 0;
}

// Opens a decoded path (starting with '/', no ".." segment) under the root,
// one component at a time, refusing symbolic links; a path with one is
// resolved with realpath() instead. 0 and the open file, or the status.
int open_under_root(char* path, int& fd, struct stat& st, bool& index) {
    int dir = srv.root_fd;
    char* name = path + 1;
    int status = 0;
    for (char* slash; status == 0 && (slash = strchr(name, '/')) != nullptr; name = slash + 1) {
        if (slash == name || (slash == name + 1 && name[0] == '.')) continue; // "//", "/./"
        *slash = '\0';
        int d = openat(dir, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        *slash = '/';
        if (d < 0) status = errno == ENOTDIR ? -1 : open_failed(errno);
        if (dir != srv.root_fd) close(dir);
        dir = d;
    }
    if (status == 0) status = open_regular(dir, *name ? name : ".", fd, st, index);
    if (dir >= 0 && dir != srv.root_fd) close(dir);
    if (status != -1) return status;
    char real[PATH_MAX];
    index = false;
    if (int s = resolve(path, real)) return s;
    status = open_regular(AT_FDCWD, real, fd, st, index);
    if (status == 0 && index) { // the index file may be a link too: resolve it as well
        close(fd);
        fd = -1;
        size_t len = strlen(real);
        if (len + sizeof "/index.html" > sizeof real) return 404;
        memcpy(real + len, "/index.html", sizeof "/index.html");
        if (int s = resolve(real + srv.root_len, real)) return s;
        status = open_regular(AT_FDCWD, real, fd, st, index);
    }
    return status == -1 ? 403 : status;
}

// The file for a request, in c.file, and its status now: kept open from an
// earlier request if that was less than open_file_ttl_ms ago, else opened (and kept, in the
// free entry or the unused one that expires first). 0, or the status.
int get_file(conn& c, char* path, struct stat& st, bool& index) {
    int64_t now = now_ns();
    open_file* spare = nullptr;
    for (int i = 0; i < open_files; ++i) {
        open_file& f = srv.files[i];
        if (f.fd >= 0 && f.expires_ns > now && strcmp(f.path, path) == 0) {
            // The same file, but maybe not the same size: truncated or grown in
            // place. The answer promises what the file has now.
            if (fstat(f.fd, &f.st) != 0) break; // cannot be, for an open file: open it again
            ++f.users;
            c.file = f.fd;
            c.cached = &f;
            st = f.st;
            index = f.index;
            return 0;
        }
        if (f.users == 0 && (!spare || (spare->fd >= 0 && (f.fd < 0 || f.expires_ns < spare->expires_ns)))) spare = &f;
    }
    int fd = -1;
    if (int status = open_under_root(path, fd, st, index)) return status;
    c.file = fd;
    c.cached = nullptr;
    size_t len = strlen(path);
    if (spare && len < sizeof spare->path) {
        if (spare->fd >= 0) close(spare->fd);
        spare->fd = fd;
        spare->users = 1;
        spare->index = index;
        spare->expires_ns = now + open_file_ttl_ms * 1000000;
        spare->st = st;
        memcpy(spare->path, path, len + 1);
        c.cached = spare;
    }
    return 0;
}

void answer(conn& c, const http::request& r) {
    ++srv.requests;
    bool head_only = r.verb == http::method::head;
    bool keep = r.keep_alive && !r.has_body; // a body we do not read would be taken for the next request
    if (!http::host_ok(r)) return answer_error(c, 400, false, false);
    if (r.verb == http::method::other) return answer_error(c, 405, false, keep);
    char path[PATH_MAX];
    if (http::decode_path(r.target, r.target_len, path, sizeof path) < 0) return answer_error(c, 400, head_only, false);
    if (http::path_climbs(path)) return answer_error(c, 403, head_only, keep);
    struct stat st;
    bool index = false;
    if (int status = get_file(c, path, st, index)) return answer_error(c, status, head_only, keep && status != 503);
    uint64_t size = static_cast<uint64_t>(st.st_size), first = 0, last = size ? size - 1 : 0;
    // The validators: Last-Modified, and an ETag made of the modification
    // time and the size. If-Range that names neither asks for the whole file.
    char last_modified[40], etag[64];
    format_date(st.st_mtime, last_modified);
    snprintf(etag, sizeof etag, "\"%llx.%lx-%llx\"", static_cast<unsigned long long>(st.st_mtime),
             static_cast<unsigned long>(st.st_mtim.tv_nsec), static_cast<unsigned long long>(size));
    int status = 200;
    char content_range[sizeof "Content-Range: bytes -/\r\n" + 3 * 20] = ""; // room for three 64-bit numbers
    c.keep_alive = keep;
    if (r.range && (!r.if_range || http::if_range_matches(r.if_range, r.if_range_len, etag, last_modified))) {
        http::range_status rs = http::parse_range(r.range, r.range_len, size, first, last);
        if (rs == http::range_status::unsatisfiable) {
            put_file(c);
            c.file_pos = c.file_end = 0;
            return send_head(c, snprintf(c.head, sizeof c.head,
                                         "HTTP/1.1 416 Range Not Satisfiable\r\nServer: microloop\r\nDate: %s\r\n"
                                         "Content-Range: bytes */%llu\r\nContent-Length: 0\r\nConnection: %s\r\n\r\n",
                                         date_now(), static_cast<unsigned long long>(size),
                                         keep ? "keep-alive" : "close"));
        }
        if (rs == http::range_status::ok) {
            status = 206;
            snprintf(content_range, sizeof content_range, "Content-Range: bytes %llu-%llu/%llu\r\n",
                     static_cast<unsigned long long>(first), static_cast<unsigned long long>(last),
                     static_cast<unsigned long long>(size));
        }
    }
    uint64_t length = size ? last - first + 1 : 0;
    c.file_pos = first;
    c.file_end = head_only ? first : first + length;
    // The head waits in c.head and goes out with the first chunk, in one sendmsg().
    send_head(c, snprintf(c.head, sizeof c.head,
                          "HTTP/1.1 %d %s\r\nServer: microloop\r\nDate: %s\r\nContent-Type: %s\r\n"
                          "Content-Length: %llu\r\n%sLast-Modified: %s\r\nETag: %s\r\nAccept-Ranges: bytes\r\n"
                          "Connection: %s\r\n\r\n",
                          status, reason(status), date_now(),
                          index ? http::content_type("index.html") : http::content_type(path),
                          static_cast<unsigned long long>(length), content_range, last_modified, etag,
                          keep ? "keep-alive" : "close"));
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
    if (c.state == sending && (events & microloop::writable)) {
        next_step(c);
        return settle(id);
    }
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
    if (c.in_len == 0) c.deadline_ns = ms_from_now(srv.head_timeout_ms); // a request starts: its head has a deadline
    c.in_len += static_cast<size_t>(n);
    process_input(c);
    settle(id);
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
        if (srv.conns.full()) { // say so and close
            ++srv.rejected_full;
            char sink[512]; // a request already here would turn the close into a reset that may destroy the answer
            if (recv(fd, sink, sizeof sink, MSG_DONTWAIT) < 0) { /* nothing yet */ }
            if (send(fd, busy_answer, sizeof busy_answer - 1, MSG_NOSIGNAL) < 0) { /* closing anyway */ }
            close(fd);
            continue;
        }
        // Every answer is written whole (a head, a chunk): no need to wait for more to fill a segment.
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        // Writable again as soon as little is left unsent, not when a third of
        // an autotuned send buffer (megabytes) has drained: a slow reader gets
        // the next chunk sooner, and the kernel holds less for it.
        setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &unsent_low_water, sizeof unsent_low_water);
        microloop::made<conn> c = srv.conns.make<conn>(fd);
        microloop::continuation_id id = c.id();
        c->id = id;
        c->deadline_ns = ms_from_now(srv.idle_timeout_ms);
        c->io = srv.loop.watch(fd, microloop::readable, [id](microloop::io_event ev) { on_io(id, ev.events); });
        if (!c->io) {
            close(fd);
            srv.conns.release(id);
        }
    }
}

// Every sweep_period: close the connections whose deadline passed (not
// those waiting for the disk or for a chunk buffer: that wait is ours).
// A connection sending an answer makes progress when its client takes
// bytes: the count the kernel has not yet had acknowledged (SIOCOUTQ)
// shrinks. That renews its deadline as a write of ours does; a write comes
// only when the socket has room, which can take longer than the send
// timeout for a slow reader behind large socket buffers.
void sweep() {
    microloop::continuation_id expired[max_conns];
    size_t n = 0;
    int64_t now = now_ns();
    srv.conns.for_each([&](microloop::continuation_id id) {
        conn* c = srv.conns.get<conn>(id);
        if (!c || c->state == reading_disk || c->state == waiting_chunk || c->sock < 0) return;
        int unsent = 0;
        if (c->state == sending && ioctl(c->sock, SIOCOUTQ, &unsent) == 0 && unsent >= 0) {
            if (c->outq != ~0u && static_cast<unsigned>(unsent) < c->outq)
                c->deadline_ns = ms_from_now(srv.send_timeout_ms);
            c->outq = static_cast<unsigned>(unsent);
        }
        if (c->deadline_ns < now) expired[n++] = id;
    });
    for (size_t i = 0; i < n; ++i)
        if (conn* c = srv.conns.get<conn>(expired[i])) {
            ++srv.timeouts;
            close_conn(*c);
        }
    for (int i = 0; i < open_files; ++i) { // and the files no one asked for lately
        open_file& f = srv.files[i];
        if (f.fd >= 0 && f.users == 0 && f.expires_ns <= now) {
            close(f.fd);
            f.fd = -1;
        }
    }
}

void usage(FILE* f) {
    fprintf(f, "usage: http_file_server [--root DIR] [--port N] [--bind ADDR] [--head-timeout MS]\n"
               "                        [--idle-timeout MS] [--send-timeout MS]\n"
               "  --root DIR           the directory served (default .)\n"
               "  --port N             TCP port (default 8080; 0 picks a free one)\n"
               "  --bind ADDR          IPv4 address to listen on (default 127.0.0.1)\n"
               "  --head-timeout MS    for a request head, from its first byte (default %lld)\n"
               "  --idle-timeout MS    between keep-alive requests (default %lld)\n"
               "  --send-timeout MS    without progress sending an answer (default %lld)\n",
            static_cast<long long>(head_timeout_ms), static_cast<long long>(idle_timeout_ms),
            static_cast<long long>(send_timeout_ms));
}

} // namespace

int main(int argc, char** argv) {
    example::listen_options opt = {8080, "127.0.0.1"};
    const char* root = ".";
    auto other_option = [&root](const char* name, const char* value) -> size_t {
        if (!value) return 0;
        if (strcmp(name, "--root") == 0) {
            root = value;
            return 2;
        }
        int64_t* ms = strcmp(name, "--head-timeout") == 0   ? &srv.head_timeout_ms
                      : strcmp(name, "--idle-timeout") == 0 ? &srv.idle_timeout_ms
                      : strcmp(name, "--send-timeout") == 0 ? &srv.send_timeout_ms
                                                            : nullptr;
        long long v = ms ? example::parse_number(value, 1, 86400000) : -1;
        if (v < 0) return 0;
        *ms = v;
        return 2;
    };
    int status = example::parse_options(argc, argv, opt, usage, other_option);
    if (status >= 0) return status;
    struct stat st;
    if (!realpath(root, srv.root) || stat(srv.root, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "http_file_server: %s: not a directory\n", root);
        return 1;
    }
    srv.root_fd = open(srv.root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (srv.root_fd < 0) {
        fprintf(stderr, "http_file_server: %s: %s\n", root, strerror(errno));
        return 1;
    }
    srv.root_len = strlen(srv.root);
    if (srv.root_len == 1) srv.root_len = 0; // "/": every path is under it
    microloop::ignore_sigpipe();
    srv.listener = example::listen_on("http_file_server", opt.bind_addr, opt.port);
    if (srv.listener < 0) return 1;
    srv.accept_io = srv.loop.watch(srv.listener, microloop::readable, [](microloop::io_event) { on_accept(); });
    microloop::timer_handle sweeper = srv.loop.every(sweep_period, [](microloop::timer_event) { sweep(); });
    if (!srv.accept_io || !sweeper || !example::stop_on_signals(srv.loop)) {
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
           "at most %zu connections; %llu waits for a chunk buffer, %llu bytes read again\n",
           srv.requests, srv.bytes_sent, srv.rejected_full, srv.timeouts, srv.conns.stats().high_water,
           srv.chunk_waits, srv.reread_bytes);
    if (e) {
        fprintf(stderr, "http_file_server: loop: %s\n", e.message());
        return 1;
    }
    return 0;
}
