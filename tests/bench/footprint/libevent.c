/* tests/bench/footprint/libevent.c - the footprint program with libevent
 * (libevent_core: the event loop without HTTP/DNS/RPC). */
#include <event2/event.h>
#include <signal.h>
#include <unistd.h>

static struct event_base* base;

static void on_stdin(evutil_socket_t fd, short what, void* arg) {
    char buf[256];
    (void)what, (void)arg;
    if (read(fd, buf, sizeof buf) <= 0) event_base_loopbreak(base);
}
static void on_tick(evutil_socket_t fd, short what, void* arg) {
    (void)fd, (void)what, (void)arg;
    (void)!write(1, ".", 1);
}
#ifdef WITH_SIGNAL
static void on_term(evutil_socket_t fd, short what, void* arg) {
    (void)fd, (void)what, (void)arg;
    event_base_loopbreak(base);
}
#endif

int main(void) {
    struct timeval one = {1, 0};
    base = event_base_new();
    event_add(event_new(base, 0, EV_READ | EV_PERSIST, on_stdin, NULL), NULL);
    event_add(event_new(base, -1, EV_PERSIST, on_tick, NULL), &one);
#ifdef WITH_SIGNAL
    event_add(evsignal_new(base, SIGTERM, on_term, NULL), NULL);
#endif
    event_base_dispatch(base);
    return 0;
}
