// tests/main.cpp - the test runner's main().
// Catch2 v2 (header-only): CATCH_CONFIG_MAIN makes the header define main()
// here. Catch2 v3 (a library) ignores the macro and this file defines nothing:
// link the test binary with -lCatch2Main -lCatch2, in that order (Catch2Main
// holds main()). tests/catch.hpp picks the version.
#define CATCH_CONFIG_MAIN
#include "catch.hpp"
