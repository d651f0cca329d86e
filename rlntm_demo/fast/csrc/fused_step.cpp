// The RL-NTM's step loop in C++: the Episode of rlntm_demo/fast/fused.py, whose docstrings are the
// reference for the maths, the layouts and the method names.
//
// At the paper's sizes a step costs the number of operations it runs, not their arithmetic. Here a
// step and its backward pass never return to Python (each step is one StepNode of the autograd
// graph), the heads' bookkeeping and the elementwise arithmetic are plain loops over the step's
// buffers, and torch runs only the matrix products and the vectorized tanh. Python
// still draws the samples between steps (torch.multinomial, which the exact check intercepts).
// rlntm_demo/fast/native.py builds and loads this file; tests/rlntm_demo/fast/test_native.py checks that it
// agrees with the Python loop up to rounding.

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/extension.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#if defined(_MSC_VER) && !defined(__restrict__)
#define __restrict__ __restrict
#endif

namespace {

using at::Tensor;
using Maybe = std::optional<Tensor>;

Maybe maybe(const Tensor& t) { return t.defined() ? Maybe(t) : std::nullopt; }
Tensor value_or_undefined(const Maybe& t) { return t.has_value() ? *t : Tensor(); }
Tensor add_or_take(const Tensor& sum, const Tensor& term) { return sum.defined() ? sum + term : term; }

// Runs ``body(T{})`` with T the C++ type of ``dtype``.
template <typename Body>
void dispatch(at::ScalarType dtype, Body&& body) {
  if (dtype == at::kDouble) {
    body(double{});
  } else {
    TORCH_CHECK(dtype == at::kFloat, "the native step loop runs in float32 or float64, not ", dtype);
    body(float{});
  }
}

// out[b] = rows[index[b * stride]] for every row b of out.
void gather_rows(const Tensor& rows, const int64_t* index, int64_t stride, Tensor& out) {
  const int64_t n = out.size(0), columns = rows.size(1);
  dispatch(rows.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    const T* from = rows.data_ptr<T>();
    T* to = out.data_ptr<T>();
    for (int64_t b = 0; b < n; ++b) {
      const int64_t at = index[b * stride];
      std::copy(from + at * columns, from + (at + 1) * columns, to + b * columns);
    }
  });
}

// rows[(index[b * stride] / divisor) % modulus] += values[b] for every row b of values, in order
// (modulus 0: no modulus).
void add_rows(Tensor& rows, const int64_t* index, int64_t stride, const Tensor& values, int64_t divisor = 1,
              int64_t modulus = 0) {
  const int64_t n = values.size(0), columns = rows.size(1);
  dispatch(rows.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    T* to = rows.data_ptr<T>();
    const T* from = values.data_ptr<T>();
    for (int64_t b = 0; b < n; ++b) {
      const int64_t at = index[b * stride] / divisor;
      T* __restrict__ row = to + (modulus ? at % modulus : at) * columns;
      const T* __restrict__ value = from + b * columns;
      for (int64_t j = 0; j < columns; ++j) row[j] += value[j];
    }
  });
}

// to[j] += from[j] for n entries.
template <typename T>
void add_row(int64_t n, const T* __restrict__ from, T* __restrict__ to) {
  for (int64_t j = 0; j < n; ++j) to[j] += from[j];
}

// The index of the largest of n entries (the first of equal ones; a NaN counts as the largest, as in
// torch.argmax).
template <typename T>
int64_t argmax_row(const T* row, int64_t n) {
  int64_t best = 0;
  for (int64_t k = 1; k < n && !std::isnan(row[best]); ++k) {
    if (row[k] > row[best] || std::isnan(row[k])) best = k;
  }
  return best;
}

// tanh(x / 2) -> sigmoid(x), in place, for n entries.
template <typename T>
void sigmoid_from_half_tanh(int64_t n, T* __restrict__ a) {
  for (int64_t j = 0; j < n; ++j) a[j] = T(0.5) * a[j] + T(0.5);
}

// One live row of the memory write's backward: the new content's gradient (the cell's, plus
// ``ext``'s where given) goes to the keep gate, the value and the old content; the cell's
// gradient is then used up.
template <typename T>
void write_backward_row(int64_t width, const T* __restrict__ ext, T* __restrict__ cell, const T* __restrict__ keep,
                        const T* __restrict__ value, const T* __restrict__ old, T* __restrict__ dnew,
                        T* __restrict__ dkeep_gate, T* __restrict__ dvalue, T* __restrict__ dold) {
  if (ext) {
    for (int64_t j = 0; j < width; ++j) dnew[j] = cell[j] + ext[j];
  } else {
    for (int64_t j = 0; j < width; ++j) dnew[j] = cell[j];
  }
  for (int64_t j = 0; j < width; ++j) {
    cell[j] = 0;
    dkeep_gate[j] = dnew[j] * old[j] * (1 - keep[j]) * keep[j];
    dvalue[j] = dnew[j] * (1 - value[j] * value[j]);
    dold[j] = dnew[j] * keep[j];
  }
}

// One row of the LSTM cell's backward: the pre-activations' gradients from those of h and c
// (dc becomes the previous c's gradient). Separate restrict pointers so that it vectorizes.
template <typename T>
void lstm_backward_row(int64_t n, const T* __restrict__ in, const T* __restrict__ forget, const T* __restrict__ out,
                       const T* __restrict__ candidate, const T* __restrict__ tanh_c, const T* __restrict__ c_before,
                       const T* __restrict__ dh, T* __restrict__ dc, T* __restrict__ d_in, T* __restrict__ d_forget,
                       T* __restrict__ d_out, T* __restrict__ d_candidate) {
  for (int64_t j = 0; j < n; ++j) {
    const T dcj = dc[j] + dh[j] * out[j] * (1 - tanh_c[j] * tanh_c[j]);
    d_in[j] = dcj * candidate[j] * (1 - in[j]) * in[j];
    d_forget[j] = dcj * c_before[j] * (1 - forget[j]) * forget[j];
    d_out[j] = dh[j] * tanh_c[j] * (1 - out[j]) * out[j];
    d_candidate[j] = dcj * in[j] * (1 - candidate[j] * candidate[j]);
    dc[j] = dcj * forget[j];
  }
}

// What backward needs from one step. ``z`` holds the activations (each LSTM's gates, then any
// feed-forward units), ``heads`` the raw logits and the write's activated gates and value,
// ``reads`` the memory cells read (window, then the direct-access neighbours).
struct Saved {
  Tensor table_index, extra_index, live, symbol, write_row, read_rows, window, reads, z, tc, heads, probs, output;
};

class Episode;

// The graph node of one step: its backward is Episode::backward_step. (fused.py's _Step, without
// Python on the way in or out.)
struct StepNode : public torch::autograd::Node {
  StepNode(std::shared_ptr<Episode> episode, int64_t t) : episode(std::move(episode)), t(t) {}
  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override;
  std::string name() const override { return "RLNTMStepBackward"; }

  std::shared_ptr<Episode> episode;
  int64_t t;
};

class Episode : public std::enable_shared_from_this<Episode> {
 public:
  Episode(int64_t size, int64_t units, int64_t controller_units, int64_t decisions, int64_t window,
          int64_t memory_cells, int64_t width, bool direct, bool grad, bool want_windows, int64_t symbols,
          bool memory_start_marker)
      : size_(size),
        units_(units),
        controller_units_(controller_units),
        decisions_(decisions),
        window_cells_(2 * window + 1),
        centre_(window),
        memory_(memory_cells > 0),
        cells_(memory_cells),
        width_(memory_cells > 0 ? width : 0),
        direct_(direct && memory_cells > 0),
        memory_start_marker_(memory_start_marker),
        reads_(2 * window + 1 + (direct && memory_cells > 0 ? 2 : 0)),
        grad_(grad),
        want_windows_(want_windows),
        symbols_count_(symbols),
        token_size_(2 * size * units + size * memory_cells * (memory_cells > 0 ? width : 0)) {}

  Tensor token() const { return at::zeros({}, dtype_).expand({token_size_}); }

  Tensor last_logits() const { return logits_.back(); }

  // -- the course (fused.Episode.set_course): where the heads are, what they read, what may be decided

  void set_course(const Tensor& padded, const Tensor& input_at, const Tensor& input_code, const Maybe& input_moves,
                  const Tensor& output_at, const Tensor& output_end, const Tensor& stay_after,
                  const Tensor& mask_table, const Tensor& previous, const Tensor& powers, const Tensor& other_cells,
                  const Maybe& memory_at, const Maybe& read_table, const Maybe& memory_moves) {
    TORCH_CHECK(padded.scalar_type() == at::kLong && input_code.scalar_type() == at::kLong &&
                    stay_after.scalar_type() == at::kLong,
                "set_course takes long index tables (see fused.Episode.set_course)");
    padded_ = padded.contiguous();
    input_at_ = input_at.contiguous();
    input_code_ = input_code.contiguous();
    input_moves_ = input_moves ? input_moves->contiguous() : Tensor();
    output_at_ = output_at.contiguous();
    output_end_ = output_end.contiguous();
    stay_after_ = stay_after.contiguous();
    mask_table_ = mask_table.contiguous();
    previous_ = previous.contiguous();
    powers_ = powers.to(at::kLong).contiguous();
    other_cells_ = other_cells.to(at::kLong).contiguous();
    memory_at_ = memory_at ? memory_at->contiguous() : Tensor();
    read_table_ = read_table ? read_table->contiguous() : Tensor();
    memory_moves_ = memory_moves ? memory_moves->contiguous() : Tensor();
    live_ = output_at_ < output_end_;
  }

  bool finished() const { return !live_.any().item<bool>(); }

  // Step t from the heads' positions: (token, probabilities), recorded as one StepNode.
  std::tuple<Tensor, Tensor> step(const Tensor& token, int64_t t) {
    Tensor table_index, extra, mask, read_rows;
    Tensor centre = at::empty({size_, 1}, at::kLong);
    symbols_ = centre_ ? at::empty({size_, window_cells_}, at::kLong) : Tensor();
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      const int64_t columns = 3 * decisions_;
      table_index = at::empty({size_}, at::kLong);
      if (centre_) extra = at::empty({size_ * (window_cells_ - 1)}, at::kLong);
      mask = at::empty({size_, decisions_, 3}, mask_table_.options());
      if (memory_) read_rows = at::empty({size_ * reads_}, at::kLong);
      const int64_t *padded = padded_.data_ptr<int64_t>(), *input_at = input_at_.data_ptr<int64_t>();
      const int64_t *input_code = input_code_.data_ptr<int64_t>(), *output_at = output_at_.data_ptr<int64_t>();
      const int64_t *stay_after = stay_after_.data_ptr<int64_t>(), *output_end = output_end_.data_ptr<int64_t>();
      const int64_t *previous = previous_.data_ptr<int64_t>(), *other = other_cells_.data_ptr<int64_t>();
      int64_t *index = table_index.data_ptr<int64_t>(), *centres = centre.data_ptr<int64_t>();
      int64_t* extras = centre_ ? extra.data_ptr<int64_t>() : nullptr;
      int64_t* symbols = centre_ ? symbols_.data_ptr<int64_t>() : nullptr;
      std::vector<int64_t> codes(size_);  // the feasibility code of each row
      for (int64_t b = 0; b < size_; ++b) {
        const int64_t at = input_at[b];
        centres[b] = padded[at];
        index[b] = previous[b] + centres[b];
        if (symbols) {
          for (int64_t k = 0; k < window_cells_; ++k) symbols[b * window_cells_ + k] = padded[at + k - centre_];
          for (int64_t k = 0; k < window_cells_ - 1; ++k) {
            extras[b * (window_cells_ - 1) + k] = symbols[b * window_cells_ + other[k]] + other[k] * symbols_count_;
          }
        }
        // Input part, 2 * live, and whether the output head may stay (see fused.Episode.set_course).
        codes[b] = input_code[at] + 2 * (output_at[b] < output_end[b]) + (output_at[b] > t + stay_after[b]);
      }
      Tensor mask_rows = mask.view({size_, columns});
      gather_rows(mask_table_, codes.data(), 1, mask_rows);
      if (memory_) {
        const int64_t *memory_at = memory_at_.data_ptr<int64_t>(), *table = read_table_.data_ptr<int64_t>();
        int64_t* rows = read_rows.data_ptr<int64_t>();
        for (int64_t b = 0; b < size_; ++b) std::copy(table + memory_at[b] * reads_, table + (memory_at[b] + 1) * reads_, rows + b * reads_);
      }
    }
    if (!centre_) symbols_ = centre.view({size_});
    Tensor probs = forward_step(table_index, centre_ ? Maybe(extra) : std::nullopt, mask, live_.view({size_, 1}), centre,
                                memory_ ? Maybe(memory_at_) : std::nullopt, memory_ ? Maybe(read_rows) : std::nullopt);
    Tensor next;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      next = this->token();
    }
    if (at::GradMode::is_enabled() && token.requires_grad()) {
      auto node = c10::make_intrusive<StepNode>(shared_from_this(), t);
      node->set_next_edges(torch::autograd::collect_next_edges(token));
      torch::autograd::set_history(next, node);
      torch::autograd::set_history(probs, node);
    }
    return {next, probs};
  }

  // Record the step's decisions (B, D) and move the heads; returns finished().
  bool advance(const Tensor& decided) {
    const Tensor actions = decided.contiguous();
    TORCH_CHECK(actions.scalar_type() == at::kLong && actions.dim() == 2 && actions.size(0) == size_ &&
                    actions.size(1) == decisions_,
                "advance takes the step's decisions as a long tensor (", size_, ", ", decisions_, ")");
    records_[0].push_back(actions);
    records_[1].push_back(live_);
    records_[2].push_back(symbols_);
    records_[3].push_back(input_at_);
    records_[4].push_back(output_at_);
    if (memory_) records_[5].push_back(memory_at_);
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    const int64_t* a = actions.data_ptr<int64_t>();
    const int64_t* powers = powers_.data_ptr<int64_t>();
    Tensor input_at = at::empty_like(input_at_), output_at = at::empty_like(output_at_);
    Tensor previous = at::empty_like(previous_);
    Tensor live = at::empty({size_}, at::kBool);
    Tensor memory_at = memory_ ? at::empty_like(memory_at_) : Tensor();
    const int64_t *in = input_at_.data_ptr<int64_t>(), *out = output_at_.data_ptr<int64_t>();
    const int64_t* end = output_end_.data_ptr<int64_t>();
    const int64_t* input_moves = input_moves_.defined() ? input_moves_.data_ptr<int64_t>() : nullptr;
    int64_t *next_in = input_at.data_ptr<int64_t>(), *next_out = output_at.data_ptr<int64_t>();
    int64_t* next_previous = previous.data_ptr<int64_t>();
    bool* next_live = live.data_ptr<bool>();
    bool finished = true;
    for (int64_t b = 0; b < size_; ++b, a += decisions_) {
      next_in[b] = input_moves ? input_moves[a[0] + 3 * in[b]] : in[b] + a[0] - 1;
      next_out[b] = out[b] + a[decisions_ - 1];
      int64_t row = 0;
      for (int64_t d = 0; d < decisions_; ++d) row += a[d] * powers[d];
      next_previous[b] = row;
      next_live[b] = next_out[b] < end[b];
      finished = finished && !next_live[b];
    }
    if (memory_) {
      a = actions.data_ptr<int64_t>();
      const int64_t *at = memory_at_.data_ptr<int64_t>(), *moves = memory_moves_.data_ptr<int64_t>();
      int64_t* next = memory_at.data_ptr<int64_t>();
      for (int64_t b = 0; b < size_; ++b, a += decisions_) next[b] = moves[a[1] + 3 * at[b]];
    }
    input_at_ = input_at;
    output_at_ = output_at;
    previous_ = previous;
    live_ = live;
    memory_at_ = memory_at;
    return finished;
  }

  // Every step's decisions, live rows, symbols read and flat head positions (fused.Episode.stacked_records).
  std::tuple<Maybe, Maybe, Maybe, Maybe, Maybe, Maybe> stacked_records() const {
    std::array<Maybe, 6> out;
    for (size_t k = 0; k < out.size(); ++k) {
      if (!records_[k].empty()) out[k] = at::stack(records_[k], 1);
    }
    return {out[0], out[1], out[2], out[3], out[4], out[5]};
  }

  // -- forward ---------------------------------------------------------------------------

  void begin(const Maybe& h0, const Maybe& c0, const Tensor& table, const Tensor& action_table,
             const Maybe& w_reads, const Maybe& w_h_controller, const Maybe& w_h_baseline, const Tensor& heads_w,
             const Tensor& heads_b) {
    TORCH_CHECK(table.device().is_cpu(), "the native step loop runs on the CPU; set RLNTM_NATIVE=0 for another device");
    dtype_ = table.scalar_type();
    if (memory_) {
      tape_ = at::zeros({size_ * cells_, width_}, table.options());
      // The authors' initial memory: each row's first cell, where its head starts, holds ones.
      if (memory_start_marker_) tape_.view({size_, cells_, width_}).select(1, 0).fill_(1);
    }
    // A step's one-hot part starts from (previous decisions' row) + (centre symbol's row): the
    // Python loop gathers it from a table of every sum, this one adds the two rows.
    //
    // The product's columns come in the plan's order: each LSTM's gates (controller's, then the
    // baseline's) in torch's order (input, forget, candidate, output), then any feed-forward
    // units. The two LSTMs never see each other's state, so the recurrent product is one block
    // per LSTM.
    const int64_t columns = action_table.size(1);
    parts_.clear();
    if (controller_units_) parts_.push_back({0, controller_units_});
    if (units_ > controller_units_) parts_.push_back({controller_units_, units_ - controller_units_});
    // The forward pass multiplies by copies whose sigmoid columns are halved, so that one tanh over
    // the whole product gives every activation: sigmoid(x) = (1 + tanh(x / 2)) / 2, and halving is
    // exact. The backward pass works with the weights as they are.
    Tensor scale = at::ones({columns}, table.options());
    for (const auto& [offset, n] : parts_) {
      scale.narrow(0, 4 * offset, 2 * n).fill_(0.5);
      scale.narrow(0, 4 * offset + 3 * n, n).fill_(0.5);
    }
    table_ = table;
    action_table_ = action_table;
    forward_action_table_ = action_table * scale;
    centre_rows_ = table.narrow(0, centre_ * symbols_count_, symbols_count_);
    forward_centre_rows_ = centre_rows_ * scale;
    forward_table_ = window_cells_ > 1 ? table * scale : Tensor();
    if (memory_) {
      TORCH_CHECK(w_reads.has_value(), "begin needs the memory reads' weights (see fused.Episode.begin)");
      forward_w_reads_ = *w_reads * scale;
      // The gradient of the cells read comes from the controller's columns only (the baseline reads
      // them detached): one contiguous range.
      const int64_t first = controller_units_ ? 0 : 4 * units_;
      const int64_t count = controller_units_ ? 4 * controller_units_ : columns - 4 * units_;
      controller_columns_ = {first, count};
      w_reads_controller_t_ = w_reads->narrow(1, first, count).t().contiguous();
    }
    forward_w_h_.clear();
    w_h_t_.clear();
    for (const auto& [offset, n] : parts_) {
      const Maybe& given = offset == 0 && controller_units_ ? w_h_controller : w_h_baseline;
      TORCH_CHECK(given.has_value(), "begin needs the recurrent block of every LSTM (see fused.Episode.begin)");
      const Tensor& block = *given;
      forward_w_h_.push_back((block * scale.narrow(0, 4 * offset, 4 * n)).contiguous());
      w_h_t_.push_back(block.t().contiguous());
    }
    heads_w_ = heads_w;
    heads_b_ = heads_b;
    logit_columns_ = 3 * decisions_;
    heads_w_logits_t_ = heads_w.narrow(1, 0, logit_columns_).t().contiguous();
    heads_w_memory_t_ = heads_w.narrow(1, logit_columns_, heads_w.size(1) - logit_columns_).t().contiguous();
    const int64_t write_gates = memory_ ? width_ + (direct_ ? 3 : 0) : 0;
    forward_heads_w_ = heads_w_.clone(at::MemoryFormat::Contiguous);
    forward_heads_b_ = heads_b_.clone(at::MemoryFormat::Contiguous);
    forward_heads_w_.narrow(1, logit_columns_, write_gates).mul_(0.5);
    forward_heads_b_.narrow(0, logit_columns_, write_gates).mul_(0.5);
    h_ = h0 ? h0->contiguous() : Tensor();
    c_ = c0 ? c0->contiguous() : Tensor();
    hs_.push_back(h_);
    cs_.push_back(c_);
  }

  Tensor forward_step(const Tensor& table_index, const Maybe& extra_index, const Tensor& mask, const Tensor& live,
                      const Tensor& symbol, const Maybe& write_row, const Maybe& read_rows) {
    // Nothing here is recorded: the step is one node of the graph, whose backward is below.
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    Tensor z = at::empty({size_, action_table_.size(1)}, action_table_.options());
    by_dtype([&](auto zero) {
      using T = decltype(zero);
      const int64_t columns = z.size(1);
      const int64_t* at = table_index.data_ptr<int64_t>();
      const T *actions = forward_action_table_.data_ptr<T>(), *centres = forward_centre_rows_.data_ptr<T>();
      T* to = z.data_ptr<T>();
      for (int64_t b = 0; b < size_; ++b) {
        const T* __restrict__ first = actions + at[b] / symbols_count_ * columns;
        const T* __restrict__ second = centres + at[b] % symbols_count_ * columns;
        T* __restrict__ row = to + b * columns;
        for (int64_t j = 0; j < columns; ++j) row[j] = first[j] + second[j];
      }
    });
    // The recurrent products, one block per LSTM, added into their columns.
    for (size_t p = 0; p < parts_.size(); ++p) {
      const auto& [offset, n] = parts_[p];
      z.narrow(1, 4 * offset, 4 * n).addmm_(h_.narrow(1, offset, n), forward_w_h_[p]);
    }
    if (extra_index) z += forward_table_.index_select(0, *extra_index).view({size_, -1, z.size(1)}).sum(1);
    Tensor reads, window;
    if (memory_) {
      reads = at::empty({read_rows->numel(), width_}, tape_.options());
      gather_rows(tape_, read_rows->data_ptr<int64_t>(), 1, reads);
      window = reads.view({size_, -1});
      if (reads_ > window_cells_) window = window.narrow(1, 0, window_cells_ * width_);
      z.addmm_(window, forward_w_reads_);
      if (want_windows_) reads_list_.push_back(window);
    }
    // z becomes the activations in place (one tanh, then the sigmoid gates from it).
    const int64_t columns = z.size(1), units = units_;
    Tensor c, tc, output;
    if (units) {
      z.tanh_();
      c = at::empty({size_, units}, z.options());
      by_dtype([&](auto zero) {
        using T = decltype(zero);
        T* z_row = z.data_ptr<T>();
        const T* before = c_.data_ptr<T>();
        T* out = c.data_ptr<T>();
        for (int64_t b = 0; b < size_; ++b, z_row += columns, before += units, out += units) {
          for (const auto& [offset, n] : parts_) {
            T* a = z_row + 4 * offset;
            sigmoid_from_half_tanh(2 * n, a);
            sigmoid_from_half_tanh(n, a + 3 * n);
            for (int64_t j = 0; j < n; ++j) out[offset + j] = a[n + j] * before[offset + j] + a[j] * a[2 * n + j];
          }
        }
      });
      tc = c.tanh();
      Tensor h = at::empty_like(c);
      by_dtype([&](auto zero) {
        using T = decltype(zero);
        const T *z_row = z.data_ptr<T>(), *tanh_c = tc.data_ptr<T>();
        T* out = h.data_ptr<T>();
        for (int64_t b = 0; b < size_; ++b, z_row += columns, tanh_c += units, out += units) {
          for (const auto& [offset, n] : parts_) {
            const T* a = z_row + 4 * offset;
            for (int64_t j = 0; j < n; ++j) out[offset + j] = a[3 * n + j] * tanh_c[offset + j];
          }
        }
      });
      h_ = h;
      c_ = c;
      hs_.push_back(h);
      cs_.push_back(c);
      if (controller_units_) {
        output = units > controller_units_ ? h.narrow(1, 0, controller_units_) : h;
      } else {
        output = z.narrow(1, 4 * units, columns - 4 * units);
        outputs_.push_back(output);
      }
    } else {
      output = z.tanh_();
      outputs_.push_back(output);
    }
    // The heads: bias rows, then the product added in place (addmm would copy the expanded bias).
    Tensor heads = at::empty({size_, heads_b_.size(0)}, z.options());
    by_dtype([&](auto zero) {
      using T = decltype(zero);
      const T* bias = forward_heads_b_.data_ptr<T>();
      T* to = heads.data_ptr<T>();
      const int64_t n = heads_b_.size(0);
      for (int64_t b = 0; b < size_; ++b) std::copy(bias, bias + n, to + b * n);
    });
    heads.addmm_(output, forward_heads_w_);
    const int64_t head_columns = heads.size(1), decisions = decisions_;
    // The masked logits and their softmax (three entries per decision).
    Tensor logits = at::empty({size_, decisions, 3}, heads.options());
    // Contiguous (B, D, 3), so that the (B * D, 3) rows torch.multinomial samples from are a view.
    Tensor probs = at::empty({size_, decisions, 3}, heads.options());
    // And each decision's log-sum-exp, from which stacked() takes the chosen log-probabilities.
    Tensor lse = at::empty({size_, decisions}, heads.options());
    const Tensor masks = mask.contiguous();
    by_dtype([&](auto zero) {
      using T = decltype(zero);
      const T *row = heads.data_ptr<T>(), *m = masks.data_ptr<T>();
      T *l = logits.data_ptr<T>(), *p = probs.data_ptr<T>(), *log_sum = lse.data_ptr<T>();
      for (int64_t b = 0; b < size_; ++b, row += head_columns) {
        for (int64_t d = 0; d < decisions; ++d, m += 3, l += 3, p += 3, ++log_sum) {
          for (int k = 0; k < 3; ++k) l[k] = row[3 * d + k] + m[k];
          const T top = std::max(l[0], std::max(l[1], l[2]));
          for (int k = 0; k < 3; ++k) p[k] = std::exp(l[k] - top);
          const T sum = p[0] + p[1] + p[2];
          for (int k = 0; k < 3; ++k) p[k] /= sum;
          *log_sum = top + std::log(sum);
        }
      }
    });
    logits_.push_back(logits);
    lse_.push_back(lse);
    if (memory_) {
      // The write: keep gate (and the direct-access gates), then the value; activated in place.
      const int64_t width = width_, gate_width = width + (direct_ ? 3 : 0), first = logit_columns_;
      heads.narrow(1, first, gate_width + width).tanh_();  // the gates' columns were halved
      Tensor written = direct_ ? at::empty({size_, width}, heads.options()) : Tensor();
      const Tensor alive = live.contiguous(), symbols = symbol.contiguous(), rows = write_row->contiguous();
      by_dtype([&](auto zero) {
        using T = decltype(zero);
        T* row = heads.data_ptr<T>();
        const T* cells = reads.data_ptr<T>();
        const bool* is_live = alive.data_ptr<bool>();
        const int64_t *sym = symbols.data_ptr<int64_t>(), *target = rows.data_ptr<int64_t>();
        T* tape = tape_.data_ptr<T>();
        T* kept = direct_ ? written.data_ptr<T>() : nullptr;
        for (int64_t b = 0; b < size_; ++b, row += head_columns, cells += reads_ * width) {
          sigmoid_from_half_tanh(gate_width, row + first);
          const T *keep = row + first, *value = row + first + gate_width, *old = cells + centre_ * width;
          T* cell = tape + target[b] * width;
          T* copy = kept ? kept + b * width : nullptr;
          if (!is_live[b]) {  // the cell keeps its content
            if (copy) std::copy(old, old + width, copy);
            continue;
          }
          for (int64_t j = 0; j < width; ++j) cell[j] = value[j] + keep[j] * old[j];
          if (direct_) {
            // Gated one-hot input symbol, then gated left and right neighbours.
            const T *left = cells + window_cells_ * width, *right = left + width;
            const T symbol_gate = keep[width], left_gate = keep[width + 1], right_gate = keep[width + 2];
            cell[sym[b]] += symbol_gate;
            for (int64_t j = 0; j < width; ++j) cell[j] += left_gate * left[j];
            for (int64_t j = 0; j < width; ++j) cell[j] += right_gate * right[j];
            std::copy(cell, cell + width, copy);
          }
        }
      });
      if (direct_) written_.push_back(written);
    }
    if (grad_) {
      // A detached alias of probs: the step's output itself would tie this object to its own
      // autograd node (see fused.py).
      saved_.push_back(Saved{table_index, value_or_undefined(extra_index), live.contiguous(), symbol.contiguous(),
                             write_row ? write_row->contiguous() : Tensor(),
                             read_rows ? read_rows->contiguous() : Tensor(), window, reads, z, tc, heads,
                             probs.detach(), output});
    }
    return probs;
  }

  std::tuple<Maybe, Maybe, Maybe, Maybe, Maybe> stacked() const {
    // The log-probabilities of the decisions taken (B, T, D): chosen logit minus log-sum-exp.
    const int64_t steps = static_cast<int64_t>(logits_.size()), decisions = decisions_;
    TORCH_CHECK(static_cast<int64_t>(records_[0].size()) == steps, "stacked() needs advance() after every step");
    Tensor chosen = at::empty({size_, steps, decisions}, at::TensorOptions().dtype(dtype_));
    by_dtype([&](auto zero) {
      using T = decltype(zero);
      T* out = chosen.data_ptr<T>();
      for (int64_t t = 0; t < steps; ++t) {
        const int64_t* a = records_[0][t].data_ptr<int64_t>();
        const T *l = logits_[t].data_ptr<T>(), *log_sum = lse_[t].data_ptr<T>();
        for (int64_t i = 0; i < size_ * decisions; ++i) {
          out[(i / decisions * steps + t) * decisions + i % decisions] = l[3 * i + a[i]] - log_sum[i];
        }
      }
    });
    Tensor outputs, baseline;
    if (units_) {
      Tensor states = at::stack(std::vector<Tensor>(hs_.begin() + 1, hs_.end()), 1);
      stacked_states_ = states;  // the heads' gradient over all steps reads them again
      // Views of the one stack (their rows are (B * T, units) blocks of it, so nothing is copied).
      if (controller_units_) outputs = states.narrow(2, 0, controller_units_);
      if (units_ > controller_units_) {
        baseline = states.narrow(2, controller_units_, units_ - controller_units_);
      }
    }
    if (!controller_units_) outputs = at::stack(outputs_, 1);
    Tensor written = written_.empty() ? Tensor() : at::stack(written_, 1);
    Tensor windows = want_windows_ && memory_ ? at::stack(reads_list_, 1) : Tensor();
    return {chosen, maybe(outputs), maybe(baseline), maybe(written), maybe(windows)};
  }

  // -- backward --------------------------------------------------------------------------

  void begin_backward(const std::vector<Maybe>& grads) {
    TORCH_CHECK(grads.size() == 5, "begin_backward takes the gradients of the 5 outputs of stacked()");
    const Tensor grad_chosen = value_or_undefined(grads[0]);
    const Tensor grad_outputs = value_or_undefined(grads[1]);
    const Tensor grad_baseline = value_or_undefined(grads[2]);
    const Tensor grad_written = value_or_undefined(grads[3]);
    const Tensor grad_windows = value_or_undefined(grads[4]);
    const int64_t steps = static_cast<int64_t>(logits_.size());
    Tensor through, grad_logits;
    if (grad_chosen.defined()) {
      // d log p(a) / d logits = onehot(a) - p.
      const Tensor grad = grad_chosen.contiguous();
      const int64_t decisions = decisions_;
      grad_logits = at::empty({size_, steps, logit_columns_}, grad.options());
      by_dtype([&](auto zero) {
        using T = decltype(zero);
        const T* g = grad.data_ptr<T>();
        T* out = grad_logits.data_ptr<T>();
        for (int64_t t = 0; t < steps; ++t) {
          const int64_t* a = records_[0][t].data_ptr<int64_t>();
          const T* p = saved_[t].probs.data_ptr<T>();
          for (int64_t i = 0; i < size_ * decisions; ++i) {
            const int64_t index = (i / decisions * steps + t) * decisions + i % decisions;
            T* row = out + 3 * index;
            for (int k = 0; k < 3; ++k) row[k] = -g[index] * p[3 * i + k];
            row[a[i]] += g[index];
          }
        }
      });
      through = grad_logits.matmul(heads_w_logits_t_);
    }
    if (grad_outputs.defined()) through = add_or_take(through, grad_outputs);
    Tensor to_h, to_output;
    if (controller_units_) {
      if (!grad_baseline.defined()) {
        to_h = through;
        if (to_h.defined() && units_ > controller_units_) {
          to_h = at::cat({to_h, to_h.new_zeros({size_, steps, units_ - controller_units_})}, 2);
        }
      } else {
        Tensor first = through.defined() ? through : grad_baseline.new_zeros({size_, steps, controller_units_});
        to_h = at::cat({first, grad_baseline}, 2);
      }
    } else {
      to_h = grad_baseline;
      to_output = through;
    }
    // Contiguous (B, T, ...), so that a step's part is a (B, ...) block of rows.
    const std::array<Tensor, 4> whole{to_h, to_output, grad_written, grad_windows};
    for (size_t k = 0; k < whole.size(); ++k) external_[k] = whole[k].defined() ? whole[k].contiguous() : Tensor();
    has_external_ = true;
    grad_logits_ = grad_logits;
    begin_pass();
  }

  Tensor backward_step(int64_t t, const Maybe& grad_token_in, const Maybe& grad_probs) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    const Saved& s = saved_.at(t);
    Tensor grad_token = grad_token_in ? *grad_token_in : at::zeros({token_size_}, at::TensorOptions().dtype(dtype_));
    if (!grad_token_.defined() || grad_token.unsafeGetTensorImpl() != grad_token_.unsafeGetTensorImpl()) {
      // Views of the state's gradient: h, c, the tape.
      TORCH_CHECK(grad_token.is_contiguous(), "the native step loop needs a contiguous state gradient");
      grad_token_ = grad_token;
      dh_ = grad_token.narrow(0, 0, size_ * units_).view({size_, units_});
      dc_ = grad_token.narrow(0, size_ * units_, size_ * units_).view({size_, units_});
      if (memory_) tape_grad_ = grad_token.narrow(0, 2 * size_ * units_, token_size_ - 2 * size_ * units_).view({-1, width_});
    }
    if (!pass_open_) begin_pass();  // a backward pass that does not go through the finish node
    Tensor to_h, doutput, written, grad_window;
    if (has_external_) {
      Tensor* parts[4] = {&to_h, &doutput, &written, &grad_window};
      for (int k = 0; k < 4; ++k) {
        if (external_[k].defined()) *parts[k] = external_[k].select(1, t);
      }
    }
    const int64_t width = width_, units = units_, columns = s.z.size(1), head_columns = s.heads.size(1);

    if (grad_probs) {
      // The softmax's backward: p * (g - sum p g) for each decision.
      const Tensor grad = grad_probs->contiguous();
      Tensor dlogits = at::empty({size_, logit_columns_}, grad.options());
      by_dtype([&](auto zero) {
        using T = decltype(zero);
        const T *g = grad.data_ptr<T>(), *probabilities = s.probs.data_ptr<T>();
        T* out = dlogits.data_ptr<T>();
        const T* p = probabilities;
        for (int64_t i = 0; i < size_ * decisions_; ++i, g += 3, out += 3, p += 3) {
          const T dot = g[0] * p[0] + g[1] * p[1] + g[2] * p[2];
          for (int k = 0; k < 3; ++k) out[k] = p[k] * (g[k] - dot);
        }
      });
      heads_w_logits_grad_.addmm_(s.output.t(), dlogits);
      heads_b_logits_grad_ += dlogits.sum(0);
      doutput = add_or_take(doutput, dlogits.mm(heads_w_logits_t_));
    }
    Tensor dold, dneighbours;
    if (memory_) {
      // The write: the written cell's gradient goes to the new value in live rows (the old
      // content did not survive), and stays with the old content in the others.
      const int64_t gate_width = width + (direct_ ? 3 : 0), first = logit_columns_;
      Tensor dmemory = at::empty({size_, gate_width + width}, s.heads.options());
      dold = at::empty({size_, width}, s.heads.options());
      if (direct_) dneighbours = at::empty({size_, 2, width}, s.heads.options());
      by_dtype([&](auto zero) {
        using T = decltype(zero);
        const T *row = s.heads.data_ptr<T>(), *cells = s.reads.data_ptr<T>();
        const T* extra = written.defined() ? written.data_ptr<T>() : nullptr;
        const int64_t extra_stride = written.defined() ? written.stride(0) : 0;
        const bool* is_live = s.live.data_ptr<bool>();
        const int64_t *sym = s.symbol.data_ptr<int64_t>(), *target = s.write_row.data_ptr<int64_t>();
        T* tape = tape_grad_.data_ptr<T>();
        T *dm = dmemory.data_ptr<T>(), *dkeep = dold.data_ptr<T>();
        T* dn = direct_ ? dneighbours.data_ptr<T>() : nullptr;
        std::vector<T> dnew(width);
        T* __restrict__ dn_row = dnew.data();
        for (int64_t b = 0; b < size_; ++b, row += head_columns, cells += reads_ * width, dm += gate_width + width,
                     dkeep += width) {
          const T *keep = row + first, *value = row + first + gate_width, *old = cells + centre_ * width;
          const T* ext = extra ? extra + b * extra_stride : nullptr;
          T* cell = tape + target[b] * width;
          if (!is_live[b]) {  // the cell kept its content: its gradient stays there
            std::fill(dn_row, dn_row + width, T(0));
            std::fill(dm, dm + gate_width + width, T(0));
            if (ext) {
              std::copy(ext, ext + width, dkeep);
            } else {
              std::fill(dkeep, dkeep + width, T(0));
            }
            if (dn) std::fill(dn + b * 2 * width, dn + (b + 1) * 2 * width, T(0));
            continue;
          }
          write_backward_row(width, ext, cell, keep, value, old, dn_row, dm, dm + gate_width, dkeep);
          if (direct_) {
            const T *left = cells + window_cells_ * width, *right = left + width;
            const T symbol_gate = keep[width], left_gate = keep[width + 1], right_gate = keep[width + 2];
            T dleft = 0, dright = 0;
            for (int64_t j = 0; j < width; ++j) {
              dleft += dnew[j] * left[j];
              dright += dnew[j] * right[j];
            }
            dm[width] = dnew[sym[b]] * (1 - symbol_gate) * symbol_gate;
            dm[width + 1] = dleft * (1 - left_gate) * left_gate;
            dm[width + 2] = dright * (1 - right_gate) * right_gate;
            T* neighbours = dn + b * 2 * width;
            for (int64_t j = 0; j < width; ++j) {
              neighbours[j] = left_gate * dnew[j];
              neighbours[width + j] = right_gate * dnew[j];
            }
          }
        }
        // The memory heads' bias gradient: the column sums, in row order.
        T* bias = heads_b_memory_grad_.data_ptr<T>();
        const T* rows_done = dmemory.data_ptr<T>();
        const int64_t n = gate_width + width;
        for (int64_t b = 0; b < size_; ++b, rows_done += n) add_row(n, rows_done, bias);
      });
      heads_w_memory_grad_.addmm_(s.output.t(), dmemory);
      doutput = add_or_take(doutput, dmemory.mm(heads_w_memory_t_));
    }
    Tensor dz = at::empty_like(s.z);
    if (doutput.defined()) doutput = doutput.contiguous();
    by_dtype([&](auto zero) {
      using T = decltype(zero);
      const T* a = s.z.data_ptr<T>();
      const T* dout = doutput.defined() ? doutput.data_ptr<T>() : nullptr;
      const int64_t out_columns = doutput.defined() ? doutput.size(1) : 0;
      T* d = dz.data_ptr<T>();
      if (units) {
        const T *tanh_c = s.tc.data_ptr<T>(), *before = cs_[t].data_ptr<T>();
        const T* external = to_h.defined() ? to_h.data_ptr<T>() : nullptr;
        const int64_t external_stride = to_h.defined() ? to_h.stride(0) : 0;
        T* __restrict__ dh = dh_.data_ptr<T>();
        T* __restrict__ dc = dc_.data_ptr<T>();
        const int64_t controller = controller_units_;
        for (int64_t b = 0; b < size_; ++b) {
          const T* __restrict__ act = a + b * columns;
          T* __restrict__ grad = d + b * columns;
          T* __restrict__ dh_row = dh + b * units;  // h's gradient (overwritten by the product below)
          T* __restrict__ dc_row = dc + b * units;
          const T* __restrict__ tc_row = tanh_c + b * units;
          const T* __restrict__ c_row = before + b * units;
          if (external) {
            for (int64_t j = 0; j < units; ++j) dh_row[j] += external[b * external_stride + j];
          }
          if (controller && dout) {
            for (int64_t j = 0; j < controller; ++j) dh_row[j] += dout[b * out_columns + j];
          }
          for (const auto& [offset, n] : parts_) {
            const T* a = act + 4 * offset;
            T* g = grad + 4 * offset;
            lstm_backward_row(n, a, a + n, a + 3 * n, a + 2 * n, tc_row + offset, c_row + offset, dh_row + offset,
                              dc_row + offset, g, g + n, g + 3 * n, g + 2 * n);
          }
          if (!controller) {  // a feed-forward controller's tanh units
            for (int64_t k = 4 * units; k < columns; ++k) {
              grad[k] = dout ? dout[b * out_columns + k - 4 * units] * (1 - act[k] * act[k]) : T(0);
            }
          }
        }
      } else {
        for (int64_t i = 0; i < size_ * columns; ++i) {
          d[i] = dout ? dout[i] * (1 - a[i] * a[i]) : T(0);
        }
      }
    });
    for (size_t p = 0; p < parts_.size(); ++p) {
      const auto& [offset, n] = parts_[p];
      const Tensor block = dz.narrow(1, 4 * offset, 4 * n);
      w_h_grad_[p].addmm_(hs_[t].narrow(1, offset, n).t(), block);
      Tensor into = dh_.narrow(1, offset, n);
      at::mm_out(into, block, w_h_t_[p]);
    }
    // The combined table's rows are (previous decisions, centre symbol) pairs: each row's
    // gradient goes to both of its parts.
    const int64_t* index = s.table_index.data_ptr<int64_t>();
    add_rows(action_grad_, index, 1, dz, symbols_count_);
    add_rows(centre_grad_, index, 1, dz, 1, symbols_count_);
    if (s.extra_index.defined()) {
      const int64_t others = window_cells_ - 1;
      table_grad_.index_add_(0, s.extra_index, dz.unsqueeze(1).expand({-1, others, -1}).reshape({-1, dz.size(1)}));
    }
    if (memory_) {
      w_reads_grad_.addmm_(s.window.t(), dz);
      // The reads: their gradient adds into the cells read (a cell read twice gets both).
      Tensor dreads = dz.narrow(1, controller_columns_.first, controller_columns_.second).mm(w_reads_controller_t_);
      if (grad_window.defined()) dreads += grad_window;
      by_dtype([&](auto zero) {
        using T = decltype(zero);
        const T *from = dreads.data_ptr<T>(), *keep = dold.data_ptr<T>();
        const T* neighbours = direct_ ? dneighbours.data_ptr<T>() : nullptr;
        const int64_t* rows = s.read_rows.data_ptr<int64_t>();
        T* tape = tape_grad_.data_ptr<T>();
        for (int64_t b = 0; b < size_; ++b) {
          const int64_t* read = rows + b * reads_;
          for (int64_t k = 0; k < window_cells_; ++k) {
            const T* src = from + (b * window_cells_ + k) * width;
            T* cell = tape + read[k] * width;
            if (k == centre_) {
              const T* extra = keep + b * width;
              for (int64_t j = 0; j < width; ++j) cell[j] += src[j] + extra[j];
            } else {
              for (int64_t j = 0; j < width; ++j) cell[j] += src[j];
            }
          }
          for (int64_t k = 0; neighbours && k < 2; ++k) {
            const T* src = neighbours + (b * 2 + k) * width;
            T* cell = tape + read[window_cells_ + k] * width;
            for (int64_t j = 0; j < width; ++j) cell[j] += src[j];
          }
        }
      });
    }
    return grad_token;
  }

  std::vector<Maybe> backward_start(const Maybe& grad_token) {
    if (!pass_open_) begin_pass();
    std::vector<Maybe> grads(9);
    if (grad_token && units_) {
      grads[0] = grad_token->narrow(0, 0, size_ * units_).view({size_, units_});
      grads[1] = grad_token->narrow(0, size_ * units_, size_ * units_).view({size_, units_});
    }
    Tensor dtable = table_grad_.defined() ? table_grad_ : at::zeros_like(table_);
    dtable.narrow(0, centre_ * symbols_count_, symbols_count_).add_(centre_grad_);
    grads[2] = dtable;
    grads[3] = action_grad_;
    if (memory_) grads[4] = w_reads_grad_;
    for (size_t p = 0; p < parts_.size(); ++p) grads[parts_[p].first == 0 && controller_units_ ? 5 : 6] = w_h_grad_[p];
    grads[7] = heads_w_grad_;
    grads[8] = heads_b_grad_;
    if (grad_logits_.defined()) {
      // The logits' part of the heads' gradient, over all steps at once.
      Tensor outputs = controller_units_ ? stacked_states_.narrow(2, 0, controller_units_) : at::stack(outputs_, 1);
      heads_w_grad_.narrow(1, 0, logit_columns_).add_(outputs.flatten(0, 1).t().mm(grad_logits_.flatten(0, 1)));
      heads_b_grad_.narrow(0, 0, logit_columns_).add_(grad_logits_.sum({0, 1}));
    }
    pass_open_ = false;
    external_ = {};
    has_external_ = false;
    grad_logits_ = Tensor();
    grad_token_ = Tensor();
    return grads;
  }

 private:
  // Runs ``body(T{})`` with T the C++ type of the episode's dtype.
  template <typename Body>
  void by_dtype(Body&& body) const {
    dispatch(dtype_, std::forward<Body>(body));
  }

  // Zero the weight gradients the steps' backward accumulates into.
  void begin_pass() {
    heads_w_grad_ = at::zeros_like(heads_w_);
    heads_b_grad_ = at::zeros_like(heads_b_);
    heads_w_logits_grad_ = heads_w_grad_.narrow(1, 0, logit_columns_);
    heads_w_memory_grad_ = heads_w_grad_.narrow(1, logit_columns_, heads_w_grad_.size(1) - logit_columns_);
    heads_b_logits_grad_ = heads_b_grad_.narrow(0, 0, logit_columns_);
    heads_b_memory_grad_ = heads_b_grad_.narrow(0, logit_columns_, heads_b_grad_.size(0) - logit_columns_);
    action_grad_ = at::zeros_like(action_table_);
    centre_grad_ = at::zeros_like(centre_rows_);
    table_grad_ = window_cells_ > 1 ? at::zeros_like(table_) : Tensor();
    w_reads_grad_ = memory_ ? at::zeros_like(forward_w_reads_) : Tensor();
    w_h_grad_.clear();
    for (const auto& [offset, n] : parts_) w_h_grad_.push_back(at::zeros({n, 4 * n}, table_.options()));
    pass_open_ = true;
  }

  // The course: tables, the heads' positions, and what each step recorded.
  Tensor padded_, input_at_, input_code_, input_moves_, output_at_, output_end_, stay_after_, mask_table_;
  Tensor previous_, powers_, other_cells_, memory_at_, read_table_, memory_moves_, live_, symbols_;
  std::array<std::vector<Tensor>, 6> records_;

  // Sizes and switches (see fused.Episode).
  int64_t size_, units_, controller_units_, decisions_, window_cells_, centre_;
  bool memory_;
  int64_t cells_, width_;
  bool direct_;
  bool memory_start_marker_;
  int64_t reads_;
  bool grad_, want_windows_;
  int64_t symbols_count_, token_size_;
  at::ScalarType dtype_ = at::kFloat;

  // Weights and what is derived from them once per episode.
  // (offset, units) of each LSTM in the state (its columns of the product start at 4 * offset),
  // and the controller's columns (first, count), whose rows of w_reads carry the cells' gradient.
  std::vector<std::pair<int64_t, int64_t>> parts_;
  std::pair<int64_t, int64_t> controller_columns_;
  Tensor table_, action_table_, centre_rows_, heads_w_, heads_b_;
  Tensor heads_w_logits_t_, heads_w_memory_t_, w_reads_controller_t_;
  std::vector<Tensor> w_h_t_, forward_w_h_;
  Tensor forward_action_table_, forward_centre_rows_, forward_table_, forward_w_reads_, forward_heads_w_,
      forward_heads_b_;
  int64_t logit_columns_ = 0;

  // The loop's state and every step's values.
  Tensor tape_, h_, c_;
  std::vector<Tensor> logits_, lse_, hs_, cs_, outputs_, written_, reads_list_;
  mutable Tensor stacked_states_;  // set by stacked()
  std::vector<Saved> saved_;

  // One backward pass: the gradients from the finish node (step-major), the state's gradient.
  std::array<Tensor, 4> external_;
  bool has_external_ = false;
  Tensor grad_token_, dh_, dc_, tape_grad_, grad_logits_;
  bool pass_open_ = false;
  Tensor heads_w_grad_, heads_b_grad_, heads_w_logits_grad_, heads_w_memory_grad_, heads_b_logits_grad_,
      heads_b_memory_grad_, action_grad_, centre_grad_, table_grad_, w_reads_grad_;
  std::vector<Tensor> w_h_grad_;
};

// The baseline's pre-reader (controllers.OfflineBaseline.read_tape): a torch-layout LSTM (gates
// input, forget, candidate, output) over each row's one-hot input symbols, from a constant state;
// a row keeps its state once its input has ended. Returns the final (h, c). The input product is a
// row of table = w_ih^T + bias per symbol; the backward pass runs the steps in reverse.
struct PreRead : public torch::autograd::Function<PreRead> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const Tensor& symbols,
                                                const Tensor& lengths, const Tensor& w_ih, const Tensor& w_hh,
                                                const Tensor& bias, double initial) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    TORCH_CHECK(symbols.scalar_type() == at::kLong && lengths.scalar_type() == at::kLong,
                "pre_read takes long symbols and lengths");
    const Tensor sym = symbols.contiguous(), len = lengths.contiguous();
    const int64_t size = sym.size(0), width = sym.size(1), units = w_hh.size(1), columns = 4 * units;
    const int64_t steps = size ? std::min(width, len.max().item<int64_t>()) : 0;
    // Sigmoid columns halved, so that one tanh gives every activation (as in the step loop).
    Tensor scale = at::ones({columns}, w_hh.options());
    scale.narrow(0, 0, 2 * units).fill_(0.5);
    scale.narrow(0, 3 * units, units).fill_(0.5);
    const Tensor table = ((w_ih.t() + bias) * scale).contiguous();
    const auto options = w_hh.options();
    Tensor acts = at::empty({steps, size, columns}, options), tcs = at::empty({steps, size, units}, options);
    Tensor hs = at::empty({steps + 1, size, units}, options), cs = at::empty({steps + 1, size, units}, options);
    hs.select(0, 0).fill_(initial);
    cs.select(0, 0).fill_(initial);
    const Tensor w_hh_t = (w_hh.t() * scale).contiguous();
    const int64_t* s = sym.data_ptr<int64_t>();
    const int64_t* n = len.data_ptr<int64_t>();
    for (int64_t t = 0; t < steps; ++t) {
      Tensor z = acts.select(0, t), h = hs.select(0, t), c = cs.select(0, t);
      gather_rows(table, s + t, width, z);
      z.addmm_(h, w_hh_t);
      z.tanh_();
      Tensor c_next = cs.select(0, t + 1), h_next = hs.select(0, t + 1), tc = tcs.select(0, t);
      dispatch(options.dtype().toScalarType(), [&](auto zero) {
        using T = decltype(zero);
        T* a = z.data_ptr<T>();
        const T* before = c.data_ptr<T>();
        T* out = c_next.data_ptr<T>();
        for (int64_t b = 0; b < size; ++b) {
          T* act = a + b * columns;
          sigmoid_from_half_tanh(2 * units, act);
          sigmoid_from_half_tanh(units, act + 3 * units);
          for (int64_t j = 0; j < units; ++j) {
            out[b * units + j] = t < n[b] ? act[units + j] * before[b * units + j] + act[j] * act[2 * units + j]
                                          : before[b * units + j];
          }
        }
      });
      at::tanh_out(tc, c_next);
      dispatch(options.dtype().toScalarType(), [&](auto zero) {
        using T = decltype(zero);
        const T *a = z.data_ptr<T>(), *tanh_c = tc.data_ptr<T>(), *before = h.data_ptr<T>();
        T* out = h_next.data_ptr<T>();
        for (int64_t b = 0; b < size; ++b) {
          for (int64_t j = 0; j < units; ++j) {
            out[b * units + j] = t < n[b] ? a[b * columns + 3 * units + j] * tanh_c[b * units + j] : before[b * units + j];
          }
        }
      });
    }
    ctx->save_for_backward({acts, tcs, hs, cs, sym, len, w_hh});
    ctx->saved_data["symbols"] = w_ih.size(1);
    return {hs.select(0, steps).clone(), cs.select(0, steps).clone()};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "the RL-NTM's pre-reader saves nothing for a second differentiation: use create_graph=False");
    const auto saved = ctx->get_saved_variables();
    const Tensor &acts = saved[0], &tcs = saved[1], &hs = saved[2], &cs = saved[3], &sym = saved[4], &len = saved[5],
                 &w_hh = saved[6];
    const int64_t steps = acts.size(0), size = hs.size(1), units = hs.size(2), columns = 4 * units;
    const int64_t width = sym.size(1), symbols = ctx->saved_data["symbols"].toInt();
    Tensor dh = grads[0].defined() ? grads[0].contiguous().clone() : at::zeros({size, units}, hs.options());
    Tensor dc = grads[1].defined() ? grads[1].contiguous().clone() : at::zeros({size, units}, hs.options());
    Tensor dtable = at::zeros({symbols, columns}, hs.options()), dw_hh = at::zeros({columns, units}, hs.options());
    Tensor dz = at::empty({size, columns}, hs.options());
    const int64_t* s = sym.data_ptr<int64_t>();
    const int64_t* n = len.data_ptr<int64_t>();
    for (int64_t t = steps - 1; t >= 0; --t) {
      const Tensor z = acts.select(0, t), tc = tcs.select(0, t), c = cs.select(0, t);
      dispatch(hs.scalar_type(), [&](auto zero) {
        using T = decltype(zero);
        const T *a = z.data_ptr<T>(), *tanh_c = tc.data_ptr<T>(), *before = c.data_ptr<T>();
        T *dhp = dh.data_ptr<T>(), *dcp = dc.data_ptr<T>(), *d = dz.data_ptr<T>();
        for (int64_t b = 0; b < size; ++b) {
          T* grad = d + b * columns;
          if (t >= n[b]) {  // the row's input had ended: its state went through unchanged
            std::fill(grad, grad + columns, T(0));
            continue;
          }
          const T* act = a + b * columns;
          // Gates in torch's order: input, forget, candidate, output.
          lstm_backward_row(units, act, act + units, act + 3 * units, act + 2 * units, tanh_c + b * units,
                            before + b * units, dhp + b * units, dcp + b * units, grad, grad + units, grad + 3 * units,
                            grad + 2 * units);
        }
      });
      dw_hh.addmm_(dz.t(), hs.select(0, t));
      add_rows(dtable, s + t, width, dz);  // rows whose input had ended add their zeros
      Tensor through = dz.mm(w_hh);
      dispatch(hs.scalar_type(), [&](auto zero) {
        using T = decltype(zero);
        const T* from = through.data_ptr<T>();
        T* to = dh.data_ptr<T>();
        for (int64_t b = 0; b < size; ++b) {
          if (t < n[b]) std::copy(from + b * units, from + (b + 1) * units, to + b * units);
        }
      });
    }
    return {Tensor(), Tensor(), dtable.t(), dw_hh, dtable.sum(0), Tensor()};
  }
};

// The prediction head at the predicting steps (fused.predict): logits = weight h + bias over the
// first ``symbols`` rows of weight; with ``gates`` 1 or 2, the next rows are pre-activations of
// sigmoid gates that add the one-hot centre symbol (gate 1) and the current memory cell (gate 2)
// to the logits (DirectAccessController.prediction_logits), each times its entry of ``scales``
// when given (a learnable positive scale, ModelConfig.shortcut_scale). Returns every step's reward (the
// target's log-probability at the given rows, 0 elsewhere) and prediction (the argmax, -1
// elsewhere), both (B, T), from hidden (B, T, H) and cells (B, T, width).
struct Predict : public torch::autograd::Function<Predict> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const Tensor& hidden,
                                                const Maybe& cells, const Tensor& symbol, const Tensor& rows,
                                                const Tensor& targets, const Tensor& weight, const Tensor& bias,
                                                int64_t gates, const Maybe& scales) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    TORCH_CHECK(hidden.dim() == 3 && rows.scalar_type() == at::kLong && targets.scalar_type() == at::kLong &&
                    symbol.scalar_type() == at::kLong && gates >= 0 && gates <= 2 && (gates < 2 || cells),
                "predict takes hidden (B, T, H), long rows, targets and symbols, 0 to 2 gates (cells with 2)");
    TORCH_CHECK(!scales || scales->numel() == gates, "predict takes one scale per gate");
    const Tensor scale_all = scales ? scales->detach().to(hidden.scalar_type()).contiguous() : Tensor();
    const Tensor h_all = hidden.stride(2) == 1 ? hidden : hidden.contiguous();
    const Tensor at_rows = rows.contiguous(), target = targets.contiguous(), sym = symbol.contiguous();
    const Tensor cell_all = cells ? cells->contiguous() : Tensor(), b_all = bias.contiguous();
    const int64_t steps = h_all.size(1), units = h_all.size(2), n = at_rows.numel();
    const int64_t columns = weight.size(0), symbols = columns - gates;
    const auto options = h_all.options();
    Tensor h = at::empty({n, units}, options), out = at::empty({n, columns}, options);
    Tensor rewards = at::zeros({h_all.size(0), steps}, options);
    Tensor predictions = at::full({h_all.size(0), steps}, -1, options.dtype(at::kLong));
    const int64_t* r = at_rows.data_ptr<int64_t>();
    dispatch(options.dtype().toScalarType(), [&](auto zero) {
      using T = decltype(zero);
      const T* from = h_all.data_ptr<T>();
      const T* b = b_all.data_ptr<T>();
      T *to = h.data_ptr<T>(), *o = out.data_ptr<T>();
      for (int64_t i = 0; i < n; ++i) {
        const T* row = from + r[i] / steps * h_all.stride(0) + r[i] % steps * h_all.stride(1);
        std::copy(row, row + units, to + i * units);
        std::copy(b, b + columns, o + i * columns);
      }
    });
    out.addmm_(h, weight.t());
    // The gates and what they add, and each row's largest logit; then the softmax, whose
    // exponentials torch computes vectorized over the whole block (kept for backward).
    Tensor top = at::empty({n, 1}, options);
    dispatch(options.dtype().toScalarType(), [&](auto zero) {
      using T = decltype(zero);
      T *o = out.data_ptr<T>(), *largest = top.data_ptr<T>();
      const T* cell = cell_all.defined() ? cell_all.data_ptr<T>() : nullptr;
      const int64_t width = cell_all.defined() ? cell_all.size(2) : 0;
      const int64_t* s = sym.data_ptr<int64_t>();
      int64_t* predicted = predictions.data_ptr<int64_t>();
      const T* scale = scale_all.defined() ? scale_all.data_ptr<T>() : nullptr;
      const T scale_symbol = scale ? scale[0] : T(1), scale_cell = scale && gates == 2 ? scale[1] : T(1);
      for (int64_t i = 0; i < n; ++i) {
        T* logits = o + i * columns;
        for (int64_t g = symbols; g < columns; ++g) logits[g] = T(1) / (T(1) + std::exp(-logits[g]));
        if (gates == 2) {
          const T gate = scale_cell * logits[symbols + 1];
          const T* c = cell + r[i] * width;
          for (int64_t j = 0; j < width; ++j) logits[j] += gate * c[j];
        }
        if (gates) logits[s[i]] += scale_symbol * logits[symbols];
        const int64_t best = argmax_row(logits, symbols);
        largest[i] = logits[best];
        predicted[r[i]] = best;
      }
    });
    Tensor probs = at::sub(out.narrow(1, 0, symbols), top).exp_();
    dispatch(options.dtype().toScalarType(), [&](auto zero) {
      using T = decltype(zero);
      const T *o = out.data_ptr<T>(), *largest = top.data_ptr<T>();
      T *p = probs.data_ptr<T>(), *reward = rewards.data_ptr<T>();
      const int64_t* t = target.data_ptr<int64_t>();
      for (int64_t i = 0; i < n; ++i, p += symbols) {
        T sum = 0;
        for (int64_t k = 0; k < symbols; ++k) sum += p[k];
        reward[r[i]] = o[i * columns + t[i]] - (largest[i] + std::log(sum));
        const T inverse = T(1) / sum;
        for (int64_t k = 0; k < symbols; ++k) p[k] *= inverse;
      }
    });
    ctx->mark_non_differentiable({predictions});
    ctx->save_for_backward({h, out, probs, at_rows, target, sym, weight});
    if (cell_all.defined()) ctx->saved_data["cells"] = cell_all;
    ctx->saved_data["scaled"] = scale_all.defined();
    if (scale_all.defined()) ctx->saved_data["scales"] = scale_all;
    ctx->saved_data["shape"] = hidden.sizes();
    ctx->saved_data["gates"] = gates;
    return {rewards, predictions};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "predict saves nothing for a second differentiation: use create_graph=False");
    const auto saved = ctx->get_saved_variables();
    const Tensor &h = saved[0], &out = saved[1], &probs = saved[2], &at_rows = saved[3], &target = saved[4],
                 &sym = saved[5], &weight = saved[6];
    const int64_t gates = ctx->saved_data["gates"].toInt();
    const Tensor cell_all = gates == 2 ? ctx->saved_data["cells"].toTensor() : Tensor();
    const int64_t n = h.size(0), columns = out.size(1), symbols = columns - gates;
    Tensor d = at::empty({n, columns}, out.options());
    Tensor grad_cells = cell_all.defined() ? at::zeros_like(cell_all) : Tensor();
    const bool scaled = ctx->saved_data["scaled"].toBool();
    const Tensor scale_all = scaled ? ctx->saved_data["scales"].toTensor() : Tensor();
    // Accumulated per row, summed after the loop: d reward / d scale of each gate.
    Tensor grad_scale_rows = scaled ? at::zeros({n, gates}, out.options()) : Tensor();
    // The rewards' gradient (torch materializes it as zeros where the loss does not use them).
    const Tensor grad = grads[0].contiguous();
    dispatch(out.scalar_type(), [&](auto zero) {
      using T = decltype(zero);
      const T *o = out.data_ptr<T>(), *p = probs.data_ptr<T>(), *g = grad.data_ptr<T>();
      const T* cell = cell_all.defined() ? cell_all.data_ptr<T>() : nullptr;
      T* dcell = grad_cells.defined() ? grad_cells.data_ptr<T>() : nullptr;
      const int64_t width = cell_all.defined() ? cell_all.size(2) : 0;
      const int64_t *r = at_rows.data_ptr<int64_t>(), *t = target.data_ptr<int64_t>(), *s = sym.data_ptr<int64_t>();
      T* dz = d.data_ptr<T>();
      const T* scale = scaled ? scale_all.data_ptr<T>() : nullptr;
      T* dscale = scaled ? grad_scale_rows.data_ptr<T>() : nullptr;
      const T scale_symbol = scale ? scale[0] : T(1), scale_cell = scale && gates == 2 ? scale[1] : T(1);
      for (int64_t i = 0; i < n; ++i) {
        const T* logits = o + i * columns;
        T* dl = dz + i * columns;
        const T gi = g[r[i]];
        // d log p(target) / d logits = onehot(target) - softmax.
        for (int64_t k = 0; k < symbols; ++k) dl[k] = -gi * p[i * symbols + k];
        dl[t[i]] += gi;
        if (gates) {
          const T gate = logits[symbols];
          if (dscale) dscale[i * gates] = dl[s[i]] * gate;
          dl[symbols] = dl[s[i]] * scale_symbol * gate * (1 - gate);
        }
        if (gates == 2) {
          const T gate = logits[symbols + 1];
          const T* c = cell + r[i] * width;
          T* dc = dcell + r[i] * width;
          T dgate = 0;
          for (int64_t j = 0; j < width; ++j) {
            dgate += dl[j] * c[j];
            dc[j] = dl[j] * scale_cell * gate;
          }
          if (dscale) dscale[i * gates + 1] = dgate * gate;
          dl[symbols + 1] = dgate * scale_cell * gate * (1 - gate);
        }
      }
    });
    const Tensor dh = d.mm(weight);
    const auto shape = ctx->saved_data["shape"].toIntVector();
    Tensor grad_hidden = at::zeros(shape, out.options());
    Tensor flat = grad_hidden.view({-1, shape[2]});
    add_rows(flat, at_rows.data_ptr<int64_t>(), 1, dh);
    return {grad_hidden, grad_cells, Tensor(), Tensor(), Tensor(), d.t().mm(h), d.sum(0), Tensor(),
            scaled ? grad_scale_rows.sum(0) : Tensor()};
  }
};

// The index of each row's largest entry over the last dimension (the first of equal ones; a NaN
// counts as the largest, as in torch.argmax), in one pass: torch's argmax over a last dimension
// as short as the prediction's 35 symbols costs several times more.
Tensor argmax_last(const Tensor& values) {
  TORCH_CHECK(values.dim() >= 1 && values.size(-1) > 0, "argmax_last needs a nonempty last dimension");
  const Tensor x = values.contiguous();
  const int64_t n = x.size(-1), rows = x.numel() / n;
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
  Tensor out = at::empty(shape, x.options().dtype(at::kLong));
  int64_t* index = out.data_ptr<int64_t>();
  dispatch(x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    const T* row = x.data_ptr<T>();
    for (int64_t r = 0; r < rows; ++r, row += n) index[r] = argmax_row(row, n);
  });
  return out;
}

torch::autograd::variable_list StepNode::apply(torch::autograd::variable_list&& grads) {
  TORCH_CHECK(!at::GradMode::is_enabled(),
              "the RL-NTM's step loop saves nothing for a second differentiation: use create_graph=False");
  const Maybe grad_token = grads[0].defined() ? Maybe(grads[0]) : std::nullopt;
  const Maybe grad_probs = grads[1].defined() ? Maybe(grads[1]) : std::nullopt;
  return {episode->backward_step(t, grad_token, grad_probs)};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  py::class_<Episode, std::shared_ptr<Episode>>(m, "Episode")
      .def(py::init<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool, bool, bool, int64_t, bool>(),
           py::kw_only(), py::arg("size"), py::arg("units"), py::arg("controller_units"), py::arg("decisions"),
           py::arg("window"), py::arg("memory_cells"), py::arg("width"), py::arg("direct"), py::arg("grad"),
           py::arg("want_windows"), py::arg("symbols"), py::arg("memory_start_marker") = false)
      .def("token", &Episode::token)
      .def("last_logits", &Episode::last_logits)
      .def("set_course", &Episode::set_course)
      .def("finished", &Episode::finished)
      .def("step", &Episode::step)
      .def("advance", &Episode::advance)
      .def("stacked_records", &Episode::stacked_records)
      .def("begin", &Episode::begin)
      .def("stacked", &Episode::stacked)
      .def("begin_backward", &Episode::begin_backward)
      .def("backward_step", &Episode::backward_step)
      .def("backward_start", &Episode::backward_start);
  m.def("argmax_last", &argmax_last, "The index of each row's largest entry over the last dimension.");
  m.def(
      "predict",
      [](const Tensor& hidden, const Maybe& cells, const Tensor& symbol, const Tensor& rows, const Tensor& targets,
         const Tensor& weight, const Tensor& bias, int64_t gates, const Maybe& scales) {
        auto out = Predict::apply(hidden, cells, symbol, rows, targets, weight, bias, gates, scales);
        return std::make_tuple(out[0], out[1]);
      },
      "The prediction head at the predicting steps: every step's reward and prediction (see fused.predict).");
  m.def(
      "pre_read",
      [](const Tensor& symbols, const Tensor& lengths, const Tensor& w_ih, const Tensor& w_hh, const Tensor& bias,
         double initial) {
        auto out = PreRead::apply(symbols, lengths, w_ih, w_hh, bias, initial);
        return std::make_tuple(out[0], out[1]);
      },
      "The baseline's pre-reader over one-hot input symbols: its final (h, c).");
}
