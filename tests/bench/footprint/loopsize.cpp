// tests/bench/footprint/loopsize.cpp - sizeof the default loop, read back with nm
// (works for cross targets without running anything).
#include <microloop.hpp>
extern char microloop_default_loop_size[sizeof(microloop::loop<>)];
char microloop_default_loop_size[sizeof(microloop::loop<>)];
