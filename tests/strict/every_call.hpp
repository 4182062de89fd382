// tests/strict/every_call.hpp - the body shared by the check-strict
// translation units: every public template instantiated, every public call
// made, for each capacity. Included after microloop by instantiate.cpp (the
// single header) and instantiate_tree.cpp (include/). It is compiled and
// linked, never run: main() returns before any call.
//
// Names as a user writes them: a global `loop`, as in the README, so a
// microloop parameter or local named `loop` warns under -Wshadow.
#ifndef MICROLOOP_STRICT_EVERY_CALL_HPP
#define MICROLOOP_STRICT_EVERY_CALL_HPP

#include <signal.h>
#include <stdio.h>
#include <sys/types.h>

#include <chrono>

microloop::loop<> loop;

namespace strict {

using std::chrono::duration;
using std::chrono::microseconds;
using std::chrono::milliseconds;
using std::chrono::nanoseconds;
using std::chrono::seconds;

int counter;

void on_io(microloop::io_event ev) { counter += ev.fd + static_cast<int>(ev.events); }
void on_timer(microloop::timer_event ev) { counter += static_cast<int>(ev.overruns); }
void on_hook(microloop::hook_event ev) { counter += static_cast<int>(ev.handle.id() & 1); }
void on_stall(const microloop::stall_report& r) {
    counter += r.detail + static_cast<int>(r.id) + static_cast<int>(r.duration_ns) + static_cast<int>(r.kind);
}
void on_signal(microloop::signal_event ev) {
    counter += ev.signo + static_cast<int>(ev.count) + ev.pid + static_cast<int>(ev.uid);
}
void on_child(microloop::child_event ev) {
    counter += ev.exit_code() + ev.term_signal() + (ev.exited() ? 1 : 0) + (ev.signaled() ? 1 : 0) +
               (ev.lost() ? 1 : 0) + ev.pid + ev.status;
}
void on_aio(microloop::aio_event ev) { counter += (ev.result > 0 ? 1 : 0) + ev.error.sys(); }
void on_post() { ++counter; }

// Handles of every kind: construction, tests, comparison, error().
template <class Handle>
void handle_ops(Handle h) {
    Handle none;
    Handle failed(microloop::errc::table_full);
    Handle copy = Handle::from_id(h.id());
    bool b = static_cast<bool>(h) || h.valid() || copy == h || copy != none || !failed;
    microloop::error_code e = failed.error();
    counter += (b ? 1 : 0) + static_cast<int>(e.code()) + static_cast<int>(h.id());
    puts(e.message());
}

void error_ops() {
    microloop::error_code ok;
    microloop::error_code sys(microloop::errc::system, 5);
    microloop::error_code canceled = microloop::errc::canceled;
    bool b = static_cast<bool>(sys) || ok == microloop::errc::ok || sys != microloop::errc::bad_fd ||
             ok == sys || ok != canceled;
    counter += (b ? 1 : 0) + sys.sys() + static_cast<int>(sys.code());
    puts(sys.message());
    puts(microloop::message(microloop::errc::fd_out_of_range));
}

void free_functions() {
    if (microloop::error_code e = microloop::lock_memory()) puts(e.message());
    if (microloop::error_code e = microloop::lock_memory(4096)) puts(e.message());
    if (microloop::error_code e = microloop::unlock_memory()) puts(e.message());
    if (microloop::error_code e = microloop::block_signals()) puts(e.message());
    if (microloop::error_code e = microloop::ignore_sigpipe()) puts(e.message());
}

// Every member of a loop, with lambdas and function pointers, integral and
// floating durations.
template <class Loop>
void loop_calls(Loop& lp) {
    int local = 0;
    int* p = &local;

    // fd watchers
    microloop::io_handle io = lp.watch(0, microloop::readable, [p](microloop::io_event ev) { *p += ev.fd; });
    microloop::io_handle io2 = lp.watch(1, microloop::writable | microloop::priority, &on_io);
    microloop::io_handle io3 = lp.watch(2, microloop::readable, [&lp](microloop::io_event ev) {
        if (ev.events & microloop::io_error) lp.unwatch(ev.handle);
    });
    if (lp.modify(io, microloop::readable | microloop::writable)) ++local;
    if (lp.modify(io2, 0)) ++local;
    if (lp.unwatch(io)) ++local;
    if (lp.unwatch(io3)) ++local;
    microloop::io_handle found = lp.watcher(1);
    handle_ops(found);
    handle_ops(io2);

    // timers: integral and floating durations, lambdas and function pointers
    microloop::timer_handle t1 = lp.after(milliseconds(10), [p](microloop::timer_event) { ++*p; });
    microloop::timer_handle t2 = lp.every(seconds(1), &on_timer);
    microloop::timer_handle t3 = lp.add_timer(microseconds(5), nanoseconds(7), &on_timer);
    microloop::timer_handle t4 = lp.after(duration<double>(0.25), &on_timer);
    microloop::timer_handle t5 = lp.every(duration<float, std::milli>(2.5f), [&lp](microloop::timer_event ev) {
        lp.cancel(ev.handle);
    });
    microloop::timer_handle t6 = lp.add_timer(duration<double, std::milli>(1.5), duration<long double>(2.0L), &on_timer);
    microloop::timer_handle t7 = lp.add_timer(duration<short, std::centi>(3), duration<unsigned, std::micro>(4u), &on_timer);
    if (lp.rearm(t1, milliseconds(20))) ++local;
    if (lp.rearm(t2, duration<double>(1.5))) ++local;
    if (lp.rearm(t3, duration<float>(0.5f))) ++local;
    if (lp.rearm(t4, std::chrono::minutes(1))) ++local;
    if (lp.cancel(t5)) ++local;
    if (lp.cancel(t6)) ++local;
    microloop::timer_handle t8 = lp.at(seconds(100), &on_timer);
    microloop::timer_handle t9 = lp.at(duration<double>(7.5), [p](microloop::timer_event) { ++*p; });
    if (lp.rearm_at(t8, milliseconds(200000))) ++local;
    if (lp.rearm_at(t9, duration<float>(8.0f))) ++local;
    handle_ops(t9);
    nanoseconds left = lp.remaining(t7) + lp.remaining(t1);
    local += static_cast<int>(left.count());
    handle_ops(t2);

    // signals and children
    microloop::signal_handle s1 = lp.on_signal(SIGUSR1, &on_signal);
    microloop::signal_handle s2 = lp.on_signal(SIGTERM, [&lp](microloop::signal_event) { lp.stop(); });
    if (lp.unwatch(s1)) ++local;
    handle_ops(s2);
    microloop::child_handle c1 = lp.on_child(42, &on_child);
    microloop::child_handle c2 = lp.on_child(43, [p](microloop::child_event ev) { *p += ev.status; });
    if (lp.unwatch(c1)) ++local;
    handle_ops(c2);

    // stall detection
    if (lp.on_stall(milliseconds(5), &on_stall)) ++local;
    if (lp.on_stall(duration<double>(0.001), [p](const microloop::stall_report& r) { *p += r.detail; })) ++local;
    if (lp.on_stall(nanoseconds(0), &on_stall)) ++local;

    // running and time
    if (lp.run_once()) ++local;
    if (lp.run_once(milliseconds(1))) ++local;
    if (lp.run_once(duration<double>(0.5))) ++local;
    if (lp.run_once(duration<float, std::micro>(100.0f))) ++local;
    if (lp.poll()) ++local;
    if (lp.wake()) ++local;
    lp.stop();
    if (lp.run()) ++local;
    local += lp.stopped() ? 1 : 0;
    lp.update_now();

    // iteration hooks
    microloop::hook_handle h1 = lp.on_prepare([p](microloop::hook_event) { ++*p; });
    microloop::hook_handle h2 = lp.on_check(&on_hook);
    microloop::hook_handle h3 = lp.on_idle([&lp](microloop::hook_event ev) { lp.unwatch(ev.handle); });
    if (lp.unwatch(h1)) ++local;
    if (lp.unwatch(h2)) ++local;
    handle_ops(h3);
    nanoseconds now = lp.now();
    local += static_cast<int>(now.count() & 1) + static_cast<int>(lp.active()) + lp.wake_fd();

    // the module interface: hooks and invoke()
    microloop::loop_hook hook = {nullptr, nullptr, 0, nullptr};
    lp.attach(&hook);
    lp.detach(&hook);
    microloop::io_callback cb;
    cb.emplace(&on_io);
    microloop::io_event ev = {io2, 0, microloop::readable};
    lp.invoke(cb, microloop::source_kind::io, ev.handle.id(), ev.fd, ev);
    local += static_cast<int>(lp.owner_pid() & 1) + static_cast<int>(*microloop::source_kind_name(microloop::source_kind::post));

    // fork, introspection, the clock
    if (lp.after_fork()) ++local;
    typename Loop::loop_stats st = lp.stats();
    local += static_cast<int>(st.io.used + st.timers.capacity + st.signals.high_water + st.children.used +
                              st.hooks.capacity);
    lp.for_each_io([p](microloop::io_handle h, int fd, unsigned events) { *p += static_cast<int>(h.id() & 1) + fd + static_cast<int>(events); });
    lp.for_each_timer([p](microloop::timer_handle h, nanoseconds deadline, nanoseconds period) {
        *p += static_cast<int>((h.id() ^ static_cast<uint64_t>(deadline.count() + period.count())) & 1);
    });
    local += static_cast<int>(lp.clock().now_ns() & 1);

    counter += local;
}

struct big_state {
    int fd;
    char buf[40];
};
struct owning_state { // not trivially destructible
    int* target;
    explicit owning_state(int* t) : target(t) {}
    ~owning_state() { ++*target; }
};

template <class Table>
void continuation_calls(Table& table) {
    int local = 0;
    microloop::continuation_id a = table.template emplace<int>(7);
    microloop::continuation_id b = table.template emplace<owning_state>(&local);
    microloop::continuation_id c = table.template emplace<const double>(1.5);
    if (int* i = table.template get<int>(a)) local += *i;
    const Table& ct = table;
    if (const owning_state* o = ct.template get<owning_state>(b)) local += *o->target;
    if (table.contains(c)) ++local;
    if (table.release(c)) ++local;
    microloop::taken<owning_state> t = table.template take<owning_state>(b);
    if (t) local += *t->target + *(*t).target + *t.get()->target;
    microloop::taken<owning_state> moved(std::move(t));
    moved.reset();
    microloop::taken<int> bad = table.template take<int>(b);
    if (!bad) puts(bad.error().message());
    local += static_cast<int>(table.size() + Table::capacity + Table::slot_size) + (table.full() ? 1 : 0);
    microloop::made<int> m = table.template make<int>(3);
    if (m) local += *m + *m.get() + static_cast<int>(m.id().id() & 1);
    else puts(m.error().message());
    microloop::table_stats st = table.stats();
    local += static_cast<int>(st.used + st.capacity + st.high_water);
    int* p = &local;
    table.for_each([p](microloop::continuation_id id) { *p += static_cast<int>(id.id() & 1); });
    handle_ops(a);
    counter += local;
}

template <size_t N>
void continuation_big() {
    microloop::continuation_table<N, 128> table;
    microloop::continuation_id id = table.template emplace<big_state>();
    if (microloop::taken<big_state> s = table.template take<big_state>(id)) counter += s->fd;
    continuation_calls(table);
}

template <class Disk>
void aio_calls_on(Disk& disk) {
    static char buf[64];
    int local = 0;
    int* p = &local;
    microloop::aio_handle r = disk.read(3, buf, sizeof buf, 0, [p](microloop::aio_event ev) { *p += ev.result > 0 ? 1 : 0; });
    microloop::aio_handle w = disk.write(3, "x", 1, static_cast<off_t>(4096), &on_aio);
    microloop::aio_handle f = disk.fsync(3, &on_aio);
    microloop::aio_handle d = disk.fdatasync(3, [p](microloop::aio_event ev) { *p += ev.error.sys(); });
    if (microloop::error_code e = disk.cancel(r)) puts(e.message());
    if (disk.cancel(w) || disk.cancel(f)) ++local;
    local += static_cast<int>(disk.in_flight()) + disk.last_error().sys();
    local += static_cast<int>(disk.stats().high_water);
    disk.for_each_in_flight([p](microloop::aio_handle h, int fd) { *p += fd + static_cast<int>(h.id() & 1); });
    local += disk.error().sys();
    handle_ops(d);
    counter += local;
}

template <size_t N>
void aio_calls(microloop::loop_base& lp) {
    microloop::aio<N> disk(lp); // the default engine, thread_aio_engine<>
    aio_calls_on(disk);
    microloop::aio<N, microloop::posix_aio_engine> posix(lp);
    aio_calls_on(posix);
    microloop::aio<N, microloop::thread_aio_engine<1> > one(lp, 64 * 1024);
    counter += static_cast<int>(one.threads());
    aio_calls_on(one);
}

template <size_t N>
void mailbox_calls(microloop::loop_base& lp) {
    int local = 0;
    int* p = &local;
    microloop::mailbox<N> box(lp);
    if (box.post([p]() { ++*p; })) ++local;
    if (box.post(&on_post)) ++local;
    box.close();
    microloop::mailbox<N, 4 * sizeof(void*)> wide(lp);
    if (wide.post([p, &lp]() { *p += lp.wake_fd(); })) ++local;
    counter += local;
}

template <class Loop>
void one_loop() {
    Loop lp;
    loop_calls(lp);
    aio_calls<2>(lp);
    mailbox_calls<2>(lp);
}

void everything() {
    // The user's global loop (the default capacities), and every table at
    // capacity 1, 2 and mixed; no signal or child slots; fd slot indices
    // 8-bit (Io < 255) and 16-bit (Io >= 255); capacity 0 for every kind;
    // the manual clock.
    loop_calls(loop);
    one_loop<microloop::loop<1, 1, 0, 0> >();
    one_loop<microloop::loop<8, 1> >();
    one_loop<microloop::loop<2, 2, 2, 2> >();
    one_loop<microloop::basic_loop<microloop::capacity<255, 3, 1, 0> > >();
    one_loop<microloop::basic_loop<microloop::capacity<0, 0, 0, 0> > >();
    one_loop<microloop::basic_loop<microloop::capacity<0, 4, 1, 0>, microloop::manual_clock> >();
    // Both backends named, whatever MICROLOOP_BACKEND says; epoll with 8-
    // and 16-bit slot indices, capacity 0 and the manual clock.
    one_loop<microloop::epoll_loop<> >();
    one_loop<microloop::epoll_loop<1, 1, 0, 0> >();
    one_loop<microloop::basic_loop<microloop::capacity<255, 3, 1, 0>, microloop::monotonic_clock, microloop::use_epoll> >();
    one_loop<microloop::basic_loop<microloop::capacity<0, 0, 0, 0>, microloop::monotonic_clock, microloop::use_epoll> >();
    one_loop<microloop::basic_loop<microloop::capacity<0, 4, 1, 0>, microloop::manual_clock, microloop::use_epoll> >();
    one_loop<microloop::basic_loop<microloop::capacity<2, 2>, microloop::monotonic_clock, microloop::use_select> >();
    {
        microloop::basic_loop<microloop::capacity<1, 1>, microloop::manual_clock> virtual_time;
        virtual_time.clock().advance(std::chrono::milliseconds(5));
        virtual_time.clock().set(7);
        counter += static_cast<int>(virtual_time.clock().now_ns() & 1);
    }

    aio_calls<1>(loop);
    aio_calls<2>(loop);
    aio_calls<16>(loop);

    microloop::continuation_table<1> c1;
    microloop::continuation_table<2> c2;
    microloop::continuation_table<16, 128> c16;
    continuation_calls(c1);
    continuation_calls(c2);
    continuation_calls(c16);
    continuation_big<1>();
    continuation_big<16>();

    mailbox_calls<2>(loop);
    mailbox_calls<16>(loop);
    mailbox_calls<1024>(loop);

    error_ops();
    free_functions();
}

} // namespace strict

// Compiled and linked, never run: nothing here should touch the machine.
int main(int argc, char**) {
    if (argc != 12345) return 0;
    strict::everything();
    return strict::counter;
}

#endif // MICROLOOP_STRICT_EVERY_CALL_HPP
