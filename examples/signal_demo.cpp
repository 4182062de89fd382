// signal_demo.cpp - a daemon's signal handling in one loop.
//
// SIGHUP reloads the configuration, SIGINT and SIGTERM stop it cleanly, and a
// helper process it starts is reaped and its exit status reported. Every
// callback runs in the loop, not in signal context, so it may print, allocate
// or touch any state.
//
//     signal_demo                 runs until stopped: kill -HUP <pid>, kill -TERM <pid>, Ctrl-C
//     signal_demo --self-test     sends itself SIGHUP, SIGHUP, SIGTERM and exits (for CI)
#include <microloop.hpp>

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

using namespace std::chrono;

typedef microloop::loop<2, 4, 4, 2> demo_loop;

struct daemon_state {
    demo_loop loop;
    int reloads;
};

static int fail(const char* what, microloop::error_code e) {
    fprintf(stderr, "signal_demo: %s: %s\n", what, e.message());
    return 1;
}

// A helper process: works for a moment, then exits with status 3.
static pid_t start_helper() {
    pid_t pid = fork();
    if (pid == 0) {
        struct timespec ts = {0, 150 * 1000 * 1000};
        nanosleep(&ts, nullptr);
        _exit(3);
    }
    return pid;
}

// At namespace scope rather than a static inside main(): a function-local
// static brings in the thread-safe-statics guard (__cxa_guard_*), about
// 33 KiB of text in a static armhf -Os build. The tables are inline in the
// object, so it stays off a small stack either way.
static daemon_state d;

int main(int argc, char** argv) {
    d.reloads = 0;
    bool self_test = argc > 1 && strcmp(argv[1], "--self-test") == 0;

    // Writes to a peer that went away fail with EPIPE instead of killing the
    // daemon (sockets can also use send(..., MSG_NOSIGNAL)).
    if (microloop::error_code e = microloop::ignore_sigpipe()) return fail("ignore_sigpipe", e);

    microloop::signal_handle hup = d.loop.on_signal(SIGHUP, [](microloop::signal_event ev) {
        ++d.reloads;
        printf("SIGHUP x%u from pid %d: reloading configuration (reload #%d)\n", ev.count,
               static_cast<int>(ev.pid), d.reloads);
    });
    if (!hup) return fail("on_signal(SIGHUP)", hup.error());
    auto stop = [](microloop::signal_event ev) {
        printf("%s: stopping cleanly\n", ev.signo == SIGINT ? "SIGINT" : "SIGTERM");
        d.loop.stop();
    };
    microloop::signal_handle intr = d.loop.on_signal(SIGINT, stop);
    microloop::signal_handle term = d.loop.on_signal(SIGTERM, stop);
    if (!intr) return fail("on_signal(SIGINT)", intr.error());
    if (!term) return fail("on_signal(SIGTERM)", term.error());

    pid_t helper = start_helper();
    if (helper < 0) {
        perror("fork");
        return 1;
    }
    microloop::child_handle child = d.loop.on_child(helper, [](microloop::child_event ev) {
        if (ev.exited()) printf("helper %d exited with status %d\n", static_cast<int>(ev.pid), ev.exit_code());
        else if (ev.signaled()) printf("helper %d killed by signal %d\n", static_cast<int>(ev.pid), ev.term_signal());
    });
    if (!child) return fail("on_child", child.error());
    printf("helper %d started\n", static_cast<int>(helper));

    if (self_test) {
        // What an operator would do with kill(1), from timers in the loop.
        d.loop.after(milliseconds(50), [](microloop::timer_event) { kill(getpid(), SIGHUP); });
        d.loop.after(milliseconds(100), [](microloop::timer_event) {
            kill(getpid(), SIGHUP);
            kill(getpid(), SIGHUP); // two arrivals before the loop looks: one call, count 2
        });
        d.loop.after(milliseconds(300), [](microloop::timer_event) { kill(getpid(), SIGTERM); });
    } else {
        printf("pid %d: kill -HUP %d to reload, kill -TERM %d or Ctrl-C to stop\n", static_cast<int>(getpid()),
               static_cast<int>(getpid()), static_cast<int>(getpid()));
    }
    fflush(stdout);

    if (microloop::error_code e = d.loop.run()) return fail("run", e);
    // Watchers go with the loop, which puts the previous dispositions back.
    printf("stopped after %d reload(s)\n", d.reloads);
    return self_test && d.reloads < 2 ? 1 : 0;
}
