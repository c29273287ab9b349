#include "logging/event_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "logging/crc32c.h"

namespace sumi::logging {
namespace {

// Protobuf wire types.
constexpr unsigned kVarint = 0, kFixed64 = 1, kLen = 2, kFixed32 = 5;

void put_varint(std::string& out, std::uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}
void put_key(std::string& out, unsigned field, unsigned wire) { put_varint(out, (field << 3) | wire); }
void put_le(std::string& out, std::uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}
void put_bytes(std::string& out, unsigned field, const std::string& bytes) {
  put_key(out, field, kLen);
  put_varint(out, bytes.size());
  out += bytes;
}
void put_double(std::string& out, unsigned field, double d) {
  std::uint64_t bits;
  std::memcpy(&bits, &d, sizeof bits);
  put_key(out, field, kFixed64);
  put_le(out, bits, 8);
}

std::uint64_t get_le(const unsigned char* p, int bytes) {
  std::uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
  return v;
}

// Minimal protobuf reader over one message; `where` names the file and record for errors.
class Fields {
 public:
  Fields(const std::string& data, const std::string& where) : data_(data), where_(where) {}
  bool next(unsigned& field, unsigned& wire) {
    if (pos_ >= data_.size()) return false;
    const std::uint64_t key = varint();
    field = static_cast<unsigned>(key >> 3);
    wire = static_cast<unsigned>(key & 7);
    if (field == 0) fail("field number 0");
    return true;
  }
  std::uint64_t varint() {
    std::uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= data_.size()) fail("truncated varint");
      const auto b = static_cast<unsigned char>(data_[pos_++]);
      v |= static_cast<std::uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    fail("varint longer than 10 bytes");
  }
  std::uint64_t fixed(int bytes) {
    need(static_cast<std::size_t>(bytes));
    const auto v = get_le(reinterpret_cast<const unsigned char*>(data_.data()) + pos_, bytes);
    pos_ += static_cast<std::size_t>(bytes);
    return v;
  }
  std::string bytes() {
    const std::uint64_t n = varint();
    need(n);
    std::string s = data_.substr(pos_, static_cast<std::size_t>(n));
    pos_ += static_cast<std::size_t>(n);
    return s;
  }
  void skip(unsigned wire) {
    switch (wire) {
      case kVarint: varint(); break;
      case kFixed64: fixed(8); break;
      case kLen: bytes(); break;
      case kFixed32: fixed(4); break;
      default: fail("unsupported wire type " + std::to_string(wire));
    }
  }
  void expect(unsigned wire, unsigned want, const char* name) {
    if (wire != want)
      fail(std::string("field '") + name + "' has wire type " + std::to_string(wire) +
           ", expected " + std::to_string(want));
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw EventFormatError(where_ + ": malformed Event protobuf: " + what);
  }

 private:
  void need(std::uint64_t n) const {
    if (n > data_.size() - pos_) fail("field runs past the end of the message");
  }
  const std::string& data_;
  const std::string& where_;
  std::size_t pos_ = 0;
};

void parse_value(const std::string& data, const std::string& where, double wall_time,
                 std::int64_t step, std::vector<ScalarEvent>& out) {
  Fields f(data, where);
  ScalarEvent ev;
  ev.wall_time = wall_time;
  ev.step = step;
  bool scalar = false;
  unsigned field, wire;
  while (f.next(field, wire)) {
    if (field == 1) {
      f.expect(wire, kLen, "Summary.Value.tag");
      ev.tag = f.bytes();
    } else if (field == 2) {
      f.expect(wire, kFixed32, "Summary.Value.simple_value");
      const auto bits = static_cast<std::uint32_t>(f.fixed(4));
      std::memcpy(&ev.value, &bits, sizeof bits);
      scalar = true;
    } else {
      f.skip(wire);
    }
  }
  if (scalar) out.push_back(std::move(ev));
}

void parse_event(const std::string& data, const std::string& where, EventFile& file) {
  Fields f(data, where);
  double wall_time = 0;
  std::int64_t step = 0;
  std::vector<std::string> summaries;
  unsigned field, wire;
  while (f.next(field, wire)) {
    if (field == 1) {
      f.expect(wire, kFixed64, "Event.wall_time");
      const std::uint64_t bits = f.fixed(8);
      std::memcpy(&wall_time, &bits, sizeof bits);
    } else if (field == 2) {
      f.expect(wire, kVarint, "Event.step");
      step = static_cast<std::int64_t>(f.varint());
    } else if (field == 3) {
      f.expect(wire, kLen, "Event.file_version");
      std::string v = f.bytes();
      if (file.file_version.empty()) file.file_version = std::move(v);
    } else if (field == 5) {
      f.expect(wire, kLen, "Event.summary");
      summaries.push_back(f.bytes());
    } else {
      f.skip(wire);
    }
  }
  // Fields may come in any order, so wall_time/step are only known once the event is read.
  for (const auto& s : summaries) {
    Fields sf(s, where);
    while (sf.next(field, wire)) {
      if (field == 1) {
        sf.expect(wire, kLen, "Summary.value");
        parse_value(sf.bytes(), where, wall_time, step, file.scalars);
      } else {
        sf.skip(wire);
      }
    }
  }
}

std::string hostname() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "localhost";
  return buf;
}

}  // namespace

double unix_time_now() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

std::string encode_version_event(double wall_time, const std::string& file_version) {
  std::string out;
  put_double(out, 1, wall_time);
  put_bytes(out, 3, file_version);
  return out;
}

std::string encode_scalar_event(double wall_time, std::int64_t step, const std::string& tag,
                                float value) {
  std::string v;
  put_bytes(v, 1, tag);
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  put_key(v, 2, kFixed32);
  put_le(v, bits, 4);

  std::string summary;
  put_bytes(summary, 1, v);

  std::string out;
  put_double(out, 1, wall_time);
  put_key(out, 2, kVarint);
  put_varint(out, static_cast<std::uint64_t>(step));  // negative steps: 10-byte two's complement
  put_bytes(out, 5, summary);
  return out;
}

std::string frame_record(const std::string& payload) {
  std::string out;
  put_le(out, payload.size(), 8);
  put_le(out, mask_crc(crc32c(out.data(), 8)), 4);
  out += payload;
  put_le(out, mask_crc(crc32c(payload.data(), payload.size())), 4);
  return out;
}

EventWriter::EventWriter(const std::string& dir, const std::string& prefix) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    throw std::runtime_error("cannot create log directory '" + dir + "': " + ec.message() +
                             " (hint: check --logging_dir and its permissions)");
  const double now = unix_time_now();
  const std::string base = (fs::path(dir) / (prefix + "." +
                            std::to_string(static_cast<long long>(now)) + "." + hostname()))
                               .string();
  // O_EXCL: two runs started in the same second on the same host get distinct files instead
  // of interleaving records in one.
  for (int n = 0; n < 1000 && path_.empty(); ++n) {
    const std::string candidate = n == 0 ? base : base + "." + std::to_string(n);
    const int fd = ::open(candidate.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (fd >= 0) {
      ::close(fd);
      path_ = candidate;
    } else if (errno != EEXIST) {
      throw std::runtime_error("cannot create event file '" + candidate +
                               "': " + std::strerror(errno));
    }
  }
  if (path_.empty()) throw std::runtime_error("cannot find a free event file name for '" + base + "'");
  out_.open(path_, std::ios::binary | std::ios::out | std::ios::trunc);
  if (!out_) throw std::runtime_error("cannot open event file '" + path_ + "' for writing");
  write_record(encode_version_event(now, kFileVersion));
  flush();
}

EventWriter::~EventWriter() {
  try {
    flush();
  } catch (...) {
  }
}

void EventWriter::add_scalar(const std::string& tag, double value, std::int64_t step,
                             double wall_time) {
  if (tag.empty()) throw std::invalid_argument("EventWriter::add_scalar: empty tag");
  write_record(encode_scalar_event(wall_time < 0 ? unix_time_now() : wall_time, step, tag,
                                   static_cast<float>(value)));
}

void EventWriter::write_record(const std::string& payload) {
  const std::string rec = frame_record(payload);
  out_.write(rec.data(), static_cast<std::streamsize>(rec.size()));
  if (!out_) throw std::runtime_error("write to event file '" + path_ + "' failed (disk full?)");
}

void EventWriter::flush() {
  out_.flush();
  if (!out_) throw std::runtime_error("flush of event file '" + path_ + "' failed (disk full?)");
}

EventFile read_events(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open event file '" + path + "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  const std::string data = ss.str();
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());

  EventFile file;
  std::size_t pos = 0;
  std::size_t index = 0;
  while (pos < data.size()) {
    const std::string where = path + ": record " + std::to_string(index) + " at byte " +
                              std::to_string(pos);
    if (data.size() - pos < 12)
      throw EventFormatError(where + ": truncated record header (" +
                             std::to_string(data.size() - pos) + " bytes, expected 12)");
    const std::uint64_t len = get_le(p + pos, 8);
    const auto len_crc = static_cast<std::uint32_t>(get_le(p + pos + 8, 4));
    if (len_crc != mask_crc(crc32c(p + pos, 8)))
      throw EventFormatError(where + ": length CRC mismatch (file is corrupt or not an event file)");
    if (len > data.size() - pos - 12 || data.size() - pos - 12 - len < 4)
      throw EventFormatError(where + ": record of " + std::to_string(len) +
                             " bytes runs past the end of the file (truncated write?)");
    const std::string payload = data.substr(pos + 12, static_cast<std::size_t>(len));
    const auto data_crc = static_cast<std::uint32_t>(get_le(p + pos + 12 + len, 4));
    if (data_crc != mask_crc(crc32c(payload.data(), payload.size())))
      throw EventFormatError(where + ": data CRC mismatch (file is corrupt)");
    parse_event(payload, where, file);
    pos += 12 + static_cast<std::size_t>(len) + 4;
    ++index;
  }
  return file;
}

}  // namespace sumi::logging
