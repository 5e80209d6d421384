#include "output.h"

#include <c10/util/Exception.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <sstream>

namespace zipml {
namespace train {

std::string python_repr(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  // The shortest round-trip digits and exponent, then Python's layout: positional for
  // -4 <= exponent < 16 (with ".0" when integral), else d.ddde+XX.
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, value, std::chars_format::scientific);
  TORCH_INTERNAL_ASSERT(ec == std::errc());
  std::string sci(buf, end);  // [-]d[.ddd]e[+-]XX
  const bool negative = sci[0] == '-';
  if (negative) sci.erase(0, 1);
  const auto e = sci.find('e');
  const int exponent = std::stoi(sci.substr(e + 1));
  std::string digits = sci.substr(0, e);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  std::string out;
  if (exponent >= -4 && exponent < 16) {
    if (exponent < 0) {
      out = "0." + std::string(-exponent - 1, '0') + digits;
    } else if (static_cast<int>(digits.size()) <= exponent + 1) {
      out = digits + std::string(exponent + 1 - digits.size(), '0') + ".0";
    } else {
      out = digits.substr(0, exponent + 1) + "." + digits.substr(exponent + 1);
    }
  } else {
    out = digits.substr(0, 1) + (digits.size() > 1 ? "." + digits.substr(1) : "") + "e" + (exponent < 0 ? "-" : "+") +
          (std::abs(exponent) < 10 ? "0" : "") + std::to_string(std::abs(exponent));
  }
  return negative ? "-" + out : out;
}

namespace {

void json_string(std::ostringstream& s, const std::string& text) {
  s << '"';
  for (unsigned char c : text) {
    switch (c) {
      case '"': s << "\\\""; break;
      case '\\': s << "\\\\"; break;
      case '\n': s << "\\n"; break;
      case '\t': s << "\\t"; break;
      case '\r': s << "\\r"; break;
      default:
        if (c < 0x20) {
          char u[8];
          std::snprintf(u, sizeof u, "\\u%04x", c);
          s << u;
        } else {
          s << c;
        }
    }
  }
  s << '"';
}

void json(std::ostringstream& s, const c10::IValue& v, int indent, int depth) {
  const std::string pad(static_cast<size_t>(indent * (depth + 1)), ' '),
      close(static_cast<size_t>(indent * depth), ' ');
  if (v.isNone()) {
    s << "null";
  } else if (v.isBool()) {
    s << (v.toBool() ? "true" : "false");
  } else if (v.isInt()) {
    s << v.toInt();
  } else if (v.isDouble()) {
    const double d = v.toDouble();
    s << (std::isnan(d) ? "NaN" : std::isinf(d) ? (d > 0 ? "Infinity" : "-Infinity") : python_repr(d));
  } else if (v.isString()) {
    json_string(s, v.toStringRef());
  } else if (v.isList()) {
    const auto list = v.toList();
    if (list.empty()) {
      s << "[]";
      return;
    }
    s << "[\n";
    for (size_t i = 0; i < list.size(); ++i) {
      s << pad;
      json(s, list.get(i), indent, depth + 1);
      s << (i + 1 < list.size() ? ",\n" : "\n");
    }
    s << close << "]";
  } else if (v.isGenericDict()) {
    const auto dict = v.toGenericDict();
    if (dict.empty()) {
      s << "{}";
      return;
    }
    s << "{\n";
    size_t i = 0;
    for (const auto& item : dict) {
      s << pad;
      json_string(s, item.key().toStringRef());
      s << ": ";
      json(s, item.value(), indent, depth + 1);
      s << (++i < dict.size() ? ",\n" : "\n");
    }
    s << close << "}";
  } else {
    TORCH_CHECK(false, "to_json: cannot write a ", v.tagKind());
  }
}

std::string csv_field(const c10::IValue& v) {
  if (v.isNone()) return "";
  if (v.isDouble()) return python_repr(v.toDouble());
  if (v.isInt()) return std::to_string(v.toInt());
  if (v.isBool()) return v.toBool() ? "True" : "False";
  return v.toStringRef();
}

}  // namespace

std::string to_json(const c10::IValue& value, int indent) {
  std::ostringstream s;
  json(s, value, indent, 0);
  s << "\n";
  return s.str();
}

std::string to_csv(const std::vector<c10::impl::GenericDict>& rows) {
  std::ostringstream s;
  if (rows.empty()) return "";
  size_t i = 0;
  for (const auto& item : rows[0]) s << (i++ ? "," : "") << item.key().toStringRef();
  s << "\r\n";  // the csv module's line terminator
  for (const auto& row : rows) {
    i = 0;
    for (const auto& item : rows[0]) s << (i++ ? "," : "") << csv_field(row.at(item.key()));
    s << "\r\n";
  }
  return s.str();
}

void write_atomic(const std::string& path, const std::vector<char>& bytes) {
  const auto slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash);
  const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  const std::string tmp = dir + "/." + base + ".tmp" + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  TORCH_CHECK(fd >= 0, "cannot write ", tmp, ": ", std::strerror(errno));
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      TORCH_CHECK(false, "cannot write ", tmp, ": ", std::strerror(err));
    }
    done += static_cast<size_t>(n);
  }
  const bool synced = ::fsync(fd) == 0;
  const bool closed = ::close(fd) == 0;
  if (!synced || !closed || std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    TORCH_CHECK(false, "cannot write ", path, ": ", std::strerror(err));
  }
}

void write_atomic(const std::string& path, const std::string& bytes) {
  write_atomic(path, std::vector<char>(bytes.begin(), bytes.end()));
}

void make_directories(const std::string& path) {
  std::string partial;
  std::istringstream parts(path);
  std::string part;
  if (!path.empty() && path[0] == '/') partial = "/";
  while (std::getline(parts, part, '/')) {
    if (part.empty()) continue;
    partial += part + "/";
    if (::mkdir(partial.c_str(), 0755) != 0 && errno != EEXIST)
      TORCH_CHECK(false, "cannot create directory ", partial, ": ", std::strerror(errno));
  }
}

}  // namespace train
}  // namespace zipml
