// SPDX-License-Identifier: MIT
// microloop/adapters/cares.hpp - a c-ares channel driven by a microloop loop:
// the channel's sockets become fd watchers, its next timeout one loop timer.
// Not part of <microloop.hpp>; link with c-ares (pkg-config libcares).
//
// ---- Usage -------------------------------------------------------------------
//
//     #include <microloop/adapters/cares.hpp>
//     static microloop::loop<> loop;
//     static microloop::ares_driver<microloop::loop<> > dns(loop);   // after the loop
//
//     int main() {
//         ares_library_init(ARES_LIB_INIT_ALL);
//         if (microloop::error_code e = dns.error()) return puts(e.message()), 1;
//         ares_gethostbyname(dns.channel(), "example.com", AF_INET,
//                            [](void*, int status, int, hostent* h) { ... }, nullptr);
//         loop.run();                        // returns when no query is left
//     }
//
//   With options: ares_driver<L> dns(loop, &opts, ARES_OPT_TIMEOUTMS | ...);
//   they are passed to ares_init_options() with ARES_OPT_SOCK_STATE_CB added.
//   Servers: ares_set_servers_ports_csv(dns.channel(), "127.0.0.1:5353").
//   Queries are made with c-ares' own calls on channel(); their callbacks are
//   c-ares' callbacks, run from inside the loop's callbacks.
//
// ---- What it owns --------------------------------------------------------------
//
//   - The channel: ares_init_options() in the constructor, ares_destroy() in
//     the destructor (pending queries get ARES_EDESTRUCTION then).
//   - ARES_OPT_SOCK_STATE_CB and ares_set_socket_callback() (do not set them).
//   - One fd watcher per socket of the channel (found again with
//     loop.watcher(fd)), one loop timer, one prepare hook (of the loop's
//     Hooks). The loop must outlive the driver; loop thread only.
//
// ---- Flow ----------------------------------------------------------------------
//
//   sock_state_cb      -> watch()/modify()/unwatch() of that fd;
//   fd ready           -> ares_process_fd(readable fd, writable fd);
//   the prepare hook   -> before every wait, ares_timeout() re-read and the
//                         one timer re-armed to it (cancelled if no query is
//                         pending): this covers every call into c-ares made
//                         since the last wait, from anywhere;
//   timer fired        -> ares_process_fd(ARES_SOCKET_BAD, ARES_SOCKET_BAD):
//                         c-ares retries or fails what timed out.
//
// ---- Errors --------------------------------------------------------------------
//
//   error(): errc::system if ares_init_options() failed (status() has the
//   ARES_ status), or the prepare hook's error (table_full).
//   A socket the loop cannot watch (an fd >= FD_SETSIZE: fd_out_of_range; the
//   loop's fd table full: table_full) is refused where c-ares allows it: the
//   socket-create callback returns -1, c-ares closes the socket, skips the
//   server, and a query with no server left ends at once with
//   ARES_ECONNREFUSED. last_refused() keeps the reason. If a watch() still
//   fails in sock_state_cb (which cannot refuse), every pending query is
//   cancelled (ares_cancel(): ARES_ECANCELLED) from the next prepare hook,
//   rather than left to hang.
#ifndef MICROLOOP_ADAPTERS_CARES_HPP
#define MICROLOOP_ADAPTERS_CARES_HPP

#include <ares.h>
#include <microloop/core.hpp>

namespace microloop {

template <class Loop>
class ares_driver {
public:
    explicit ares_driver(Loop& loop, const ares_options* opts = nullptr, int optmask = 0)
        : loop_(loop), channel_(nullptr), status_(ARES_SUCCESS), timeouts_(0), cancel_(false) {
        ares_options o = ares_options();
        if (opts) o = *opts;
        o.sock_state_cb = &ares_driver::state_cb;
        o.sock_state_cb_data = this;
        status_ = ares_init_options(&channel_, &o, optmask | ARES_OPT_SOCK_STATE_CB);
        if (status_ != ARES_SUCCESS) {
            channel_ = nullptr;
            error_ = errc::system;
            return;
        }
        ares_set_socket_callback(channel_, &ares_driver::create_cb, this);
        ares_driver* self = this;
        hook_ = loop_.on_prepare([self](hook_event) { self->prepare(); });
        if (!hook_) error_ = hook_.error();
    }
    ~ares_driver() {
        if (channel_) ares_destroy(channel_); // closes its sockets: state_cb unwatches
        loop_.unwatch(hook_);
        loop_.cancel(timer_);
    }
    ares_driver(const ares_driver&) = delete;
    ares_driver& operator=(const ares_driver&) = delete;

    ares_channel channel() const { return channel_; }
    error_code error() const { return error_; }
    int status() const { return status_; }
    // Why the last socket was refused (fd_out_of_range, table_full), or ok.
    error_code last_refused() const { return refused_; }
    // How many times the timer called c-ares (its retries and timeouts).
    unsigned long timeouts() const { return timeouts_; }

private:
    error_code can_watch(int fd) const {
        io_handle h = loop_.watcher(fd);
        if (!h && h.error() != errc::not_watched) return h.error();
        if (h) return errc::already_watched;
        const table_stats io = loop_.stats().io;
        if (io.used >= io.capacity) return errc::table_full;
        return error_code();
    }

    // Called by c-ares for each new socket, before it is used: < 0 refuses it.
    static int create_cb(ares_socket_t fd, int, void* data) {
        ares_driver& d = *static_cast<ares_driver*>(data);
        if (error_code e = d.can_watch(fd)) {
            d.refused_ = e;
            return -1;
        }
        return 0;
    }

    static void state_cb(void* data, ares_socket_t fd, int rd, int wr) {
        ares_driver& d = *static_cast<ares_driver*>(data);
        io_handle h = d.loop_.watcher(fd);
        const unsigned ev = (rd ? readable : 0u) | (wr ? writable : 0u);
        if (ev == 0) {
            if (h) d.loop_.unwatch(h);
            return;
        }
        if (h) {
            d.loop_.modify(h, ev);
            return;
        }
        ares_driver* self = &d;
        h = d.loop_.watch(fd, ev, [self](io_event e) { self->on_io(e); });
        if (!h) {
            d.refused_ = h.error();
            d.cancel_ = true; // not from inside c-ares: the next prepare hook
        }
    }

    void on_io(io_event e) {
        if (e.events & io_error) loop_.unwatch(e.handle);
        const ares_socket_t r = e.events & (readable | priority | io_error) ? e.fd : ARES_SOCKET_BAD;
        const ares_socket_t w = e.events & writable ? e.fd : ARES_SOCKET_BAD;
        ares_process_fd(channel_, r, w);
    }

    void on_timer() {
        ++timeouts_;
        ares_process_fd(channel_, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    }

    // Before each wait: the timer follows ares_timeout().
    void prepare() {
        if (cancel_) {
            cancel_ = false;
            ares_cancel(channel_);
        }
        timeval tv;
        if (!ares_timeout(channel_, nullptr, &tv)) {
            loop_.cancel(timer_);
            return;
        }
        const std::chrono::microseconds t =
            std::chrono::seconds(tv.tv_sec) + std::chrono::microseconds(tv.tv_usec);
        if (!loop_.rearm(timer_, t)) return;
        ares_driver* self = this;
        timer_ = loop_.after(t, [self](timer_event) { self->on_timer(); });
    }

    Loop& loop_;
    ares_channel channel_;
    int status_;
    unsigned long timeouts_;
    bool cancel_;
    error_code error_;
    error_code refused_;
    hook_handle hook_;
    timer_handle timer_;
};

} // namespace microloop

#endif // MICROLOOP_ADAPTERS_CARES_HPP
