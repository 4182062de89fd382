// demo.cpp - a tour of microloop in about two seconds, all in one loop:
//
//   1. an echo server on loopback and three of its own clients, each sending
//      64 KiB and checking every byte that comes back;
//   2. a file served through AIO: its state (file, socket, buffer, offsets)
//      lives in a continuation_table entry; each chunk is read with aio<N>,
//      written when the socket is writable, and the next one read only when
//      the socket has taken it all; the other end checks what arrives;
//   3. a child process started and reaped (on_child);
//   4. a signal sent to itself and handled in the loop, not in signal context;
//   5. a repeating timer that reports the periods it missed while a
//      deliberately slow callback blocked the loop, which on_stall names;
//   6. a closing report: counts, bytes, and the loop's high-water marks.
//
// For the full servers see echo_server, http_file_server, chat_server and
// multi_loop in this directory.
#define MICROLOOP_WITH_AIO
#include <microloop.hpp>

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

const int nclients = 3;
const size_t echo_bytes = 64 * 1024; // per client
const size_t file_bytes = 256 * 1024;
const size_t chunk = 8192;

typedef microloop::loop<16, 8, 4, 2> demo_loop;

struct echo_conn { // the server's side of a connection
    int fd;
    microloop::io_handle io;
    size_t start, end;
    bool eof;
    char buf[4096];
};

struct echo_client { // a client: sends a pattern, checks what comes back
    int fd;
    size_t sent, received;
    bool ok;
};

// The continuation of the file transfer: everything it needs between events.
struct transfer {
    int file, sock;
    microloop::io_handle io;
    off_t offset;
    size_t len, written;
    char buf[chunk];
};

struct tour {
    demo_loop loop;
    microloop::continuation_table<2, sizeof(transfer)> pending;
    microloop::aio<2> disk;
    int listener;
    echo_conn conns[nclients];
    echo_client clients[nclients];
    int accepted, clients_done, file_sink;
    size_t file_received;
    unsigned file_checksum, expected_checksum;
    unsigned long long echoed, heartbeats, overruns, stalls, signals;
    int child_status;
    steady_clock::time_point start;

    tour() : disk(loop) {}
    double elapsed() const { return duration<double>(steady_clock::now() - start).count(); }
};

tour t; // at namespace scope: no guard, off the stack

unsigned char pattern(int client, size_t i) { return static_cast<unsigned char>(i * 7 + static_cast<size_t>(client) * 13); }

// ---- 1. the echo server and its clients ------------------------------------------
void on_conn(echo_conn& c, unsigned events) {
    if ((events & microloop::readable) && c.end < sizeof c.buf) {
        ssize_t n = recv(c.fd, c.buf + c.end, sizeof c.buf - c.end, 0);
        if (n > 0) c.end += static_cast<size_t>(n);
        else if (n == 0) c.eof = true;
    }
    ssize_t n = c.start < c.end ? send(c.fd, c.buf + c.start, c.end - c.start, MSG_NOSIGNAL) : 0;
    if (n > 0) {
        c.start += static_cast<size_t>(n);
        t.echoed += static_cast<unsigned long long>(n);
    }
    if (c.start == c.end) c.start = c.end = 0;
    if (c.eof && c.start == c.end) {
        t.loop.unwatch(c.io);
        close(c.fd);
        return;
    }
    t.loop.modify(c.io, (c.eof || c.end == sizeof c.buf ? 0u : microloop::readable) |
                            (c.start < c.end ? microloop::writable : 0u));
}

void on_client(int k, microloop::io_event ev) {
    echo_client& c = t.clients[k];
    if (ev.events & microloop::writable) {
        unsigned char piece[1500];
        size_t n = echo_bytes - c.sent < sizeof piece ? echo_bytes - c.sent : sizeof piece;
        for (size_t i = 0; i < n; ++i) piece[i] = pattern(k, c.sent + i);
        ssize_t w = send(c.fd, piece, n, MSG_NOSIGNAL);
        if (w > 0) c.sent += static_cast<size_t>(w);
    }
    if (ev.events & microloop::readable) {
        unsigned char in[4096];
        ssize_t n = recv(c.fd, in, sizeof in, 0);
        for (ssize_t i = 0; i < n; ++i)
            if (in[i] != pattern(k, c.received + static_cast<size_t>(i))) c.ok = false;
        if (n > 0) c.received += static_cast<size_t>(n);
    }
    if (c.received == echo_bytes) {
        printf("[%.3f s] client %d: 64 KiB echoed back %s\n", t.elapsed(), k, c.ok ? "exactly" : "WRONG");
        t.loop.unwatch(ev.handle);
        close(c.fd); // the server sees end of file and closes its side
        ++t.clients_done;
        return;
    }
    t.loop.modify(ev.handle, microloop::readable | (c.sent < echo_bytes ? microloop::writable : 0u));
}

bool start_echo() {
    sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    t.listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (t.listener < 0 || bind(t.listener, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 ||
        listen(t.listener, nclients) != 0 || getsockname(t.listener, reinterpret_cast<sockaddr*>(&sa), &len) != 0)
        return false;
    printf("[%.3f s] echo server listening on 127.0.0.1:%d\n", t.elapsed(), ntohs(sa.sin_port));
    t.loop.watch(t.listener, microloop::readable, [](microloop::io_event ev) {
        int fd = accept4(t.listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;
        echo_conn* c = &t.conns[t.accepted];
        c->fd = fd;
        c->io = t.loop.watch(fd, microloop::readable, [c](microloop::io_event e) { on_conn(*c, e.events); });
        if (++t.accepted == nclients) { // all here: the listener is done
            t.loop.unwatch(ev.handle);
            close(t.listener);
        }
    });
    for (int k = 0; k < nclients; ++k) {
        echo_client& c = t.clients[k];
        c.ok = true;
        c.fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        // Loopback connects at once (the backlog takes it); then non-blocking.
        if (c.fd < 0 || connect(c.fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 ||
            fcntl(c.fd, F_SETFL, O_NONBLOCK) != 0)
            return false;
        t.loop.watch(c.fd, microloop::readable | microloop::writable, [k](microloop::io_event ev) { on_client(k, ev); });
    }
    return true;
}

// ---- 2. a file served through AIO and a continuation --------------------------------
void send_chunk(microloop::continuation_id id);

void read_chunk(microloop::continuation_id id) {
    transfer* x = t.pending.get<transfer>(id);
    t.loop.modify(x->io, 0); // nothing to write until the disk answers
    microloop::aio_handle h = t.disk.read(x->file, x->buf, chunk, x->offset, [id](microloop::aio_event ev) {
        transfer* y = t.pending.get<transfer>(id);
        if (ev.error || ev.result <= 0) { // end of file (or an error): the transfer is over
            if (ev.error) printf("demo: aio: %s\n", ev.error.message());
            microloop::taken<transfer> done = t.pending.take<transfer>(id); // freed at scope end
            t.loop.unwatch(done->io);
            close(done->file);
            close(done->sock); // the receiver sees end of file
            return;
        }
        y->len = static_cast<size_t>(ev.result);
        y->written = 0;
        y->offset += ev.result;
        t.loop.modify(y->io, microloop::writable);
    });
    if (!h) printf("demo: aio read: %s\n", h.error().message());
}

void send_chunk(microloop::continuation_id id) {
    transfer* x = t.pending.get<transfer>(id);
    ssize_t n = send(x->sock, x->buf + x->written, x->len - x->written, MSG_NOSIGNAL);
    if (n > 0) x->written += static_cast<size_t>(n);
    if (x->written == x->len) read_chunk(id); // drained: only now the next chunk
}

bool start_file() {
    char name[] = "/tmp/microloop-demo.XXXXXX";
    int fd = mkstemp(name);
    if (fd < 0) return false;
    unlink(name);
    static unsigned char block[4096]; // zero-initialised: no guard
    for (size_t off = 0; off < file_bytes; off += sizeof block) {
        for (size_t i = 0; i < sizeof block; ++i) {
            block[i] = static_cast<unsigned char>((off + i) * 31 >> 3);
            t.expected_checksum = t.expected_checksum * 33 + block[i];
        }
        if (write(fd, block, sizeof block) != static_cast<ssize_t>(sizeof block)) return false;
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) return false;
    microloop::made<transfer> x = t.pending.make<transfer>();
    if (!x) return false;
    microloop::continuation_id id = x.id();
    x->file = fd;
    x->sock = sv[0];
    x->io = t.loop.watch(sv[0], 0, [id](microloop::io_event) { send_chunk(id); });
    t.file_sink = sv[1];
    t.loop.watch(sv[1], microloop::readable, [](microloop::io_event ev) {
        unsigned char in[4096];
        ssize_t n = recv(ev.fd, in, sizeof in, 0);
        for (ssize_t i = 0; i < n; ++i) t.file_checksum = t.file_checksum * 33 + in[i];
        if (n > 0) t.file_received += static_cast<size_t>(n);
        if (n == 0) {
            printf("[%.3f s] file: %zu bytes through AIO and a continuation, checksum %s\n", t.elapsed(),
                   t.file_received, t.file_checksum == t.expected_checksum ? "matches" : "WRONG");
            t.loop.unwatch(ev.handle);
            close(ev.fd);
        }
    });
    read_chunk(id);
    return true;
}

} // namespace

int main() {
    t.start = steady_clock::now();
    t.child_status = -1;
    setvbuf(stdout, nullptr, _IOLBF, 0);
    microloop::ignore_sigpipe();
    // The child first, before any socket exists: a forked child holds copies
    // of every descriptor, and a peer would see end of file only when the
    // child's copies close too.
    pid_t pid = fork();
    if (pid == 0) {
        usleep(150 * 1000);
        _exit(7);
    }
    if (pid < 0 || !start_echo() || !start_file()) {
        perror("demo: setup");
        return 1;
    }

    // ---- 3. a child process, reaped in the loop ----
    printf("[%.3f s] child %d started\n", t.elapsed(), static_cast<int>(pid));
    t.loop.on_child(pid, [](microloop::child_event ev) {
        t.child_status = ev.exit_code();
        printf("[%.3f s] child %d reaped: exit status %d\n", t.elapsed(), static_cast<int>(ev.pid), ev.exit_code());
    });

    // ---- 4. a signal sent to itself ----
    t.loop.on_signal(SIGUSR1, [](microloop::signal_event ev) {
        ++t.signals;
        printf("[%.3f s] SIGUSR1 from pid %d, handled in the loop (printf is safe here)\n", t.elapsed(),
               static_cast<int>(ev.pid));
    });
    t.loop.after(milliseconds(300), [](microloop::timer_event) { kill(getpid(), SIGUSR1); });

    // ---- 5. a heartbeat, a slow callback, and the stall detector naming it ----
    t.loop.every(milliseconds(100), [](microloop::timer_event ev) {
        ++t.heartbeats;
        t.overruns += ev.overruns;
        if (ev.overruns)
            printf("[%.3f s] heartbeat: %u periods missed while the loop was blocked\n", t.elapsed(), ev.overruns);
    });
    t.loop.on_stall(milliseconds(200), [](const microloop::stall_report& r) {
        ++t.stalls;
        printf("[%.3f s] on_stall: a %s callback blocked the loop for %lld ms\n", t.elapsed(),
               microloop::source_kind_name(r.kind), static_cast<long long>(r.duration_ns / 1000000));
    });
    t.loop.after(milliseconds(1000), [](microloop::timer_event) {
        printf("[%.3f s] slow timer callback: sleeping 350 ms (never do this)\n", t.elapsed());
        usleep(350 * 1000);
    });

    // ---- 6. the end ----
    t.loop.after(milliseconds(2000), [](microloop::timer_event) { t.loop.stop(); });
    if (microloop::error_code e = t.loop.run()) {
        fprintf(stderr, "demo: run: %s\n", e.message());
        return 1;
    }
    demo_loop::loop_stats s = t.loop.stats();
    bool clients_ok = t.clients_done == nclients;
    for (int k = 0; k < nclients; ++k) clients_ok = clients_ok && t.clients[k].ok;
    printf("[%.3f s] report:\n", t.elapsed());
    printf("  echo: %d of %d clients checked, %llu bytes echoed\n", t.clients_done, nclients, t.echoed);
    printf("  file: %zu of %zu bytes, %s\n", t.file_received, file_bytes,
           t.file_checksum == t.expected_checksum ? "intact" : "CORRUPT");
    printf("  child exit status %d; %llu signal(s); %llu heartbeats, %llu missed; %llu stall(s)\n", t.child_status,
           t.signals, t.heartbeats, t.overruns, t.stalls);
    printf("  high-water marks: %zu of %zu fd watchers, %zu of %zu timers, %zu of %zu signals, %zu of %zu children,"
           " %zu of %zu AIO operations, %zu of %zu continuations\n",
           s.io.high_water, s.io.capacity, s.timers.high_water, s.timers.capacity, s.signals.high_water,
           s.signals.capacity, s.children.high_water, s.children.capacity, t.disk.stats().high_water,
           t.disk.stats().capacity, t.pending.stats().high_water, t.pending.stats().capacity);
    bool ok = clients_ok && t.file_received == file_bytes && t.file_checksum == t.expected_checksum &&
              t.child_status == 7 && t.signals == 1 && t.overruns > 0 && t.stalls > 0;
    printf("%s\n", ok ? "tour complete" : "tour FAILED");
    return ok ? 0 : 1;
}
