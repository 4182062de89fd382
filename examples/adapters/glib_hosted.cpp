// examples/adapters/glib_hosted.cpp - a GLib main context hosted on a
// microloop loop: a GIO watch on stdin (or on a pipe the program feeds
// itself with --self-test), a g_timeout_add, a g_idle_add and the loop's
// own timer, all driven by one loop.run(). Ends on end of input, or after
// two seconds with --self-test.
//
//     build/adapters/glib_hosted              # type lines; Ctrl-D ends
//     build/adapters/glib_hosted --self-test  # feeds itself, exits 0
#include <microloop.hpp>
#include <microloop/adapters/glib.hpp>

#include <glib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static microloop::loop<> loop;

static int lines, glib_ticks, loop_ticks, input_fd = 0, feed_fd = -1;

static gboolean on_input(GIOChannel*, GIOCondition, gpointer) {
    char buf[256];
    ssize_t n = read(input_fd, buf, sizeof buf);
    if (n <= 0) { // end of input: the GIO watch goes, and so does the loop
        printf("glib: end of input after %d chunk(s)\n", lines);
        loop.stop();
        return G_SOURCE_REMOVE;
    }
    ++lines;
    printf("glib: read %d bytes\n", static_cast<int>(n));
    return G_SOURCE_CONTINUE;
}

static gboolean on_glib_timeout(gpointer) {
    ++glib_ticks;
    printf("glib: timeout %d\n", glib_ticks);
    return G_SOURCE_CONTINUE;
}

static gboolean on_idle(gpointer) {
    printf("glib: idle, once\n");
    return G_SOURCE_REMOVE;
}

int main(int argc, char** argv) {
    const bool self_test = argc > 1 && strcmp(argv[1], "--self-test") == 0;
    int p[2] = {-1, -1};
    if (self_test) {
        if (pipe(p) != 0) return 1;
        input_fd = p[0];
        feed_fd = p[1];
    }
    microloop::glib_adapter<microloop::loop<> > glib(loop); // the default context
    if (glib.error()) {
        fprintf(stderr, "glib adapter: %s\n", glib.error().message());
        return 1;
    }
    GIOChannel* ch = g_io_channel_unix_new(input_fd);
    g_io_add_watch(ch, static_cast<GIOCondition>(G_IO_IN | G_IO_HUP), on_input, nullptr);
    g_io_channel_unref(ch); // the watch keeps it
    g_timeout_add(500, on_glib_timeout, nullptr);
    g_idle_add(on_idle, nullptr);

    // The loop's own timer; with --self-test it also feeds the pipe, and
    // closes it after two seconds (the GIO watch then sees the end).
    loop.every(std::chrono::milliseconds(250), [](microloop::timer_event ev) {
        ++loop_ticks;
        printf("loop: tick %d (%u missed)\n", loop_ticks, ev.overruns);
        if (feed_fd >= 0) {
            if (loop_ticks < 8) {
                if (write(feed_fd, "hello\n", 6) != 6) loop.stop();
            } else {
                close(feed_fd);
                feed_fd = -1;
            }
        }
    });
    if (microloop::error_code e = loop.run()) {
        fprintf(stderr, "run: %s\n", e.message());
        return 1;
    }
    const microloop::glib_stats& st = glib.stats();
    printf("done: %d loop ticks, %d glib timeouts, %d chunks read; %llu dispatches, %llu overflows, %llu refused\n",
           loop_ticks, glib_ticks, lines, static_cast<unsigned long long>(st.dispatches),
           static_cast<unsigned long long>(st.overflows), static_cast<unsigned long long>(st.refused));
    if (p[0] >= 0) close(p[0]);
    return self_test && (lines != 7 || glib_ticks < 2 || loop_ticks < 8) ? 1 : 0;
}
