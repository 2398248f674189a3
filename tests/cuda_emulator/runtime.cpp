// vpemu runtime: block scheduling on fibers, warp collectives, barriers, and the PTX instruction
// semantics (mma.sync m16n8k16, ldmatrix m8n8, cp.async). See include/vpemu.h for the model.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#ifdef VPEMU_COUNT
#include <unordered_set>
#endif
#include <stdexcept>
#include <string>
#include <vector>

// The hand-written switch is x86-64 only; -DVPEMU_UCONTEXT forces the portable path there too.
#if defined(__x86_64__) && !defined(VPEMU_UCONTEXT)
#define VPEMU_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif

#include "vpemu.h"

dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace vpemu {
namespace {

// ============================================================================ context switch
// x86-64 SysV: save the callee-saved registers, MXCSR and the x87 control word on the current
// stack, swap stack pointers, restore. About 20 instructions, no system call (swapcontext
// saves the signal mask with one), which keeps a 128-thread block with thousands of warp
// collectives cheap. Elsewhere the portable ucontext path is used.
#if defined(VPEMU_ASM_SWITCH)
extern "C" void vpemu_ctx_switch(void** save_sp, void* load_sp);
asm(R"(
  .pushsection .text
  .globl vpemu_ctx_switch
  .hidden vpemu_ctx_switch
  .type vpemu_ctx_switch, @function
vpemu_ctx_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $16, %rsp
  stmxcsr 8(%rsp)
  fnstcw (%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr 8(%rsp)
  fldcw (%rsp)
  addq $16, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size vpemu_ctx_switch, .-vpemu_ctx_switch
  .popsection
)");
#endif

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kCanary = 4096;

enum class St : uint8_t { kReady, kWarp, kBarrier, kExited, kFailed };

struct Copy {
  uint32_t dst;
  const void* src;
  int cp_size, src_size;
};

struct Fiber {
  int tid = 0;
  St st = St::kReady;
  char* stack = nullptr;  // lowest usable address; a guard page sits below it
#if defined(VPEMU_ASM_SWITCH)
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
  std::vector<Copy> copies;          // issued, not yet performed cp.async copies
  std::vector<size_t> group_ends;    // committed groups: copies[0, group_ends[i]) up to group i
};

struct Warp {
  unsigned live = 0;      // mask of lanes that have not exited
  bool busy = false;      // a collective is collecting lanes
  Coll kind = Coll::kShfl;
  unsigned mask = 0, arrived = 0;
  int arg = 0, width = 32;  // shuffle operand, ldmatrix .num or mma type; shuffle width or .trans
  int bad_src = -1;
  uint64_t in[32], out[32];
  uint32_t addr[32];
  uint32_t a[32][4], b[32][2], r[32][4];
  float c[32][4], d[32][4];
};

const char* coll_name(Coll k) {
  switch (k) {
    case Coll::kShfl: return "__shfl_sync";
    case Coll::kShflUp: return "__shfl_up_sync";
    case Coll::kShflDown: return "__shfl_down_sync";
    case Coll::kShflXor: return "__shfl_xor_sync";
    case Coll::kVote: return "__ballot_sync/__any_sync/__all_sync";
    case Coll::kSyncWarp: return "__syncwarp";
    case Coll::kLdmatrix: return "ldmatrix";
    case Coll::kMma: return "mma.sync";
  }
  return "?";
}

// ============================================================================ scheduler state
struct State {
  std::mutex mu;  // one launch at a time (the bindings release the GIL)
  const Launch* launch = nullptr;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  Fiber* cur = nullptr;
#if defined(VPEMU_ASM_SWITCH)
  void* sched_sp = nullptr;
#else
  ucontext_t sched_uc;
#endif
  int nthreads = 0, live = 0;
  int bar_arrived = 0, bar_acc[2] = {0, 0}, bar_result = 0, bar_total = 0;  // __syncthreads_count & co
  std::string error;
  // Dynamic shared memory with canary zones on both sides (kCanary bytes before, the unused
  // rest of the 227 KB after): a write outside the launch's smem_bytes is reported.
  alignas(128) unsigned char storage[kCanary + kSmemOptin + kCanary];
  unsigned char* smem = storage + kCanary;
  size_t smem_bytes = 0;
  bool reverse = false, serial = false, early_copies = false;
  long long launches = 0, blocks = 0;
  cudaError_t last_error = cudaSuccess;
  std::string last_error_detail;
  std::map<const void*, int> func_smem;
};

State& S() {
  static State* s = new State();
  return *s;
}

#ifdef VPEMU_COUNT
// Executed-work counters (benchmarks/cost_model.py; built only with -DVPEMU_COUNT): per launch,
// mma.sync instructions, cp.async bytes and the plain global loads/stores of the kernel code,
// which the build instruments with -fsanitize=kernel-address (callbacks at the end of this
// file). "Global" means inside a range registered from Python: the tensors of the op.
struct CountRec {
  std::string name;
  const void* fn = nullptr;
  dim3 grid, block;
  size_t smem = 0;
  long long blocks = 0, mma = 0, ld = 0, ld_bytes = 0, st = 0, st_bytes = 0, cp = 0, cp_bytes = 0,
            cp_zfill_bytes = 0;
  std::unordered_set<uintptr_t> ld_sectors, st_sectors;  // distinct 32-byte sectors touched
};
inline void add_sectors(std::unordered_set<uintptr_t>& set, uintptr_t a, size_t n) {
  for (uintptr_t sec = a >> 5; sec <= (a + n - 1) >> 5; ++sec) set.insert(sec);
}
struct Counters {
  std::vector<CountRec> recs;
  std::map<uintptr_t, uintptr_t> ranges;  // start -> end of registered global buffers
  bool dry = false;
  CountRec* cur = nullptr;
};
Counters& C() {
  static Counters* c = new Counters();
  return *c;
}
bool is_global(uintptr_t a) {
  const auto& r = C().ranges;
  auto it = r.upper_bound(a);
  if (it == r.begin()) return false;
  --it;
  return a < it->second;
}
#define VPEMU_COUNT_DO(stmt) \
  do {                       \
    stmt;                    \
  } while (0)
#else
#define VPEMU_COUNT_DO(stmt) \
  do {                       \
  } while (0)
#endif

std::string where() {
  State& s = S();
  char buf[256];
  if (!s.cur) return "host";
  const int t = s.cur->tid;
  snprintf(buf, sizeof buf, "%s block (%u,%u,%u) thread %d (warp %d lane %d)", s.launch ? s.launch->name : "?",
           blockIdx.x, blockIdx.y, blockIdx.z, t, t / 32, t % 32);
  return buf;
}

void switch_to_scheduler() {
  State& s = S();
  Fiber* f = s.cur;
#if defined(VPEMU_ASM_SWITCH)
  vpemu_ctx_switch(&f->sp, s.sched_sp);
#else
  swapcontext(&f->uc, &s.sched_uc);
#endif
}

void resume(Fiber& f) {
  State& s = S();
  s.cur = &f;
  const dim3 b = s.launch->block;
  threadIdx = dim3(f.tid % b.x, (f.tid / b.x) % b.y, f.tid / (b.x * b.y));
#if defined(VPEMU_ASM_SWITCH)
  vpemu_ctx_switch(&s.sched_sp, f.sp);
#else
  swapcontext(&s.sched_uc, &f.uc);
#endif
  s.cur = nullptr;
}

void thread_exit();

#if defined(VPEMU_ASM_SWITCH)
[[noreturn]] void fiber_entry() {
#else
void fiber_entry() {
#endif
  State& s = S();
  try {
    s.launch->thread_body(s.launch->ctx);
  } catch (const std::exception& e) {
    if (s.error.empty()) s.error = where() + ": C++ exception in device code: " + e.what();
    s.cur->st = St::kFailed;
    switch_to_scheduler();
  }
  thread_exit();
  switch_to_scheduler();
  std::abort();  // an exited fiber is never resumed
}

void prepare(Fiber& f) {
  if (!f.stack) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    void* m = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) throw std::runtime_error("vpemu: cannot map a fiber stack");
    mprotect(m, page, PROT_NONE);  // stack overflow faults instead of corrupting a neighbour
    f.stack = static_cast<char*>(m) + page;
  }
#if defined(VPEMU_ASM_SWITCH)
  // Frame popped by vpemu_ctx_switch: x87 cw, mxcsr, r15..rbx, rbp, then `ret` into
  // fiber_entry with the stack as after a call (rsp + 8 16-byte aligned).
  uintptr_t top = (reinterpret_cast<uintptr_t>(f.stack) + kStackBytes) & ~uintptr_t(15);
  uint64_t* sp = reinterpret_cast<uint64_t*>(top - 80);
  sp[0] = 0x037f;  // x87 control word: default
  sp[1] = 0x1f80;  // MXCSR: default (round to nearest, exceptions masked)
  for (int i = 2; i < 8; ++i) sp[i] = 0;
  sp[8] = reinterpret_cast<uint64_t>(&fiber_entry);
  sp[9] = 0;
  f.sp = sp;
#else
  getcontext(&f.uc);
  f.uc.uc_stack.ss_sp = f.stack;
  f.uc.uc_stack.ss_size = kStackBytes;
  f.uc.uc_link = nullptr;
  makecontext(&f.uc, fiber_entry, 0);
#endif
}

[[noreturn]] void fail_here(const std::string& msg) {
  State& s = S();
  if (!s.cur) throw std::runtime_error("vpemu: " + msg);
  if (s.error.empty()) s.error = where() + ": " + msg;
  s.cur->st = St::kFailed;
  switch_to_scheduler();
  std::abort();  // a failed fiber is never resumed
}

void release_barrier() {
  State& s = S();
  s.bar_result = s.bar_acc[0];
  s.bar_total = s.bar_acc[1];
  s.bar_acc[0] = s.bar_acc[1] = 0;
  for (auto& f : s.fibers)
    if (f.st == St::kBarrier) f.st = St::kReady;
  s.bar_arrived = 0;
}

void thread_exit() {
  State& s = S();
  Fiber& f = *s.cur;
  const int lane = f.tid % 32;
  Warp& w = s.warps[f.tid / 32];
  f.st = St::kExited;
  --s.live;
  w.live &= ~(1u << lane);
  if (w.busy && (w.mask >> lane & 1u)) {
    char buf[160];
    snprintf(buf, sizeof buf, "lane %d exited while lanes 0x%08x of its warp wait for it in %s", lane, w.arrived,
             coll_name(w.kind));
    if (s.error.empty()) s.error = where() + ": " + buf;
  }
  if (s.bar_arrived > 0 && s.bar_arrived == s.live) release_barrier();
}

std::string describe_deadlock() {
  State& s = S();
  std::string out = "deadlock: no thread can make progress;";
  for (size_t wi = 0; wi < s.warps.size(); ++wi) {
    int at_bar = 0, at_warp = 0, exited = 0;
    for (int l = 0; l < 32; ++l) {
      const size_t t = wi * 32 + l;
      if (t >= s.fibers.size()) break;
      const St st = s.fibers[t].st;
      at_bar += st == St::kBarrier;
      at_warp += st == St::kWarp;
      exited += st == St::kExited;
    }
    char buf[200];
    snprintf(buf, sizeof buf, " warp %zu: %d at __syncthreads, %d in %s (lanes 0x%08x of 0x%08x arrived), %d exited;",
             wi, at_bar, at_warp, s.warps[wi].busy ? coll_name(s.warps[wi].kind) : "-", s.warps[wi].arrived,
             s.warps[wi].mask, exited);
    out += buf;
  }
  return out;
}

void run_block() {
  State& s = S();
  const int n = s.nthreads;
  for (int t = 0; t < n; ++t) {
    Fiber& f = s.fibers[t];
    f.tid = t;
    f.st = St::kReady;
    f.copies.clear();
    f.group_ends.clear();
    prepare(f);
  }
  for (size_t w = 0; w < s.warps.size(); ++w) {
    Warp& wp = s.warps[w];
    const int lanes = std::min(32, n - static_cast<int>(w) * 32);
    wp.live = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
    wp.busy = false;
    wp.arrived = 0;
  }
  s.live = n;
  s.bar_arrived = 0;
  // Shared memory starts as NaN bytes (0xff: NaN in fp32/fp16/bf16, -1 in integers), so a read
  // of anything not written first shows up in the outputs.
  std::memset(s.storage, 0xff, sizeof s.storage);
  while (true) {
    bool ran = false, all_done = true;
    for (int i = 0; i < n; ++i) {
      Fiber& f = s.fibers[s.reverse ? n - 1 - i : i];
      if (f.st == St::kReady) {
        resume(f);
        ran = true;
        if (!s.error.empty()) return;
        if (s.serial) break;  // rescan from the first thread: the lowest ready thread runs next
      }
      all_done &= f.st == St::kExited;
    }
    if (ran) continue;
    if (all_done) return;
    s.error = std::string(s.launch->name) + " block (" + std::to_string(blockIdx.x) + "," +
              std::to_string(blockIdx.y) + "," + std::to_string(blockIdx.z) + "): " + describe_deadlock();
    return;
  }
}

// Bytes outside [smem, smem + smem_bytes) that are no longer 0xff were written by the block.
void check_canaries() {
  State& s = S();
  const unsigned char* lo = s.storage;
  const unsigned char* hi_begin = s.smem + s.smem_bytes;
  const unsigned char* end = s.storage + sizeof s.storage;
  static const std::vector<unsigned char> ff(sizeof s.storage, 0xff);
  auto first_bad = [](const unsigned char* a, const unsigned char* b) -> const unsigned char* {
    if (std::memcmp(a, ff.data(), static_cast<size_t>(b - a)) == 0) return nullptr;
    for (const unsigned char* p = a; p < b; ++p)
      if (*p != 0xff) return p;
    return nullptr;
  };
  const unsigned char* bad = first_bad(lo, s.smem);
  if (!bad) bad = first_bad(hi_begin, end);
  if (bad) {
    s.error = std::string(s.launch->name) + " block (" + std::to_string(blockIdx.x) + "," +
              std::to_string(blockIdx.y) + "," + std::to_string(blockIdx.z) + "): shared memory written at byte offset " +
              std::to_string(bad - s.smem) + ", outside the launch's " + std::to_string(s.smem_bytes) +
              " bytes of dynamic shared memory";
  }
}

// ----------------------------------------------------------------------------- warp collective
// The calling lane joins its warp's collective; the last lane to arrive runs `compute` for the
// whole warp. Returns once the collective is complete (its result is in the Warp's out arrays).
template <class Fill, class Compute>
Warp& collective(Coll kind, unsigned mask, int arg, int width, Fill&& fill, Compute&& compute) {
  State& s = S();
  if (!s.cur) throw std::runtime_error(std::string("vpemu: ") + coll_name(kind) + " called outside a kernel");
  Fiber& f = *s.cur;
  const int lane = f.tid % 32;
  Warp& w = s.warps[f.tid / 32];
  char buf[240];
  if (!(mask >> lane & 1u)) {
    snprintf(buf, sizeof buf, "%s with mask 0x%08x that excludes the calling lane", coll_name(kind), mask);
    fail_here(buf);
  }
  if (mask & ~w.live) {
    snprintf(buf, sizeof buf, "%s with mask 0x%08x names exited lanes (live 0x%08x)", coll_name(kind), mask, w.live);
    fail_here(buf);
  }
  if (!w.busy) {
    w.busy = true;
    w.kind = kind;
    w.mask = mask;
    w.arg = arg;
    w.width = width;
    w.arrived = 0;
  } else if (w.kind != kind || w.mask != mask || ((kind == Coll::kLdmatrix || kind == Coll::kMma) &&
                                                  (w.arg != arg || w.width != width))) {
    snprintf(buf, sizeof buf,
             "divergent warp: this lane reached %s (mask 0x%08x) while lanes 0x%08x wait in %s (mask 0x%08x)",
             coll_name(kind), mask, w.arrived, coll_name(w.kind), w.mask);
    fail_here(buf);
  }
  fill(w, lane);
  w.arrived |= 1u << lane;
  if (w.arrived == w.mask) {
    compute(w);
    w.busy = false;
    for (int l = 0; l < 32; ++l) {
      if (!(w.mask >> l & 1u)) continue;
      Fiber& o = s.fibers[(f.tid / 32) * 32 + l];
      if (o.st == St::kWarp) o.st = St::kReady;
    }
  } else {
    f.st = St::kWarp;
    switch_to_scheduler();
  }
  return w;
}

void check_aligned_warp(const char* what) {
  State& s = S();
  if (!s.cur) throw std::runtime_error(std::string("vpemu: ") + what + " called outside a kernel");
  const Warp& w = s.warps[s.cur->tid / 32];
  if (w.live != 0xffffffffu) {
    char buf[160];
    snprintf(buf, sizeof buf, "%s (.sync.aligned) needs all 32 lanes of the warp; live lanes 0x%08x", what, w.live);
    fail_here(buf);
  }
}

void check_smem_range(uint32_t addr, size_t bytes, size_t align, const char* what) {
  State& s = S();
  char buf[200];
  if (addr % align) {
    snprintf(buf, sizeof buf, "%s: shared address %u is not %zu-byte aligned", what, addr, align);
    fail_here(buf);
  }
  if (addr + bytes > s.smem_bytes) {
    snprintf(buf, sizeof buf, "%s: shared bytes [%u, %zu) outside the launch's %zu bytes of dynamic shared memory",
             what, addr, addr + bytes, s.smem_bytes);
    fail_here(buf);
  }
}

// ----------------------------------------------------------------------------- mma fragments
// PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type" (.f16/.bf16 inputs,
// .f32 accumulators), with groupID = laneid >> 2 and threadID_in_group = laneid % 4:
//   A (16x16, .row), elements a0..a7 in four .b32 registers, two per register (low half first):
//     row = groupID for a0, a1, a4, a5; groupID + 8 for a2, a3, a6, a7
//     col = threadID_in_group * 2 + (i & 1), + 8 for a4..a7
//   B (16x8, .col), elements b0..b3 in two registers:
//     row (k) = threadID_in_group * 2 + (i & 1), + 8 for b2, b3;  col (n) = groupID
//   C, D (16x8, .f32), c0..c3:
//     row = groupID for c0, c1; groupID + 8 for c2, c3;  col = threadID_in_group * 2 + (i & 1)
// The functions below invert these maps: which lane, register and half hold element (row, col).
struct Slot {
  int lane, reg, half;
};
Slot a_slot(int row, int col) {  // element index i: bit 1 = row >= 8, bit 2 = col >= 8, bit 0 = col & 1
  const int i = ((col >= 8) << 2) | ((row >= 8) << 1) | (col & 1);
  return Slot{(row % 8) * 4 + (col % 8) / 2, i / 2, i % 2};
}
Slot b_slot(int k, int n) {
  const int i = ((k >= 8) << 1) | (k & 1);
  return Slot{n * 4 + (k % 8) / 2, i / 2, i % 2};
}
Slot c_slot(int row, int col) {
  const int i = ((row >= 8) << 1) | (col & 1);
  return Slot{(row % 8) * 4 + col / 2, i, 0};
}
uint16_t half_of(uint32_t reg, int h) { return static_cast<uint16_t>(h ? reg >> 16 : reg & 0xffffu); }
double elem(MmaType t, uint16_t bits) {
  return t == MmaType::kBF16 ? static_cast<double>(bf16_to_f32(bits)) : static_cast<double>(f16_to_f32(bits));
}

void mma_compute(Warp& w) {
  VPEMU_COUNT_DO(if (C().cur) ++C().cur->mma);
  const MmaType t = static_cast<MmaType>(w.arg);
  double A[16][16], B[16][8];
  for (int r = 0; r < 16; ++r)
    for (int k = 0; k < 16; ++k) {
      const Slot sl = a_slot(r, k);
      A[r][k] = elem(t, half_of(w.a[sl.lane][sl.reg], sl.half));
    }
  for (int k = 0; k < 16; ++k)
    for (int n = 0; n < 8; ++n) {
      const Slot sl = b_slot(k, n);
      B[k][n] = elem(t, half_of(w.b[sl.lane][sl.reg], sl.half));
    }
  for (int r = 0; r < 16; ++r)
    for (int n = 0; n < 8; ++n) {
      const Slot sl = c_slot(r, n);
      // Products of two 16-bit floats are exact in double; so is a sum of 16 of them plus C up
      // to one rounding, which is as good as (or better than) the tensor core.
      double acc = static_cast<double>(w.c[sl.lane][sl.reg]);
      for (int k = 0; k < 16; ++k) acc += A[r][k] * B[k][n];
      w.d[sl.lane][sl.reg] = static_cast<float>(acc);
    }
}

// ----------------------------------------------------------------------------- ldmatrix
// PTX ISA, ldmatrix: for .m8n8 .b16, each 8x8 matrix has its eight row addresses given by eight
// threads (matrix m by threads 8m..8m+7, row r by thread 8m + r); each row is 16 contiguous
// bytes. Destination register m of every thread receives its fragment of matrix m: thread T
// holds row T / 4, elements 2 * (T % 4) and 2 * (T % 4) + 1 (low half first). With .trans the
// matrix is read column-major: thread T holds elements (2 * (T % 4) + j, T / 4) of the stored
// rows, j = 0 in the low half and 1 in the high half.
void ldmatrix_compute(Warp& w) {
  const State& s = S();
  const int num = w.arg;
  const bool trans = w.width != 0;
  for (int m = 0; m < num; ++m) {
    uint16_t M[8][8];
    for (int r = 0; r < 8; ++r) std::memcpy(M[r], s.smem + w.addr[8 * m + r], 16);
    for (int T = 0; T < 32; ++T) {
      const int g = T / 4, c = 2 * (T % 4);
      const uint16_t lo = trans ? M[c][g] : M[g][c];
      const uint16_t hi = trans ? M[c + 1][g] : M[g][c + 1];
      w.r[T][m] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
    }
  }
}

void perform(const Copy& c) {
  State& s = S();
  if (c.src_size > 0) std::memcpy(s.smem + c.dst, c.src, static_cast<size_t>(c.src_size));
  if (c.cp_size > c.src_size) std::memset(s.smem + c.dst + c.src_size, 0, static_cast<size_t>(c.cp_size - c.src_size));
}

}  // namespace

// ============================================================================ public API
unsigned char* dynamic_smem() { return S().smem; }

void set_last_error(cudaError_t e) {
  if (S().last_error == cudaSuccess) S().last_error = e;
}
cudaError_t take_last_error() {
  const cudaError_t e = S().last_error;
  S().last_error = cudaSuccess;
  return e;
}
void set_func_smem(const void* fn, int bytes) { S().func_smem[fn] = bytes; }

void device_fail(const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  fail_here(buf);
}

void syncthreads() {
  State& s = S();
  if (!s.cur) throw std::runtime_error("vpemu: __syncthreads called outside a kernel");
  ++s.bar_arrived;
  if (s.bar_arrived == s.live) {
    release_barrier();
    return;
  }
  s.cur->st = St::kBarrier;
  switch_to_scheduler();
}

int syncthreads_reduce(int pred, int op) {
  State& s = S();
  s.bar_acc[0] += pred != 0;
  s.bar_acc[1] += 1;
  syncthreads();
  const int count = s.bar_result, arrivals = s.bar_total;
  return op == 0 ? count : (op == 1 ? count == arrivals : count > 0);
}

uint64_t shfl(Coll kind, unsigned mask, uint64_t bits, int arg, int width) {
  if (width <= 0 || width > 32 || (width & (width - 1)))
    device_fail("%s: width %d is not a power of two <= 32", coll_name(kind), width);
  State& s = S();
  Warp& w = collective(
      kind, mask, arg, width, [bits](Warp& wp, int lane) { wp.in[lane] = bits; },
      [](Warp& wp) {
        wp.bad_src = -1;
        for (int l = 0; l < 32; ++l) {
          if (!(wp.mask >> l & 1u)) continue;
          const int seg = l & ~(wp.width - 1), pos = l - seg;
          int src = l;
          switch (wp.kind) {
            case Coll::kShfl: src = seg + (wp.arg & (wp.width - 1)); break;
            case Coll::kShflUp: src = pos >= wp.arg ? l - wp.arg : l; break;
            case Coll::kShflDown: src = pos + wp.arg < wp.width ? l + wp.arg : l; break;
            case Coll::kShflXor: {
              const int x = l ^ (wp.arg & 31);
              src = (x & ~(wp.width - 1)) > seg ? l : x;  // a later group: own value
              break;
            }
            default: break;
          }
          if (!(wp.mask >> src & 1u)) wp.bad_src = src;  // reading a non-participating lane
          wp.out[l] = wp.in[src];
        }
      });
  if (w.bad_src >= 0) device_fail("%s reads lane %d, which is not in the mask 0x%08x", coll_name(kind), w.bad_src, mask);
  return w.out[s.cur->tid % 32];
}

unsigned vote(unsigned mask, int pred) {
  State& s = S();
  Warp& w = collective(
      Coll::kVote, mask, 0, 32, [pred](Warp& wp, int lane) { wp.in[lane] = pred != 0; },
      [](Warp& wp) {
        uint64_t ballot = 0;
        for (int l = 0; l < 32; ++l)
          if ((wp.mask >> l & 1u) && wp.in[l]) ballot |= 1ull << l;
        for (int l = 0; l < 32; ++l) wp.out[l] = ballot;
      });
  return static_cast<unsigned>(w.out[s.cur->tid % 32]);
}

void syncwarp(unsigned mask) {
  collective(Coll::kSyncWarp, mask, 0, 32, [](Warp&, int) {}, [](Warp&) {});
}

unsigned active_mask() {
  State& s = S();
  return s.cur ? s.warps[s.cur->tid / 32].live : 0u;
}

void ptx_cp_async(uint32_t dst, const void* src, int cp_size, int src_size, bool cg) {
  State& s = S();
  if (!s.cur) throw std::runtime_error("vpemu: cp.async outside a kernel");
  if (cg ? cp_size != 16 : (cp_size != 4 && cp_size != 8 && cp_size != 16))
    device_fail("cp.async.%s: cp-size %d not allowed", cg ? "cg" : "ca", cp_size);
  if (src_size < 0 || src_size > cp_size) device_fail("cp.async: src-size %d outside [0, %d]", src_size, cp_size);
  if (reinterpret_cast<uintptr_t>(src) % static_cast<uintptr_t>(cp_size))
    device_fail("cp.async: global source %p is not %d-byte aligned", src, cp_size);
  check_smem_range(dst, static_cast<size_t>(cp_size), static_cast<size_t>(cp_size), "cp.async");
  if (src_size > 0 && src == nullptr) device_fail("cp.async: null global source");
  VPEMU_COUNT_DO(if (C().cur) {
    ++C().cur->cp;
    C().cur->cp_bytes += src_size;
    C().cur->cp_zfill_bytes += cp_size - src_size;
    if (src_size > 0) add_sectors(C().cur->ld_sectors, reinterpret_cast<uintptr_t>(src), static_cast<size_t>(src_size));
  });
  if (s.early_copies)
    perform(Copy{dst, src, cp_size, src_size});
  else
    s.cur->copies.push_back(Copy{dst, src, cp_size, src_size});
}

void ptx_cp_async_commit_group() {
  State& s = S();
  if (!s.cur) throw std::runtime_error("vpemu: cp.async.commit_group outside a kernel");
  s.cur->group_ends.push_back(s.cur->copies.size());
}

void ptx_cp_async_wait_group(int n) {
  State& s = S();
  if (!s.cur) throw std::runtime_error("vpemu: cp.async.wait_group outside a kernel");
  if (n < 0) device_fail("cp.async.wait_group %d", n);
  Fiber& f = *s.cur;
  const int groups = static_cast<int>(f.group_ends.size());
  if (groups <= n) return;
  // Retire every committed group but the n most recent, oldest first.
  const size_t done = f.group_ends[groups - n - 1];
  for (size_t i = 0; i < done; ++i) perform(f.copies[i]);
  f.copies.erase(f.copies.begin(), f.copies.begin() + static_cast<std::ptrdiff_t>(done));
  f.group_ends.erase(f.group_ends.begin(), f.group_ends.begin() + (groups - n));
  for (auto& e : f.group_ends) e -= done;
}

void ptx_cp_async_wait_all() {
  ptx_cp_async_commit_group();
  ptx_cp_async_wait_group(0);
}

void ptx_ldmatrix_m8n8_b16(uint32_t* r, int num, bool trans, uint32_t addr) {
  if (num != 1 && num != 2 && num != 4) device_fail("ldmatrix: .x%d", num);
  check_aligned_warp("ldmatrix");
  State& s = S();
  const int lane = s.cur->tid % 32;
  if (lane < 8 * num) check_smem_range(addr, 16, 16, "ldmatrix row address");
  Warp& w = collective(
      Coll::kLdmatrix, 0xffffffffu, num, trans ? 1 : 0, [addr](Warp& wp, int l) { wp.addr[l] = addr; },
      ldmatrix_compute);
  for (int m = 0; m < num; ++m) r[m] = w.r[lane][m];
}

void ptx_mma_m16n8k16_f32(MmaType t, float* d, const uint32_t* a, const uint32_t* b, const float* c) {
  check_aligned_warp("mma.sync");
  State& s = S();
  const int lane = s.cur->tid % 32;
  Warp& w = collective(
      Coll::kMma, 0xffffffffu, static_cast<int>(t), 0,
      [a, b, c](Warp& wp, int l) {
        for (int i = 0; i < 4; ++i) wp.a[l][i] = a[i], wp.c[l][i] = c[i];
        wp.b[l][0] = b[0];
        wp.b[l][1] = b[1];
      },
      mma_compute);
  for (int i = 0; i < 4; ++i) d[i] = w.d[lane][i];
}

void run(const Launch& l) {
  State& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  const uint64_t nthreads = uint64_t(l.block.x) * l.block.y * l.block.z;
  auto reject = [&](cudaError_t e, const std::string& why) {
    set_last_error(e);
    s.last_error_detail = std::string(l.name) + ": " + why;
  };
  if (nthreads == 0 || nthreads > kMaxThreads || l.block.z > 64)
    return reject(cudaErrorInvalidConfiguration, "block of " + std::to_string(nthreads) + " threads");
  if (l.grid.x == 0 || l.grid.y == 0 || l.grid.z == 0 || l.grid.x > 0x7fffffffu || l.grid.y > 65535 ||
      l.grid.z > 65535)
    return reject(cudaErrorInvalidConfiguration, "grid (" + std::to_string(l.grid.x) + "," +
                                                     std::to_string(l.grid.y) + "," + std::to_string(l.grid.z) + ")");
  if (l.smem > static_cast<size_t>(kSmemDefault)) {
    auto it = s.func_smem.find(l.fn);
    const int allowed = it == s.func_smem.end() ? kSmemDefault : it->second;
    if (l.smem > static_cast<size_t>(allowed))
      return reject(cudaErrorInvalidValue,
                    std::to_string(l.smem) + " bytes of dynamic shared memory, but cudaFuncSetAttribute("
                    "cudaFuncAttributeMaxDynamicSharedMemorySize) allows " + std::to_string(allowed));
  }
  // Thread order (the results of a race-free kernel do not depend on it):
  //   lockstep (default): round robin, every warp advances by one synchronisation point a round;
  //   reverse: the same from the last thread down; serial / serial-reverse: the first (last)
  //   ready thread always runs, so one warp runs ahead to the next __syncthreads before the next
  //   warp starts: a missing barrier between warps shows up as stale or NaN-poisoned data.
  // VPEMU_CP_ASYNC=early performs cp.async copies at issue instead of at the retiring wait, so
  // that an overwrite of a buffer other warps still read (a missing trailing barrier) lands first.
  const char* sched = std::getenv("VPEMU_SCHEDULE");
  const std::string mode = sched ? sched : "lockstep";
  if (mode != "lockstep" && mode != "reverse" && mode != "serial" && mode != "serial-reverse")
    throw std::runtime_error("vpemu: VPEMU_SCHEDULE must be lockstep, reverse, serial or serial-reverse, got " + mode);
  s.reverse = mode == "reverse" || mode == "serial-reverse";
  s.serial = mode == "serial" || mode == "serial-reverse";
  const char* copies = std::getenv("VPEMU_CP_ASYNC");
  s.early_copies = copies && std::string(copies) == "early";
#ifdef VPEMU_COUNT
  {
    Counters& c = C();
    CountRec r;
    r.name = l.name;
    r.fn = l.fn;
    r.grid = l.grid;
    r.block = l.block;
    r.smem = l.smem;
    c.recs.push_back(r);
    if (c.dry) {  // the launch as configured, without running it (full-size grids for scaling)
      c.recs.back().blocks = static_cast<long long>(l.grid.x) * l.grid.y * l.grid.z;
      ++s.launches;
      return;
    }
    c.cur = &c.recs.back();
  }
#endif
  s.launch = &l;
  s.nthreads = static_cast<int>(nthreads);
  if (s.fibers.size() < nthreads) s.fibers.resize(nthreads);
  s.warps.assign((nthreads + 31) / 32, Warp());
  s.smem_bytes = l.smem;
  s.error.clear();
  blockDim = l.block;
  gridDim = l.grid;
  ++s.launches;
  for (unsigned z = 0; z < l.grid.z; ++z)
    for (unsigned y = 0; y < l.grid.y; ++y)
      for (unsigned x = 0; x < l.grid.x; ++x) {
        blockIdx = dim3(x, y, z);
        ++s.blocks;
        VPEMU_COUNT_DO(++C().cur->blocks);
        run_block();
        if (s.error.empty()) check_canaries();
        if (!s.error.empty()) {
          const std::string e = "vpemu: " + s.error;
          s.error.clear();
          VPEMU_COUNT_DO(C().cur = nullptr);
          s.launch = nullptr;
          throw std::runtime_error(e);
        }
      }
  s.launch = nullptr;
  VPEMU_COUNT_DO(C().cur = nullptr);
}

// ----------------------------------------------------------------------------- half conversions
uint16_t f32_to_f16_rn(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x > 0x7f800000u) return sign | 0x7e00u;      // NaN
  if (x >= 0x477ff000u) return sign | 0x7c00u;     // rounds to (or is) infinity
  if (x < 0x38800000u) {                           // below the smallest normal half: subnormal
    const float a = std::fabs(f) * 16777216.f;     // units of 2^-24, exact
    return sign | static_cast<uint16_t>(std::nearbyint(a));  // ties to even (default mode)
  }
  uint32_t h = ((((x >> 23) - 127 + 15) & 0x1fu) << 10) | ((x >> 13) & 0x3ffu);
  const uint32_t rem = x & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is right
  return sign | static_cast<uint16_t>(h);
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  uint32_t u;
  if (e == 0) {
    const float v = static_cast<float>(m) * (1.f / 16777216.f);
    std::memcpy(&u, &v, 4);
    u |= sign;
  } else if (e == 31) {
    u = sign | 0x7f800000u | (m << 13);
  } else {
    u = sign | ((e - 15 + 127) << 23) | (m << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace vpemu

// ============================================================================ CUDA runtime API
cudaError_t cudaGetLastError() { return vpemu::take_last_error(); }
cudaError_t cudaPeekAtLastError() { return vpemu::S().last_error; }
const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    default: return "cudaErrorUnknown";
  }
}
const char* cudaGetErrorString(cudaError_t e) {
  static thread_local std::string msg;
  msg = std::string("emulated: ") + cudaGetErrorName(e);
  if (e != cudaSuccess && !vpemu::S().last_error_detail.empty()) msg += " (" + vpemu::S().last_error_detail + ")";
  return msg.c_str();
}
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int) {
  switch (attr) {
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = vpemu::kSmemOptin; return cudaSuccess;
    case cudaDevAttrMultiProcessorCount: *v = 132; return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}

uint32_t __cvta_generic_to_shared(const void* p) {
  const auto* c = static_cast<const unsigned char*>(p);
  const unsigned char* base = vpemu::dynamic_smem();
  if (c < base || c > base + vpemu::kSmemOptin)
    vpemu::device_fail("__cvta_generic_to_shared(%p): not an address in the (dynamic) shared memory window", p);
  return static_cast<uint32_t>(c - base);
}

// ============================================================================ C entry points
// For the Python helper (ctypes on the same library): statistics and a self-test of the PTX
// emulation against plain matrix products.
extern "C" __attribute__((visibility("default"))) long long vpemu_launch_count() { return vpemu::S().launches; }
extern "C" __attribute__((visibility("default"))) long long vpemu_block_count() { return vpemu::S().blocks; }

#ifdef VPEMU_COUNT
// ============================================================================ counters: C API
namespace {
void count_access(const void* p, size_t n, bool store) {
  vpemu::Counters& c = vpemu::C();
  if (!c.cur || !vpemu::S().cur || !vpemu::is_global(reinterpret_cast<uintptr_t>(p))) return;
  if (store) {
    ++c.cur->st;
    c.cur->st_bytes += static_cast<long long>(n);
  } else {
    ++c.cur->ld;
    c.cur->ld_bytes += static_cast<long long>(n);
  }
  vpemu::add_sectors(store ? c.cur->st_sectors : c.cur->ld_sectors, reinterpret_cast<uintptr_t>(p), n);
}
}  // namespace

#define VPEMU_EXPORT extern "C" __attribute__((visibility("default")))
VPEMU_EXPORT int vpemu_count_enabled() { return 1; }
VPEMU_EXPORT void vpemu_count_reset() {
  vpemu::C().recs.clear();
  vpemu::C().cur = nullptr;
}
VPEMU_EXPORT void vpemu_count_set_dry(int dry) { vpemu::C().dry = dry != 0; }
VPEMU_EXPORT void vpemu_count_add_range(uintptr_t start, size_t bytes) { vpemu::C().ranges[start] = start + bytes; }
VPEMU_EXPORT void vpemu_count_remove_range(uintptr_t start) { vpemu::C().ranges.erase(start); }
VPEMU_EXPORT void vpemu_count_clear_ranges() { vpemu::C().ranges.clear(); }
VPEMU_EXPORT long long vpemu_count_launches() { return static_cast<long long>(vpemu::C().recs.size()); }
// Launch i: fn pointer, grid xyz, block xyz, smem, blocks run, mma, ld ops, ld bytes, st ops,
// st bytes, cp.async ops, cp.async bytes, cp.async zero-filled bytes, distinct 32-byte sectors
// read, written (19 int64); returns its name.
VPEMU_EXPORT const char* vpemu_count_launch(long long i, long long* out) {
  const vpemu::CountRec& r = vpemu::C().recs.at(static_cast<size_t>(i));
  const long long v[16] = {static_cast<long long>(reinterpret_cast<uintptr_t>(r.fn)), r.grid.x, r.grid.y, r.grid.z,
                           r.block.x, r.block.y, r.block.z, static_cast<long long>(r.smem), r.blocks, r.mma, r.ld,
                           r.ld_bytes, r.st, r.st_bytes, r.cp, r.cp_bytes};
  for (int k = 0; k < 16; ++k) out[k] = v[k];
  out[16] = r.cp_zfill_bytes;
  out[17] = static_cast<long long>(r.ld_sectors.size());
  out[18] = static_cast<long long>(r.st_sectors.size());
  return r.name.c_str();
}

// ============================================================================ access callbacks
// -fsanitize=kernel-address with asan-instrumentation-with-call-threshold=0 (the kernel sources
// only, see __init__.py) calls these for every load and store the compiled code could not keep
// in registers; nothing here is instrumented.
#define VPEMU_ASAN(n)                                                                                   \
  VPEMU_EXPORT void __asan_load##n##_noabort(const void* p) { count_access(p, n, false); }            \
  VPEMU_EXPORT void __asan_store##n##_noabort(const void* p) { count_access(p, n, true); }
VPEMU_ASAN(1)
VPEMU_ASAN(2)
VPEMU_ASAN(4)
VPEMU_ASAN(8)
VPEMU_ASAN(16)
#undef VPEMU_ASAN
VPEMU_EXPORT void __asan_loadN_noabort(const void* p, size_t n) { count_access(p, n, false); }
VPEMU_EXPORT void __asan_storeN_noabort(const void* p, size_t n) { count_access(p, n, true); }
VPEMU_EXPORT void __asan_handle_no_return() {}
#endif
