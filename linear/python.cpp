// torch_zipml._linear: the pybind11 bindings of the linear solvers (the Python package
// torch_zipml.linear builds the estimators on them).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "dataset.h"
#include "kernels.h"
#include "levels.h"
#include "losses.h"
#include "solver.h"
#include "store.h"
#include "team.h"

namespace py = pybind11;
using namespace zipml::linear;

namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

template <class T>
py::array_t<T> to_array(const std::vector<T>& v) {
  py::array_t<T> a(static_cast<py::ssize_t>(v.size()));
  if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(T));
  return a;
}

template <class T, class A>
py::array_t<T> to_matrix(const std::vector<T, A>& v, int64_t rows, int64_t cols) {
  py::array_t<T> a({static_cast<py::ssize_t>(rows), static_cast<py::ssize_t>(cols)});
  if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(T));
  return a;
}

py::tuple dataset_tuple(const Dataset& d) { return py::make_tuple(to_matrix(d.x, d.rows, d.cols), to_array(d.y)); }

// X (rows x cols) and y (rows), checked for shape.
std::pair<int64_t, int64_t> matrix_shape(const FloatArray& x, const char* name = "X") {
  if (x.ndim() != 2)
    throw InputError(std::string(name) + " must be a 2-D array (samples x features), got " + std::to_string(x.ndim()) +
                     " dimension(s)");
  return {x.shape(0), x.shape(1)};
}

void check_labels(const FloatArray& y, int64_t rows) {
  if (y.ndim() != 1)
    throw InputError("y must be a 1-D array of labels, got " + std::to_string(y.ndim()) + " dimensions");
  if (y.shape(0) != rows)
    throw InputError("y has " + std::to_string(y.shape(0)) + " labels but X has " + std::to_string(rows) + " rows");
}

Options options_from(const py::dict& kw) {
  Options o;
  for (auto item : kw) {
    const std::string key = py::str(item.first);
    const py::handle v = item.second;
    auto as_int = [&] { return v.is_none() ? 0 : v.cast<int64_t>(); };
    if (key == "loss")
      o.loss = parse_loss(v.cast<std::string>());
    else if (key == "sampling")
      o.sampling = parse_sampling(v.cast<std::string>());
    else if (key == "bits")
      o.bits = static_cast<int>(as_int());
    else if (key == "levels") {
      const std::string l = v.cast<std::string>();
      if (l != "uniform" && l != "optimal") throw InputError("levels must be 'uniform' or 'optimal', got '" + l + "'");
      o.optimal_levels = l == "optimal";
    } else if (key == "candidates")
      o.candidates = as_int();
    else if (key == "model_bits")
      o.model_bits = static_cast<int>(as_int());
    else if (key == "grad_bits")
      o.grad_bits = static_cast<int>(as_int());
    else if (key == "epochs")
      o.epochs = static_cast<int>(as_int());
    else if (key == "batch_size")
      o.batch_size = as_int();
    else if (key == "step_size")
      o.step_size = v.cast<double>();
    else if (key == "schedule")
      o.schedule = parse_schedule(v.cast<std::string>());
    else if (key == "decay")
      o.decay = v.cast<double>();
    else if (key == "l2")
      o.l2 = v.cast<double>();
    else if (key == "copies")
      o.copies = static_cast<int>(as_int());
    else if (key == "seed") {
      const py::int_ s = py::reinterpret_borrow<py::int_>(v);
      if (py::int_(0) > s || s > py::int_(py::reinterpret_steal<py::object>(PyLong_FromUnsignedLongLong(~0ull))))
        throw InputError("seed must be an integer in [0, 2**64)");
      o.seed = v.cast<uint64_t>();
    } else if (key == "threads")
      o.threads = static_cast<int>(as_int());
    else if (key == "engine")
      o.engine = parse_engine(v.cast<std::string>());
    else if (key == "scale")
      o.scale = v.cast<bool>();
    else if (key == "fit_intercept")
      o.fit_intercept = v.cast<bool>();
    else if (key == "degree")
      o.degree = static_cast<int>(as_int());
    else if (key == "chebyshev_range")
      o.chebyshev_range = v.cast<double>();
    else if (key == "record_loss")
      o.record_loss = v.cast<bool>();
    else if (key == "average")
      o.average_from = v.is_none() ? -1.0 : v.cast<double>();
    else
      throw InputError("unknown option '" + key + "'");
  }
  return o;
}

py::dict result_dict(const Result& r) {
  py::dict d;
  d["w"] = to_array(r.w);
  d["w0"] = r.w0;
  d["coef"] = to_array(r.coef);
  d["intercept"] = r.intercept;
  d["scale_mid"] = to_array(r.scaling.mid);
  d["scale_factor"] = to_array(r.scaling.factor);
  d["loss_history"] = to_array(r.loss_history);
  d["epoch_seconds"] = to_array(r.epoch_seconds);
  d["bytes_read"] = to_array(r.bytes_read);
  d["refetch_fraction"] = to_array(r.refetch_fraction);
  d["engine"] = r.engine;
  d["isa"] = r.isa;
  d["samples"] = r.samples;
  d["store_bytes"] = r.store_bytes;
  d["chebyshev_error"] = r.chebyshev_error;
  return d;
}

// A store built directly from scaled data (tests, studies of the store itself).
SampleStore build_store(const FloatArray& u, int bits, int samples, int copies, const std::string& levels, bool nearest,
                        uint64_t seed, int64_t candidates, int threads, const std::vector<int64_t>& panel_starts) {
  const auto [rows, cols] = matrix_shape(u, "u");
  if (rows == 0 || cols == 0) throw InputError("u is empty");
  const float* p = u.data();
  for (int64_t i = 0; i < rows * cols; ++i)
    if (!(p[i] >= -1.0f && p[i] <= 1.0f)) throw InputError("u must lie in [-1, 1]");
  if (levels != "uniform" && levels != "optimal")
    throw InputError("levels must be 'uniform' or 'optimal', got '" + levels + "'");
  FeatureLevels lv = levels == "optimal" ? FeatureLevels::make_optimal(p, rows, cols, bits, candidates)
                                         : FeatureLevels::make_uniform(bits);
  return SampleStore::build(p, rows, cols, std::move(lv), samples, copies, nearest, seed,
                            threads == 0 ? hardware_threads() : threads, panel_starts);
}

// The kernel entry points below index features from the start of a row's planes: one panel.
void check_one_panel(const SampleStore& s) {
  if (s.panels() != 1)
    throw InputError("the kernel entry points take a store of one panel, got " + std::to_string(s.panels()));
}

py::array_t<uint8_t> store_codes(const SampleStore& s, int copy, int sample) {
  if (copy < 0 || copy >= s.copies() || sample < 0 || sample >= s.samples())
    throw InputError("copy or sample out of range");
  py::array_t<uint8_t> a({static_cast<py::ssize_t>(s.rows()), static_cast<py::ssize_t>(s.cols())});
  for (int64_t r = 0; r < s.rows(); ++r) s.decode_codes(copy, r, sample, 0, s.cols(), a.mutable_data(r, 0));
  return a;
}

py::array_t<float> store_levels(const SampleStore& s) {
  const FeatureLevels& lv = s.levels();
  py::array_t<float> a({static_cast<py::ssize_t>(s.cols()), static_cast<py::ssize_t>(lv.count)});
  for (int64_t c = 0; c < s.cols(); ++c)
    for (int i = 0; i < lv.count; ++i) *a.mutable_data(c, i) = lv.of(c).at(i);
  return a;
}

// Runs f with the named kernel variant active, restoring the previous one.
template <class F>
auto with_isa(const std::string& isa, F&& f) {
  const std::string before = active_kernels().name;
  set_isa(isa);
  try {
    auto r = f(active_kernels());
    set_isa(before);
    return r;
  } catch (...) {
    set_isa(before);
    throw;
  }
}

}  // namespace

PYBIND11_MODULE(_linear, mod) {
  mod.doc() = "ZipML low-precision linear solvers (arXiv 1611.05402): the C++ library behind torch_zipml.linear";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const FileError& e) {
      PyErr_SetString(PyExc_OSError, e.what());
    }
  });

  mod.def(
      "read_libsvm",
      [](const std::string& path, int64_t n_features) { return dataset_tuple(read_libsvm(path, n_features)); },
      py::arg("path"), py::arg("n_features") = 0, "(X, y) from a LIBSVM text file");
  mod.def(
      "read_csv",
      [](const std::string& path, int64_t label_column, const std::string& delimiter) {
        if (delimiter.size() != 1) throw InputError("delimiter must be one character, got '" + delimiter + "'");
        return dataset_tuple(read_csv(path, label_column, delimiter[0]));
      },
      py::arg("path"), py::arg("label_column") = -1, py::arg("delimiter") = ",", "(X, y) from a CSV file");

  py::class_<Trainer>(mod, "Trainer")
      .def(py::init([](const FloatArray& x, const FloatArray& y, const py::dict& kw) {
             const auto [rows, cols] = matrix_shape(x);
             check_labels(y, rows);
             const Options o = options_from(kw);
             py::gil_scoped_release release;
             return std::make_unique<Trainer>(x.data(), y.data(), rows, cols, o);
           }),
           py::arg("X"), py::arg("y"), py::arg("options"))
      .def("fit",
           [](Trainer& t) {
             Result r;
             {
               py::gil_scoped_release release;
               r = t.fit();
             }
             return result_dict(r);
           })
      .def(
          "gradient",
          [](Trainer& t, const FloatArray& w, double w0, int64_t r0, int64_t r1, int copy, uint64_t step) {
            const std::vector<float> wv(w.data(), w.data() + w.size());
            std::pair<std::vector<double>, double> g;
            {
              py::gil_scoped_release release;
              g = t.gradient(wv, w0, r0, r1, copy, step);
            }
            return py::make_tuple(to_array(g.first), g.second);
          },
          py::arg("w"), py::arg("w0"), py::arg("r0"), py::arg("r1"), py::arg("copy") = 0, py::arg("step") = 0)
      .def(
          "objective",
          [](const Trainer& t, const FloatArray& w, double w0) {
            return t.objective(std::vector<float>(w.data(), w.data() + w.size()), w0);
          },
          py::arg("w"), py::arg("w0"))
      .def_property_readonly(
          "scaled", [](const Trainer& t) { return to_matrix(t.scaled(), t.labels().size(), t.scaling().cols()); })
      .def_property_readonly("labels", [](const Trainer& t) { return to_array(t.labels()); })
      .def_property_readonly("order", [](const Trainer& t) { return to_array(t.order()); })
      .def_property_readonly("engine",
                             [](const Trainer& t) { return t.engine() == Engine::Integer ? "integer" : "float"; })
      .def_property_readonly(
          "store", [](const Trainer& t) { return t.store(); }, py::return_value_policy::reference_internal)
      .def_property_readonly("chebyshev", [](const Trainer& t) -> py::object {
        const Chebyshev* c = t.chebyshev();
        if (!c) return py::none();
        py::dict d;
        d["degree"] = c->degree;
        d["range"] = c->range;
        d["coef"] = c->coef;
        d["max_error"] = c->max_error;
        return d;
      });

  py::class_<SampleStore>(mod, "SampleStore")
      .def_static("build", &build_store, py::arg("u"), py::arg("bits"), py::arg("samples") = 2, py::arg("copies") = 1,
                  py::arg("levels") = "uniform", py::arg("nearest") = false, py::arg("seed") = 0,
                  py::arg("candidates") = 1024, py::arg("threads") = 1, py::arg("panel_starts") = std::vector<int64_t>{})
      .def_property_readonly("rows", &SampleStore::rows)
      .def_property_readonly("cols", &SampleStore::cols)
      .def_property_readonly("bits", &SampleStore::bits)
      .def_property_readonly("index_bits", &SampleStore::index_bits)
      .def_property_readonly("samples", &SampleStore::samples)
      .def_property_readonly("copies", &SampleStore::copies)
      .def_property_readonly("index_bytes", &SampleStore::index_bytes)
      .def_property_readonly("plane_bytes", &SampleStore::plane_bytes)
      .def_property_readonly("record_bytes", &SampleStore::record_bytes)
      .def_property_readonly("bytes_per_copy", &SampleStore::bytes_per_copy)
      .def_property_readonly("panels", &SampleStore::panels)
      .def("codes", &store_codes, py::arg("copy") = 0, py::arg("sample") = 0, "codes of one sample (rows x cols)")
      .def(
          "intervals",
          [](const SampleStore& s, int copy) {
            py::array_t<uint8_t> a({static_cast<py::ssize_t>(s.rows()), static_cast<py::ssize_t>(s.cols())});
            for (int64_t r = 0; r < s.rows(); ++r)
              for (int64_t c = 0; c < s.cols(); ++c)
                *a.mutable_data(r, c) = static_cast<uint8_t>(s.interval(copy, r, c));
            return a;
          },
          py::arg("copy") = 0)
      .def(
          "records",
          [](const SampleStore& s, int copy) {
            if (copy < 0 || copy >= s.copies()) throw InputError("copy out of range");
            py::array_t<uint8_t> a({static_cast<py::ssize_t>(s.rows()), static_cast<py::ssize_t>(s.record_bytes())});
            for (int64_t r = 0; r < s.rows(); ++r) {
              uint8_t* out = a.mutable_data(r, 0);
              for (int p = 0; p < s.panels(); ++p)
                out = std::copy_n(s.record(copy, r, p), s.panel_record_bytes(p), out);
            }
            return a;
          },
          py::arg("copy") = 0, "the raw records of one copy (rows x record_bytes; a row's panels one after another)")
      .def("levels", &store_levels, "levels of each feature (cols x 2^bits)");

  mod.def(
      "optimal_feature_levels",
      [](const FloatArray& u, int bits, int64_t candidates) {
        const auto [rows, cols] = matrix_shape(u, "u");
        const FeatureLevels lv = FeatureLevels::make_optimal(u.data(), rows, cols, bits, candidates);
        return to_matrix(lv.table, cols, lv.count);
      },
      py::arg("u"), py::arg("bits"), py::arg("candidates") = 1024);
  mod.def(
      "chebyshev_logistic",
      [](int degree, double range) {
        const Chebyshev c = Chebyshev::logistic(degree, range);
        return py::make_tuple(c.coef, c.max_error);
      },
      py::arg("degree"), py::arg("range"), "monomial coefficients in m / range, and the max error");
  mod.def("loss_value", [](const std::string& loss, double z, double y) { return loss_value(parse_loss(loss), z, y); });
  mod.def("loss_slope", [](const std::string& loss, double z, double y) { return loss_slope(parse_loss(loss), z, y); });

  // The kernels, one variant at a time (tests compare the variants).
  mod.def(
      "isa", [] { return std::string(active_kernels().name); }, "the kernel variant in use");
  mod.def("set_isa", &set_isa, py::arg("name"), "scalar, avx2, avx512, or '' for the automatic choice");
  mod.def("available_isas", &available_isas);
  mod.def(
      "float_dot",
      [](const FloatArray& a, const FloatArray& w, const std::string& isa) {
        if (a.size() != w.size()) throw InputError("a and w must have the same length");
        return with_isa(isa, [&](const Kernels& k) { return k.dot(a.data(), w.data(), a.size()); });
      },
      py::arg("a"), py::arg("w"), py::arg("isa") = "");
  mod.def(
      "float_gemv_t",
      [](const FloatArray& rows, const FloatArray& e, const std::string& isa) {
        const auto [n, cols] = matrix_shape(rows, "rows");
        if (e.size() != n) throw InputError("e must have one value per row");
        std::vector<const float*> ptrs(n);
        for (int64_t k = 0; k < n; ++k) ptrs[k] = rows.data() + k * cols;
        std::vector<float> g(cols);
        with_isa(isa, [&](const Kernels& k) {
          k.gemv_t(ptrs.data(), e.data(), n, cols, g.data());
          return 0;
        });
        return to_array(g);
      },
      py::arg("rows"), py::arg("e"), py::arg("isa") = "");
  mod.def(
      "int_dot",
      [](const SampleStore& s, int copy, int64_t row, int sample, py::array_t<int8_t, py::array::c_style> m, int64_t c0,
         int64_t c1, const std::string& isa) {
        if (m.size() < (c1 + 63) / 64 * 64) throw InputError("m must be padded with zeros to a multiple of 64");
        if (!s.levels().uniform || s.index_bits() != (s.bits() == 1 ? 0 : s.bits()) ||
            (s.bits() != 1 && s.bits() != 2 && s.bits() != 4 && s.bits() != 8))
          throw InputError("the integer kernels take uniform 1, 2, 4 or 8-bit stores");
        check_one_panel(s);
        return with_isa(isa, [&](const Kernels& k) {
          return k.int_dot(s.index_plane(copy, row), s.up_plane(copy, row, sample), m.data(), c0, c1, s.bits());
        });
      },
      py::arg("store"), py::arg("copy"), py::arg("row"), py::arg("sample"), py::arg("m"), py::arg("c0"), py::arg("c1"),
      py::arg("isa") = "");
  mod.def(
      "int_gemv_t",
      [](const SampleStore& s, int copy, std::vector<int64_t> rows, int sample,
         py::array_t<int8_t, py::array::c_style> t, int64_t c0, int64_t c1, const std::string& isa) {
        if (rows.size() % 4 != 0 || static_cast<py::ssize_t>(rows.size()) != t.size())
          throw InputError("rows must be a multiple of 4, with one t per row");
        check_one_panel(s);
        std::vector<const uint8_t*> index, up;
        for (int64_t r : rows) {
          index.push_back(s.index_plane(copy, r));
          up.push_back(s.up_plane(copy, r, sample));
        }
        std::vector<int32_t> G((c1 - c0 + 63) / 64 * 64);
        with_isa(isa, [&](const Kernels& k) {
          k.int_gemv_t(index.data(), up.data(), t.data(), static_cast<int64_t>(rows.size()), c0, c1, s.bits(),
                       G.data());
          return 0;
        });
        G.resize(c1 - c0);
        return to_array(G);
      },
      py::arg("store"), py::arg("copy"), py::arg("rows"), py::arg("sample"), py::arg("t"), py::arg("c0"), py::arg("c1"),
      py::arg("isa") = "");
  mod.def(
      "quantize_symmetric",
      [](const FloatArray& v, float scale, int bits, uint64_t seed, uint64_t offset, const std::string& isa) {
        if (bits < 2 || bits > 8) throw InputError("bits must be from 2 to 8");
        std::vector<float> values(v.size());
        std::vector<int8_t> levels(v.size());
        const int64_t sum = with_isa(isa, [&](const Kernels& k) {
          return k.quantize_symmetric(v.data(), 0, v.size(), scale, bits, seed, offset, values.data(), levels.data());
        });
        return py::make_tuple(to_array(values), to_array(levels), sum);
      },
      py::arg("v"), py::arg("scale"), py::arg("bits"), py::arg("seed"), py::arg("offset"), py::arg("isa") = "",
      "stochastic rounding on the symmetric grid of 2^bits - 1 levels: (values, integer levels, their sum)");
  mod.def(
      "decode_uniform",
      [](const SampleStore& s, int copy, int64_t row, int sample, int64_t c0, int64_t c1, const std::string& isa) {
        if (!s.levels().uniform || (s.bits() != 1 && s.bits() != 2 && s.bits() != 4 && s.bits() != 8) || c0 % 64)
          throw InputError("decode_uniform takes uniform 1, 2, 4 or 8-bit stores and c0 a multiple of 64");
        check_one_panel(s);
        std::vector<float> out(c1 - c0);
        with_isa(isa, [&](const Kernels& k) {
          k.decode_uniform(s.index_plane(copy, row), s.up_plane(copy, row, sample), c0, c1, s.bits(), out.data());
          return 0;
        });
        return to_array(out);
      },
      py::arg("store"), py::arg("copy"), py::arg("row"), py::arg("sample"), py::arg("c0"), py::arg("c1"),
      py::arg("isa") = "");
  mod.def(
      "philox_draws",
      [](uint64_t seed, uint64_t offset, uint64_t first, int64_t n, const std::string& isa) {
        std::vector<uint16_t> out(n);
        with_isa(isa, [&](const Kernels& k) {
          k.philox_draws(seed, offset, first, n, out.data());
          return 0;
        });
        return to_array(out);
      },
      py::arg("seed"), py::arg("offset"), py::arg("first"), py::arg("n"), py::arg("isa") = "");
  mod.def(
      "max_abs",
      [](const FloatArray& v, const std::string& isa) {
        return with_isa(isa, [&](const Kernels& k) { return k.max_abs(v.data(), 0, v.size()); });
      },
      py::arg("v"), py::arg("isa") = "");
  mod.def("hardware_threads", &hardware_threads);
}
