#include "dataset.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

namespace zipml::linear {
namespace {

std::ifstream open_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw FileError(path + ": cannot open (" + std::strerror(errno) + ")");
  return in;
}

[[noreturn]] void fail(const std::string& path, int64_t line, const std::string& what) {
  throw InputError(path + ":" + std::to_string(line) + ": " + what);
}

// The whole of `text` as a finite number, or false.
bool parse_number(const std::string& text, double& out) {
  if (text.empty()) return false;
  const char* begin = text.c_str();
  char* end = nullptr;
  out = std::strtod(begin, &end);
  return end == begin + text.size();
}

double finite_number(const std::string& path, int64_t line, const std::string& text, const char* what) {
  double v;
  if (!parse_number(text, v)) fail(path, line, std::string(what) + " '" + text + "' is not a number");
  if (!std::isfinite(v) || std::fabs(v) > 3.4028234663852886e38)
    fail(path, line, std::string(what) + " '" + text + "' is not a finite float32");
  return v;
}

std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t\r\n");
  if (a == std::string::npos) return "";
  return s.substr(a, s.find_last_not_of(" \t\r\n") - a + 1);
}

}  // namespace

Dataset read_libsvm(const std::string& path, int64_t cols) {
  if (cols < 0) throw InputError("read_libsvm: n_features must be >= 0 (0 infers it), got " + std::to_string(cols));
  std::ifstream in = open_file(path);
  struct Entry {
    int64_t col;
    float value;
  };
  std::vector<std::vector<Entry>> rows;
  std::vector<float> labels;
  int64_t widest = 0;
  std::string text;
  for (int64_t line = 1; std::getline(in, text); ++line) {
    const size_t hash = text.find('#');
    if (hash != std::string::npos) text.resize(hash);
    std::istringstream fields(text);
    std::string field;
    if (!(fields >> field)) continue;  // blank or comment
    labels.push_back(static_cast<float>(finite_number(path, line, field, "label")));
    std::vector<Entry> entries;
    int64_t previous = 0;
    while (fields >> field) {
      const size_t colon = field.find(':');
      if (colon == std::string::npos) fail(path, line, "expected index:value, got '" + field + "'");
      const std::string index_text = field.substr(0, colon);
      double index;
      if (!parse_number(index_text, index) || index != std::floor(index) || index < 1 || index > 1e12)
        fail(path, line, "feature index '" + index_text + "' is not a positive integer");
      const int64_t col = static_cast<int64_t>(index);
      if (col <= previous)
        fail(path, line,
             "feature indices must be ascending, got " + std::to_string(col) + " after " + std::to_string(previous));
      if (cols > 0 && col > cols)
        fail(path, line, "feature index " + std::to_string(col) + " exceeds n_features=" + std::to_string(cols));
      previous = col;
      entries.push_back({col - 1, static_cast<float>(finite_number(path, line, field.substr(colon + 1), "value"))});
    }
    widest = std::max(widest, previous);
    rows.push_back(std::move(entries));
  }
  if (in.bad()) throw FileError(path + ": read error");
  if (rows.empty()) throw InputError(path + ": no samples (the file is empty)");
  Dataset d;
  d.rows = static_cast<int64_t>(rows.size());
  d.cols = cols > 0 ? cols : widest;
  if (d.cols == 0) throw InputError(path + ": no features (every line holds only a label)");
  d.x.assign(static_cast<size_t>(d.rows * d.cols), 0.0f);
  for (int64_t r = 0; r < d.rows; ++r)
    for (const Entry& e : rows[r]) d.x[r * d.cols + e.col] = e.value;
  d.y = std::move(labels);
  return d;
}

Dataset read_csv(const std::string& path, int64_t label_column, char delimiter) {
  std::ifstream in = open_file(path);
  Dataset d;
  int64_t fields_per_line = -1, label_at = 0;
  std::string text;
  std::vector<std::string> fields;
  for (int64_t line = 1; std::getline(in, text); ++line) {
    if (trim(text).empty()) continue;
    fields.clear();
    std::string field;
    std::istringstream split(text);
    while (std::getline(split, field, delimiter)) fields.push_back(trim(field));
    if (!text.empty() && text.back() == delimiter) fields.emplace_back();
    if (fields_per_line < 0) {
      fields_per_line = static_cast<int64_t>(fields.size());
      if (fields_per_line < 2)
        fail(path, line,
             "a CSV line needs a label and at least one feature, found " + std::to_string(fields_per_line) +
                 " field(s)");
      label_at = label_column < 0 ? fields_per_line + label_column : label_column;
      if (label_at < 0 || label_at >= fields_per_line)
        throw InputError("read_csv: label_column=" + std::to_string(label_column) + " is outside the " +
                         std::to_string(fields_per_line) + " columns of " + path);
      d.cols = fields_per_line - 1;
      bool header = false;
      for (const std::string& f : fields) {
        double v;
        header |= !parse_number(f, v);
      }
      if (header) continue;
    }
    if (static_cast<int64_t>(fields.size()) != fields_per_line)
      fail(path, line,
           "expected " + std::to_string(fields_per_line) + " fields, found " + std::to_string(fields.size()));
    for (int64_t c = 0; c < fields_per_line; ++c) {
      const double v = finite_number(path, line, fields[c], c == label_at ? "label" : "value");
      if (c == label_at)
        d.y.push_back(static_cast<float>(v));
      else
        d.x.push_back(static_cast<float>(v));
    }
  }
  if (in.bad()) throw FileError(path + ": read error");
  d.rows = static_cast<int64_t>(d.y.size());
  if (d.rows == 0) throw InputError(path + ": no samples");
  return d;
}

void check_finite_data(const float* x, const float* y, int64_t rows, int64_t cols) {
  if (rows <= 0) throw InputError("X is empty: it needs at least one sample (row)");
  if (cols <= 0) throw InputError("X has no features (columns)");
  for (int64_t r = 0; r < rows; ++r) {
    if (!std::isfinite(y[r]))
      throw InputError("y contains NaN or Inf (at index " + std::to_string(r) + "); labels must be finite");
    for (int64_t c = 0; c < cols; ++c)
      if (!std::isfinite(x[r * cols + c]))
        throw InputError("X contains NaN or Inf (at row " + std::to_string(r) + ", column " + std::to_string(c) +
                         "); features must be finite");
  }
}

void check_signed_labels(const float* y, int64_t rows, const char* loss) {
  for (int64_t r = 0; r < rows; ++r)
    if (y[r] != 1.0f && y[r] != -1.0f) {
      std::ostringstream msg;
      msg << "y must hold the labels -1 and +1 for loss '" << loss << "', found " << y[r] << " at index " << r;
      throw InputError(msg.str());
    }
}

}  // namespace zipml::linear
