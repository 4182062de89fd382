// SPDX-License-Identifier: MIT
// microloop/adapters/mosquitto.hpp - drives a libmosquitto client from a
// microloop loop: the socket, the keepalive, reconnects. Not part of the
// single header; link with -lmosquitto (pkg-config libmosquitto).
//
// ---- Usage -------------------------------------------------------------------
//
//     #include <microloop/adapters/mosquitto.hpp>
//
//     microloop::loop<> loop;
//     struct mosquitto* m = mosquitto_new("sensor", true, &app);  // yours
//     mosquitto_connect_callback_set(m, on_connect);   // subscribe here: a
//     mosquitto_message_callback_set(m, on_message);   // reconnect needs it again
//     mosquitto_disconnect_callback_set(m, on_disconnect);
//     microloop::adapters::mosquitto_adapter<microloop::loop<> > mqtt(loop, m);
//     mqtt.on_status([](const microloop::adapters::mosquitto_event& ev) { ... });
//     mqtt.connect("127.0.0.1", 1883, 30);             // mosquitto_connect_async
//     loop.run();
//
// The application creates the struct mosquitto, sets every libmosquitto
// callback and calls mosquitto_publish/subscribe as usual (from the loop's
// thread); the callbacks run inside the loop's iterations. Do not call
// mosquitto_loop_start(), mosquitto_loop*() or mosquitto_threaded_set(): the
// adapter is the loop. The adapter must outlive its use by the loop and not
// move (its callbacks hold `this`); destroy it before mosquitto_destroy().
//
// ---- What the adapter owns ---------------------------------------------------
//
//   - a prepare hook: before every wait it re-reads mosquitto_socket() (a
//     connect or reconnect gives a new fd; -1 when disconnected) and sets the
//     write interest from mosquitto_want_write(), so what a callback or the
//     application queued is written in the very next wait, never at the next
//     keepalive tick;
//   - a watcher of the socket: readable -> mosquitto_loop_read() (up to
//     options::read_batch packets a wake-up), writable -> mosquitto_loop_write();
//   - while a socket exists, a timer every options::misc_period (1 s) ->
//     mosquitto_loop_misc() (keepalive pings, their time-out);
//   - while disconnected, one reconnect timer -> mosquitto_reconnect_async().
//
// Host names are resolved by libmosquitto with a blocking getaddrinfo() in
// connect() and in each reconnect: give a numeric address on a loop that must
// not block. Nothing here allocates; libmosquitto allocates what it needs.
//
// ---- Status, errors, reconnect -------------------------------------------------
//
// libmosquitto reports a lost connection to its own on_disconnect callback
// (rc != 0). The adapter reports to on_status(cb), cb(const mosquitto_event&):
//   attached  a socket is watched (connecting; on_connect says when the
//             broker accepted it)
//   lost      the connection failed or was lost (rc: the libmosquitto error,
//             MOSQ_ERR_KEEPALIVE when found by the keepalive check); the next
//             reconnect attempt is in retry_in (attempt counts them), with an
//             exponential backoff from options::reconnect_min to
//             reconnect_max, reset when the new connection reads its first
//             packet. With options::reconnect false, retry_in is 0 and nothing
//             more happens.
//   closed    closed on request (disconnect(), or mosquitto_disconnect());
//             no reconnect
//   failed    the loop could not watch the socket (loop_error: table_full,
//             fd_out_of_range, or a timer that could not be armed): the
//             connection is dropped at once through libmosquitto's own error
//             path (its on_disconnect runs with MOSQ_ERR_CONN_LOST) and not
//             retried, since the cause is the application's (its capacities,
//             its fds)
// Subscriptions of a clean session are gone after a reconnect: subscribe in
// on_connect. state() is the latest status; last_error() the latest loop error.
#ifndef MICROLOOP_ADAPTERS_MOSQUITTO_HPP
#define MICROLOOP_ADAPTERS_MOSQUITTO_HPP

#include <mosquitto.h>

#include <microloop.hpp>

namespace microloop {
namespace adapters {

enum class mosquitto_status { idle, attached, lost, closed, failed };

struct mosquitto_event {
    mosquitto_status status;
    int rc;                             // libmosquitto's error (MOSQ_ERR_*), 0 if none
    error_code loop_error;              // failed: why the loop could not host the socket
    unsigned attempt;                   // lost: reconnect attempts since the last good connection
    std::chrono::milliseconds retry_in; // lost: when the next attempt is made (0: none)
};

template <class Loop>
class mosquitto_adapter {
public:
    struct options {
        std::chrono::milliseconds misc_period;   // mosquitto_loop_misc() period
        std::chrono::milliseconds reconnect_min; // first reconnect delay
        std::chrono::milliseconds reconnect_max; // backoff ceiling
        bool reconnect;                          // reconnect after a loss
        unsigned read_batch;                     // packets read per readable wake-up
        options()
            : misc_period(1000), reconnect_min(500), reconnect_max(30000), reconnect(true), read_batch(64) {}
    };

    mosquitto_adapter(Loop& loop, struct mosquitto* mosq, const options& opt = options())
        : loop_(loop), m_(mosq), opt_(opt), fd_(-1), interest_(0), state_(mosquitto_status::idle),
          delay_(opt.reconnect_min), attempt_(0), closing_(false), misc_calls_(0) {}
    ~mosquitto_adapter() { stop(); }
    mosquitto_adapter(const mosquitto_adapter&) = delete;
    mosquitto_adapter& operator=(const mosquitto_adapter&) = delete;

    // cb(const mosquitto_event&), from the loop's iterations (and from the
    // adapter's calls: connect(), start(), disconnect()).
    template <class F>
    void on_status(F&& cb) { status_cb_.emplace(std::forward<F>(cb)); }

    // Starts driving: the prepare hook, and the socket if the client already
    // has one (after mosquitto_connect()). A loop error (hooks table full)
    // is returned; one on the socket is also reported as `failed`.
    error_code start() {
        if (!hook_) {
            hook_ = loop_.on_prepare([this](hook_event) { settle(MOSQ_ERR_SUCCESS, from_outside); });
            if (!hook_) return last_error_ = hook_.error();
        }
        settle(MOSQ_ERR_SUCCESS, from_outside);
        return state_ == mosquitto_status::failed ? last_error_ : error_code();
    }

    // mosquitto_connect_async() and start(). Returns libmosquitto's result;
    // a failure other than MOSQ_ERR_INVAL is also reported as `lost` and
    // retried (with options::reconnect). MOSQ_ERR_UNKNOWN if the loop could
    // not take the hook (last_error()).
    int connect(const char* host, int port, int keepalive) {
        if (start()) {
            if (!hook_) return MOSQ_ERR_UNKNOWN;
        }
        closing_ = false;
        cancel_retry();
        if (state_ == mosquitto_status::failed) state_ = mosquitto_status::idle;
        const int rc = mosquitto_connect_async(m_, host, port, keepalive);
        if (rc == MOSQ_ERR_SUCCESS || rc == MOSQ_ERR_INVAL)
            settle(MOSQ_ERR_SUCCESS, from_outside);
        else
            settle(rc, from_call);
        return rc;
    }

    // mosquitto_disconnect(), and no reconnect until the next connect().
    int disconnect() {
        closing_ = true;
        cancel_retry();
        const int rc = mosquitto_disconnect(m_);
        settle(MOSQ_ERR_SUCCESS, from_outside);
        if (fd_ < 0 && state_ != mosquitto_status::closed && state_ != mosquitto_status::failed)
            report(mosquitto_status::closed, rc, error_code());
        return rc;
    }

    // Leaves the loop: the hook, the watcher and the timers go; the client
    // and its connection are left as they are.
    void stop() {
        if (hook_) loop_.unwatch(hook_);
        hook_ = hook_handle();
        drop_socket();
        cancel_retry();
    }

    mosquitto_status state() const { return state_; }
    error_code last_error() const { return last_error_; }
    int fd() const { return fd_; }
    // How often mosquitto_loop_misc() ran: the keepalive tick.
    unsigned long misc_calls() const { return misc_calls_; }

private:
    enum origin { from_outside, from_call, from_read, from_write, from_misc };

    // After every libmosquitto call (and before every wait): follow the
    // socket, sync the write interest.
    void settle(int rc, origin o) {
        const int fd = mosquitto_socket(m_);
        if (fd == fd_ && rc == MOSQ_ERR_SUCCESS) {
            if (fd_ >= 0) sync_interest();
            return;
        }
        if (fd != fd_ && fd_ >= 0) drop_socket();
        if (fd >= 0) {
            if (fd != fd_) attach(fd);
            else sync_interest();
            return;
        }
        // No socket. Closed on request: disconnect(), mosquitto_disconnect()
        // by the application (the socket vanished outside the adapter's calls),
        // or a read/write that ended in the DISCONNECT the application queued
        // (rc 0). A keepalive time-out closes with rc 0 too: lost.
        if (state_ == mosquitto_status::failed) return;
        const bool wanted = closing_ || (rc == MOSQ_ERR_SUCCESS && o != from_misc && o != from_call);
        if (wanted) {
            if (state_ == mosquitto_status::attached) report(mosquitto_status::closed, rc, error_code());
            return;
        }
        if (state_ == mosquitto_status::lost && retry_) return; // already waiting
        lost(o == from_misc && rc == MOSQ_ERR_SUCCESS ? MOSQ_ERR_KEEPALIVE : rc);
    }

    void attach(int fd) {
        cancel_retry();
        const unsigned want = readable | (mosquitto_want_write(m_) ? writable : 0u);
        io_handle h = loop_.watch(fd, want, [this](io_event ev) { on_io(ev); });
        if (!h) return fail(fd, h.error());
        io_ = h;
        fd_ = fd;
        interest_ = want;
        misc_ = loop_.every(opt_.misc_period, [this](timer_event) {
            ++misc_calls_;
            const int rc = mosquitto_loop_misc(m_);
            settle(rc == MOSQ_ERR_NO_CONN ? MOSQ_ERR_SUCCESS : rc, from_misc);
        });
        if (!misc_) {
            const error_code e = misc_.error();
            drop_socket();
            return fail(fd, e);
        }
        report(mosquitto_status::attached, MOSQ_ERR_SUCCESS, error_code());
    }

    void sync_interest() {
        const unsigned want = readable | (mosquitto_want_write(m_) ? writable : 0u);
        if (want != interest_ && !loop_.modify(io_, want)) interest_ = want;
    }

    void on_io(io_event ev) {
        if (ev.events & (readable | io_error)) {
            int rc = MOSQ_ERR_SUCCESS;
            for (unsigned i = 0; i < opt_.read_batch; ++i) {
                errno = 0;
                rc = mosquitto_loop_read(m_, 1);
                const int e = errno;
                if (rc != MOSQ_ERR_SUCCESS || mosquitto_socket(m_) != fd_) break;
                if (attempt_ != 0 || delay_ != opt_.reconnect_min) { // the new connection works
                    attempt_ = 0;
                    delay_ = opt_.reconnect_min;
                }
                if (e == EAGAIN || e == EWOULDBLOCK) break;
            }
            settle(rc, from_read);
            if (fd_ != ev.fd || io_ != ev.handle) return;
        }
        if (ev.events & writable) settle(mosquitto_loop_write(m_, 1), from_write);
    }

    // The loop cannot host the socket: drop the connection through
    // libmosquitto's error path. The socket is replaced (dup2) by a pipe at
    // end of file, so the library's next read sees the peer gone, closes its
    // socket and runs its on_disconnect; no fd is closed twice.
    void fail(int fd, error_code why) {
        last_error_ = why;
        cancel_retry();
        int p[2];
        int rc = MOSQ_ERR_CONN_LOST;
        if (pipe(p) == 0) {
            close(p[1]);
            const bool swapped = dup2(p[0], fd) == fd;
            close(p[0]);
            if (swapped) rc = mosquitto_loop_read(m_, 1);
        }
        if (mosquitto_socket(m_) >= 0) { // no fd left for a pipe: ask politely
            closing_ = true;
            mosquitto_disconnect(m_);
        }
        report(mosquitto_status::failed, rc, why);
    }

    void lost(int rc) {
        if (!opt_.reconnect || closing_) {
            report(mosquitto_status::lost, rc, error_code());
            return;
        }
        const std::chrono::milliseconds wait = delay_;
        retry_ = loop_.after(wait, [this](timer_event) { retry(); });
        if (!retry_) {
            last_error_ = retry_.error();
            report(mosquitto_status::failed, rc, retry_.error());
            return;
        }
        delay_ = delay_ * 2 > opt_.reconnect_max ? opt_.reconnect_max : delay_ * 2;
        mosquitto_event ev = {mosquitto_status::lost, rc, error_code(), attempt_, wait};
        state_ = mosquitto_status::lost;
        if (status_cb_) status_cb_(ev);
    }

    void retry() {
        retry_ = timer_handle();
        ++attempt_;
        const int rc = mosquitto_reconnect_async(m_);
        settle(rc, from_call);
    }

    void drop_socket() {
        if (io_) loop_.unwatch(io_);
        if (misc_) loop_.cancel(misc_);
        io_ = io_handle();
        misc_ = timer_handle();
        fd_ = -1;
        interest_ = 0;
    }
    void cancel_retry() {
        if (retry_) loop_.cancel(retry_);
        retry_ = timer_handle();
    }

    void report(mosquitto_status s, int rc, error_code e) {
        state_ = s;
        mosquitto_event ev = {s, rc, e, attempt_, std::chrono::milliseconds(0)};
        if (status_cb_) status_cb_(ev);
    }

    Loop& loop_;
    struct mosquitto* m_;
    options opt_;
    hook_handle hook_;
    io_handle io_;
    timer_handle misc_, retry_;
    int fd_;
    unsigned interest_;
    mosquitto_status state_;
    std::chrono::milliseconds delay_;
    unsigned attempt_;
    bool closing_;
    unsigned long misc_calls_;
    error_code last_error_;
    detail::inplace_callback<void(const mosquitto_event&)> status_cb_;
};

} // namespace adapters
} // namespace microloop

#endif // MICROLOOP_ADAPTERS_MOSQUITTO_HPP
