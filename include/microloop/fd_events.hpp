// SPDX-License-Identifier: MIT
// microloop/fd_events.hpp - what an fd watcher asks for and what its
// callback is told: the same bits on every backend.
#ifndef MICROLOOP_FD_EVENTS_HPP
#define MICROLOOP_FD_EVENTS_HPP

#include "callback.hpp"
#include "handle.hpp"

namespace microloop {

// What an fd watcher asks for, and what its callback is told.
enum : unsigned {
    readable = 1u,  // read set: data, EOF, a connection to accept
    writable = 2u,  // write set
    priority = 4u,  // except set: out-of-band data, tty packet mode, sysfs GPIO edges
    io_error = 8u   // only reported: the fd was closed while watched (EBADF); the
                    // watcher is disabled, unwatch() it. Unwatch before close():
                    // a number reused before the next wait (socket(), dup2())
                    // is the new file's, and its events reach the old watcher
};

struct io_event {
    io_handle handle;
    int fd;
    unsigned events; // the ready subset of what was asked for, or io_error
};

typedef detail::inplace_callback<void(io_event)> io_callback;

} // namespace microloop

#endif // MICROLOOP_FD_EVENTS_HPP
