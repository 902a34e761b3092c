// The lens's fused per-row passes on the CPU (built at run time by cpu_kernel.py).
//
// Each pass reads its two [rows, K] inputs once and writes three float64 sums per row:
//   pre_rows:  (w, g)  -> <w_r, g_r>, |g_r|^2, |w_r|^2 (an empty g: 0, 0, |w_r|^2); given
//              sources, w is read from them and copied into the first inputs in the same pass
//              (the snapshot's W <- w and the gradient's sums in one read of w)
//   post_rows: (W, w') -> |w_r|^2, <w_r, d_r>, |d_r|^2 with d = w' - W formed in registers,
//              and W <- w' in the same pass when `keep` (the next record's copy of w).
// Inputs are float32, float16 or bfloat16, widened to double: the product of two such values
// is exact in double, and a sum of K of them is accurate to about 1e-16 relative to the sum
// of the magnitudes, so |d_perp|^2 = |d|^2 - <w, d>^2 / |w|^2 keeps float32 accuracy without
// forming the tangential vector. Nothing parameter-sized is allocated.
//
// Work is described by a task table built once per snapshot (int64 [tasks, 6]: tensor, first
// row, end row, first column, end column, output column of the first row) and the element
// offset at which each task starts (int64 [tasks + 1], increasing, the last one the total).
// Threads split the elements evenly and take the tasks that start in their share; a task is
// a run of whole rows or, for very long rows, a segment of one row, whose partial sums are
// added in task order afterwards. Results do not depend on the number of threads.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t TENSOR = 0, ROW0 = 1, ROW1 = 2, K0 = 3, K1 = 4, OUT = 5, COLUMNS = 6;
// elements per thread share below which the pass runs on one thread
constexpr int64_t GRAIN = 1 << 15;

struct Sums {
  double a = 0, b = 0, c = 0;
};

template <typename T>
inline double wide(T x) {
  return static_cast<double>(static_cast<float>(x));
}

// <w, g>, |g|^2, |w|^2 of n elements
template <typename T>
Sums pre_segment(const T* w, const T* g, int64_t n) {
  double wg = 0, gg = 0, ww = 0;
#pragma omp simd reduction(+ : wg, gg, ww)
  for (int64_t k = 0; k < n; ++k) {
    const double x = wide(w[k]), y = wide(g[k]);
    wg += x * y;
    gg += y * y;
    ww += x * x;
  }
  return {wg, gg, ww};
}

// |w|^2 of n elements (a row whose gradient is missing: <w, g> = |g|^2 = 0)
template <typename T>
double norm_segment(const T* w, int64_t n) {
  double ww = 0;
#pragma omp simd reduction(+ : ww)
  for (int64_t k = 0; k < n; ++k) {
    const double x = wide(w[k]);
    ww += x * x;
  }
  return ww;
}

// |w|^2, <w, d>, |d|^2 with d = after - w, then w <- after if keep
template <typename T>
Sums post_segment(T* w, const T* after, int64_t n, bool keep) {
  double ww = 0, wd = 0, dd = 0;
#pragma omp simd reduction(+ : ww, wd, dd)
  for (int64_t k = 0; k < n; ++k) {
    const double x = wide(w[k]);
    const double d = wide(after[k]) - x;
    ww += x * x;
    wd += x * d;
    dd += d * d;
  }
  if (keep) {
    std::memcpy(w, after, n * sizeof(T));  // still in cache from the sums
  }
  return {ww, wd, dd};
}

// `source` (when not null) holds w: the sums read it, and it is copied into `a` afterwards
template <typename T>
Sums segment(bool post, bool keep, void* a, const void* b, const void* source, int64_t n) {
  if (source != nullptr) {
    const T* w = static_cast<const T*>(source);
    const Sums s = b == nullptr ? Sums{0, 0, norm_segment(w, n)}
                                : pre_segment(w, static_cast<const T*>(b), n);
    std::memcpy(a, w, n * sizeof(T));  // still in cache from the sums
    return s;
  }
  if (b == nullptr) {
    return {0, 0, post ? 0 : norm_segment(static_cast<const T*>(a), n)};
  }
  if (post) {
    return post_segment(static_cast<T*>(a), static_cast<const T*>(b), n, keep);
  }
  return pre_segment(static_cast<const T*>(a), static_cast<const T*>(b), n);
}

Sums dispatch(at::ScalarType type, bool post, bool keep, void* a, const void* b,
              const void* source, int64_t n) {
  switch (type) {
    case at::kFloat:
      return segment<float>(post, keep, a, b, source, n);
    case at::kHalf:
      return segment<c10::Half>(post, keep, a, b, source, n);
    case at::kBFloat16:
      return segment<c10::BFloat16>(post, keep, a, b, source, n);
    default:
      return {};  // unreachable: check() accepts only the types above
  }
}

bool supported(at::ScalarType type) {
  return type == at::kFloat || type == at::kHalf || type == at::kBFloat16;
}

// Every pointer the pass will touch is checked here, before any thread starts.
void check(const std::vector<at::Tensor>& first, const std::vector<at::Tensor>& second,
           const std::vector<at::Tensor>& sources, const at::Tensor& tasks,
           const at::Tensor& starts, const at::Tensor& out) {
  TORCH_CHECK(first.size() == second.size(), "row passes: one second input per first input");
  TORCH_CHECK(sources.empty() || sources.size() == first.size(),
              "row passes: no sources, or one per first input");
  for (size_t i = 0; i < sources.size(); ++i) {
    TORCH_CHECK(sources[i].sizes() == first[i].sizes() && sources[i].is_contiguous() &&
                    sources[i].device().is_cpu() &&
                    sources[i].scalar_type() == first[i].scalar_type(),
                "row passes: source ", i, " must match the first input in shape and dtype");
  }
  TORCH_CHECK(tasks.dtype() == at::kLong && tasks.dim() == 2 && tasks.size(1) == COLUMNS &&
                  tasks.is_contiguous() && tasks.device().is_cpu(),
              "row passes: tasks must be a contiguous int64 [tasks, 6] CPU tensor");
  TORCH_CHECK(starts.dtype() == at::kLong && starts.dim() == 1 && starts.is_contiguous() &&
                  starts.size(0) == tasks.size(0) + 1 && starts.device().is_cpu(),
              "row passes: starts must be a contiguous int64 [tasks + 1] CPU tensor");
  TORCH_CHECK(out.dtype() == at::kDouble && out.dim() == 2 && out.size(0) == 3 &&
                  out.stride(1) == 1 && out.device().is_cpu(),
              "row passes: out must be float64 [3, rows] with contiguous rows");
  for (size_t i = 0; i < first.size(); ++i) {
    const at::Tensor& a = first[i];
    const at::Tensor& b = second[i];
    TORCH_CHECK(a.dim() == 2 && a.is_contiguous() && a.device().is_cpu() &&
                    supported(a.scalar_type()),
                "row passes: input ", i, " must be a contiguous float32/float16/bfloat16 ",
                "[rows, K] CPU tensor");
    if (b.numel() == 0) {
      continue;  // a missing gradient: zero sums
    }
    TORCH_CHECK(b.sizes() == a.sizes() && b.is_contiguous() && b.device().is_cpu() &&
                    b.scalar_type() == a.scalar_type(),
                "row passes: second input ", i, " must match the first in shape and dtype");
  }
  const int64_t* task = tasks.data_ptr<int64_t>();
  const int64_t* start = starts.data_ptr<int64_t>();
  const int64_t rows_out = out.size(1);
  for (int64_t t = 0; t < tasks.size(0); ++t) {
    const int64_t* row = task + t * COLUMNS;
    TORCH_CHECK(row[TENSOR] >= 0 && row[TENSOR] < static_cast<int64_t>(first.size()),
                "row passes: task ", t, " names no input");
    const at::Tensor& a = first[row[TENSOR]];
    TORCH_CHECK(0 <= row[ROW0] && row[ROW0] < row[ROW1] && row[ROW1] <= a.size(0) &&
                    0 <= row[K0] && row[K0] < row[K1] && row[K1] <= a.size(1) &&
                    0 <= row[OUT] && row[OUT] + (row[ROW1] - row[ROW0]) <= rows_out,
                "row passes: task ", t, " is out of bounds");
    TORCH_CHECK(row[ROW1] - row[ROW0] == 1 || (row[K0] == 0 && row[K1] == a.size(1)),
                "row passes: task ", t, " cuts rows but spans several");
    TORCH_CHECK(start[t] <= start[t + 1], "row passes: starts must increase");
  }
}

void run(bool post, bool keep, const std::vector<at::Tensor>& first,
         const std::vector<at::Tensor>& second, const std::vector<at::Tensor>& sources,
         const at::Tensor& tasks, const at::Tensor& starts, at::Tensor& out) {
  check(first, second, sources, tasks, starts, out);
  const int64_t count = tasks.size(0);
  if (count == 0) {
    return;
  }
  const int64_t* task = tasks.data_ptr<int64_t>();
  const int64_t* start = starts.data_ptr<int64_t>();
  double* o = out.data_ptr<double>();
  const int64_t stride = out.stride(0);
  std::vector<Sums> partial(count);  // segments of long rows

  auto work = [&](int64_t t) {
    const int64_t* row = task + t * COLUMNS;
    const at::Tensor& a = first[row[TENSOR]];
    const at::Tensor& b = second[row[TENSOR]];
    const int64_t width = a.size(1), k0 = row[K0], n = row[K1] - row[K0];
    const bool whole = n == width;
    const size_t item = a.element_size();
    char* a0 = static_cast<char*>(a.data_ptr());
    const char* b0 = b.numel() == 0 ? nullptr : static_cast<const char*>(b.data_ptr());
    const char* s0 =
        sources.empty() ? nullptr : static_cast<const char*>(sources[row[TENSOR]].data_ptr());
    for (int64_t r = row[ROW0]; r < row[ROW1]; ++r) {
      const int64_t offset = (r * width + k0) * static_cast<int64_t>(item);
      const Sums s = dispatch(a.scalar_type(), post, keep, a0 + offset,
                              b0 == nullptr ? nullptr : b0 + offset,
                              s0 == nullptr ? nullptr : s0 + offset, n);
      if (!whole) {
        partial[t] = s;
        continue;
      }
      const int64_t column = row[OUT] + (r - row[ROW0]);
      o[column] = s.a;
      o[stride + column] = s.b;
      o[2 * stride + column] = s.c;
    }
  };

  at::parallel_for(0, start[count], GRAIN, [&](int64_t begin, int64_t end) {
    int64_t t = std::lower_bound(start, start + count, begin) - start;
    for (; t < count && start[t] < end; ++t) {
      work(t);
    }
  });
  // segments of long rows, added in task order (independent of the threads)
  for (int64_t t = 0; t < count; ++t) {
    const int64_t* row = task + t * COLUMNS;
    if (row[K1] - row[K0] == first[row[TENSOR]].size(1)) {
      continue;
    }
    const int64_t column = row[OUT];
    const Sums& s = partial[t];
    if (row[K0] == 0) {
      o[column] = o[stride + column] = o[2 * stride + column] = 0;
    }
    o[column] += s.a;
    o[stride + column] += s.b;
    o[2 * stride + column] += s.c;
  }
}

void pre_rows(const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& grads,
              const at::Tensor& tasks, const at::Tensor& starts, at::Tensor out,
              const std::vector<at::Tensor>& sources) {
  run(false, false, weights, grads, sources, tasks, starts, out);
}

void post_rows(const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& after,
               const at::Tensor& tasks, const at::Tensor& starts, at::Tensor out, bool keep) {
  run(true, keep, weights, after, {}, tasks, starts, out);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("pre_rows", &pre_rows,
        "per row <w, g>, |g|^2, |w|^2 into out[0..2] (float64); with sources, w is read "
        "from them and copied into weights in the same pass",
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("post_rows", &post_rows,
        "per row |w|^2, <w, d>, |d|^2 with d = after - w into out[0..2] (float64); "
        "w <- after if keep",
        pybind11::call_guard<pybind11::gil_scoped_release>());
}
