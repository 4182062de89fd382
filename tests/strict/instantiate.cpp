// tests/strict/instantiate.cpp - `make check-strict` through the single
// header, as a team that vendors it compiles it: every public template
// instantiated under the strictest warnings (see tests/strict/strict.mk).
// Not part of the unit tests (they are tests/*.cpp).
#define MICROLOOP_WITH_AIO
#include "microloop.hpp" // single_include/, the only directory on the include path

#include "every_call.hpp"
