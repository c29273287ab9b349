// event_file.h — TensorBoard event files ("events.out.tfevents.*"), written and read by hand.
//
// A file is a sequence of TFRecords (uint64 LE length, masked CRC-32C of those 8 bytes, the
// payload, masked CRC-32C of the payload); each payload is a serialized tensorflow `Event`
// protobuf. We only need scalars, so the few protobuf fields involved are encoded directly
// instead of pulling in a protobuf library:
//   Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
//   Summary { repeated Value value = 1; }   Value { string tag = 1; float simple_value = 2; }
// The reader exists to prove files are well-formed (CRCs checked) and to read runs back.
#pragma once

#include <cstdint>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace sumi::logging {

// Thrown for a malformed event file: bad CRC, truncated record, unreadable protobuf.
class EventFormatError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Seconds since the Unix epoch, as TensorBoard's wall_time.
double unix_time_now();

// Serialized Event carrying the file version string (the first record of every file).
std::string encode_version_event(double wall_time, const std::string& file_version);
// Serialized Event carrying one scalar Summary.Value.
std::string encode_scalar_event(double wall_time, std::int64_t step, const std::string& tag,
                                float value);
// One TFRecord around `payload`.
std::string frame_record(const std::string& payload);

class EventWriter {
 public:
  static constexpr const char* kFileVersion = "brain.Event:2";

  // Creates `dir` if needed and a new file `<dir>/<prefix>.<unix seconds>.<hostname>` (with a
  // numeric suffix if that name is taken: an existing file is never appended to), then writes
  // the file-version event. Throws std::runtime_error naming the path when it cannot.
  explicit EventWriter(const std::string& dir, const std::string& prefix = "events.out.tfevents");
  ~EventWriter();  // flushes; errors at that point are swallowed
  EventWriter(const EventWriter&) = delete;
  EventWriter& operator=(const EventWriter&) = delete;

  // wall_time < 0 means "now".
  void add_scalar(const std::string& tag, double value, std::int64_t step, double wall_time = -1);
  void flush();
  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& payload);
  std::string path_;
  std::ofstream out_;
};

struct ScalarEvent {
  double wall_time = 0;
  std::int64_t step = 0;
  std::string tag;
  float value = 0;
};

struct EventFile {
  std::string file_version;          // from the first event that carries one
  std::vector<ScalarEvent> scalars;  // in file order, one entry per Summary.Value
};

// Reads and validates a whole event file; throws EventFormatError naming the file and offset.
// Non-scalar values (images, histograms, ...) are skipped.
EventFile read_events(const std::string& path);

}  // namespace sumi::logging
