// aio_cat.cpp - cat(1) through the loop: files are read with POSIX AIO, stdout
// is written only when select() says it is writable, and a timer reports the
// progress on stderr. Nothing blocks the loop: not a slow disk, not a slow
// reader at the other end of a pipe.
//
//     aio_cat [-q] FILE...        (-q: no progress lines)
//
// Four 64 KiB buffers circulate: each is read into by AIO, then written out,
// then read into again. Reads run ahead of the writes by up to three buffers.
#define MICROLOOP_WITH_AIO // the AIO module comes with the one header
#include <microloop.hpp>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

using namespace std::chrono;

namespace {

const size_t chunk_size = 64 * 1024;
const int nchunks = 4;

enum chunk_state { idle, reading, full };

struct chunk {
    char data[chunk_size];
    off_t offset;   // where in the file data[0] comes from
    size_t len;     // bytes read so far
    size_t written; // bytes of len already on stdout
    chunk_state state;
};

typedef microloop::loop<2, 2> cat_loop;

struct cat {
    cat_loop loop;
    microloop::aio<nchunks> disk;
    chunk chunks[nchunks];
    char** files;
    int nfiles, current;
    const char* name;
    int fd;
    off_t next_offset; // the next read starts here
    bool eof;
    int write_index; // the chunk stdout gets next: chunks are written in file order
    unsigned long long copied;
    int status;
    bool progress;
    microloop::io_handle out;
    microloop::timer_handle ticker;

    cat() : disk(loop) {}
};

void finish(cat& c, int status) {
    if (status) c.status = status;
    c.loop.stop();
}

void start_read(cat& c, int i);
bool open_next(cat& c);

void read_done(cat& c, int i, microloop::aio_event ev) {
    chunk& ch = c.chunks[i];
    if (ev.error) {
        fprintf(stderr, "aio_cat: %s: %s\n", c.name, strerror(ev.error.sys()));
        finish(c, 1);
        return;
    }
    size_t want = chunk_size - ch.len;
    ch.len += static_cast<size_t>(ev.result);
    if (ev.result > 0 && static_cast<size_t>(ev.result) < want && ch.len < chunk_size) {
        // A short read is not the end of the file: ask for the rest.
        start_read(c, i);
        return;
    }
    if (ev.result == 0) c.eof = true;
    ch.state = full;
    if (i == c.write_index) c.loop.modify(c.out, microloop::writable);
}

void start_read(cat& c, int i) {
    chunk& ch = c.chunks[i];
    if (ch.state == idle) {
        ch.offset = c.next_offset;
        ch.len = ch.written = 0;
        c.next_offset += static_cast<off_t>(chunk_size);
    }
    ch.state = reading;
    cat* cp = &c;
    microloop::aio_handle h =
        c.disk.read(c.fd, ch.data + ch.len, chunk_size - ch.len, ch.offset + static_cast<off_t>(ch.len),
                    [cp, i](microloop::aio_event ev) { read_done(*cp, i, ev); });
    if (!h) {
        fprintf(stderr, "aio_cat: %s: %s\n", c.name, c.disk.last_error().message());
        finish(c, 1);
    }
}

// Every buffer idle again: this file is done.
bool all_idle(const cat& c) {
    for (int i = 0; i < nchunks; ++i)
        if (c.chunks[i].state != idle) return false;
    return true;
}

void next_file_or_finish(cat& c) {
    close(c.fd);
    c.fd = -1;
    if (!open_next(c)) finish(c, 0);
}

void on_writable(cat& c) {
    for (;;) {
        chunk& ch = c.chunks[c.write_index];
        if (ch.state != full) {
            c.loop.modify(c.out, 0); // nothing to write: do not spin on a writable stdout
            if (c.eof && all_idle(c)) next_file_or_finish(c);
            return;
        }
        while (ch.written < ch.len) {
            ssize_t n = write(STDOUT_FILENO, ch.data + ch.written, ch.len - ch.written);
            if (n < 0) {
                if (errno == EINTR) continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) return; // the reader is slow: wait
                fprintf(stderr, "aio_cat: write error: %s\n", strerror(errno));
                finish(c, 1);
                return;
            }
            ch.written += static_cast<size_t>(n);
            c.copied += static_cast<unsigned long long>(n);
        }
        ch.state = idle;
        if (!c.eof) start_read(c, c.write_index);
        c.write_index = (c.write_index + 1) % nchunks;
    }
}

// Opens the next file that exists and starts its reads; false when none is left.
bool open_next(cat& c) {
    while (c.current < c.nfiles) {
        c.name = c.files[c.current++];
        c.fd = open(c.name, O_RDONLY | O_CLOEXEC);
        if (c.fd < 0) {
            fprintf(stderr, "aio_cat: %s: %s\n", c.name, strerror(errno));
            c.status = 1; // like cat: go on with the other files
            continue;
        }
        c.next_offset = 0;
        c.eof = false;
        c.write_index = 0;
        for (int i = 0; i < nchunks; ++i) c.chunks[i].state = idle;
        for (int i = 0; i < nchunks; ++i) start_read(c, i);
        return true;
    }
    return false;
}

// 256 KiB of buffers: not on the stack. At namespace scope rather than a
// static inside main(), which would bring in the thread-safe-statics guard
// (about 33 KiB of text in a static armhf -Os build). The loop is built
// before the AIO module (member order) and destroyed after it.
cat the_cat;

} // namespace

int main(int argc, char** argv) {
    cat& c = the_cat;
    c.progress = true;
    int first = 1;
    if (argc > 1 && strcmp(argv[1], "-q") == 0) {
        c.progress = false;
        first = 2;
    }
    if (first >= argc) {
        fprintf(stderr, "usage: aio_cat [-q] FILE...\n");
        return 2;
    }
    c.files = argv + first;
    c.nfiles = argc - first;
    c.current = 0;
    c.fd = -1;
    c.copied = 0;
    c.status = 0;
    microloop::ignore_sigpipe(); // a reader that goes away is a write error, not a death

    // stdout may be a pipe to a slow reader: never let write() block the loop.
    // The flag belongs to the open file, shared with whoever else has it
    // open (a shell, a terminal), so it is put back before exiting.
    int out_flags = fcntl(STDOUT_FILENO, F_GETFL);
    if (out_flags < 0 || fcntl(STDOUT_FILENO, F_SETFL, out_flags | O_NONBLOCK) != 0) {
        perror("aio_cat: stdout");
        return 1;
    }
    cat* cp = &c;
    c.out = c.loop.watch(STDOUT_FILENO, 0, [cp](microloop::io_event) { on_writable(*cp); });
    if (!c.out) {
        fprintf(stderr, "aio_cat: stdout: %s\n", c.out.error().message());
        fcntl(STDOUT_FILENO, F_SETFL, out_flags);
        return 1;
    }
    // Ctrl-C or a kill: stop cleanly, so stdout's flags are restored.
    c.loop.on_signal(SIGINT, [cp](microloop::signal_event) { finish(*cp, 130); });
    c.loop.on_signal(SIGTERM, [cp](microloop::signal_event) { finish(*cp, 143); });
    if (c.progress)
        c.ticker = c.loop.every(milliseconds(250), [cp](microloop::timer_event) {
            fprintf(stderr, "aio_cat: %llu bytes copied\n", cp->copied);
        });

    if (open_next(c)) {
        microloop::error_code e = c.loop.run();
        if (e) {
            fprintf(stderr, "aio_cat: loop: %s\n", e.message());
            c.status = 1;
        }
    }
    if (c.progress) fprintf(stderr, "aio_cat: %llu bytes copied, done\n", c.copied);
    fcntl(STDOUT_FILENO, F_SETFL, out_flags);
    return c.status;
}
