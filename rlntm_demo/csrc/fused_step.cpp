// The RL-NTM's fused step loop in C++: the same tensor operations as rlntm_demo/fused.py's Episode,
// in the same order, called without Python in between.
//
// At the paper's sizes a step costs the number of operations it runs, not their arithmetic; from
// Python each operation costs several microseconds of interpreter and binding work, from here about
// one. The maths, the layouts and the method names are those of the Python class (its docstrings
// are the reference); rlntm_demo/native.py loads this file, and tests/rlntm_demo/test_native.py
// checks that both give bitwise the same values and gradients.

#include <torch/extension.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

namespace {

using at::Tensor;
using Maybe = std::optional<Tensor>;

Maybe maybe(const Tensor& t) { return t.defined() ? Maybe(t) : std::nullopt; }
Tensor value_or_undefined(const Maybe& t) { return t.has_value() ? *t : Tensor(); }
Tensor add_or_take(const Tensor& sum, const Tensor& term) { return sum.defined() ? sum + term : term; }

// What backward needs from one step.
struct Saved {
  Tensor table_index, extra_index, live, symbol, write_row, read_rows, window;
  std::vector<Tensor> cells;
  Tensor sig;
  std::vector<Tensor> gates_ifo;
  Tensor candidate, tg, tc, gates, value, probs, output;
};

class Episode {
 public:
  Episode(int64_t size, int64_t units, int64_t controller_units, int64_t decisions, int64_t window,
          int64_t memory_cells, int64_t width, bool direct, bool grad, bool want_windows, int64_t symbols)
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
        reads_(2 * window + 1 + (direct && memory_cells > 0 ? 2 : 0)),
        grad_(grad),
        want_windows_(want_windows),
        symbols_(symbols),
        token_size_(2 * size * units + size * memory_cells * (memory_cells > 0 ? width : 0)) {}

  Tensor token() const { return at::zeros({}, dtype_).expand({token_size_}); }

  Tensor last_logits() const { return logits_.back(); }

  // -- forward ---------------------------------------------------------------------------

  void begin(const Maybe& h0, const Maybe& c0, const Tensor& table, const Tensor& action_table,
             const Maybe& w_reads, const Maybe& w_reads_base, const Maybe& w_h, const Tensor& heads_w,
             const Tensor& heads_b) {
    dtype_ = table.scalar_type();
    if (memory_) tape_ = at::zeros({size_ * cells_, width_}, table.options());
    table_ = table;
    Tensor centre_rows = table.narrow(0, centre_ * symbols_, symbols_);
    combined_ = (action_table.unsqueeze(1) + centre_rows.unsqueeze(0)).flatten(0, 1);
    action_rows_ = action_table.size(0);
    w_reads_controller_ = value_or_undefined(w_reads);
    has_reads_base_ = w_reads_base.has_value();
    w_reads_ = has_reads_base_ ? w_reads_controller_ + *w_reads_base : w_reads_controller_;
    w_h_ = value_or_undefined(w_h);
    heads_w_ = heads_w;
    heads_b_ = heads_b;
    logit_columns_ = 3 * decisions_;
    heads_w_logits_t_ = heads_w.narrow(1, 0, logit_columns_).t().contiguous();
    heads_w_memory_t_ = heads_w.narrow(1, logit_columns_, heads_w.size(1) - logit_columns_).t().contiguous();
    if (w_h_.defined()) w_h_t_ = w_h_.t().contiguous();
    if (w_reads_controller_.defined()) w_reads_controller_t_ = w_reads_controller_.t().contiguous();
    z_split_ = {3 * units_, combined_.size(1) - 3 * units_};
    head_split_ = {logit_columns_, width_ + (direct_ ? 3 : 0), width_};
    h_ = value_or_undefined(h0);
    c_ = value_or_undefined(c0);
    hs_.push_back(h_);
    cs_.push_back(c_);
  }

  Tensor forward_step(const Tensor& table_index, const Maybe& extra_index, const Tensor& mask, const Tensor& live,
                      const Tensor& symbol, const Maybe& write_row, const Maybe& read_rows) {
    Tensor z = combined_.index_select(0, table_index);
    if (extra_index) z += table_.index_select(0, *extra_index).view({size_, -1, z.size(1)}).sum(1);
    Tensor window;
    std::vector<Tensor> cells;
    if (memory_) {
      Tensor reads = tape_.index_select(0, *read_rows);
      window = reads.view({size_, -1});
      if (reads_ > window_cells_) window = window.narrow(1, 0, window_cells_ * width_);
      z.addmm_(window, w_reads_);
      reads_list_.push_back(window);
      cells = reads.view({size_, reads_, width_}).unbind(1);
    }
    Tensor sig, candidate, tg, tc, output;
    std::vector<Tensor> gates_ifo;
    if (units_) {
      z.addmm_(h_, w_h_);
      std::vector<Tensor> parts = z.split_with_sizes(z_split_, 1);
      sig = parts[0].sigmoid();
      tg = parts[1].tanh();
      gates_ifo = sig.chunk(3, 1);
      candidate = controller_units_ ? tg : tg.narrow(1, 0, units_);
      Tensor c = at::addcmul(gates_ifo[1] * c_, gates_ifo[0], candidate);
      tc = c.tanh();
      Tensor h = gates_ifo[2] * tc;
      h_ = h;
      c_ = c;
      hs_.push_back(h);
      cs_.push_back(c);
      if (controller_units_) {
        output = units_ > controller_units_ ? h.narrow(1, 0, controller_units_) : h;
      } else {
        output = tg.narrow(1, units_, tg.size(1) - units_);
        outputs_.push_back(output);
      }
    } else {
      tg = output = z.tanh_();
      outputs_.push_back(output);
    }
    Tensor heads = at::addmm(heads_b_, output, heads_w_);
    Tensor logit_part = heads, gate_part, value_part;
    if (memory_) {
      std::vector<Tensor> parts = heads.split_with_sizes(head_split_, 1);
      logit_part = parts[0];
      gate_part = parts[1];
      value_part = parts[2];
    }
    Tensor logits = logit_part.view({size_, decisions_, 3}) + mask;
    Tensor probs = (logits - logits.amax({-1}, true)).exp_();
    probs /= probs.sum({-1}, true);
    logits_.push_back(logits);
    Tensor gates, value;
    if (memory_) {
      gates = gate_part.sigmoid();
      value = value_part.tanh();
      const Tensor& old = cells[centre_];
      Tensor written;
      if (direct_) {
        std::vector<Tensor> g = gates.split_with_sizes({width_, 1, 1, 1}, 1);
        written = at::addcmul(value, g[0], old);
        written.scatter_add_(1, symbol, g[1]);
        written.addcmul_(g[2], cells[window_cells_]);
        written.addcmul_(g[3], cells[window_cells_ + 1]);
      } else {
        written = at::addcmul(value, gates, old);
      }
      Tensor cell = at::where(live, written, old);
      tape_.index_copy_(0, *write_row, cell);
      if (direct_) written_.push_back(cell);
    }
    if (grad_) {
      // A detached alias of probs: the step's output itself would tie this object to its own
      // autograd node (see fused.py).
      saved_.push_back(Saved{table_index, value_or_undefined(extra_index), live, symbol, value_or_undefined(write_row),
                             value_or_undefined(read_rows), window, cells, sig, gates_ifo, candidate, tg, tc, gates,
                             value, probs.detach(), output});
    }
    return probs;
  }

  std::tuple<Maybe, Maybe, Maybe, Maybe, Maybe> stacked() const {
    Tensor logits = at::stack(logits_, 1);
    Tensor outputs, baseline;
    if (units_) {
      Tensor states = at::stack(std::vector<Tensor>(hs_.begin() + 1, hs_.end()), 1);
      if (controller_units_) {
        outputs = units_ > controller_units_ ? states.narrow(2, 0, controller_units_).contiguous() : states;
      }
      if (units_ > controller_units_) {
        baseline = controller_units_ ? states.narrow(2, controller_units_, units_ - controller_units_).contiguous()
                                     : states;
      }
    }
    if (!controller_units_) outputs = at::stack(outputs_, 1);
    Tensor written = written_.empty() ? Tensor() : at::stack(written_, 1);
    Tensor windows = want_windows_ && memory_ ? at::stack(reads_list_, 1) : Tensor();
    return {maybe(logits), maybe(outputs), maybe(baseline), maybe(written), maybe(windows)};
  }

  // -- backward --------------------------------------------------------------------------

  void begin_backward(const std::vector<Maybe>& grads) {
    TORCH_CHECK(grads.size() == 5, "begin_backward takes the gradients of the 5 outputs of stacked()");
    Tensor grad_logits = value_or_undefined(grads[0]);
    const Tensor grad_outputs = value_or_undefined(grads[1]);
    const Tensor grad_baseline = value_or_undefined(grads[2]);
    const Tensor grad_written = value_or_undefined(grads[3]);
    const Tensor grad_windows = value_or_undefined(grads[4]);
    const int64_t steps = static_cast<int64_t>(logits_.size());
    Tensor through;
    if (grad_logits.defined()) {
      grad_logits = grad_logits.reshape({size_, steps, logit_columns_});
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
    external_.assign(steps, {});
    const std::array<Tensor, 4> whole{to_h, to_output, grad_written, grad_windows};
    for (size_t k = 0; k < whole.size(); ++k) {
      if (!whole[k].defined()) continue;
      std::vector<Tensor> per_step = whole[k].unbind(1);
      for (int64_t t = 0; t < steps; ++t) external_[t][k] = per_step[t];
    }
    grad_logits_ = grad_logits;
    begin_pass();
  }

  Tensor backward_step(int64_t t, const Maybe& grad_token_in, const Maybe& grad_probs) {
    const Saved& s = saved_.at(t);
    Tensor grad_token = grad_token_in ? *grad_token_in : at::zeros({token_size_}, at::TensorOptions().dtype(dtype_));
    if (!grad_token_.defined() || grad_token.unsafeGetTensorImpl() != grad_token_.unsafeGetTensorImpl()) {
      // Views of the state's gradient: h, c, the controller's part of h, the tape.
      grad_token_ = grad_token;
      dh_ = grad_token.narrow(0, 0, size_ * units_).view({size_, units_});
      dc_ = grad_token.narrow(0, size_ * units_, size_ * units_).view({size_, units_});
      dh_controller_ = dh_.narrow(1, 0, controller_units_);
      if (memory_) tape_grad_ = grad_token.narrow(0, 2 * size_ * units_, token_size_ - 2 * size_ * units_).view({-1, width_});
    }
    if (!pass_open_) begin_pass();  // a backward pass that does not go through the finish node
    const std::array<Tensor, 4> none{};
    const std::array<Tensor, 4>& external = external_.empty() ? none : external_.at(t);
    const Tensor &to_h = external[0], &written = external[2], &grad_window = external[3];

    Tensor doutput = external[1];
    if (grad_probs) {
      Tensor dlogits = at::_softmax_backward_data(*grad_probs, s.probs, -1, s.probs.scalar_type()).view({size_, -1});
      heads_w_logits_grad_.addmm_(s.output.t(), dlogits);
      heads_b_logits_grad_ += dlogits.sum(0);
      doutput = add_or_take(doutput, dlogits.mm(heads_w_logits_t_));
    }
    Tensor dold, dneighbours;
    if (memory_) {
      // The write: the written cell's gradient goes to the new value in live rows (the old
      // content did not survive), and stays with the old content in the others.
      Tensor after = tape_grad_.index_select(0, s.write_row);
      Tensor dnew = at::where(s.live, written.defined() ? after + written : after, 0.0);
      tape_grad_.index_copy_(0, s.write_row, at::where(s.live, 0.0, after));
      const Tensor& old = s.cells[centre_];
      Tensor keep, dgates;
      if (direct_) {
        keep = s.gates.narrow(1, 0, width_);
        dgates = at::cat({dnew * old, dnew.gather(1, s.symbol), (dnew * s.cells[window_cells_]).sum(1, true),
                          (dnew * s.cells[window_cells_ + 1]).sum(1, true)},
                         1);
        dneighbours = at::stack({s.gates.narrow(1, width_ + 1, 1) * dnew, s.gates.narrow(1, width_ + 2, 1) * dnew}, 1);
      } else {
        keep = s.gates;
        dgates = dnew * old;
      }
      dold = dnew * keep;
      if (written.defined()) dold += at::where(s.live, 0.0, written);
      Tensor dmemory = at::cat({at::sigmoid_backward(dgates, s.gates), at::tanh_backward(dnew, s.value)}, 1);
      heads_w_memory_grad_.addmm_(s.output.t(), dmemory);
      heads_b_memory_grad_ += dmemory.sum(0);
      doutput = add_or_take(doutput, dmemory.mm(heads_w_memory_t_));
    }
    Tensor dz;
    if (units_) {
      if (to_h.defined()) dh_ += to_h;
      if (controller_units_ && doutput.defined()) dh_controller_ += doutput;
      dc_ += at::tanh_backward(dh_ * s.gates_ifo[2], s.tc);
      Tensor dsig = at::cat({dc_ * s.candidate, dc_ * cs_[t], dh_ * s.tc}, 1);
      Tensor dtanh = dc_ * s.gates_ifo[0];
      if (!controller_units_) {
        dtanh = at::cat({dtanh, doutput.defined() ? doutput : dtanh.new_zeros({size_, s.tg.size(1) - units_})}, 1);
      }
      dz = at::cat({at::sigmoid_backward(dsig, s.sig), at::tanh_backward(dtanh, s.tg)}, 1);
      dc_.mul_(s.gates_ifo[1]);
      w_h_grad_.addmm_(hs_[t].t(), dz);
      at::mm_out(dh_, dz, w_h_t_);
    } else {
      dz = doutput.defined() ? at::tanh_backward(doutput, s.tg) : at::zeros_like(s.tg);
    }
    combined_grad_.index_add_(0, s.table_index, dz);
    if (s.extra_index.defined()) {
      const int64_t others = window_cells_ - 1;
      table_grad_.index_add_(0, s.extra_index, dz.unsqueeze(1).expand({-1, others, -1}).reshape({-1, dz.size(1)}));
    }
    if (memory_) {
      w_reads_grad_.addmm_(s.window.t(), dz);
      // The reads: their gradient adds into the cells read (a cell read twice gets both).
      Tensor dreads = dz.mm(w_reads_controller_t_);
      if (grad_window.defined()) dreads += grad_window;
      dreads = dreads.view({size_, window_cells_, width_});
      dreads.select(1, centre_).add_(dold);
      if (direct_) dreads = at::cat({dreads, dneighbours}, 1);
      tape_grad_.index_add_(0, s.read_rows, dreads.view({-1, width_}));
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
    Tensor combined = combined_grad_.view({action_rows_, symbols_, -1});
    Tensor dtable = table_grad_.defined() ? table_grad_ : at::zeros_like(table_);
    dtable.narrow(0, centre_ * symbols_, symbols_).add_(combined.sum(0));
    grads[2] = dtable;
    grads[3] = combined.sum(1);
    if (memory_) {
      grads[4] = w_reads_grad_;
      if (has_reads_base_) grads[5] = w_reads_grad_.clone();
    }
    if (units_) grads[6] = w_h_grad_;
    grads[7] = heads_w_grad_;
    grads[8] = heads_b_grad_;
    if (grad_logits_.defined()) {
      // The logits' part of the heads' gradient, over all steps at once.
      const size_t steps = saved_.size();
      Tensor outputs = controller_units_
                           ? at::stack(std::vector<Tensor>(hs_.begin() + 1, hs_.begin() + 1 + steps), 1)
                                 .narrow(2, 0, controller_units_)
                           : at::stack(outputs_, 1);
      heads_w_grad_.narrow(1, 0, logit_columns_).add_(outputs.flatten(0, 1).t().mm(grad_logits_.flatten(0, 1)));
      heads_b_grad_.narrow(0, 0, logit_columns_).add_(grad_logits_.sum({0, 1}));
    }
    pass_open_ = false;
    external_.clear();
    grad_logits_ = Tensor();
    grad_token_ = Tensor();
    return grads;
  }

 private:
  // Zero the weight gradients the steps' backward accumulates into.
  void begin_pass() {
    heads_w_grad_ = at::zeros_like(heads_w_);
    heads_b_grad_ = at::zeros_like(heads_b_);
    heads_w_logits_grad_ = heads_w_grad_.narrow(1, 0, logit_columns_);
    heads_w_memory_grad_ = heads_w_grad_.narrow(1, logit_columns_, heads_w_grad_.size(1) - logit_columns_);
    heads_b_logits_grad_ = heads_b_grad_.narrow(0, 0, logit_columns_);
    heads_b_memory_grad_ = heads_b_grad_.narrow(0, logit_columns_, heads_b_grad_.size(0) - logit_columns_);
    combined_grad_ = at::zeros_like(combined_);
    table_grad_ = window_cells_ > 1 ? at::zeros_like(table_) : Tensor();
    w_reads_grad_ = memory_ ? at::zeros_like(w_reads_) : Tensor();
    w_h_grad_ = units_ ? at::zeros_like(w_h_) : Tensor();
    pass_open_ = true;
  }

  // Sizes and switches (see fused.Episode).
  int64_t size_, units_, controller_units_, decisions_, window_cells_, centre_;
  bool memory_;
  int64_t cells_, width_;
  bool direct_;
  int64_t reads_;
  bool grad_, want_windows_;
  int64_t symbols_, token_size_;
  at::ScalarType dtype_ = at::kFloat;

  // Weights and what is derived from them once per episode.
  Tensor table_, combined_, w_reads_controller_, w_reads_, w_h_, heads_w_, heads_b_;
  Tensor heads_w_logits_t_, heads_w_memory_t_, w_h_t_, w_reads_controller_t_;
  int64_t action_rows_ = 0, logit_columns_ = 0;
  bool has_reads_base_ = false;
  std::vector<int64_t> z_split_, head_split_;

  // The loop's state and every step's values.
  Tensor tape_, h_, c_;
  std::vector<Tensor> logits_, hs_, cs_, outputs_, written_, reads_list_;
  std::vector<Saved> saved_;

  // One backward pass.
  std::vector<std::array<Tensor, 4>> external_;
  Tensor grad_token_, dh_, dc_, dh_controller_, tape_grad_, grad_logits_;
  bool pass_open_ = false;
  Tensor heads_w_grad_, heads_b_grad_, heads_w_logits_grad_, heads_w_memory_grad_, heads_b_logits_grad_,
      heads_b_memory_grad_, combined_grad_, table_grad_, w_reads_grad_, w_h_grad_;
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  py::class_<Episode>(m, "Episode")
      .def(py::init<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool, bool, bool, int64_t>(),
           py::kw_only(), py::arg("size"), py::arg("units"), py::arg("controller_units"), py::arg("decisions"),
           py::arg("window"), py::arg("memory_cells"), py::arg("width"), py::arg("direct"), py::arg("grad"),
           py::arg("want_windows"), py::arg("symbols"))
      .def("token", &Episode::token)
      .def("last_logits", &Episode::last_logits)
      .def("begin", &Episode::begin)
      .def("forward_step", &Episode::forward_step)
      .def("stacked", &Episode::stacked)
      .def("begin_backward", &Episode::begin_backward)
      .def("backward_step", &Episode::backward_step)
      .def("backward_start", &Episode::backward_start);
}
