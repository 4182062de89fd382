// tests/strict/instantiate_tree.cpp - `make check-strict` through include/:
// the umbrella header and the AIO module included on its own.
#include <microloop.hpp>
#include <microloop/aio.hpp>

#include "every_call.hpp"
