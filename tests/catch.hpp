// tests/catch.hpp - the suite's one way to include Catch2, v2 or v3.
// v2 is a single header (Debian 12's catch2 package): tests/main.cpp defines
// CATCH_CONFIG_MAIN to supply main(). v3 is a compiled library that supplies
// main() itself (link -lCatch2Main -lCatch2).
#ifndef MICROLOOP_TESTS_CATCH_HPP
#define MICROLOOP_TESTS_CATCH_HPP

#if defined(__has_include)
#if __has_include(<catch2/catch_all.hpp>)
#define MICROLOOP_CATCH2_V3 1
#endif
#endif

#ifdef MICROLOOP_CATCH2_V3
#include <catch2/catch_all.hpp>
#else
#include <catch2/catch.hpp>
#endif

#endif // MICROLOOP_TESTS_CATCH_HPP
