#include "progress.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

struct sumi_progress_s {
  std::string label;
  int64_t total = 0;
  int64_t done = 0;
  std::chrono::steady_clock::time_point start;
  std::chrono::steady_clock::time_point last_draw;
  std::string postfix;
  bool tty = false;
  int last_decile = -1;
};

namespace sumi::host {

namespace {
std::mutex g_io;
std::atomic<int32_t> g_level{-1};

int32_t level_from_env() {
  const char* v = std::getenv("SUMI_LOG_LEVEL");
  if (!v) return SUMI_LOG_INFO;
  if (!std::strcmp(v, "debug")) return SUMI_LOG_DEBUG;
  if (!std::strcmp(v, "warn")) return SUMI_LOG_WARN;
  if (!std::strcmp(v, "error")) return SUMI_LOG_ERROR;
  return SUMI_LOG_INFO;
}

std::string clock(double s) {
  char b[32];
  int t = static_cast<int>(s);
  std::snprintf(b, sizeof b, "%02d:%02d", t / 60, t % 60);
  return b;
}

void draw(sumi_progress_s& p, bool final) {
  using namespace std::chrono;
  const auto now = steady_clock::now();
  const double elapsed = duration<double>(now - p.start).count();
  const double rate = elapsed > 0 ? p.done / elapsed : 0;
  std::string line = p.label + " ";
  if (p.total > 0) {
    const double frac = static_cast<double>(p.done) / static_cast<double>(p.total);
    const int width = 24, fill = static_cast<int>(frac * width);
    char pct[16];
    std::snprintf(pct, sizeof pct, "%3d%%|", static_cast<int>(frac * 100));
    line += pct + std::string(static_cast<size_t>(fill), '#') + std::string(static_cast<size_t>(width - fill), ' ') + "| ";
    line += std::to_string(p.done) + "/" + std::to_string(p.total);
    const double eta = rate > 0 ? (p.total - p.done) / rate : 0;
    line += " [" + clock(elapsed) + "<" + clock(eta);
  } else {
    line += std::to_string(p.done) + " [" + clock(elapsed);
  }
  char r[32];
  std::snprintf(r, sizeof r, ", %.2fit/s", rate);
  line += r;
  if (!p.postfix.empty()) line += ", " + p.postfix;
  line += "]";
  std::lock_guard<std::mutex> lock(g_io);
  if (p.tty) {
    std::fprintf(stderr, "\r%s\033[K%s", line.c_str(), final ? "\n" : "");
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  std::fflush(stderr);
  p.last_draw = now;
}
}  // namespace

sumi_progress* progress_begin(const char* label, int64_t total) {
  auto* p = new sumi_progress_s;
  p->label = label ? label : "";
  p->total = total;
  p->start = p->last_draw = std::chrono::steady_clock::now();
  p->tty = isatty(STDERR_FILENO) != 0;
  return p;
}

void progress_update(sumi_progress* p, int64_t n, const char* postfix) {
  if (!p) return;
  p->done += n;
  if (postfix) p->postfix = postfix;
  if (p->tty) {
    if (std::chrono::steady_clock::now() - p->last_draw > std::chrono::milliseconds(100)) draw(*p, false);
  } else if (p->total > 0) {
    // Logs get a line per tenth, not a line per step.
    const int decile = static_cast<int>(10 * p->done / p->total);
    if (decile != p->last_decile && p->done < p->total) {
      p->last_decile = decile;
      draw(*p, false);
    }
  }
}

void progress_end(sumi_progress* p) {
  if (!p) return;
  draw(*p, true);
  delete p;
}

void set_log_level(int32_t level) { g_level = level; }

void log(int32_t level, const char* component, const char* message) {
  if (g_level < 0) g_level = level_from_env();
  if (level < g_level) return;
  static const char* names[] = {"debug", "info", "warning", "error"};
  const char* name = level >= 0 && level <= 3 ? names[level] : "log";
  std::lock_guard<std::mutex> lock(g_io);
  if (level == SUMI_LOG_INFO) {
    std::fprintf(stderr, "[%s] %s\n", component ? component : "sumi", message ? message : "");
  } else {
    std::fprintf(stderr, "[%s] %s: %s\n", component ? component : "sumi", name, message ? message : "");
  }
}

}  // namespace sumi::host
