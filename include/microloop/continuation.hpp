// SPDX-License-Identifier: MIT
// microloop/continuation.hpp - a fixed table of typed state objects, kept
// between starting an asynchronous operation and finishing it.
//
// An event handler that starts a disk read cannot keep the socket and the
// buffer on its stack: the stack is gone when the completion arrives. It
// stores them here instead, gets a 32-bit id small enough to capture in any
// callback, and looks the state up (or takes it out) when the operation ends.
//
//     struct request { int sock; char buf[64]; };
//     microloop::continuation_table<16, 128> pending;
//     microloop::continuation_id id = pending.emplace<request>();    // in place
//     // or, to fill it in at once: the id and the object together
//     microloop::made<request> req = pending.make<request>();
//     if (req) { req->sock = fd; id = req.id(); }
//     ...
//     microloop::taken<request> req = pending.take<request>(id);     // id is stale now
//     if (req) write(req->sock, req->buf, n);                        // freed at scope end
#ifndef MICROLOOP_CONTINUATION_HPP
#define MICROLOOP_CONTINUATION_HPP

#include <stddef.h>
#include <stdint.h>

#include <new>
#include <type_traits>
#include <utility>

#include "config.hpp"
#include "error.hpp"
#include "handle.hpp"

// Default bytes of inline storage per continuation slot. A type that is
// larger is a compile-time error; choose per table with the Size parameter.
#ifndef MICROLOOP_CONTINUATION_SIZE
#define MICROLOOP_CONTINUATION_SIZE (8 * sizeof(void*))
#endif

namespace microloop {

typedef basic_handle<struct continuation_tag> continuation_id;

namespace detail {

// One object per stored type: its address is the type's tag (no RTTI
// needed) and it knows how to destroy the type. Deliberately not const:
// identical read-only objects may be folded into one by a linker's identical
// code folding, which would give two types the same tag; writable data never
// is. Across shared libraries built with hidden visibility a type gets one
// tag per library, so get<T>() there refuses (nullptr) rather than guesses.
struct stored_type {
    void (*destroy)(void*);
};

template <class T>
struct stored_type_of {
    static void destroy(void* p) { static_cast<T*>(p)->~T(); }
    static stored_type tag;
};
template <class T>
stored_type stored_type_of<T>::tag = {std::is_trivially_destructible<T>::value ? nullptr : &stored_type_of<T>::destroy};

// What a taken<T> needs to give its slot back, without knowing the table's
// capacity.
struct slot_recycler {
    void (*recycle)(void* table, uint16_t slot);
    void* table;
};

} // namespace detail

// The state taken out of a continuation table: its id is already stale (so
// the request cannot be finished twice); the object is destroyed and its slot
// reused when the taken<T> goes out of scope. Until then the slot is in use:
// size(), full() and stats() count it, and emplace() cannot have it. Move-only; false if the take
// failed, error() says why. Must not outlive its table.
template <class T>
class taken {
public:
    explicit taken(errc why) : obj_(nullptr), slot_(0), why_(why) { back_.recycle = nullptr; back_.table = nullptr; }
    taken(T* obj, detail::slot_recycler back, uint16_t slot) : obj_(obj), back_(back), slot_(slot), why_(errc::ok) {}
    taken(taken&& other) : obj_(other.obj_), back_(other.back_), slot_(other.slot_), why_(other.why_) {
        other.obj_ = nullptr;
    }
    taken(const taken&) = delete;
    taken& operator=(const taken&) = delete;
    taken& operator=(taken&&) = delete;
    ~taken() { reset(); }

    explicit operator bool() const { return obj_ != nullptr; }
    error_code error() const { return error_code(why_); }
    T* get() const { return obj_; }
    T* operator->() const { return obj_; }
    T& operator*() const { return *obj_; }
    // Destroy the state and free its slot now.
    void reset() {
        if (!obj_) return;
        obj_->~T();
        obj_ = nullptr;
        back_.recycle(back_.table, slot_);
    }

private:
    T* obj_;
    detail::slot_recycler back_;
    uint16_t slot_;
    errc why_;
};

// What make<T>() returns: the new entry's id and the object itself, or
// (false) why there is none. The object stays in the table; this is a view.
template <class T>
class made {
public:
    explicit made(errc why) : obj_(nullptr), id_(why) {}
    made(T* obj, continuation_id id) : obj_(obj), id_(id) {}
    explicit operator bool() const { return obj_ != nullptr; }
    error_code error() const { return id_.error(); }
    continuation_id id() const { return id_; }
    T* get() const { return obj_; }
    T* operator->() const { return obj_; }
    T& operator*() const { return *obj_; }

private:
    T* obj_;
    continuation_id id_;
};

// N slots of Size bytes each, aligned for any pointer, long long or double.
// Each slot also costs one pointer (the type tag) and 4 bytes of slot pool.
// Every operation is O(1); nothing is allocated. Not thread-safe: use it
// from the loop's thread.
template <size_t N, size_t Size = MICROLOOP_CONTINUATION_SIZE>
class continuation_table {
public:
    static const size_t capacity = N;
    static const size_t slot_size = Size;

    continuation_table() {
        for (size_t i = 0; i < N; ++i) type_[i] = nullptr;
    }
    // The objects still stored are destroyed, each retired first as by
    // release(): a destructor that releases another entry (a request that
    // owns its sub-request's id) finds that entry alive or stale, never
    // destroyed but still valid.
    ~continuation_table() {
        for (uint16_t i = 0; i < N; ++i)
            if (type_[i]) release(continuation_id::from_id(pool_.id_of(i)));
    }
    continuation_table(const continuation_table&) = delete;
    continuation_table& operator=(const continuation_table&) = delete;

    // Construct a T in a free slot from args (T(args...): with no args, value
    // initialisation, so a plain struct starts zeroed). An invalid id carries
    // errc::table_full when every slot is taken.
    template <class T, class... Args>
    continuation_id emplace(Args&&... args) {
        return make<T>(std::forward<Args>(args)...).id();
    }
    // The same, handing back the object with its id: no get<T>() needed to
    // fill it in (nor a null check the compiler cannot see through).
    template <class T, class... Args>
    made<T> make(Args&&... args) {
        static_assert(sizeof(T) <= Size,
                      "microloop: state too big for this continuation table; raise its Size parameter");
        static_assert(alignof(T) <= alignof(storage_t),
                      "microloop: over-aligned state; store a pointer to it instead");
        static_assert(!std::is_reference<T>::value && !std::is_array<T>::value, "microloop: store an object type");
        uint64_t id = pool_.acquire();
        if (id == 0) return made<T>(errc::table_full);
        uint16_t slot = detail::slot_of(id);
        // Gives the slot back if T's constructor throws (where exceptions exist).
        struct guard {
            detail::slot_pool<N>* pool;
            uint16_t slot;
            ~guard() {
                if (pool) pool->release(slot);
            }
        } g = {&pool_, slot};
        T* obj = ::new (static_cast<void*>(&slots_[slot])) T(std::forward<Args>(args)...);
        g.pool = nullptr;
        type_[slot] = &detail::stored_type_of<typename std::remove_cv<T>::type>::tag;
        return made<T>(obj, continuation_id::from_id(id));
    }

    // The T stored under id; nullptr if id is stale, released or taken, or
    // names an object of another type (the exact type: no base classes).
    template <class T>
    T* get(continuation_id id) {
        uint16_t slot = find<T>(id);
        return slot == pool_.none ? nullptr : reinterpret_cast<T*>(&slots_[slot]);
    }
    template <class T>
    const T* get(continuation_id id) const {
        uint16_t slot = find<T>(id);
        return slot == pool_.none ? nullptr : reinterpret_cast<const T*>(&slots_[slot]);
    }
    bool contains(continuation_id id) const { return pool_.lookup(id.id()) != pool_.none; }

    // Destroy the object and free the slot. A stale or released id is
    // refused with errc::stale_handle and touches nothing.
    error_code release(continuation_id id) {
        uint16_t slot = pool_.lookup(id.id());
        if (slot == pool_.none) return errc::stale_handle;
        const detail::stored_type* type = type_[slot];
        type_[slot] = nullptr;
        pool_.retire(slot); // stale before the destructor runs: it cannot release twice
        if (type->destroy) type->destroy(&slots_[slot]);
        pool_.recycle(slot);
        return error_code();
    }

    // Take the T out to finish the request: the id is stale at once; the
    // object lives until the returned taken<T> goes out of scope. On failure
    // the taken<T> is false with errc::stale_handle (stale id) or
    // errc::bad_argument (another type is stored under id).
    template <class T>
    taken<T> take(continuation_id id) {
        uint16_t slot = pool_.lookup(id.id());
        if (slot == pool_.none) return taken<T>(errc::stale_handle);
        if (type_[slot] != &detail::stored_type_of<typename std::remove_cv<T>::type>::tag)
            return taken<T>(errc::bad_argument);
        type_[slot] = nullptr;
        pool_.retire(slot);
        detail::slot_recycler back = {&recycle_slot, this};
        return taken<T>(reinterpret_cast<T*>(&slots_[slot]), back, slot);
    }

    // Slots in use: entries held, and taken<T>s still alive (their slots
    // are not free yet). full(): emplace() would fail.
    size_t size() const { return pool_.in_use(); }
    bool full() const { return pool_.full(); }
    // Slots in use now (as size()), N, and the most ever in use at once.
    table_stats stats() const { return pool_.stats(); }
    // f(continuation_id) for every entry held (not those taken out).
    template <class F>
    void for_each(F&& f) const {
        for (uint16_t i = 0; i < N; ++i)
            if (type_[i]) f(continuation_id::from_id(pool_.id_of(i)));
    }

private:
    union storage_t {
        unsigned char bytes[Size];
        void* align_ptr;
        long long align_ll;
        double align_d;
    };

    template <class T>
    uint16_t find(continuation_id id) const {
        uint16_t slot = pool_.lookup(id.id());
        if (slot == pool_.none || type_[slot] != &detail::stored_type_of<typename std::remove_cv<T>::type>::tag)
            return pool_.none;
        return slot;
    }
    static void recycle_slot(void* table, uint16_t slot) {
        static_cast<continuation_table*>(table)->pool_.recycle(slot);
    }

    storage_t slots_[N];
    const detail::stored_type* type_[N];
    detail::slot_pool<N> pool_;
};

template <size_t N, size_t Size> const size_t continuation_table<N, Size>::capacity;
template <size_t N, size_t Size> const size_t continuation_table<N, Size>::slot_size;

} // namespace microloop

#endif // MICROLOOP_CONTINUATION_HPP
