// Output files of zipml_train: IValues as JSON (the metrics), CSV rows, and atomic writes (a
// temporary file in the same directory, fsync, rename), so an interrupted run never leaves a torn file.
#pragma once
#include <ATen/core/ivalue.h>

#include <string>
#include <vector>

namespace zipml {
namespace train {

// A double as Python's repr writes it (shortest round-trip digits; "0.1", "1e-05", "100000.0").
std::string python_repr(double value);

// JSON of an IValue made of None, bool, int, double, string, lists and string-keyed dicts.
std::string to_json(const c10::IValue& value, int indent = 2);

// CSV of a list of dicts with the same keys (the first row's keys are the header).
std::string to_csv(const std::vector<c10::impl::GenericDict>& rows);

// Writes `bytes` to `path` atomically: readers see the old file or the new one.
void write_atomic(const std::string& path, const std::string& bytes);
void write_atomic(const std::string& path, const std::vector<char>& bytes);

// mkdir -p.
void make_directories(const std::string& path);

}  // namespace train
}  // namespace zipml
