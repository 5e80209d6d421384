// torch_zipml._fpga: the accelerator's host driver and performance model for Python (the
// estimators' device="fpga-sim" backend is torch_zipml/fpga.py).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "../model/perf_model.h"
#include "driver.h"

namespace py = pybind11;
using namespace zipml::fpga;

namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

template <class T>
py::array_t<T> to_array(const std::vector<T>& v) {
  py::array_t<T> a(static_cast<py::ssize_t>(v.size()));
  if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(T));
  return a;
}

Loss parse_loss(const std::string& name) {
  if (name == "least_squares") return Loss::LeastSquares;
  if (name == "lssvm") return Loss::LSSVM;
  if (name == "logistic") return Loss::Logistic;
  if (name == "squared_hinge" || name == "l2svm") return Loss::L2SVM;
  throw std::invalid_argument(
      "loss must be one of least_squares, lssvm, logistic, squared_hinge (the accelerator's "
      "losses), got '" +
      name + "'");
}

Platform platform_by_name(const std::string& name) {
  std::string known;
  for (const Platform& p : platforms()) {
    if (p.name == name) return p;
    known += (known.empty() ? "" : ", ") + p.name;
  }
  throw std::invalid_argument("platform must be one of " + known + ", got '" + name + "'");
}

py::dict platform_dict(const Platform& p) {
  py::dict d;
  d["name"] = p.name;
  d["clock_hz"] = p.clock_hz;
  d["bandwidth"] = p.bandwidth;
  d["bytes_per_cycle"] = p.bytes_per_cycle();
  d["source"] = p.source;
  return d;
}

py::dict design_dict(const DesignInfo& i) {
  py::dict d;
  d["bits"] = i.bits;
  d["lanes"] = i.lanes;
  d["beats"] = i.beats;
  d["per_line"] = i.per_line;
  d["label_slots"] = i.label_slots;
  d["latency"] = i.latency;
  d["max_features"] = i.max_features;
  return d;
}

py::dict stats_dict(const KernelStats& s) {
  py::dict d;
  d["cycles"] = s.cycles;
  d["lines_read"] = s.lines_read;
  d["epoch_end"] = s.epoch_end;
  d["dot_wait_data"] = s.dot_wait_data;
  d["dot_wait_sync"] = s.dot_wait_sync;
  d["dot_wait_fifo"] = s.dot_wait_fifo;
  d["dot_wait_credit"] = s.dot_wait_credit;
  d["dot_wait_writeout"] = s.dot_wait_writeout;
  d["update_wait_scalar"] = s.update_wait_scalar;
  d["in_fifo_peak"] = s.in_fifo_peak;
  d["row_fifo_peak"] = s.row_fifo_peak;
  d["scalar_fifo_peak"] = s.scalar_fifo_peak;
  return d;
}

int as_int(const py::handle& v, const std::string& key) {
  if (!py::isinstance<py::int_>(v) || py::isinstance<py::bool_>(v))
    throw std::invalid_argument(key + " must be an integer");
  return v.cast<int>();
}

TrainOptions train_options(const py::dict& kw) {
  TrainOptions o;
  for (auto item : kw) {
    const std::string key = py::str(item.first);
    const py::handle v = item.second;
    if (key == "bits")
      o.bits = as_int(v, key);
    else if (key == "lanes")
      o.lanes = as_int(v, key);
    else if (key == "sampling") {
      const std::string name = v.cast<std::string>();
      if (name == "double")
        o.sampling = Sampling::Double;
      else if (name == "naive")
        o.sampling = Sampling::Naive;
      else if (name == "nearest")
        o.sampling = Sampling::Nearest;
      else
        throw std::invalid_argument("sampling must be one of double, naive, nearest for the b-bit designs, got '" +
                                    name + "'");
    } else if (key == "loss")
      o.loss = parse_loss(v.cast<std::string>());
    else if (key == "epochs")
      o.epochs = as_int(v, key);
    else if (key == "batch_log2")
      o.batch_log2 = as_int(v, key);
    else if (key == "step_shift")
      o.step_shift = as_int(v, key);
    else if (key == "decay_every")
      o.decay_every = as_int(v, key);
    else if (key == "l2_shift")
      o.l2_shift = as_int(v, key);
    else if (key == "fit_intercept")
      o.fit_intercept = v.cast<bool>();
    else if (key == "copies")
      o.copies = as_int(v, key);
    else if (key == "seed")
      o.seed = v.cast<uint64_t>();
    else if (key == "bytes_per_cycle")
      o.bytes_per_cycle = v.cast<double>();
    else if (key == "max_layout_bytes")
      o.max_layout_bytes = v.cast<int64_t>();
    else
      throw std::invalid_argument(
          "unknown option '" + key +
          "'; options: bits, sampling, lanes, loss, epochs, batch_log2, step_shift, "
          "decay_every, l2_shift, fit_intercept, copies, seed, bytes_per_cycle, max_layout_bytes");
  }
  return o;
}

std::pair<int64_t, int64_t> matrix_shape(const FloatArray& x, const char* name) {
  if (x.ndim() != 2) throw std::invalid_argument(std::string(name) + " must be a 2-D array (rows x features)");
  return {x.shape(0), x.shape(1)};
}

}  // namespace

PYBIND11_MODULE(_fpga, mod) {
  mod.doc() = "ZipML's FPGA accelerator: C simulation of the HLS kernel, host driver, performance model";
  py::register_exception<SimulationError>(mod, "SimulationError", PyExc_RuntimeError);

  mod.def(
      "train",
      [](const FloatArray& u, const FloatArray& y, const py::dict& options) {
        const auto [rows, cols] = matrix_shape(u, "u");
        if (y.ndim() != 1 || y.shape(0) != rows) throw std::invalid_argument("y must hold one label per row of u");
        const TrainOptions o = train_options(options);
        TrainResult r;
        {
          py::gil_scoped_release release;
          r = train(u.data(), y.data(), rows, cols, o);
        }
        py::dict d;
        py::array_t<double> models({static_cast<py::ssize_t>(o.epochs), static_cast<py::ssize_t>(cols + 1)});
        if (!r.models.empty()) std::memcpy(models.mutable_data(), r.models.data(), r.models.size() * sizeof(double));
        d["models"] = models;
        d["label_offset"] = r.label_offset;
        d["label_scale"] = r.label_scale;
        d["epoch_cycles"] = to_array(r.epoch_cycles);
        d["cycles"] = r.cycles;
        d["calls"] = r.calls;
        d["bytes_per_copy"] = r.bytes_per_copy;
        d["stats"] = stats_dict(r.stats);
        return d;
      },
      py::arg("u"), py::arg("y"), py::arg("options"),
      "Trains on scaled features u (rows x cols in [-1, 1]) and labels y in the kernel's C simulation; returns the "
      "model after every epoch (weights then intercept, label units) and the clocks");

  mod.def(
      "quantize_codes",
      [](const FloatArray& u, int bits, int copies, uint64_t seed, int64_t first_realisation,
         const std::string& sampling) {
        const auto [rows, cols] = matrix_shape(u, "u");
        std::vector<uint8_t> codes[2];
        const Sampling mode =
            sampling == "double"  ? Sampling::Double
            : sampling == "naive" ? Sampling::Naive
            : sampling == "nearest"
                ? Sampling::Nearest
                : throw std::invalid_argument("sampling must be one of double, naive, nearest, got '" + sampling + "'");
        quantize_codes(u.data(), rows, cols, bits, copies, seed, first_realisation, mode, codes);
        py::tuple out(2);
        for (int s = 0; s < 2; ++s) {
          py::array_t<uint8_t> a(
              {static_cast<py::ssize_t>(copies), static_cast<py::ssize_t>(rows), static_cast<py::ssize_t>(cols)});
          std::memcpy(a.mutable_data(), codes[s].data(), codes[s].size());
          out[s] = a;
        }
        return out;
      },
      py::arg("u"), py::arg("bits"), py::arg("copies") = 1, py::arg("seed") = 0, py::arg("first_realisation") = 0,
      py::arg("sampling") = "double",
      "the codes of sample 0 and sample 1 (copies x rows x cols) the accelerator's data hold");

  mod.def("lines_per_row", &lines_per_row, py::arg("bits"), py::arg("cols"));
  mod.def("designs", [] {
    py::list out;
    for (const DesignInfo& i : designs()) out.append(design_dict(i));
    return out;
  });
  mod.def(
      "design", [](int bits, int lanes) { return design_dict(design_info(bits, lanes)); }, py::arg("bits"),
      py::arg("lanes") = 0, "the compiled design of `bits` (lanes 0: its default)");
  mod.def("platforms", [] {
    py::list out;
    for (const Platform& p : platforms()) out.append(platform_dict(p));
    return out;
  });
  mod.def(
      "platform", [](const std::string& name) { return platform_dict(platform_by_name(name)); }, py::arg("name"));

  mod.def(
      "predict",
      [](int bits, int64_t rows, int64_t cols, int64_t batch, int64_t epochs, int lanes, py::object platform,
         py::object bytes_per_cycle) {
        const ModelDesign d = model_design(bits, lanes);
        const Workload w{rows, cols, batch, epochs};
        Prediction p;
        double clock = 0.0;
        if (!platform.is_none()) {
          const Platform pl = platform_by_name(platform.cast<std::string>());
          clock = pl.clock_hz;
          p = predict(d, w, pl);
        } else {
          p = predict(d, w, bytes_per_cycle.is_none() ? 0.0 : bytes_per_cycle.cast<double>());
        }
        py::dict out;
        out["lines_per_row"] = p.lines_per_row;
        out["groups_per_row"] = p.groups_per_row;
        out["bytes_per_epoch"] = p.bytes_per_epoch;
        out["compute_cycles"] = p.compute_cycles;
        out["memory_cycles"] = p.memory_cycles;
        out["cycles"] = p.cycles;
        out["epoch_cycles"] = p.epoch_cycles;
        out["memory_bound"] = p.memory_bound;
        if (clock > 0) {
          out["epoch_seconds"] = p.epoch_seconds;
          out["samples_per_second"] = p.samples_per_second;
        }
        return out;
      },
      py::arg("bits"), py::arg("rows"), py::arg("cols"), py::arg("batch") = 16, py::arg("epochs") = 1,
      py::arg("lanes") = 0, py::arg("platform") = py::none(), py::arg("bytes_per_cycle") = py::none(),
      "modeled clocks of a kernel call (and seconds on a named platform)");
}
