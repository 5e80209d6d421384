// The losses of the linear models, as functions of the prediction z = a.w + w0 and the label y,
// and the Chebyshev polynomial that makes the logistic gradient estimable without bias from
// quantized samples (ZipML, arXiv 1611.05402, Section 6).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace zipml::linear {

enum class Loss {
  LeastSquares,  // (z - y)^2 / 2, linear regression
  LSSVM,         // (z - y)^2 / 2 with y in {-1, +1}: the least-squares SVM
  Logistic,      // log(1 + exp(-y z))
  Hinge,         // max(0, 1 - y z)
  SquaredHinge,  // max(0, 1 - y z)^2, the L2-SVM
};

Loss parse_loss(const std::string& name);
const char* loss_name(Loss loss);
bool is_classifier(Loss loss);
bool is_least_squares(Loss loss);

double loss_value(Loss loss, double z, double y);
// d loss / d z: the per-sample factor e of the gradient e * a.
double loss_slope(Loss loss, double z, double y);

// P(m) = sum_i coef[i] (m / range)^i, the degree-d Chebyshev interpolant of the logistic
// derivative l'(m) = -1 / (1 + e^m) on [-range, range] (through the d + 1 Chebyshev nodes,
// converted to monomials in m / range), and the largest error |P - l'| on a fine grid.
struct Chebyshev {
  int degree = 0;
  double range = 0.0;
  std::vector<double> coef;  // degree + 1 monomial coefficients in u = m / range
  double max_error = 0.0;

  static Chebyshev logistic(int degree, double range);
  double operator()(double m) const;
};

}  // namespace zipml::linear
