// kohya's dataset preparation scripts as sumi commands (merge_captions_to_metadata, ...):
// the files they write, byte for byte where kohya's output is fixed (metadata JSON as
// json.dumps(indent=2) writes it), run in-process on small folders the tests make.
#include <doctest/doctest.h>

#include "app/tools/caption_cleaning.h"
#include "app/tools/dataset_files.h"
#include "app/tools/image_tools.h"
#include "app/tools/tools.h"
#include "tool_run.h"
#include "core/error.h"
#include "sumi/io/safetensors.h"

#include <sumi/datasets/config.h>
#include <sumi/datasets/dataset.h>
#include <sumi/datasets/latent_cache.h>
#include <sumi/datasets/npz.h>

#include <OpenImageIO/imageio.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

namespace fs = std::filesystem;

namespace {

// A fresh, empty scratch folder for one test.
fs::path workdir(const std::string& name) {
  const fs::path dir = fs::path(SUMI_BUILD_DIR) / "tests" / "tools" / "dataset_work" / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void write(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream f(p, std::ios::binary);
  f << text;
}

std::string read(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

// Runs `sumi <tool> args...` in-process; returns its stdout.
std::string run(const std::string& tool, const std::vector<std::string>& args) { return sumi::test::run_tool(tool, args); }

// The message of the UserError `sumi <tool> args...` throws ("" if none).
std::string error_of(const std::string& tool, const std::vector<std::string>& args) {
  std::ostringstream out;
  auto* old = std::cout.rdbuf(out.rdbuf());
  std::string msg;
  try {
    int rc = 0;
    sumi::app::tools::run_tool(tool, args, rc);
  } catch (const std::exception& e) {  // UserError, or the dataset layer's ConfigError
    msg = e.what();
  } catch (...) {
    std::cout.rdbuf(old);
    throw;
  }
  std::cout.rdbuf(old);
  return msg;
}

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// Empty files are enough for the metadata tools: they only list the images.
void touch(const fs::path& p) { write(p, ""); }

}  // namespace

TEST_CASE("merge_captions_to_metadata: stems as keys, whole stripped caption files, kohya's JSON layout") {
  const fs::path d = workdir("merge_captions");
  touch(d / "img" / "b.png");
  touch(d / "img" / "a.jpg");
  touch(d / "img" / "c.Png");  // not one of kohya's extensions (glob is case-sensitive)
  touch(d / "img" / "notes.txt");
  write(d / "img" / "a.caption", "  a photo of a cat\r\nsecond line\n\n");
  write(d / "img" / "b.caption", "caf\xc3\xa9 \xe3\x80\x80\"quoted\"\x7f\xe3\x80\x80");  // é, U+3000 stripped as str.strip
  const std::string out = (d / "meta.json").string();
  const std::string log = run("merge_captions_to_metadata", {(d / "img").string(), out, "--debug"});
  CHECK(read(out) ==
        "{\n"
        "  \"a\": {\n"
        "    \"caption\": \"a photo of a cat\\nsecond line\"\n"
        "  },\n"
        "  \"b\": {\n"
        "    \"caption\": \"caf\\u00e9 \\u3000\\\"quoted\\\"\\u007f\"\n"
        "  }\n"
        "}");
  CHECK(has(log, "found 2 images."));
  CHECK(has(log, "new metadata will be created"));
  CHECK(has(log, "a a photo of a cat\nsecond line\n"));  // --debug: key and caption

  SUBCASE("out_json that exists is updated in place, other keys and order kept") {
    write(out, "{\"z\": {\"tags\": \"x\", \"train_resolution\": [512, 768]}, \"b\": {\"tags\": \"t\", \"caption\": \"old\"}}");
    const std::string log2 = run("merge_captions_to_metadata", {(d / "img").string(), out});
    CHECK(has(log2, "loading existing metadata: " + out));
    CHECK(read(out) ==
          "{\n"
          "  \"z\": {\n"
          "    \"tags\": \"x\",\n"
          "    \"train_resolution\": [\n"
          "      512,\n"
          "      768\n"
          "    ]\n"
          "  },\n"
          "  \"b\": {\n"
          "    \"tags\": \"t\",\n"
          "    \"caption\": \"caf\\u00e9 \\u3000\\\"quoted\\\"\\u007f\"\n"
          "  },\n"
          "  \"a\": {\n"
          "    \"caption\": \"a photo of a cat\\nsecond line\"\n"
          "  }\n"
          "}");
  }
  SUBCASE("--in_json is read, out_json written, the input untouched") {
    const std::string in = (d / "in.json").string();
    write(in, "{\"a\": {\"tags\": \"1girl\"}}");
    const std::string out2 = (d / "out2.json").string();
    run("merge_captions_to_metadata", {(d / "img").string(), out2, "--in_json", in, "--caption_extention", ".caption"});
    CHECK(read(in) == "{\"a\": {\"tags\": \"1girl\"}}");
    CHECK(read(out2) ==
          "{\n  \"a\": {\n    \"tags\": \"1girl\",\n    \"caption\": \"a photo of a cat\\nsecond line\"\n  },\n"
          "  \"b\": {\n    \"caption\": \"caf\\u00e9 \\u3000\\\"quoted\\\"\\u007f\"\n  }\n}");
  }
}

TEST_CASE("merge_dd_tags_to_metadata: --recursive --full_path keys are str(Path), sorted part by part") {
  const fs::path d = workdir("merge_tags");
  const std::string root = (d / "data").string();
  touch(d / "data" / "x.png");
  touch(d / "data" / "a" / "y.webp");
  touch(d / "data" / "a-b.jpg");
  write(d / "data" / "x.txt", "1girl, solo\n");
  write(d / "data" / "a" / "y.txt", "cat");
  write(d / "data" / "a-b.txt", "dog");
  write(d / "data" / "a-b.tags", "other");
  write(d / "data" / "x.tags", "xt");
  const std::string out = (d / "tags.json").string();
  run("merge_dd_tags_to_metadata", {root + "//", out, "--full_path", "--recursive"});
  // Path("<root>//") is "<root>"; Python sorts ("a", "y.webp") before ("a-b.jpg",).
  CHECK(read(out) == "{\n  \"" + root + "/a/y.webp\": {\n    \"tags\": \"cat\"\n  },\n  \"" + root +
                         "/a-b.jpg\": {\n    \"tags\": \"dog\"\n  },\n  \"" + root + "/x.png\": {\n    \"tags\": \"1girl, solo\"\n  }\n}");
  // Without --recursive only the top folder; --caption_extension picks the tag files.
  const std::string out2 = (d / "tags2.json").string();
  run("merge_dd_tags_to_metadata", {root, out2, "--caption_extension", ".tags", "--full_path"});
  CHECK(read(out2) == "{\n  \"" + root + "/a-b.jpg\": {\n    \"tags\": \"other\"\n  },\n  \"" + root +
                          "/x.png\": {\n    \"tags\": \"xt\"\n  }\n}");
}

TEST_CASE("merge tools: bad input is refused naming the file or flag") {
  const fs::path d = workdir("merge_errors");
  touch(d / "img" / "a.png");
  const std::string out = (d / "m.json").string();
  std::string e = error_of("merge_captions_to_metadata", {(d / "img").string(), out});
  CHECK(has(e, (d / "img" / "a.caption").string()));
  CHECK(has(e, "caption file of"));
  CHECK(!fs::exists(out));
  e = error_of("merge_dd_tags_to_metadata", {(d / "img").string(), out, "--recursive"});
  CHECK(has(e, "--recursive needs --full_path"));
  e = error_of("merge_dd_tags_to_metadata", {(d / "img").string(), out, "--caption_extension", "txt"});
  CHECK(has(e, "--caption_extension 'txt'"));
  e = error_of("merge_dd_tags_to_metadata", {(d / "nope").string(), out});
  CHECK(has(e, "train_data_dir"));
  CHECK(has(e, "is not a folder"));
  write(d / "img" / "a.txt", "\xff\xfe tags");
  e = error_of("merge_dd_tags_to_metadata", {(d / "img").string(), out});
  CHECK(has(e, "is not UTF-8"));
  write(d / "img" / "a.txt", "tags");
  write(out, "[1, 2]");
  e = error_of("merge_dd_tags_to_metadata", {(d / "img").string(), out});
  CHECK(has(e, "out_json '" + out + "' is not kohya's metadata"));
  e = error_of("merge_dd_tags_to_metadata", {(d / "img").string(), out, "--in_json", (d / "missing.json").string()});
  CHECK(has(e, "--in_json"));
  CHECK(has(e, "missing.json"));
  e = error_of("merge_dd_tags_to_metadata", {(d / "img").string(), out, "--tag_extension", ".txt"});
  CHECK(has(e, "unknown option '--tag_extension'"));
}

TEST_CASE("clean_tags: kohya's rules") {
  using sumi::app::tools::clean_tags;
  // Underscores, but not in ^_^.
  CHECK(clean_tags("long_hair, ^_^, smile").tags == "long hair, ^_^, smile");
  // DeepDanbooru rating tail cut.
  CHECK(clean_tags("1girl, solo, rating:safe").tags == "1girl, solo");
  auto r = clean_tags("1girl, rating:safe, rating:questionable");
  CHECK(r.tags == "1girl");
  CHECK(r.multiple_ratings);
  CHECK(r.rating_report == "1girl, rating:safe, rating:questionable");
  // Single word dropped when a longer tag ends with it.
  CHECK(clean_tags("shirt, white shirt, skirt").tags == "white shirt, skirt");
  CHECK(clean_tags("hair ornament, red hair ornament, hat").tags == "red hair ornament, hat");
  CHECK(clean_tags("shirt, skirt").tags == "shirt, skirt");
  // One person: colour tags stay even when several.
  CHECK(clean_tags("1girl, blonde hair, blue hair, blue eyes, red eyes").tags == "1girl, blonde hair, blue hair, blue eyes, red eyes");
  // Several people: two eye colours / hair colours go; the single hair length stays.
  CHECK(clean_tags("2girls, long hair, blonde hair, black hair, blue eyes, red eyes, smile").tags == "2girls, long hair, smile");
  // Two hair lengths both go; one hair style alone stays; two styles go.
  CHECK(clean_tags("2girls, long hair, short hair, ponytail, smile").tags == "2girls, ponytail, smile");
  CHECK(clean_tags("multiple boys, twintails, hair bun, sidelocks").tags == "multiple boys");
  CHECK(clean_tags("2girls, long sleeves, sleeveless").tags == "2girls");
  // A single hair colour with several people stays.
  CHECK(clean_tags("2girls, pink hair, long hair").tags == "2girls, pink hair, long hair");
  // \w is Unicode: "é" is a word character.
  CHECK(clean_tags("2girls, bleu_clair hair, rouge hair").tags == "2girls, bleu clair hair, rouge hair");
  CHECK(clean_tags("2girls, d\xc3\xa9j\xc3\xa0 hair, rouge hair").tags == "2girls");
  CHECK(clean_tags("").tags == "");
}

TEST_CASE("clean_caption: kohya's replacement list, each until stable") {
  using sumi::app::tools::clean_caption;
  CHECK(clean_caption("an anime anime girl with a young woman") == "an girl with a girl");
  CHECK(clean_caption("a cartoon drawing of cartoon women and people") == "a drawing of girls and girls");
  CHECK(clean_caption("a lady and a person") == "a girl and a girl");
  CHECK(clean_caption("girl girl girl") == "girl");
}

TEST_CASE("clean_captions_and_tags: the metadata file cleaned, missing fields reported") {
  const fs::path d = workdir("clean");
  const std::string in = (d / "in.json").string(), out = (d / "out.json").string();
  write(in, R"({"a": {"caption": "an anime girl", "tags": "2girls, blue_eyes, red_eyes, smile"}, "b": {"caption": "a woman"}, "c": {"tags": null, "train_resolution": [512, 512]}})");
  const std::string log = run("clean_captions_and_tags", {in, out, "--debug"});
  CHECK(read(out) ==
        "{\n  \"a\": {\n    \"caption\": \"an girl\",\n    \"tags\": \"2girls, smile\"\n  },\n"
        "  \"b\": {\n    \"caption\": \"a girl\"\n  },\n"
        "  \"c\": {\n    \"tags\": null,\n    \"train_resolution\": [\n      512,\n      512\n    ]\n  }\n}");
  CHECK(has(log, "FROM: 2girls, blue_eyes, red_eyes, smile\nTO:   2girls, smile\n"));
  CHECK(has(log, "image does not have tags: b\n"));
  CHECK(has(log, "image does not have caption: c\n"));
  // kohya's old three-argument form: train_data_dir in_json out_json.
  const std::string out3 = (d / "out3.json").string();
  const std::string log3 = run("clean_captions_and_tags", {d.string(), in, out3});
  CHECK(has(log3, "train_data_dir argument is removed"));
  CHECK(read(out3) == read(out));
  // Errors name the file.
  std::string e = error_of("clean_captions_and_tags", {(d / "none.json").string(), out});
  CHECK(has(e, "none.json"));
  write(in, R"({"a": {"tags": 3}})");
  e = error_of("clean_captions_and_tags", {in, out});
  CHECK(has(e, "\"a\".tags is not a string"));
}

namespace {

sumi::app::tools::GrayImage read_gray(const std::string& path) {
  const sumi::datasets::Image rgb = sumi::datasets::read_image(path);
  sumi::app::tools::GrayImage g;
  g.width = rgb.width;
  g.height = rgb.height;
  for (size_t i = 0; i < rgb.rgb.size(); i += 3) g.pixels.push_back(rgb.rgb[i]);
  return g;
}

std::string dataset_data(const std::string& name) { return std::string(SUMI_TEST_DATA) + "/tools/dataset/" + name; }

void write_rgb(const fs::path& path, const sumi::datasets::Image& img) {
  auto out = OIIO::ImageOutput::create(path.string());
  REQUIRE(out);
  REQUIRE(out->open(path.string(), OIIO::ImageSpec(img.width, img.height, 3, OIIO::TypeDesc::UINT8)));
  REQUIRE(out->write_image(OIIO::TypeDesc::UINT8, img.rgb.data()));
  out->close();
}

sumi::datasets::Image solid(int w, int h, uint8_t r, uint8_t g, uint8_t b) {
  sumi::datasets::Image img;
  img.width = w;
  img.height = h;
  for (int i = 0; i < w * h; ++i) img.rgb.insert(img.rgb.end(), {r, g, b});
  return img;
}

}  // namespace

TEST_CASE("canny: cv2.cvtColor + cv2.Canny's output exactly (OpenCV 4.6 goldens)") {
  using namespace sumi::app::tools;
  const auto input = sumi::datasets::read_image(dataset_data("canny_input.png"));
  const GrayImage gray = to_gray(input);
  CHECK(gray.pixels == read_gray(dataset_data("gray_ref.png")).pixels);
  for (auto [t1, t2] : {std::pair{32, 224}, std::pair{100, 50}, std::pair{10, 60}}) {
    INFO("thresholds " << t1 << " " << t2);
    const GrayImage want = read_gray(dataset_data("canny_" + std::to_string(t1) + "_" + std::to_string(t2) + ".png"));
    const GrayImage got = canny(gray, t1, t2);
    REQUIRE(got.width == want.width);
    REQUIRE(got.height == want.height);
    int diff = 0;
    for (size_t i = 0; i < got.pixels.size(); ++i) diff += got.pixels[i] != want.pixels[i];
    CHECK(diff == 0);
  }
  // The command: a one-channel image of the input's size.
  const fs::path d = workdir("canny");
  const std::string out = (d / "edges.png").string();
  CHECK(has(run("canny", {"--input", dataset_data("canny_input.png"), "--output", out}), "done!"));
  auto in = OIIO::ImageInput::open(out);
  REQUIRE(in);
  CHECK(in->spec().nchannels == 1);
  CHECK(in->spec().width == 48);
  CHECK(in->spec().height == 40);
  in->close();
  CHECK(read_gray(out).pixels == read_gray(dataset_data("canny_32_224.png")).pixels);
  // A step edge: one pixel wide, on the dark side's last column (OpenCV's tie rule).
  GrayImage step;
  step.width = 8;
  step.height = 4;
  for (int y = 0; y < 4; ++y)
    for (int x = 0; x < 8; ++x) step.pixels.push_back(x < 4 ? 0 : 255);
  const GrayImage e = canny(step, 32, 224);
  for (int y = 0; y < 4; ++y)
    for (int x = 0; x < 8; ++x) CHECK(e.pixels[y * 8 + x] == (x == 3 ? 255 : 0));
  CHECK(canny(step, 1020, 1021).pixels == std::vector<uint8_t>(32, 0));  // |dx| = 4*255 = 1020 is not above 1020
  // Errors name the flag / file.
  CHECK(has(error_of("canny", {"--output", out}), "--input is required"));
  CHECK(has(error_of("canny", {"--input", (d / "none.png").string(), "--output", out}), "none.png"));
  CHECK(has(error_of("canny", {"--input", out, "--output", out}), "is the input image"));
  CHECK(has(error_of("canny", {"--input", dataset_data("canny_input.png"), "--output", out, "--thres1", "a"}), "--thres1 'a'"));
}

TEST_CASE("resize_plan: kohya's area scaling, truncation and divisible crop") {
  using sumi::app::tools::resize_plan;
  // 1000x600 to 512x512: s = sqrt(262144/600000) -> 660x396, divisible by 8 -> 656x392.
  auto p = resize_plan({1000, 600}, 512 * 512, 8);
  CHECK(p.resized);
  CHECK(p.scaled == sumi::datasets::Size{660, 396});
  CHECK(p.cropped == sumi::datasets::Size{656, 392});
  // Small enough: not scaled, only cropped.
  p = resize_plan({300, 201}, 512 * 512, 2);
  CHECK(!p.resized);
  CHECK(p.scaled == sumi::datasets::Size{300, 201});
  CHECK(p.cropped == sumi::datasets::Size{300, 200});
}

TEST_CASE("resize_images_to_resolution: cascading sizes, kohya's names, copies, centre crop") {
  const fs::path d = workdir("resize");
  const fs::path src = d / "src", dst = d / "dst";
  fs::create_directories(src);
  // 1000x600, left half red, right half blue.
  auto img = solid(1000, 600, 255, 0, 0);
  for (int y = 0; y < 600; ++y)
    for (int x = 500; x < 1000; ++x) img.pixel(x, y)[0] = 0, img.pixel(x, y)[2] = 255;
  write_rgb(src / "photo.png", img);
  write_rgb(src / "small.bmp", solid(30, 21, 10, 200, 30));
  write(src / "photo.caption", "a photo");
  write(src / "photo.txt", "tags");
  write(src / "readme.md", "notes");
  const std::string log = run("resize_images_to_resolution",
                              {src.string(), dst.string(), "--max_resolution", "512x512, 256x256", "--divisible_by", "8",
                               "--save_as_png", "--copy_associated_files"});
  auto size_of = [](const fs::path& p) {
    auto in = OIIO::ImageInput::open(p.string());
    REQUIRE(in);
    const auto s = sumi::datasets::Size{in->spec().width, in->spec().height};
    in->close();
    return s;
  };
  // 1000x600 -> 660x396 -> crop 656x392; then 256x256 of 656x392: s = sqrt(65536/257152) -> 331x197 -> 328x192.
  CHECK(size_of(dst / "photo+512x512.png") == sumi::datasets::Size{656, 392});
  CHECK(size_of(dst / "photo+256x256.png") == sumi::datasets::Size{328, 192});
  CHECK(has(log, "Resized image: photo.png with size 392x656 as photo+512x512.png\n"));
  CHECK(has(log, "Resized image: photo.png with size 192x328 as photo+256x256.png\n"));
  // Not shrunk, only cropped to multiples of 8 (30x21 -> 24x16), saved at each resolution.
  CHECK(size_of(dst / "small+512x512.png") == sumi::datasets::Size{24, 16});
  CHECK(has(log, "Saved image: small.bmp with size 16x24 as small+512x512.png\n"));
  const auto small = sumi::datasets::read_image((dst / "small+256x256.png").string());
  CHECK((int)small.pixel(5, 5)[1] == 200);
  // The colours stay where they were: the centre crop keeps the halves.
  const auto big = sumi::datasets::read_image((dst / "photo+512x512.png").string());
  CHECK((int)big.pixel(10, 100)[0] == 255);
  CHECK((int)big.pixel(10, 100)[2] == 0);
  CHECK((int)big.pixel(645, 100)[2] == 255);
  // Other files copied as they are, and renamed per resolution with --copy_associated_files.
  CHECK(read(dst / "readme.md") == "notes");
  CHECK(read(dst / "photo.caption") == "a photo");
  CHECK(read(dst / "photo+512x512.caption") == "a photo");
  CHECK(read(dst / "photo+256x256.txt") == "tags");
  CHECK(!fs::exists(dst / "small+512x512.caption"));
  CHECK(read(src / "photo.caption") == "a photo");
  // JPEG by default.
  const fs::path dst2 = d / "dst2";
  run("resize_images_to_resolution", {src.string(), dst2.string(), "--max_resolution", "128x128", "--interpolation", "lanczos4"});
  CHECK(size_of(dst2 / "photo+128x128.jpg") == sumi::datasets::Size{165, 99});
  // Errors.
  CHECK(has(error_of("resize_images_to_resolution", {src.string(), dst2.string(), "--max_resolution", "512"}),
            "'512' is not WIDTHxHEIGHT"));
  CHECK(has(error_of("resize_images_to_resolution", {src.string(), dst2.string(), "--divisible_by", "0"}),
            "--divisible_by must be at least 1"));
  CHECK(has(error_of("resize_images_to_resolution", {src.string(), src.string()}), "is the source folder"));
  CHECK(has(error_of("resize_images_to_resolution", {src.string(), dst2.string(), "--interpolation", "linear"}),
            "--interpolation 'linear' is not one of area, cubic, lanczos4"));
  write(src / "broken.png", "not a png");
  CHECK(has(error_of("resize_images_to_resolution", {src.string(), dst2.string()}), "broken.png"));
}

namespace {

// A picture with some structure (so the VAE sees more than a flat colour).
sumi::datasets::Image pattern(int w, int h, int seed) {
  sumi::datasets::Image img = solid(w, h, 0, 0, 0);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      auto* p = img.pixel(x, y);
      p[0] = static_cast<uint8_t>((x * 7 + seed * 40) % 256);
      p[1] = static_cast<uint8_t>((y * 5 + seed * 90) % 256);
      p[2] = static_cast<uint8_t>(((x ^ y) * 3) % 256);
    }
  return img;
}

std::string fixture(const std::string& name) { return std::string(SUMI_TEST_DATA) + "/fixtures/" + name; }

}  // namespace

TEST_CASE("prepare_buckets_latents: kohya's buckets in the metadata, .npz latents the trainer's cache reuses") {
  namespace ds = sumi::datasets;
  const fs::path d = workdir("prepare");
  const fs::path img = d / "img";
  fs::create_directories(img);
  write_rgb(img / "wide.png", pattern(96, 64, 1));
  write_rgb(img / "square.png", pattern(64, 64, 2));
  write_rgb(img / "tall.png", pattern(40, 120, 3));
  for (const char* n : {"wide", "square", "tall"}) write(img / (std::string(n) + ".caption"), std::string("a ") + n + " picture");
  const std::string in = (d / "captions.json").string(), out = (d / "meta.json").string();
  run("merge_captions_to_metadata", {img.string(), in});
  const std::vector<std::string> common{img.string(), in, out, fixture("tiny-sd1.safetensors"), "--max_resolution", "64,64",
                                        "--min_bucket_reso", "32", "--max_bucket_reso", "128", "--bucket_reso_steps", "32",
                                        "--batch_size", "2", "--flip_aug", "--plugin-dir", SUMI_PLUGIN_DIR};
  const std::string log = run("prepare_buckets_latents", common);
  // kohya's buckets for 64x64 with steps 32 in [32, 128]: (32,96) (32,128) (64,64) (96,32) (128,32);
  // 96x64 (ar 1.5) goes to (64,64), 40x120 to (32,96), entries in the input's key order.
  CHECK(read(out) ==
        "{\n"
        "  \"square\": {\n    \"caption\": \"a square picture\",\n    \"train_resolution\": [\n      64,\n      64\n    ]\n  },\n"
        "  \"tall\": {\n    \"caption\": \"a tall picture\",\n    \"train_resolution\": [\n      32,\n      96\n    ]\n  },\n"
        "  \"wide\": {\n    \"caption\": \"a wide picture\",\n    \"train_resolution\": [\n      64,\n      64\n    ]\n  }\n"
        "}");
  CHECK(has(log, "found 3 images.\n"));
  CHECK(has(log, "bucket 0 (32, 96): 1\nbucket 2 (64, 64): 2\n"));
  CHECK(has(log, "mean ar error: 0.16666666666666666\n"));
  CHECK(has(log, "latents: 3 encoded, 0 kept"));

  // The .npz beside each image, in kohya's layout.
  struct Want {
    const char* name;
    ds::Size bucket, original;
  };
  for (const Want& w : {Want{"wide", {64, 64}, {96, 64}}, Want{"square", {64, 64}, {64, 64}}, Want{"tall", {32, 96}, {40, 120}}}) {
    INFO(w.name);
    const fs::path npz = img / (std::string(w.name) + ".npz");
    const auto members = ds::read_npz(npz);
    std::vector<std::string> names;
    for (const auto& [n, a] : members) names.push_back(n);
    CHECK(names == std::vector<std::string>{"latents", "original_size", "crop_ltrb", "latents_flipped"});
    const auto* lat = ds::find_member(members, "latents");
    CHECK(lat->dtype == "<f4");
    CHECK(lat->shape == std::vector<int64_t>{4, w.bucket.height / 8, w.bucket.width / 8});
    CHECK(ds::find_member(members, "original_size")->to_doubles() == std::vector<double>{double(w.original.width), double(w.original.height)});
    const auto c = ds::read_cached_latents(npz, {w.bucket, w.original, ds::sdxl_crop_ltrb(w.bucket, w.original), true});
    REQUIRE(c.has_value());
    double sum = 0;
    for (float v : c->latents) sum += std::abs(v);
    CHECK(sum > 0);
    CHECK(c->flipped.size() == c->latents.size());
    CHECK(c->flipped != c->latents);
  }

  // The trainer's fine-tuning dataset with the same bucket settings finds every cache valid.
  ds::CliOptions cli{{"train_data_dir", img.string()}, {"in_json", out}, {"resolution", std::string("64,64")},
                     {"enable_bucket", true}, {"min_bucket_reso", 32LL}, {"max_bucket_reso", 128LL},
                     {"bucket_reso_steps", 32LL}, {"flip_aug", true}, {"caption_extension", std::string(".caption")}};
  const auto group = ds::config_from_arguments(cli);
  const auto dataset = ds::Dataset::build(group.datasets.at(0));
  REQUIRE(dataset.items().size() == 3);
  for (size_t i = 0; i < dataset.items().size(); ++i) {
    std::string why;
    INFO(dataset.items()[i].path.string());
    CHECK(ds::read_cached_latents(ds::latents_npz_path(dataset.items()[i].path), ds::latent_key(dataset, i), &why).has_value());
    CHECK(why.empty());
  }

  // --skip_existing keeps matching files; without it every image is encoded again.
  const auto before = read(img / "tall.npz");
  auto skip = common;
  skip.push_back("--skip_existing");
  CHECK(has(run("prepare_buckets_latents", skip), "latents: 0 encoded, 3 kept"));
  CHECK(read(img / "tall.npz") == before);
  CHECK(has(run("prepare_buckets_latents", common), "latents: 3 encoded, 0 kept"));

  // Errors name the argument.
  auto bad = common;
  bad[1] = (d / "none.json").string();
  CHECK(has(error_of("prepare_buckets_latents", bad), "in_json '" + bad[1] + "' does not exist"));
  bad = common;
  bad[5] = "64x64";
  CHECK(has(error_of("prepare_buckets_latents", bad), "--max_resolution '64x64' is not 'width,height'"));
  bad = common;
  bad.insert(bad.end(), {"--mixed_precision", "fp16"});
  CHECK(has(error_of("prepare_buckets_latents", bad), "--mixed_precision fp16"));
  // A family flag must name the model the file is, as the model plugins say.
  bad = common;
  bad.push_back("--sdxl");
  CHECK(has(error_of("prepare_buckets_latents", bad), "model_name_or_path '" + fixture("tiny-sd1.safetensors") +
                                                          "': --sdxl was given, but the file is loaded by model component 'sd1'"));
}

TEST_CASE("convert_diffusers20_original_sd: sumi convert with kohya's flags and precision rules") {
  const fs::path d = workdir("convert");
  const std::string folder = (d / "diffusers").string(), back = (d / "back.safetensors").string();
  // Checkpoint -> Diffusers (no extension): float32.
  run("convert_diffusers20_original_sd", {"--v1", fixture("tiny-sd1.safetensors"), folder, "--plugin-dir", SUMI_PLUGIN_DIR});
  CHECK(fs::is_directory(fs::path(folder) / "unet"));
  // Diffusers -> checkpoint with --fp16: every floating tensor float16.
  const std::string log = run("convert_diffusers20_original_sd", {folder, back, "--fp16", "--plugin-dir", SUMI_PLUGIN_DIR});
  CHECK(has(log, "converting and saving as checkpoint in fp16: " + back));
  CHECK(has(log, "model saved."));
  auto f = sumi::io::SafetensorsFile::open(back);
  size_t n = 0;
  for (const auto& t : f->tensors())
    if (t.dtype.rfind("F", 0) == 0 || t.dtype == "BF16") {
      CHECK(t.dtype == "F16");
      ++n;
    }
  CHECK(n > 0);
  // Errors.
  CHECK(has(error_of("convert_diffusers20_original_sd", {"--v1", "--v2", fixture("tiny-sd1.safetensors"), back}), "--v1 and --v2"));
  CHECK(has(error_of("convert_diffusers20_original_sd", {"--v2", fixture("tiny-sd1.safetensors"), back, "--plugin-dir", SUMI_PLUGIN_DIR}),
            "model_to_load '" + fixture("tiny-sd1.safetensors") + "': --v2 was given"));
  CHECK(has(error_of("convert_diffusers20_original_sd", {"--v1", fixture("tiny-sd2v.safetensors"), back, "--plugin-dir", SUMI_PLUGIN_DIR}),
            "--v1 was given, but the file is loaded by model component 'sd2', which kohya's --v2 names"));
  CHECK(has(error_of("convert_diffusers20_original_sd", {fixture("tiny-sd1.safetensors"), (d / "x.ckpt").string()}),
            "sumi writes .safetensors"));
  CHECK(has(error_of("convert_diffusers20_original_sd", {fixture("tiny-sd1.safetensors"), folder, "--bf16"}),
            "a Diffusers folder is saved in the precision it is loaded in"));
  CHECK(has(error_of("convert_diffusers20_original_sd", {fixture("tiny-sd1.safetensors"), folder, "--reference_model", "x"}),
            "--reference_model is not supported"));
}

TEST_CASE("cache_latents: a training command line's datasets, latents in the trainer's .npz") {
  namespace ds = sumi::datasets;
  const fs::path d = workdir("cache_latents");
  const fs::path sub = d / "train" / "2_cat";
  fs::create_directories(sub);
  write_rgb(sub / "a.png", pattern(64, 64, 4));
  write_rgb(sub / "b.png", pattern(80, 48, 5));
  const std::vector<std::string> args{"--pretrained_model_name_or_path", fixture("tiny-sd1.safetensors"), "--train_data_dir",
                                      (d / "train").string(), "--resolution", "64,64", "--enable_bucket", "--min_bucket_reso",
                                      "32", "--max_bucket_reso", "128", "--bucket_reso_steps", "32", "--cache_latents_to_disk",
                                      "--vae_batch_size", "2", "--plugin-dir", SUMI_PLUGIN_DIR};
  CHECK(has(run("cache_latents", args), "Finished caching latents: 2 encoded, 0 skipped"));
  // The keys the trainer computes for this dataset accept the files.
  const auto group = ds::config_from_arguments({{"train_data_dir", (d / "train").string()}, {"resolution", std::string("64,64")},
                                                {"enable_bucket", true}, {"min_bucket_reso", 32LL}, {"max_bucket_reso", 128LL},
                                                {"bucket_reso_steps", 32LL}});
  const auto dataset = ds::Dataset::build(group.datasets.at(0));
  REQUIRE(dataset.items().size() == 2);
  for (size_t i = 0; i < 2; ++i) {
    std::string why;
    const auto c = ds::read_cached_latents(ds::latents_npz_path(dataset.items()[i].path), ds::latent_key(dataset, i), &why);
    CHECK(c.has_value());
    CHECK(why.empty());
  }
  const auto before = read(sub / "b.npz");
  auto skip = args;
  skip.push_back("--skip_existing");
  const std::string log = run("cache_latents", skip);
  CHECK(has(log, "Skipping " + (sub / "a.npz").string() + " because it already exists."));
  CHECK(has(log, "0 encoded, 2 skipped"));
  CHECK(read(sub / "b.npz") == before);
  // kohya's script requires --cache_latents_to_disk; color_aug cannot be cached.
  auto no_disk = args;
  no_disk.erase(std::find(no_disk.begin(), no_disk.end(), "--cache_latents_to_disk"));
  CHECK(has(error_of("cache_latents", no_disk), "--cache_latents_to_disk is required"));
  auto aug = args;
  aug.push_back("--color_aug");
  CHECK(has(error_of("cache_latents", aug), "color_aug"));
}

TEST_CASE("cache_text_encoder_outputs: SDXL captions into <stem>_te_outputs.npz the trainer reads") {
  namespace ds = sumi::datasets;
  const fs::path d = workdir("cache_te");
  const fs::path sub = d / "train" / "1_dog";
  fs::create_directories(sub);
  write_rgb(sub / "a.png", pattern(64, 64, 6));
  write(sub / "a.caption", "a dog");
  const std::vector<std::string> args{"--pretrained_model_name_or_path", fixture("tiny-sdxl.safetensors"), "--train_data_dir",
                                      (d / "train").string(), "--resolution", "64,64", "--cache_text_encoder_outputs_to_disk",
                                      "--sdxl", "--plugin-dir", SUMI_PLUGIN_DIR};
  CHECK(has(run("cache_text_encoder_outputs", args), "1 encoded"));
  const auto m = ds::read_npz(sub / "a_te_outputs.npz");
  std::vector<std::string> names;
  for (const auto& [n, a] : m) names.push_back(n);
  CHECK(names == std::vector<std::string>{"hidden_state1", "hidden_state2", "pool2", "caption"});
  CHECK(ds::find_member(m, "hidden_state1")->shape.size() == 2);
  CHECK(has(run("cache_text_encoder_outputs", args), "0 encoded, 1 reused"));
  auto no_sdxl = args;
  no_sdxl.erase(std::find(no_sdxl.begin(), no_sdxl.end(), "--sdxl"));
  CHECK(has(error_of("cache_text_encoder_outputs", no_sdxl), "--sdxl is required"));
  auto sd1 = args;
  sd1[1] = fixture("tiny-sd1.safetensors");
  CHECK(has(error_of("cache_text_encoder_outputs", sd1), "--sdxl was given, but the file is loaded by model component 'sd1'"));
}
