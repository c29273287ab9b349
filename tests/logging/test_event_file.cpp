// TensorBoard event files: CRC-32C, exact record bytes derived from the TFRecord and protobuf
// specs, writer -> reader round trips, and corruption detection.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "logging/crc32c.h"
#include "logging/event_file.h"

namespace fs = std::filesystem;
using namespace sumi::logging;

namespace {

fs::path fresh_dir(const std::string& name) {
  fs::path d = fs::path(SUMI_BUILD_DIR) / "test_logging" / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string bytes(std::initializer_list<unsigned> b) {
  std::string s;
  for (unsigned v : b) s.push_back(static_cast<char>(v));
  return s;
}

}  // namespace

TEST_CASE("crc32c matches the Castagnoli check value and masking") {
  CHECK(crc32c("123456789", 9) == 0xE3069283u);
  CHECK(crc32c("", 0) == 0u);
  // 32 zero bytes: the iSCSI (RFC 3720) test vector.
  const std::string zeros(32, '\0');
  CHECK(crc32c(zeros.data(), zeros.size()) == 0x8A9136AAu);
  CHECK(mask_crc(0) == 0xa282ead8u);
  CHECK(mask_crc(0x00008000u) == 0xa282ead9u);  // bit 15 rotates to bit 0
}

TEST_CASE("one scalar record has exactly the bytes the specs give") {
  // Event{wall_time: 1.0, step: 5, summary{value{tag: "a", simple_value: 1.0}}}, derived by
  // hand: key 0x09 = field 1 fixed64, 0x10 = field 2 varint, 0x2a = field 5 length-delimited;
  // Summary key 0x0a = field 1; Value 0x0a = tag, 0x15 = field 2 fixed32.
  const std::string payload = bytes({0x09, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0x10, 0x05, 0x2a, 0x0a,
                                     0x0a, 0x08, 0x0a, 0x01, 0x61, 0x15, 0, 0, 0x80, 0x3f});
  CHECK(encode_scalar_event(1.0, 5, "a", 1.0f) == payload);
  // Length 23 (LE u64), masked CRC-32C of those 8 bytes, payload, masked CRC-32C of payload.
  const std::string record = bytes({0x17, 0, 0, 0, 0, 0, 0, 0, 0xe7, 0xce, 0xf8, 0x1e}) + payload +
                             bytes({0x6a, 0xb7, 0x67, 0x46});
  CHECK(frame_record(payload) == record);
}

TEST_CASE("version event: wall_time then file_version as field 3") {
  const std::string v = encode_version_event(0.0, "brain.Event:2");
  CHECK(v == bytes({0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0x1a, 13}) + "brain.Event:2");
}

TEST_CASE("writer output reads back with the version first and every scalar in order") {
  const fs::path dir = fresh_dir("roundtrip");
  std::string path;
  {
    EventWriter w(dir.string());
    path = w.path();
    CHECK(fs::path(path).parent_path() == dir);
    CHECK(fs::path(path).filename().string().rfind("events.out.tfevents.", 0) == 0);
    w.add_scalar("loss/current", 0.25, 1, 100.5);
    w.add_scalar("loss/average", 0.125, 1, 100.5);
    w.add_scalar("lr/unet", 1e-4, 2, 101.0);
    w.add_scalar("lr/textencoder", 5e-5, 123456789012LL, 102.0);
    w.add_scalar("neg", -3.5, -7, 103.0);
    w.add_scalar("now", 1.0, 3);  // wall_time defaults to the clock
  }  // destructor flushes
  const EventFile f = read_events(path);
  CHECK(f.file_version == "brain.Event:2");
  REQUIRE(f.scalars.size() == 6);
  CHECK(f.scalars[0].tag == "loss/current");
  CHECK(f.scalars[0].value == 0.25f);
  CHECK(f.scalars[0].step == 1);
  CHECK(f.scalars[0].wall_time == 100.5);
  CHECK(f.scalars[1].tag == "loss/average");
  CHECK(f.scalars[2].value == static_cast<float>(1e-4));
  CHECK(f.scalars[2].step == 2);
  CHECK(f.scalars[3].step == 123456789012LL);
  CHECK(f.scalars[3].tag == "lr/textencoder");
  CHECK(f.scalars[4].step == -7);
  CHECK(f.scalars[4].value == -3.5f);
  CHECK(f.scalars[5].wall_time > 1.6e9);  // a real Unix time, not 0
}

TEST_CASE("flush makes records visible while the writer is still open") {
  const fs::path dir = fresh_dir("flush");
  EventWriter w(dir.string());
  w.add_scalar("x", 2.0, 10, 1.0);
  w.flush();
  const EventFile f = read_events(w.path());
  REQUIRE(f.scalars.size() == 1);
  CHECK(f.scalars[0].value == 2.0f);
}

TEST_CASE("two writers in the same directory never share a file") {
  const fs::path dir = fresh_dir("two");
  EventWriter a(dir.string());
  EventWriter b(dir.string());
  CHECK(a.path() != b.path());
}

TEST_CASE("corrupt and truncated files are rejected with the file named") {
  const fs::path dir = fresh_dir("corrupt");
  std::string path;
  {
    EventWriter w(dir.string());
    path = w.path();
    w.add_scalar("loss/current", 1.0, 1, 1.0);
  }
  const std::string good = slurp(path);

  SUBCASE("flipped payload byte") {
    std::string bad = good;
    bad[bad.size() - 6] ^= 0x01;
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bad;
    CHECK_THROWS_WITH_AS(read_events(path), doctest::Contains("data CRC mismatch"), EventFormatError);
  }
  SUBCASE("flipped length byte") {
    std::string bad = good;
    bad[0] ^= 0x01;
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bad;
    CHECK_THROWS_WITH_AS(read_events(path), doctest::Contains("length CRC mismatch"), EventFormatError);
  }
  SUBCASE("truncated last record") {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << good.substr(0, good.size() - 3);
    CHECK_THROWS_WITH_AS(read_events(path), doctest::Contains(path.c_str()), EventFormatError);
  }
  SUBCASE("missing file") {
    CHECK_THROWS_WITH(read_events((dir / "nope").string()), doctest::Contains("nope"));
  }
}

TEST_CASE("a well-framed record with a broken protobuf is rejected") {
  const fs::path dir = fresh_dir("badproto");
  const fs::path p = dir / "events.out.tfevents.0.x";
  // Event.summary (field 5) claims 100 bytes but holds 1.
  std::ofstream(p, std::ios::binary) << frame_record(bytes({0x2a, 100, 0}));
  CHECK_THROWS_WITH_AS(read_events(p.string()), doctest::Contains("runs past the end"), EventFormatError);
}
