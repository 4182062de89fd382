// SPDX-License-Identifier: MIT
// microloop/config.hpp - configuration macros and version.
// Every macro here but the internal ones at the end may be defined by the
// user before including microloop.
#ifndef MICROLOOP_CONFIG_HPP
#define MICROLOOP_CONFIG_HPP

#include <cassert>

// The release: MAJOR.MINOR.PATCH, Semantic Versioning (CHANGELOG.md). The
// pkg-config file and the CMake package take their version from here.
#define MICROLOOP_VERSION_MAJOR 2
#define MICROLOOP_VERSION_MINOR 0
#define MICROLOOP_VERSION_PATCH 0
// One number for #if: 20000 for 2.0.0.
#define MICROLOOP_VERSION (MICROLOOP_VERSION_MAJOR * 10000 + MICROLOOP_VERSION_MINOR * 100 + MICROLOOP_VERSION_PATCH)

// Bytes of inline storage for one callback's captures. A lambda that captures
// more is a compile-time error (capture a pointer to your state instead).
// Changes sizeof(loop); every slot of every table carries one callback. The
// default, 16 bytes on 32- and 64-bit targets alike, holds a pointer and a
// (64-bit) handle: `[this, h]`.
#ifndef MICROLOOP_CALLBACK_SIZE
#define MICROLOOP_CALLBACK_SIZE 16
#endif

// Internal invariant checks. They never guard against bad user input: bad
// input is always answered with an error code, in every build mode.
#ifndef MICROLOOP_ASSERT
#define MICROLOOP_ASSERT(cond) assert(cond)
#endif

// 1 (the default where the libc is known to use it): read select()'s result
// sets word by word, the fast path. 0: only the FD_* macros are used. The loop
// checks the word layout once at construction and falls back to the macros
// by itself if the libc lays fd_set out differently, so 1 is always safe.
#ifndef MICROLOOP_FDSET_WORDS
#define MICROLOOP_FDSET_WORDS 1
#endif

// What loop<> and basic_loop<> wait for fds with unless a loop names its
// own: select (the default) or epoll. Define it for a whole program, as
// -DMICROLOOP_BACKEND=epoll, and in every translation unit alike (it is
// the default of a template parameter: loops of the two backends are
// different types). One loop can choose by itself either way:
// basic_loop<Cap, Clock, use_epoll> / epoll_loop<...>, or use_select.
#ifndef MICROLOOP_BACKEND
#define MICROLOOP_BACKEND select
#endif

// ---- internal: not for users to define -------------------------------------------
// Where the compiler is told what to inline: the hot path always
// (MICROLOOP_DETAIL_ALWAYS_INLINE), speed-only code unless the build
// optimises for size (MICROLOOP_DETAIL_HOT_INLINE, off at -Os), and code
// kept out of its callers (MICROLOOP_DETAIL_NOINLINE, with
// MICROLOOP_DETAIL_COLD for what runs rarely).
#if defined(__GNUC__)
#define MICROLOOP_DETAIL_ALWAYS_INLINE __attribute__((always_inline)) inline
#define MICROLOOP_DETAIL_NOINLINE __attribute__((noinline))
#define MICROLOOP_DETAIL_COLD __attribute__((noinline, cold))
#else
#define MICROLOOP_DETAIL_ALWAYS_INLINE inline
#define MICROLOOP_DETAIL_NOINLINE
#define MICROLOOP_DETAIL_COLD
#endif
#if defined(__GNUC__)
#define MICROLOOP_DETAIL_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define MICROLOOP_DETAIL_UNLIKELY(x) (x)
#endif
#define MICROLOOP_DETAIL_CAT2(a, b) a##b
#define MICROLOOP_DETAIL_CAT(a, b) MICROLOOP_DETAIL_CAT2(a, b)
// The tag MICROLOOP_BACKEND names: use_select or use_epoll.
#define MICROLOOP_DETAIL_BACKEND ::microloop::MICROLOOP_DETAIL_CAT(use_, MICROLOOP_BACKEND)
#if defined(__GNUC__) && !defined(__OPTIMIZE_SIZE__)
#define MICROLOOP_DETAIL_HOT_INLINE __attribute__((always_inline)) inline
#else
#define MICROLOOP_DETAIL_HOT_INLINE inline
#endif

#endif // MICROLOOP_CONFIG_HPP
