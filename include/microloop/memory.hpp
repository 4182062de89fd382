// SPDX-License-Identifier: MIT
// microloop/memory.hpp - keep the loop's memory resident.
#ifndef MICROLOOP_MEMORY_HPP
#define MICROLOOP_MEMORY_HPP

#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>

#include "error.hpp"

namespace microloop {

// A page fault blocks the whole loop just as a blocking read does: on a board
// that swaps to flash, or that reclaims clean pages of the binary under
// memory pressure, one fault can cost milliseconds. lock_memory() locks every
// page the process has now and will map later (mlockall MCL_CURRENT |
// MCL_FUTURE), and touches `stack_bytes` of stack so those pages are mapped
// and locked before the loop runs rather than on first use.
//
// Call it once, after creating the loop (whose tables live in the loop object
// and need no later allocation). It needs CAP_IPC_LOCK or a large enough
// RLIMIT_MEMLOCK: otherwise it returns errc::system with EPERM or ENOMEM, and
// nothing changes.
inline error_code lock_memory(size_t stack_bytes = 64 * 1024) {
    if (mlockall(MCL_CURRENT | MCL_FUTURE) != 0) return error_code(errc::system, errno);
    // Only run when locking succeeded; touching is what maps the pages.
    struct toucher {
        static void touch(size_t n) {
            volatile unsigned char page[4096];
            memset(const_cast<unsigned char*>(page), 0, sizeof page);
            if (n > sizeof page) touch(n - sizeof page);
            page[0] = page[0]; // keeps each frame alive, so the recursion is real
        }
    };
    toucher::touch(stack_bytes);
    return error_code();
}

// Undo lock_memory().
inline error_code unlock_memory() {
    if (munlockall() != 0) return error_code(errc::system, errno);
    return error_code();
}

} // namespace microloop

#endif // MICROLOOP_MEMORY_HPP
