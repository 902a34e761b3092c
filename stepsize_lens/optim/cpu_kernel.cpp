// AdamP and SGDP steps on the CPU: every tensor of a parameter group in one call, two passes
// (built at run time by stepsize_lens/optim/_cpu_kernel.py; the algorithms are the
// docstrings of AdamP and SGDP, docs/design.md §4).
//
// Each tensor is dense with dim 0 outermost in memory (contiguous, channels_last, ...), so it is
// read as [rows, K] in its own memory order (row r: elements r K to (r + 1) K); its gradient and
// state have the same sizes and strides. The paper's test applies to tensors with ndim > 1 and
// elements ("tested"); the others are one row. Per tensor, one row of float64 hyperparameters.
//   pass 1, every element: the optimizer's state update and the update direction u. A tested
//           tensor sums four float64 numbers per row: <w, g>, |w|^2, |g|^2, <w, u>; an
//           untested one is stepped completely here (decay, then the step).
//   decide, per tested tensor: the view the test picks (the largest |cos(w_r, g_r)| against
//           delta / sqrt(K), then the whole tensor against delta / sqrt(numel); a NaN fails),
//           the row coefficients c_r of the projection u_r - c_r w_r and the decay.
//   pass 2, every element of a tested tensor: u recomputed from the state of pass 1 (and g for
//           Nesterov), and w written once; SGDP's buffer takes the projected direction.
// So for float32 AdamP reads w, g, m, v and writes m, v, then reads w, m, v and writes w: 10
// tensor-sized passes, against 7 for a fused AdamW.
//
// Arithmetic is in float for float32, float16 and bfloat16 tensors and in double for float64
// ones, with no contraction into fused multiply-adds (-ffp-contract=off), so that values round
// like torch's separate ops; each stored value is rounded once (`NARROW`). The work is cut into
// tasks (runs of whole rows, or segments of one long row) over all tensors; threads split the
// elements evenly, each pass 2 runs on the same threads' shares as pass 1 (in reverse, so what
// pass 1 touched last is still in cache), and segment sums are added in task order: results do
// not depend on the number of threads.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace {

// elements of a task: long rows are cut into segments of at most this many elements
constexpr int64_t CHUNK = 1 << 14;
// total elements below which a pass runs on one thread
constexpr int64_t GRAIN = 1 << 15;
constexpr int64_t VIEW_NONE = 0, VIEW_CHANNEL = 1, VIEW_LAYER = 2;
constexpr int64_t ADAMP_HYPER = 9, SGDP_HYPER = 8;

struct Sums {
  double wg = 0, ww = 0, gg = 0, wu = 0;
};

struct Task {
  int64_t tensor, row0, row1, k0, k1, start;
};

// the compute type of a storage type
template <typename T>
struct Compute {
  using type = float;
};
template <>
struct Compute<double> {
  using type = double;
};

// storage narrower than the arithmetic (float16, bfloat16): pass 1 leaves the state alone and
// pass 2 recomputes the update from the old state, so both passes use the unrounded values
// and each value is rounded once, when it is written (a moment that rounds to 0 in float16
// would otherwise turn a small step into m / eps)
template <typename T>
constexpr bool NARROW = !std::is_same<T, typename Compute<T>::type>::value;

// Each rule writes its own loops, with its state as local __restrict pointers. One pass-1 loop
// shared by both rules, reaching the state through `s[j][k]`, let GCC assume the state may alias
// w; the float32 AdamP step then ran about 2x slower on ResNet-18 (benchmarks/optim_step.py).

// AdamP, per tensor: hyper = beta1, beta2, sqrt(1 - beta2^t), lr / (1 - beta1^t), eps, decay,
// decay of a projected tensor, channel threshold, layer threshold
template <typename T_, bool NESTEROV>
struct AdamRule {
  using T = T_;
  using C = typename Compute<T>::type;
  static constexpr int STATES = 2, EPS = 4;
  C b1, omb1, b2, omb2, sbc2, step, eps;

  explicit AdamRule(const double* h)
      : b1(h[0]), omb1(1 - h[0]), b2(h[1]), omb2(1 - h[1]), sbc2(h[2]), step(h[3]), eps(h[4]) {}

  inline C first_moment(C m, C g) const { return m * b1 + omb1 * g; }
  inline C second_moment(C v, C g) const { return v * b2 + omb2 * g * g; }
  inline C direction(C m, C v, C g) const {
    const C numer = NESTEROV ? b1 * m + omb1 * g : m;
    return numer / (std::sqrt(v) / sbc2 + eps);
  }

  // pass 1: a tested tensor's row sums (the moments written unless narrow), or an untested
  // tensor stepped completely (moments, then w <- w decay - step u)
  Sums first(T* __restrict w, const T* __restrict g, T* const* s, int64_t n, bool tested,
             double decay) const {
    T* __restrict m = s[0];
    T* __restrict v = s[1];
    if (!tested) {
      const C d = static_cast<C>(decay);
#pragma omp simd
      for (int64_t k = 0; k < n; ++k) {
        const C y = static_cast<C>(g[k]);
        const C mk = first_moment(static_cast<C>(m[k]), y);
        const C vk = second_moment(static_cast<C>(v[k]), y);
        m[k] = static_cast<T>(mk);
        v[k] = static_cast<T>(vk);
        w[k] = static_cast<T>(static_cast<C>(w[k]) * d - step * direction(mk, vk, y));
      }
      return {};
    }
    double wg = 0, ww = 0, gg = 0, wu = 0;
#pragma omp simd reduction(+ : wg, ww, gg, wu)
    for (int64_t k = 0; k < n; ++k) {
      const C y = static_cast<C>(g[k]);
      const C mk = first_moment(static_cast<C>(m[k]), y);
      const C vk = second_moment(static_cast<C>(v[k]), y);
      if (!NARROW<T>) {
        m[k] = static_cast<T>(mk);
        v[k] = static_cast<T>(vk);
      }
      const double x = static_cast<C>(w[k]), yd = y, u = direction(mk, vk, y);
      wg += x * yd;
      ww += x * x;
      gg += yd * yd;
      wu += x * u;
    }
    return {wg, ww, gg, wu};
  }

  // pass 2: w <- w decay - step (u - c w), u from the moments of pass 1 (narrow storage:
  // recomputed from the old ones and written here). Not folded into w (decay + step c) -
  // step u: step c is far below the rounding of decay, and rounding it there biases w.
  void second(T* __restrict w, const T* __restrict g, T* const* s, int64_t n, double decay,
              double c) const {
    T* __restrict m = s[0];
    T* __restrict v = s[1];
    const C d = static_cast<C>(decay), cc = static_cast<C>(c);
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) {
      const C x = static_cast<C>(w[k]);
      const C y = NESTEROV || NARROW<T> ? static_cast<C>(g[k]) : C(0);
      C mk = static_cast<C>(m[k]), vk = static_cast<C>(v[k]);
      if (NARROW<T>) {
        mk = first_moment(mk, y);
        vk = second_moment(vk, y);
        m[k] = static_cast<T>(mk);
        v[k] = static_cast<T>(vk);
      }
      w[k] = static_cast<T>(x * d - step * (direction(mk, vk, y) - cc * x));
    }
  }
};

// SGDP, per tensor: hyper = momentum, dampening, lr, eps, decay, decay of a projected tensor,
// channel threshold, layer threshold
template <typename T_, bool NESTEROV>
struct SgdRule {
  using T = T_;
  using C = typename Compute<T>::type;
  static constexpr int STATES = 1, EPS = 3;
  C mu, omd, lr, eps;

  explicit SgdRule(const double* h) : mu(h[0]), omd(1 - h[1]), lr(h[2]), eps(h[3]) {}

  inline C buffer(C buf, C g) const { return buf * mu + omd * g; }
  inline C direction(C buf, C g) const { return NESTEROV ? g + mu * buf : buf; }

  // pass 1: a tested tensor's row sums (the buffer written unless narrow), or an untested
  // tensor stepped completely
  Sums first(T* __restrict w, const T* __restrict g, T* const* s, int64_t n, bool tested,
             double decay) const {
    T* __restrict b = s[0];
    if (!tested) {
      const C d = static_cast<C>(decay);
#pragma omp simd
      for (int64_t k = 0; k < n; ++k) {
        const C y = static_cast<C>(g[k]);
        const C buf = buffer(static_cast<C>(b[k]), y);
        b[k] = static_cast<T>(buf);
        w[k] = static_cast<T>(static_cast<C>(w[k]) * d - lr * direction(buf, y));
      }
      return {};
    }
    double wg = 0, ww = 0, gg = 0, wu = 0;
#pragma omp simd reduction(+ : wg, ww, gg, wu)
    for (int64_t k = 0; k < n; ++k) {
      const C y = static_cast<C>(g[k]);
      const C buf = buffer(static_cast<C>(b[k]), y);
      if (!NARROW<T>) {
        b[k] = static_cast<T>(buf);
      }
      const double x = static_cast<C>(w[k]), yd = y, u = direction(buf, y);
      wg += x * yd;
      ww += x * x;
      gg += yd * yd;
      wu += x * u;
    }
    return {wg, ww, gg, wu};
  }

  // pass 2: d <- d - c w (kept in the buffer without Nesterov), w <- w decay - lr d
  void second(T* __restrict w, const T* __restrict g, T* const* s, int64_t n, double decay,
              double c) const {
    T* __restrict b = s[0];
    const C scale = static_cast<C>(decay), cc = static_cast<C>(c);
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) {
      const C x = static_cast<C>(w[k]);
      const C y = NESTEROV || NARROW<T> ? static_cast<C>(g[k]) : C(0);
      C buf = static_cast<C>(b[k]);
      if (NARROW<T>) {
        buf = buffer(buf, y);
      }
      const C d = direction(buf, y) - cc * x;
      if (!NESTEROV) {
        b[k] = static_cast<T>(d);
      } else if (NARROW<T>) {
        b[k] = static_cast<T>(buf);
      }
      w[k] = static_cast<T>(x * scale - lr * d);
    }
  }
};

// The view of one tested tensor and its rows' coefficients, from its rows' sums.
int64_t decide(const Sums* sums, int64_t rows, double eps, double thr_channel, double thr_layer,
               double* coefs) {
  bool channel = true;
  Sums all;
  for (int64_t r = 0; r < rows; ++r) {
    const Sums& s = sums[r];
    const double cos =
        s.wg / (std::max(std::sqrt(s.ww), eps) * std::max(std::sqrt(s.gg), eps));
    channel = channel && std::fabs(cos) < thr_channel;  // a NaN fails
    all.wg += s.wg;
    all.ww += s.ww;
    all.gg += s.gg;
    all.wu += s.wu;
  }
  int64_t view = VIEW_NONE;
  if (channel) {
    view = VIEW_CHANNEL;
  } else {
    const double w_norm = std::sqrt(all.ww), g_norm = std::sqrt(all.gg);
    const double cos = all.wg / (std::max(w_norm, eps) * std::max(g_norm, eps));
    if (std::fabs(cos) < thr_layer) {
      view = VIEW_LAYER;
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    double c = 0;
    if (view == VIEW_CHANNEL) {
      const double norm = std::sqrt(sums[r].ww) + eps;
      c = sums[r].wu / (norm * norm);
    } else if (view == VIEW_LAYER) {
      const double norm = std::sqrt(all.ww) + eps;
      c = all.wu / (norm * norm);
    }
    coefs[r] = c;
  }
  return view;
}

// Whether the paper's test applies: ndim > 1 and elements.
bool tested(const at::Tensor& w) { return w.dim() > 1 && w.numel() > 0; }

// A tested tensor as [rows, K]; any other as one row.
struct Shape {
  int64_t rows, cols;
};

Shape shape_of(const at::Tensor& w) {
  if (w.numel() == 0) return {0, 0};
  if (!tested(w)) return {1, w.numel()};
  return {w.size(0), w.numel() / w.size(0)};
}

// Dim 0 outermost: row r of a dense tensor is the r-th block of K elements in memory.
bool row_major(const at::Tensor& w) {
  return w.dim() < 2 || w.size(0) == 1 || w.stride(0) == w.numel() / w.size(0);
}

void check(const char* name, int states, const std::vector<at::Tensor>& weights,
           const std::vector<at::Tensor>& grads, const std::vector<std::vector<at::Tensor>>& state,
           const std::vector<at::Tensor>& projections, const at::Tensor& hyper,
           int64_t columns) {
  const size_t n = weights.size();
  TORCH_CHECK(grads.size() == n && projections.size() == n, name,
              ": one gradient and one projection slot per weight");
  TORCH_CHECK(static_cast<int>(state.size()) == states, name, ": ", states, " state lists");
  for (const auto& list : state) {
    TORCH_CHECK(list.size() == n, name, ": one state tensor per weight");
  }
  TORCH_CHECK(hyper.dtype() == at::kDouble && hyper.dim() == 2 &&
                  hyper.size(0) == static_cast<int64_t>(n) && hyper.size(1) == columns &&
                  hyper.is_contiguous() && hyper.device().is_cpu(),
              name, ": hyper must be a contiguous float64 [tensors, ", columns, "] CPU tensor");
  if (n == 0) {
    return;
  }
  const at::ScalarType type = weights[0].scalar_type();
  TORCH_CHECK(type == at::kFloat || type == at::kDouble || type == at::kHalf ||
                  type == at::kBFloat16,
              name, ": weights must be float32, float64, float16 or bfloat16");
  auto same = [&](const at::Tensor& x, const at::Tensor& w) {
    return x.sizes() == w.sizes() && x.strides() == w.strides() && x.device().is_cpu() &&
           x.scalar_type() == type;
  };
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& w = weights[i];
    TORCH_CHECK(w.device().is_cpu() && w.scalar_type() == type, name, ": weight ", i,
                " must be a CPU tensor of the first one's dtype");
    TORCH_CHECK(w.numel() == 0 || (w.is_non_overlapping_and_dense() && row_major(w)), name,
                ": weight ", i, " must be dense with dim 0 outermost in memory");
    TORCH_CHECK(same(grads[i], w), name, ": gradient ", i,
                " must match its weight in sizes, strides and dtype");
    for (const auto& list : state) {
      TORCH_CHECK(same(list[i], w), name, ": state of weight ", i,
                  " must match it in sizes, strides and dtype");
    }
    if (tested(w)) {
      const at::Tensor& p = projections[i];
      TORCH_CHECK(p.dim() == 0 && p.dtype() == at::kLong && p.device().is_cpu(), name,
                  ": projection slot ", i, " must be a 0-dim int64 CPU tensor");
    }
  }
}

// Tasks over all tensors, with the element offset at which each starts.
std::vector<Task> plan(const std::vector<Shape>& shapes, int64_t* total) {
  std::vector<Task> tasks;
  int64_t start = 0;
  for (size_t t = 0; t < shapes.size(); ++t) {
    const int64_t rows = shapes[t].rows, cols = shapes[t].cols;
    if (rows == 0 || cols == 0) {
      continue;
    }
    if (cols > CHUNK) {
      const int64_t segments = (cols + CHUNK - 1) / CHUNK;
      const int64_t width = (cols + segments - 1) / segments;
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t k0 = 0; k0 < cols; k0 += width) {
          const int64_t k1 = std::min(cols, k0 + width);
          tasks.push_back({static_cast<int64_t>(t), r, r + 1, k0, k1, start});
          start += k1 - k0;
        }
      }
      continue;
    }
    const int64_t per_task = std::max<int64_t>(1, CHUNK / cols);
    for (int64_t r0 = 0; r0 < rows; r0 += per_task) {
      const int64_t r1 = std::min(rows, r0 + per_task);
      tasks.push_back({static_cast<int64_t>(t), r0, r1, 0, cols, start});
      start += (r1 - r0) * cols;
    }
  }
  *total = start;
  return tasks;
}

// The tasks whose first element lies in [begin, end) (`forward` or in reverse).
template <typename F>
void each_task(const std::vector<Task>& tasks, int64_t begin, int64_t end, bool forward, F f) {
  auto first = std::lower_bound(tasks.begin(), tasks.end(), begin,
                                [](const Task& task, int64_t x) { return task.start < x; });
  auto last = std::lower_bound(first, tasks.end(), end,
                               [](const Task& task, int64_t x) { return task.start < x; });
  if (forward) {
    for (auto it = first; it != last; ++it) f(*it, it - tasks.begin());
  } else {
    for (auto it = last; it != first;) {
      --it;
      f(*it, it - tasks.begin());
    }
  }
}

template <typename Rule>
void step(const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& grads,
          const std::vector<std::vector<at::Tensor>>& state,
          const std::vector<at::Tensor>& projections, const at::Tensor& hyper) {
  using T = typename Rule::T;
  const int64_t n = static_cast<int64_t>(weights.size());
  const int64_t columns = hyper.size(1);
  const double* h = hyper.data_ptr<double>();
  std::vector<Rule> rules;
  std::vector<T*> w(n);
  std::vector<const T*> g(n);
  std::vector<std::vector<T*>> s(n, std::vector<T*>(Rule::STATES));
  std::vector<int64_t> first_row(n + 1, 0);
  std::vector<Shape> shapes(n);
  std::vector<char> is_tested(n);
  for (int64_t t = 0; t < n; ++t) {
    shapes[t] = shape_of(weights[t]);
    is_tested[t] = tested(weights[t]);
    rules.emplace_back(h + t * columns);
    w[t] = weights[t].data_ptr<T>();
    g[t] = grads[t].data_ptr<T>();
    for (int j = 0; j < Rule::STATES; ++j) s[t][j] = state[j][t].data_ptr<T>();
    first_row[t + 1] = first_row[t] + (is_tested[t] ? shapes[t].rows : 0);
  }
  // the last four columns of hyper: decay, decay of a projected tensor, the two thresholds
  const int64_t DECAY = columns - 4, DECAY_P = columns - 3, THR_C = columns - 2,
                THR_L = columns - 1;
  int64_t total = 0;
  const std::vector<Task> tasks = plan(shapes, &total);
  std::vector<Sums> sums(first_row[n]);
  std::vector<Sums> partial(tasks.size());  // segments of long rows

  at::parallel_for(0, total, GRAIN, [&](int64_t begin, int64_t end) {
    each_task(tasks, begin, end, true, [&](const Task& task, int64_t index) {
      const int64_t t = task.tensor, cols = shapes[t].cols, width = task.k1 - task.k0;
      const double decay = h[t * columns + DECAY];
      for (int64_t r = task.row0; r < task.row1; ++r) {
        const int64_t offset = r * cols + task.k0;
        T* sp[Rule::STATES];
        for (int j = 0; j < Rule::STATES; ++j) sp[j] = s[t][j] + offset;
        const Sums row =
            rules[t].first(w[t] + offset, g[t] + offset, sp, width, is_tested[t], decay);
        if (!is_tested[t]) continue;
        if (width == cols) {
          sums[first_row[t] + r] = row;
        } else {
          partial[index] = row;
        }
      }
    });
  });
  for (size_t i = 0; i < tasks.size(); ++i) {  // segments, in task order
    const Task& task = tasks[i];
    const int64_t t = task.tensor;
    if (!is_tested[t] || task.k1 - task.k0 == shapes[t].cols) continue;
    Sums& row = sums[first_row[t] + task.row0];
    if (task.k0 == 0) row = Sums{};
    row.wg += partial[i].wg;
    row.ww += partial[i].ww;
    row.gg += partial[i].gg;
    row.wu += partial[i].wu;
  }

  std::vector<double> coefs(first_row[n]);
  std::vector<double> decays(n);
  for (int64_t t = 0; t < n; ++t) {
    if (!is_tested[t]) continue;
    const double* ht = h + t * columns;
    const int64_t view = decide(sums.data() + first_row[t], shapes[t].rows, ht[Rule::EPS],
                                ht[THR_C], ht[THR_L], coefs.data() + first_row[t]);
    decays[t] = view == VIEW_NONE ? ht[DECAY] : ht[DECAY_P];
    *projections[t].data_ptr<int64_t>() = view;
  }

  at::parallel_for(0, total, GRAIN, [&](int64_t begin, int64_t end) {
    each_task(tasks, begin, end, false, [&](const Task& task, int64_t) {
      const int64_t t = task.tensor, cols = shapes[t].cols, width = task.k1 - task.k0;
      if (!is_tested[t]) return;
      for (int64_t r = task.row0; r < task.row1; ++r) {
        const int64_t offset = r * cols + task.k0;
        T* sp[Rule::STATES];
        for (int j = 0; j < Rule::STATES; ++j) sp[j] = s[t][j] + offset;
        rules[t].second(w[t] + offset, g[t] + offset, sp, width, decays[t],
                        coefs[first_row[t] + r]);
      }
    });
  });
}

template <template <typename, bool> class Rule, typename T>
void step_nesterov(bool nesterov, const std::vector<at::Tensor>& weights,
                   const std::vector<at::Tensor>& grads,
                   const std::vector<std::vector<at::Tensor>>& state,
                   const std::vector<at::Tensor>& projections, const at::Tensor& hyper) {
  if (nesterov) {
    step<Rule<T, true>>(weights, grads, state, projections, hyper);
  } else {
    step<Rule<T, false>>(weights, grads, state, projections, hyper);
  }
}

template <template <typename, bool> class Rule>
void run_step(const char* name, const std::vector<at::Tensor>& weights,
              const std::vector<at::Tensor>& grads,
              const std::vector<std::vector<at::Tensor>>& state,
              const std::vector<at::Tensor>& projections, const at::Tensor& hyper,
              bool nesterov) {
  switch (weights[0].scalar_type()) {
    case at::kFloat:
      return step_nesterov<Rule, float>(nesterov, weights, grads, state, projections,
                                        hyper);
    case at::kDouble:
      return step_nesterov<Rule, double>(nesterov, weights, grads, state, projections,
                                         hyper);
    case at::kHalf:
      return step_nesterov<Rule, c10::Half>(nesterov, weights, grads, state, projections,
                                            hyper);
    case at::kBFloat16:
      return step_nesterov<Rule, c10::BFloat16>(nesterov, weights, grads, state, projections,
                                                hyper);
    default:
      TORCH_CHECK(false, name, ": unsupported dtype");  // check() accepts only the above
  }
}

template <template <typename, bool> class Rule>
void dispatch(const char* name, int states, int64_t columns,
              const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& grads,
              const std::vector<std::vector<at::Tensor>>& state,
              const std::vector<at::Tensor>& projections, const at::Tensor& hyper,
              bool nesterov) {
  check(name, states, weights, grads, state, projections, hyper, columns);
  if (weights.empty()) {
    return;
  }
  run_step<Rule>(name, weights, grads, state, projections, hyper, nesterov);
  // written through raw pointers: tell autograd, as an in-place op would (a graph that saved
  // one of these tensors then refuses to run backward instead of using the new values)
  auto bump = [](const at::Tensor& t) {
    if (!t.is_inference()) torch::autograd::impl::bump_version(t);
  };
  for (size_t i = 0; i < weights.size(); ++i) {
    bump(weights[i]);
    for (const auto& list : state) bump(list[i]);
    if (tested(weights[i])) bump(projections[i]);
  }
}

void adamp_step(const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& grads,
                const std::vector<at::Tensor>& exp_avgs,
                const std::vector<at::Tensor>& exp_avg_sqs,
                const std::vector<at::Tensor>& projections, const at::Tensor& hyper,
                bool nesterov) {
  dispatch<AdamRule>("adamp_step", 2, ADAMP_HYPER, weights, grads, {exp_avgs, exp_avg_sqs},
                     projections, hyper, nesterov);
}

void sgdp_step(const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& grads,
               const std::vector<at::Tensor>& momentum_buffers,
               const std::vector<at::Tensor>& projections, const at::Tensor& hyper,
               bool nesterov) {
  dispatch<SgdRule>("sgdp_step", 1, SGDP_HYPER, weights, grads, {momentum_buffers},
                    projections, hyper, nesterov);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("adamp_step", &adamp_step,
        "one AdamP step: weights, grads, exp_avgs, exp_avg_sqs, projection slots, "
        "hyper (float64 [tensors, 9]), nesterov",
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("sgdp_step", &sgdp_step,
        "one SGDP step: weights, grads, momentum buffers, projection slots, "
        "hyper (float64 [tensors, 8]), nesterov",
        pybind11::call_guard<pybind11::gil_scoped_release>());
}
