/* tests/bench/footprint/floor.c - the footprint floor: the same job as the other
 * footprint programs, written by hand on select() with no library. One fd
 * (stdin), one repeating 1 s timer on CLOCK_MONOTONIC and, with -DWITH_SIGNAL,
 * SIGTERM through a self-pipe; -DWITH_AIO adds one POSIX AIO read of a file,
 * polled with aio_error() (the baseline for the AIO build). Compiled with the same flags as the others;
 * `text` of a library's program minus this one's is what the library costs. */
#ifdef WITH_AIO
#include <aio.h>
#endif
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/select.h>
#include <time.h>
#include <unistd.h>

static long long mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

#ifdef WITH_SIGNAL
static int sig_pipe[2];
static void on_term(int signo) {
    int saved = errno;
    char c = (char)signo;
    (void)!write(sig_pipe[1], &c, 1);
    errno = saved;
}
#endif

int main(int argc, char** argv) {
    int running = 1, maxfd = 0;
    long long next = mono_ns() + 1000000000LL;
    fd_set master;
    FD_ZERO(&master);
    FD_SET(0, &master);
#ifdef WITH_SIGNAL
    struct sigaction sa;
    if (pipe(sig_pipe) != 0) return 1;
    fcntl(sig_pipe[0], F_SETFL, O_NONBLOCK);
    fcntl(sig_pipe[1], F_SETFL, O_NONBLOCK);
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGTERM, &sa, 0);
    FD_SET(sig_pipe[0], &master);
    maxfd = sig_pipe[0];
#endif
#ifdef WITH_AIO
    static char aio_buf[64];
    struct aiocb cb;
    memset(&cb, 0, sizeof cb);
    cb.aio_fildes = open(argv[0], O_RDONLY | O_CLOEXEC);
    cb.aio_buf = aio_buf;
    cb.aio_nbytes = sizeof aio_buf;
    cb.aio_sigevent.sigev_notify = SIGEV_NONE;
    int aio_busy = aio_read(&cb) == 0;
#else
    (void)argv;
#endif
    (void)argc;
    while (running) {
        fd_set r = master;
        long long wait = next - mono_ns();
        struct timeval tv;
        if (wait < 0) wait = 0;
        tv.tv_sec = (time_t)(wait / 1000000000);
        tv.tv_usec = (suseconds_t)(wait % 1000000000 / 1000);
        int n = select(maxfd + 1, &r, 0, 0, &tv);
        if (n < 0 && errno != EINTR) return 1;
        if (n > 0 && FD_ISSET(0, &r)) {
            char buf[256];
            if (read(0, buf, sizeof buf) <= 0) running = 0;
        }
#ifdef WITH_SIGNAL
        if (n > 0 && FD_ISSET(sig_pipe[0], &r)) {
            char buf[16];
            while (read(sig_pipe[0], buf, sizeof buf) > 0) {
            }
            running = 0;
        }
#endif
#ifdef WITH_AIO
        if (aio_busy && aio_error(&cb) != EINPROGRESS) {
            aio_busy = 0;
            if (aio_return(&cb) > 0) (void)!write(1, aio_buf, 4);
            close(cb.aio_fildes);
        }
#endif
        if (mono_ns() >= next) {
            next += 1000000000LL;
            (void)!write(1, ".", 1);
        }
    }
    return 0;
}
