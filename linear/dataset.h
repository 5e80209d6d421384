// Training data for the linear solvers: a dense row-major float matrix and its labels, read from
// the LIBSVM text format or CSV, and the checks every entry point applies to user data.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace zipml::linear {

// Bad input: the message names the argument (or file and line) and what is accepted. Python sees
// ValueError.
struct InputError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// A file that cannot be opened or read. Python sees OSError.
struct FileError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Dataset {
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<float> x;  // rows * cols, row-major
  std::vector<float> y;  // rows
};

// LIBSVM: one sample per line, "label index:value index:value ...", indices from 1 and ascending,
// absent entries zero; blank lines and '#' comments are skipped. cols = 0 takes the largest index.
Dataset read_libsvm(const std::string& path, int64_t cols = 0);

// CSV: one sample per line, the label in column `label_column` (negative counts from the end), a
// header line is skipped when one of its fields is not a number.
Dataset read_csv(const std::string& path, int64_t label_column = -1, char delimiter = ',');

// Throws InputError unless x (rows x cols) and y (rows) are non-empty and finite.
void check_finite_data(const float* x, const float* y, int64_t rows, int64_t cols);

// Throws InputError unless every label is -1 or +1 (what the classifier losses train on).
void check_signed_labels(const float* y, int64_t rows, const char* loss);

}  // namespace zipml::linear
