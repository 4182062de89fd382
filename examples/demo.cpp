// demo.cpp - a tour of the microloop core in about 1.3 seconds.
//
// A timer writes messages into a pipe and an fd watcher reads them; a
// repeating heartbeat reports the periods it missed while a deliberately slow
// callback blocked the loop (and on_stall names that callback); a one-shot
// timer fires once; and run() returns by itself when no source is left.
#include <microloop.hpp>

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

using namespace std::chrono;

typedef microloop::loop<4, 8> demo_loop; // 4 fd watchers, 8 timers: plenty here

struct demo {
    demo_loop loop;
    int pipe_rd, pipe_wr;
    int sent;
    steady_clock::time_point start;

    // Seconds since the start, for the log lines.
    double elapsed() const { return duration<double>(steady_clock::now() - start).count(); }
};

static int fail(const char* what, microloop::error_code e) {
    fprintf(stderr, "demo: %s: %s\n", what, e.message());
    return 1;
}

// At namespace scope rather than a static inside main(): a function-local
// static brings in the thread-safe-statics guard (__cxa_guard_*), about
// 33 KiB of text in a static armhf -Os build. The tables are inline in the
// object, so it stays off a small stack either way.
static demo d;

int main() {
    d.start = steady_clock::now();
    d.sent = 0;
    int p[2];
    if (pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0) {
        perror("pipe2");
        return 1;
    }
    d.pipe_rd = p[0];
    d.pipe_wr = p[1];
    setvbuf(stdout, nullptr, _IOLBF, 0);

    // The reader: prints what arrives; at end of file it unwatches the pipe.
    microloop::io_handle reader = d.loop.watch(d.pipe_rd, microloop::readable, [](microloop::io_event ev) {
        char buf[64];
        ssize_t n = read(ev.fd, buf, sizeof buf - 1);
        if (n > 0) {
            buf[n] = '\0';
            printf("[%.3f s] reader: got \"%s\"\n", d.elapsed(), buf);
        } else if (n == 0) {
            printf("[%.3f s] reader: end of file, unwatching the pipe\n", d.elapsed());
            d.loop.unwatch(ev.handle);
            close(ev.fd);
        }
    });
    if (!reader) return fail("watch", reader.error());

    // The writer: every 250 ms one message into the pipe; after the fourth it
    // closes the pipe and cancels itself.
    microloop::timer_handle writer = d.loop.every(milliseconds(250), [](microloop::timer_event ev) {
        char msg[32];
        int len = snprintf(msg, sizeof msg, "message %d", ++d.sent);
        if (write(d.pipe_wr, msg, static_cast<size_t>(len)) != len) perror("write");
        printf("[%.3f s] writer: sent \"%s\"\n", d.elapsed(), msg);
        if (d.sent == 4) {
            printf("[%.3f s] writer: closing the pipe, canceling myself\n", d.elapsed());
            close(d.pipe_wr);
            d.loop.cancel(ev.handle);
        }
    });
    if (!writer) return fail("every", writer.error());

    // The heartbeat: every 100 ms. After the slow callback below it reports
    // the periods it missed instead of firing them in a burst.
    microloop::timer_handle heartbeat = d.loop.every(milliseconds(100), [](microloop::timer_event ev) {
        if (ev.overruns) printf("[%.3f s] heartbeat: %u periods missed while the loop was blocked\n",
                                d.elapsed(), ev.overruns);
        if (d.elapsed() > 1.3) {
            printf("[%.3f s] heartbeat: done, canceling myself\n", d.elapsed());
            d.loop.cancel(ev.handle);
        }
    });
    if (!heartbeat) return fail("every", heartbeat.error());

    // A callback that blocks the loop for 350 ms, and the stall detector that
    // names it.
    d.loop.on_stall(milliseconds(200), [](const microloop::stall_report& r) {
        printf("[%.3f s] stall: a %s callback blocked the loop for %lld ms\n", d.elapsed(),
               r.kind == microloop::source_kind::timer ? "timer" : "non-timer",
               static_cast<long long>(r.duration_ns / 1000000));
    });
    microloop::timer_handle slow = d.loop.after(milliseconds(600), [](microloop::timer_event) {
        printf("[%.3f s] slow one-shot: sleeping 350 ms in a callback (do not do this)\n", d.elapsed());
        usleep(350 * 1000);
    });
    if (!slow) return fail("after", slow.error());

    // A plain one-shot timer.
    microloop::timer_handle once = d.loop.after(milliseconds(1200), [](microloop::timer_event) {
        printf("[%.3f s] one-shot: fired once\n", d.elapsed());
    });
    if (!once) return fail("after", once.error());

    printf("[%.3f s] running with %u active sources\n", d.elapsed(), static_cast<unsigned>(d.loop.active()));
    if (microloop::error_code e = d.loop.run()) return fail("run", e);
    printf("[%.3f s] nothing left to wait for: run() returned\n", d.elapsed());
    return 0;
}
