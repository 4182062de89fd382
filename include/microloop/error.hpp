// SPDX-License-Identifier: MIT
// microloop/error.hpp - error codes. No exceptions are ever thrown.
#ifndef MICROLOOP_ERROR_HPP
#define MICROLOOP_ERROR_HPP

namespace microloop {

// Why an operation failed. errc::ok (0) means it did not.
enum class errc : unsigned char {
    ok = 0,
    bad_fd,          // fd < 0
    fd_out_of_range, // fd >= FD_SETSIZE: select() cannot watch it
    already_watched, // this fd (or signal) already has a watcher
    table_full,      // the fixed-capacity table for this source is full
    stale_handle,    // the handle names a source that no longer exists
    bad_timeout,     // negative, zero period, or too large to represent
    bad_argument,    // e.g. unknown event bits, a null callback, an invalid signal number
    system,          // a system call failed; error_code::sys() has errno
    canceled,        // the operation was canceled before it completed
    forked,          // a loop inherited across fork() was used in the child
                     // before after_fork()
    not_watched      // no watcher has that fd (loop.watcher(fd))
};

inline const char* message(errc e) {
    switch (e) {
    case errc::ok: return "ok";
    case errc::bad_fd: return "negative file descriptor";
    case errc::fd_out_of_range: return "file descriptor >= FD_SETSIZE";
    case errc::already_watched: return "already watched";
    case errc::table_full: return "table full";
    case errc::stale_handle: return "stale or invalid handle";
    case errc::bad_timeout: return "bad timeout";
    case errc::bad_argument: return "bad argument";
    case errc::system: return "system call failed";
    case errc::canceled: return "canceled";
    case errc::forked: return "loop used in a forked child without after_fork()";
    case errc::not_watched: return "no watcher has that fd";
    }
    return "unknown error";
}

// The result of an action: `if (error_code e = loop.unwatch(h)) ...` is true
// when the action failed. Small enough to return in registers.
class error_code {
public:
    error_code() : code_(errc::ok), sys_(0) {}
    error_code(errc c, int sys_errno = 0) : code_(c), sys_(sys_errno) {}

    explicit operator bool() const { return code_ != errc::ok; }
    errc code() const { return code_; }
    int sys() const { return sys_; } // errno, for errc::system
    const char* message() const { return microloop::message(code_); }

    friend bool operator==(error_code a, errc b) { return a.code_ == b; }
    friend bool operator!=(error_code a, errc b) { return a.code_ != b; }
    friend bool operator==(error_code a, error_code b) { return a.code_ == b.code_ && a.sys_ == b.sys_; }
    friend bool operator!=(error_code a, error_code b) { return !(a == b); }

private:
    errc code_;
    int sys_;
};

} // namespace microloop

#endif // MICROLOOP_ERROR_HPP
