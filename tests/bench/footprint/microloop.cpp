// tests/bench/footprint/microloop.cpp - the footprint program with microloop: one
// fd (stdin), one repeating 1 s timer; -DWITH_SIGNAL adds a SIGTERM watcher;
// -DWITH_AIO adds an AIO read and a continuation table on top.
#include <microloop.hpp>
#ifdef WITH_AIO
#include <microloop/aio.hpp>
#include <microloop/continuation.hpp>
#include <fcntl.h>
#endif
#include <unistd.h>

using namespace std::chrono;

static microloop::loop<> loop;

#ifdef WITH_AIO
struct request {
    int fd;
    char buf[64];
};
static microloop::aio<4> disk(loop);
static microloop::continuation_table<4, 128> pending;
#endif

int main(int, char** argv) {
    loop.watch(0, microloop::readable, [](microloop::io_event ev) {
        char buf[256];
        if (read(ev.fd, buf, sizeof buf) <= 0) loop.stop();
    });
    loop.every(seconds(1), [](microloop::timer_event) { (void)!write(1, ".", 1); });
#ifdef WITH_SIGNAL
    loop.on_signal(SIGTERM, [](microloop::signal_event) { loop.stop(); });
#endif
#ifdef WITH_AIO
    microloop::continuation_id id = pending.emplace<request>();
    request* req = pending.get<request>(id);
    if (req) {
        req->fd = open(argv[0], O_RDONLY | O_CLOEXEC);
        disk.read(req->fd, req->buf, sizeof req->buf, 0, [id](microloop::aio_event ev) {
            microloop::taken<request> r = pending.take<request>(id);
            if (r && ev.result > 0) (void)!write(1, r->buf, 4);
            if (r) close(r->fd);
        });
    }
#else
    (void)argv;
#endif
    loop.run();
    return 0;
}
