// SPDX-License-Identifier: MIT
// microloop/callback.hpp - a callable stored inline, without the heap.
#ifndef MICROLOOP_CALLBACK_HPP
#define MICROLOOP_CALLBACK_HPP

#include <stddef.h>
#include <new>
#include <type_traits>
#include <utility>

#include "config.hpp"

namespace microloop {
namespace detail {

template <class Signature, size_t Size = MICROLOOP_CALLBACK_SIZE>
class inplace_callback;

// A null function pointer would be stored, and later called, like any other:
// whoever accepts callbacks refuses it up front (errc::bad_argument).
template <class F>
bool is_null_callable(const F&) { return false; }
template <class R, class... Args>
bool is_null_callable(R (*f)(Args...)) { return f == nullptr; }

// The bytes a stored callable lives in, and the checks every one passes: a
// capture that is too big or over-aligned is a compile-time error.
template <size_t Size>
union callback_buffer {
    unsigned char bytes[Size];
    void* align_ptr;
    long long align_ll; // 32-bit ABIs align 64-bit members to 8
};
template <class Fn, size_t Size, class F>
void place_callable(callback_buffer<Size>& buf, F&& f) {
    static_assert(sizeof(Fn) <= Size,
                  "microloop: callback captures too much; capture a pointer to your state "
                  "or raise MICROLOOP_CALLBACK_SIZE");
    static_assert(alignof(Fn) <= alignof(callback_buffer<Size>),
                  "microloop: callback captures an over-aligned object; capture a pointer to it");
    ::new (static_cast<void*>(&buf)) Fn(std::forward<F>(f));
}
template <class Fn, class R, class... Args>
R invoke_stored(void* p, Args... args) { return (*static_cast<Fn*>(p))(static_cast<Args>(args)...); }

// Holds a function pointer or a lambda whose captures fit in Size bytes, in
// place. Why not std::function: it may allocate, and it drags in exceptions
// and RTTI. A capture that is too big or over-aligned is a compile-time
// error. The callback never moves once stored (slots are never relocated),
// so no copy or move operations are needed: two pointers and the buffer.
template <class R, class... Args, size_t Size>
class inplace_callback<R(Args...), Size> {
public:
    inplace_callback() : invoke_(nullptr), destroy_(nullptr) {}
    ~inplace_callback() { reset(); }
    inplace_callback(const inplace_callback&) = delete;
    inplace_callback& operator=(const inplace_callback&) = delete;

    template <class F>
    void emplace(F&& f) {
        typedef typename std::decay<F>::type Fn;
        reset();
        place_callable<Fn>(buf_, std::forward<F>(f));
        invoke_ = &invoke_stored<Fn, R, Args...>;
        destroy_ = std::is_trivially_destructible<Fn>::value ? nullptr : &destroy_fn<Fn>;
    }
    void reset() {
        if (destroy_) destroy_(&buf_);
        invoke_ = nullptr;
        destroy_ = nullptr;
    }
    explicit operator bool() const { return invoke_ != nullptr; }
    R operator()(Args... args) { return invoke_(&buf_, static_cast<Args>(args)...); }

private:
    template <class Fn>
    static void destroy_fn(void* p) { static_cast<Fn*>(p)->~Fn(); }

    R (*invoke_)(void*, Args...);
    void (*destroy_)(void*);
    callback_buffer<Size> buf_;
};

// The same for a table whose construction and destruction must cost no code
// (the iteration hooks: a loop that adds none links none of theirs): it is
// trivially constructible and destructible, so it holds only callables that
// are trivially destructible (function pointers, lambdas that capture
// pointers, references and handles). Called only once emplaced.
template <class Signature, size_t Size = MICROLOOP_CALLBACK_SIZE>
class trivial_callback;

template <class R, class... Args, size_t Size>
class trivial_callback<R(Args...), Size> {
public:
    template <class F>
    void emplace(F&& f) {
        typedef typename std::decay<F>::type Fn;
        static_assert(std::is_trivially_destructible<Fn>::value,
                      "microloop: a hook's callback must be trivially destructible; capture pointers or handles");
        place_callable<Fn>(buf_, std::forward<F>(f));
        invoke_ = &invoke_stored<Fn, R, Args...>;
    }
    void reset() {} // nothing to destroy
    R operator()(Args... args) { return invoke_(&buf_, static_cast<Args>(args)...); }

private:
    R (*invoke_)(void*, Args...);
    callback_buffer<Size> buf_;
};

// Runs f when the scope ends, normally or by an exception thrown from a user
// callback. microloop never throws, but user code may: whatever bookkeeping
// surrounds a callback is finished here, so the tables stay consistent and
// the exception reaches the caller of run(). Works the same with
// -fno-exceptions (then it is simply the end of the scope).
template <class F>
class scope_exit {
public:
    explicit scope_exit(F f) : f_(f), armed_(true) {}
    scope_exit(scope_exit&& other) : f_(other.f_), armed_(other.armed_) { other.armed_ = false; }
    scope_exit(const scope_exit&) = delete;
    scope_exit& operator=(const scope_exit&) = delete;
    ~scope_exit() {
        if (armed_) f_();
    }
    void dismiss() { armed_ = false; }

private:
    F f_;
    bool armed_;
};

template <class F>
scope_exit<F> on_scope_exit(F f) {
    return scope_exit<F>(f);
}

} // namespace detail
} // namespace microloop

#endif // MICROLOOP_CALLBACK_HPP
