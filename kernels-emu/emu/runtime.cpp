// Kernel launches on the CPU for kernels compiled with cuda_emu.h. A launch runs its blocks one
// after another on the calling thread. A block's threads run either one after another (kernels
// without __syncthreads()), or as fibers that switch at each __syncthreads(): every fiber runs
// until it reaches the barrier, then all go on. A barrier that some threads of the block never
// reach (divergent __syncthreads()) stops the process with a message.

#include "cuda_emu.h"

#include <ucontext.h>

// Under valgrind, the fibers' stacks are registered as stacks, so that switching to one is not
// taken for a huge stack frame (client requests do nothing outside valgrind).
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#else
#define VALGRIND_STACK_REGISTER(start, end) 0u
#define VALGRIND_STACK_DEREGISTER(id) ((void)(id))
#endif

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <vector>

namespace emu {

thread_local dim3 thread_idx;
thread_local dim3 block_idx;
dim3 block_dim;
dim3 grid_dim;

namespace {

// One launch at a time: the grid sizes and the __shared__ statics are global.
std::mutex launch_lock;

// Fibers of the running block (empty when the block runs its threads one after another).
constexpr size_t STACK_BYTES = 256 * 1024;
struct Fiber {
  ucontext_t context;
  std::vector<char> stack;
  unsigned valgrind_id = 0;
  bool done = false;
};
std::vector<Fiber> fibers;
ucontext_t scheduler;
unsigned current = 0;
void (*launch_body)(void *) = nullptr;
void *launch_ctx = nullptr;

[[noreturn]] void fail(const char *why) {
  std::fprintf(stderr, "kernels-emu: %s\n", why);
  std::abort();
}

void fiber_main() {
  launch_body(launch_ctx);
  fibers[current].done = true;
  // Returns to `scheduler` through uc_link.
}

// getcontext and swapcontext return twice, as setjmp: they are called only from the two
// functions below, never inlined, so that no caller's variable lives across them.

// Every fiber at the start of the block's kernel.
__attribute__((noinline)) void start_fibers() {
  for (auto &f : fibers) {
    if (getcontext(&f.context) != 0) fail("getcontext failed");
    f.context.uc_stack.ss_sp = f.stack.data();
    f.context.uc_stack.ss_size = f.stack.size();
    f.context.uc_link = &scheduler;
    f.done = false;
    makecontext(&f.context, fiber_main, 0);
  }
}

// Runs fiber t (with the thread indices `at`) up to its next barrier or its end.
__attribute__((noinline)) void resume(unsigned t, dim3 at) {
  current = t;
  thread_idx = at;
  if (swapcontext(&scheduler, &fibers[t].context) != 0) fail("swapcontext failed");
}

}  // namespace

void sync_threads() {
  if (fibers.empty()) fail("__syncthreads() in a kernel launched without fibers (Threads::Synced)");
  if (swapcontext(&fibers[current].context, &scheduler) != 0) fail("swapcontext failed");
}

}  // namespace emu

// Runs body(ctx) once per thread of a (grid, block) launch, with the thread's indices set.
// `synced` runs each block's threads as fibers that meet at __syncthreads().
extern "C" void emu_launch(dim3 grid, dim3 block, int synced, void (*body)(void *), void *ctx) {
  using namespace emu;
  std::lock_guard<std::mutex> guard(launch_lock);
  grid_dim = grid;
  block_dim = block;
  launch_body = body;
  launch_ctx = ctx;
  const unsigned per_block = block.x * block.y * block.z;
  auto thread_at = [&](unsigned t) {
    return dim3{t % block.x, t / block.x % block.y, t / (block.x * block.y)};
  };
  fibers.clear();
  if (synced) {
    fibers.resize(per_block);
    for (auto &f : fibers) {
      f.stack.resize(STACK_BYTES);
      f.valgrind_id = VALGRIND_STACK_REGISTER(f.stack.data(), f.stack.data() + f.stack.size());
    }
  }
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        block_idx = dim3{bx, by, bz};
        if (!synced) {
          for (unsigned t = 0; t < per_block; ++t) {
            thread_idx = thread_at(t);
            body(ctx);
          }
          continue;
        }
        start_fibers();
        // Rounds: each unfinished fiber runs to its next barrier or to its end, in thread order
        // and in reverse order by turns (which one first alternates between blocks), so that a
        // missing barrier between a write and another thread's read shows as a wrong value
        // whichever thread runs first.
        for (unsigned round = 0;; ++round) {
          const bool reverse = (round + bx + by + bz) % 2 == 1;
          unsigned finished = 0;
          for (unsigned k = 0; k < per_block; ++k) {
            const unsigned t = reverse ? per_block - 1 - k : k;
            if (!fibers[t].done) resume(t, thread_at(t));
            finished += fibers[t].done;
          }
          if (finished == per_block) break;
          if (finished != 0) fail("__syncthreads() not reached by every thread of a block");
        }
      }
  for (auto &f : fibers) VALGRIND_STACK_DEREGISTER(f.valgrind_id);
  fibers.clear();
}
