/* tests/bench/footprint/libev.c - the footprint program with libev (its default
 * backends, as a user would link it). */
#include <ev.h>
#include <unistd.h>

static void on_stdin(struct ev_loop* loop, ev_io* w, int revents) {
    char buf[256];
    (void)revents;
    if (read(w->fd, buf, sizeof buf) <= 0) ev_break(loop, EVBREAK_ALL);
}
static void on_tick(struct ev_loop* loop, ev_timer* w, int revents) {
    (void)loop, (void)w, (void)revents;
    (void)!write(1, ".", 1);
}
#ifdef WITH_SIGNAL
static void on_term(struct ev_loop* loop, ev_signal* w, int revents) {
    (void)w, (void)revents;
    ev_break(loop, EVBREAK_ALL);
}
#endif

int main(void) {
    struct ev_loop* loop = ev_default_loop(0);
    ev_io in;
    ev_timer tick;
    ev_io_init(&in, on_stdin, 0, EV_READ);
    ev_io_start(loop, &in);
    ev_timer_init(&tick, on_tick, 1., 1.);
    ev_timer_start(loop, &tick);
#ifdef WITH_SIGNAL
    ev_signal term;
    ev_signal_init(&term, on_term, SIGTERM);
    ev_signal_start(loop, &term);
#endif
    ev_run(loop, 0);
    return 0;
}
