// SPDX-License-Identifier: MIT
// microloop/adapters/curl.hpp - libcurl's multi interface driven by a
// microloop loop: curl's sockets become fd watchers, its one timeout one loop
// timer, and finished transfers a callback. Not part of <microloop.hpp>;
// link with libcurl (pkg-config libcurl).
//
// ---- Usage -------------------------------------------------------------------
//
//     #include <microloop/adapters/curl.hpp>
//     static microloop::loop<> loop;
//     static microloop::curl_driver<microloop::loop<> > web(loop);   // after the loop
//
//     web.on_done([](microloop::curl_done d) {          // once per transfer
//         if (d.result != CURLE_OK) printf("failed: %s (%s)\n", curl_easy_strerror(d.result),
//                                          d.refused ? d.refused.message() : "curl");
//         curl_easy_cleanup(d.easy);                     // or re-use it, add() it again
//     });
//     CURL* e = curl_easy_init();
//     curl_easy_setopt(e, CURLOPT_URL, "http://example.com/");
//     if (microloop::error_code err = web.add(e)) puts(err.message());
//     loop.run();                                        // returns when every transfer is done
//
// ---- What it owns --------------------------------------------------------------
//
//   - The CURLM handle (curl_multi_init() in the constructor, cleaned up in the
//     destructor after removing what is still added); multi() gives it for
//     curl_multi_setopt() of anything but the socket and timer options.
//   - CURLMOPT_SOCKETFUNCTION/SOCKETDATA and TIMERFUNCTION/TIMERDATA.
//   - On each easy handle add() takes: CURLOPT_SOCKOPTFUNCTION/SOCKOPTDATA
//     (where it refuses a socket the loop cannot watch, see below). Do not set
//     them yourself after add().
//   - One fd watcher per socket curl uses (found again with loop.watcher(fd);
//     curl_multi_assign() only marks a socket as ours: a 64-bit handle does
//     not fit a void* on 32-bit targets), one loop timer, and a table of
//     Transfers slots (an easy handle between add() and its on_done).
//   The loop must outlive the driver. Loop thread only, like the loop.
//
// ---- Flow ----------------------------------------------------------------------
//
//   socket callback -> watch()/modify()/unwatch() of that fd;
//   timer callback  -> rearm() of the one timer (-1 cancels it). A timeout of
//                      0 is a timer due now: it fires in the next timer pass,
//                      never from inside the callback that asked for it;
//   fd ready        -> curl_multi_socket_action(fd, CURL_CSELECT_IN/OUT, or
//                      ERR for a watcher the loop found closed);
//   timer fired     -> curl_multi_socket_action(CURL_SOCKET_TIMEOUT);
//   after each call -> curl_multi_info_read(): every finished transfer is
//                      removed from the multi handle, its slot freed, then
//                      on_done(curl_done{easy, result, refused}) runs; the easy
//                      handle is the callback's again (clean it up, or add()
//                      it anew, from inside the callback too).
//
// ---- Errors --------------------------------------------------------------------
//
//   add(): errc::table_full (Transfers slots in use), bad_argument (null easy,
//   or curl_multi_add_handle failed, e.g. the handle is already added).
//   A socket the loop cannot watch (an fd >= FD_SETSIZE: fd_out_of_range; the
//   loop's fd table full: table_full) fails its own transfer at once: the
//   SOCKOPTFUNCTION refuses it (CURL_SOCKOPT_ERROR), curl closes it and ends
//   the transfer with CURLE_ABORTED_BY_CALLBACK, and on_done gets the reason
//   in curl_done::refused. The other transfers go on. If a watch() still fails
//   later in the socket callback, the transfer is ended by the driver the
//   same way (removed, CURLE_ABORTED_BY_CALLBACK, refused set). The socket
//   callback never returns -1: curl (7.88) then aborts every transfer of the
//   multi handle (CURLM_ABORTED_BY_CALLBACK) and the handle is unusable.
//   A timer the loop cannot arm (its timer table full) or a CURLMcode from
//   curl_multi_socket_action() is kept in last_error() / last_mcode().
#ifndef MICROLOOP_ADAPTERS_CURL_HPP
#define MICROLOOP_ADAPTERS_CURL_HPP

#include <curl/curl.h>
#include <microloop/core.hpp>

namespace microloop {

// One finished transfer. refused: why the loop could not watch one of its
// sockets (fd_out_of_range, table_full), or ok.
struct curl_done {
    CURL* easy;
    CURLcode result;
    error_code refused;
};

typedef detail::inplace_callback<void(curl_done)> curl_done_callback;

template <class Loop, size_t Transfers = 32>
class curl_driver {
public:
    explicit curl_driver(Loop& loop) : loop_(loop), multi_(curl_multi_init()), mcode_(CURLM_OK), failed_(0) {
        for (size_t i = 0; i < Transfers; ++i) {
            slots_[i].owner = this;
            slots_[i].easy = nullptr;
            slots_[i].failed = false;
        }
        if (!multi_) {
            error_ = errc::system;
            return;
        }
        curl_multi_setopt(multi_, CURLMOPT_SOCKETFUNCTION, &curl_driver::socket_cb);
        curl_multi_setopt(multi_, CURLMOPT_SOCKETDATA, this);
        curl_multi_setopt(multi_, CURLMOPT_TIMERFUNCTION, &curl_driver::timer_cb);
        curl_multi_setopt(multi_, CURLMOPT_TIMERDATA, this);
    }
    ~curl_driver() {
        if (!multi_) return;
        for (size_t i = 0; i < Transfers; ++i)
            if (slots_[i].easy) curl_multi_remove_handle(multi_, slots_[i].easy);
        curl_multi_cleanup(multi_); // calls socket_cb with REMOVE for what is open
        loop_.cancel(timer_);
    }
    curl_driver(const curl_driver&) = delete;
    curl_driver& operator=(const curl_driver&) = delete;

    CURLM* multi() const { return multi_; }

    // cb(curl_done) once per finished transfer, in the loop's thread.
    template <class F>
    void on_done(F&& cb) { done_.emplace(std::forward<F>(cb)); }

    // Start a transfer. The easy handle is the driver's until on_done.
    error_code add(CURL* easy) {
        if (!multi_) return error_;
        if (!easy) return errc::bad_argument;
        slot* s = find(nullptr);
        if (!s) return errc::table_full;
        curl_easy_setopt(easy, CURLOPT_SOCKOPTFUNCTION, &curl_driver::sockopt_cb);
        curl_easy_setopt(easy, CURLOPT_SOCKOPTDATA, s);
        s->easy = easy;
        s->failed = false;
        s->refused = error_code();
        if (curl_multi_add_handle(multi_, easy) != CURLM_OK) {
            s->easy = nullptr;
            return errc::bad_argument;
        }
        return error_code();
    }
    // Stop a transfer before it is done: no on_done for it. stale_handle if
    // it is not added.
    error_code remove(CURL* easy) {
        slot* s = easy ? find(easy) : nullptr;
        if (!s) return errc::stale_handle;
        if (s->failed) --failed_;
        s->failed = false;
        s->easy = nullptr;
        curl_multi_remove_handle(multi_, easy);
        return error_code();
    }

    size_t in_flight() const {
        size_t n = 0;
        for (size_t i = 0; i < Transfers; ++i) n += slots_[i].easy ? 1u : 0u;
        return n;
    }
    error_code last_error() const { return error_; }
    CURLMcode last_mcode() const { return mcode_; }

private:
    struct slot {
        curl_driver* owner;
        CURL* easy;
        bool failed;        // a watch() failed in the socket callback: end it
        error_code refused; // why
    };

    slot* find(CURL* easy) {
        for (size_t i = 0; i < Transfers; ++i)
            if (slots_[i].easy == easy) return &slots_[i];
        return nullptr;
    }

    // Whether the loop can take one more watcher for fd; the reason if not.
    error_code can_watch(int fd) const {
        io_handle h = loop_.watcher(fd);
        if (!h && h.error() != errc::not_watched) return h.error(); // fd_out_of_range, bad_fd
        if (h) return errc::already_watched;
        const table_stats io = loop_.stats().io;
        if (io.used >= io.capacity) return errc::table_full;
        return error_code();
    }

    static int sockopt_cb(void* clientp, curl_socket_t fd, curlsocktype) {
        slot* s = static_cast<slot*>(clientp);
        if (error_code e = s->owner->can_watch(fd)) {
            s->refused = e;
            return CURL_SOCKOPT_ERROR; // curl closes fd, the transfer ends: CURLE_ABORTED_BY_CALLBACK
        }
        return CURL_SOCKOPT_OK;
    }

    static unsigned interest(int what) {
        return (what & CURL_POLL_IN ? readable : 0u) | (what & CURL_POLL_OUT ? writable : 0u);
    }

    static int socket_cb(CURL* easy, curl_socket_t fd, int what, void* userp, void* socketp) {
        curl_driver& d = *static_cast<curl_driver*>(userp);
        io_handle h = socketp ? d.loop_.watcher(fd) : io_handle(errc::not_watched);
        if (what == CURL_POLL_REMOVE) {
            if (h) d.loop_.unwatch(h);
            return 0;
        }
        if (h) {
            d.loop_.modify(h, interest(what));
            return 0;
        }
        curl_driver* self = &d;
        h = d.loop_.watch(fd, interest(what), [self](io_event ev) { self->on_io(ev); });
        if (h) {
            curl_multi_assign(d.multi_, fd, self); // a mark: this socket has our watcher
            return 0;
        }
        // Not -1: that would abort every transfer. End this one instead, once
        // curl has returned (no remove_handle from inside its callback).
        if (slot* s = d.find(easy)) {
            if (!s->failed) ++d.failed_;
            s->failed = true;
            s->refused = h.error();
        }
        d.error_ = h.error();
        return 0;
    }

    static int timer_cb(CURLM*, long timeout_ms, void* userp) {
        curl_driver& d = *static_cast<curl_driver*>(userp);
        if (timeout_ms < 0) {
            d.loop_.cancel(d.timer_);
            return 0;
        }
        const std::chrono::milliseconds t(timeout_ms);
        if (!d.loop_.rearm(d.timer_, t)) return 0;
        curl_driver* self = &d;
        d.timer_ = d.loop_.after(t, [self](timer_event) { self->action(CURL_SOCKET_TIMEOUT, 0); });
        if (!d.timer_) d.error_ = d.timer_.error();
        return 0;
    }

    void on_io(io_event ev) {
        int mask = 0;
        if (ev.events & readable) mask |= CURL_CSELECT_IN;
        if (ev.events & writable) mask |= CURL_CSELECT_OUT;
        if (ev.events & (priority | io_error)) mask |= CURL_CSELECT_ERR;
        if (ev.events & io_error) loop_.unwatch(ev.handle); // disabled by the loop; curl will close it
        action(ev.fd, mask);
    }

    void action(curl_socket_t fd, int mask) {
        int running = 0;
        CURLMcode rc = curl_multi_socket_action(multi_, fd, mask, &running);
        if (rc != CURLM_OK) mcode_ = rc;
        finish();
    }

    // Hands every finished transfer to on_done, after taking it out of curl.
    void finish() {
        int left = 0;
        while (CURLMsg* m = curl_multi_info_read(multi_, &left)) {
            if (m->msg != CURLMSG_DONE) continue;
            CURL* easy = m->easy_handle;
            const CURLcode result = m->data.result;
            complete(easy, result);
        }
        for (size_t i = 0; failed_ != 0 && i < Transfers; ++i)
            if (slots_[i].easy && slots_[i].failed) complete(slots_[i].easy, CURLE_ABORTED_BY_CALLBACK);
    }

    void complete(CURL* easy, CURLcode result) {
        slot* s = find(easy);
        if (!s) return; // removed meanwhile
        curl_done ev = {easy, result, s->refused};
        if (s->failed) --failed_;
        s->easy = nullptr;
        s->failed = false;
        curl_multi_remove_handle(multi_, easy);
        if (done_) done_(ev);
    }

    Loop& loop_;
    CURLM* multi_;
    timer_handle timer_;
    curl_done_callback done_;
    error_code error_;
    CURLMcode mcode_;
    size_t failed_; // slots with failed set
    slot slots_[Transfers];
};

} // namespace microloop

#endif // MICROLOOP_ADAPTERS_CURL_HPP
