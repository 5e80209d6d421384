#include "losses.h"

#include <algorithm>
#include <cmath>

#include "dataset.h"

namespace zipml::linear {

Loss parse_loss(const std::string& name) {
  if (name == "least_squares" || name == "squared") return Loss::LeastSquares;
  if (name == "lssvm") return Loss::LSSVM;
  if (name == "logistic") return Loss::Logistic;
  if (name == "hinge") return Loss::Hinge;
  if (name == "squared_hinge") return Loss::SquaredHinge;
  throw InputError("loss must be one of least_squares, lssvm, logistic, hinge, squared_hinge, got '" + name + "'");
}

const char* loss_name(Loss loss) {
  switch (loss) {
    case Loss::LeastSquares: return "least_squares";
    case Loss::LSSVM: return "lssvm";
    case Loss::Logistic: return "logistic";
    case Loss::Hinge: return "hinge";
    case Loss::SquaredHinge: return "squared_hinge";
  }
  return "?";
}

bool is_classifier(Loss loss) { return loss != Loss::LeastSquares; }
bool is_least_squares(Loss loss) { return loss == Loss::LeastSquares || loss == Loss::LSSVM; }

double loss_value(Loss loss, double z, double y) {
  switch (loss) {
    case Loss::LeastSquares:
    case Loss::LSSVM: return 0.5 * (z - y) * (z - y);
    case Loss::Logistic: {
      const double m = y * z;  // log(1 + e^-m), stable for both signs
      return m > 0 ? std::log1p(std::exp(-m)) : -m + std::log1p(std::exp(m));
    }
    case Loss::Hinge: return std::max(0.0, 1.0 - y * z);
    case Loss::SquaredHinge: {
      const double h = std::max(0.0, 1.0 - y * z);
      return h * h;
    }
  }
  return 0.0;
}

double loss_slope(Loss loss, double z, double y) {
  switch (loss) {
    case Loss::LeastSquares:
    case Loss::LSSVM: return z - y;
    case Loss::Logistic: {
      const double m = y * z;  // -y sigma(-m)
      return -y * (m > 0 ? std::exp(-m) / (1.0 + std::exp(-m)) : 1.0 / (1.0 + std::exp(m)));
    }
    case Loss::Hinge: return y * z < 1.0 ? -y : 0.0;
    case Loss::SquaredHinge: return -2.0 * y * std::max(0.0, 1.0 - y * z);
  }
  return 0.0;
}

Chebyshev Chebyshev::logistic(int degree, double range) {
  if (degree < 1 || degree > 30) throw InputError("degree must be from 1 to 30, got " + std::to_string(degree));
  if (!(range > 0.0) || !std::isfinite(range))
    throw InputError("chebyshev_range must be positive and finite, got " + std::to_string(range));
  const int n = degree + 1;
  const double pi = 3.14159265358979323846;
  // Chebyshev coefficients c_k of the interpolant through the nodes u_i = cos(pi (i + 1/2) / n).
  std::vector<double> f(n), c(n, 0.0);
  for (int i = 0; i < n; ++i) f[i] = loss_slope(Loss::Logistic, range * std::cos(pi * (i + 0.5) / n), 1.0);
  for (int k = 0; k < n; ++k) {
    for (int i = 0; i < n; ++i) c[k] += f[i] * std::cos(pi * k * (i + 0.5) / n);
    c[k] *= (k == 0 ? 1.0 : 2.0) / n;
  }
  // Monomial coefficients: T_0 = 1, T_1 = u, T_k+1 = 2u T_k - T_k-1.
  std::vector<double> t_prev(n, 0.0), t_cur(n, 0.0), mono(n, 0.0);
  t_prev[0] = 1.0;
  t_cur[1] = 1.0;  // degree >= 1, so n >= 2
  mono[0] = c[0];
  mono[1] = c[1];
  for (int k = 2; k < n; ++k) {
    std::vector<double> t_next(n, 0.0);
    for (int i = 0; i + 1 < n; ++i) t_next[i + 1] += 2.0 * t_cur[i];
    for (int i = 0; i < n; ++i) t_next[i] -= t_prev[i];
    for (int i = 0; i < n; ++i) mono[i] += c[k] * t_next[i];
    t_prev.swap(t_cur);
    t_cur.swap(t_next);
  }
  Chebyshev p;
  p.degree = degree;
  p.range = range;
  p.coef = mono;
  for (int i = 0; i <= 4000; ++i) {
    const double m = range * (-1.0 + i / 2000.0);
    p.max_error = std::max(p.max_error, std::fabs(p(m) - loss_slope(Loss::Logistic, m, 1.0)));
  }
  return p;
}

double Chebyshev::operator()(double m) const {
  const double u = m / range;
  double acc = 0.0;
  for (int i = degree; i >= 0; --i) acc = acc * u + coef[i];
  return acc;
}

}  // namespace zipml::linear
