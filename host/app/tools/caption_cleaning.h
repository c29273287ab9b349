// kohya's finetune/clean_captions_and_tags.py rules, as functions (the command is
// `sumi clean_captions_and_tags`; tests call these directly).
//
// Tags (a ", "-separated tag list from a tagger): "_" becomes " " (except in "^_^"); a
// DeepDanbooru ", rating..." tail is cut; when several people are shown ("girls" / "boys"
// anywhere), hair length, hair cut, eye colour, sleeve and hair style tags are dropped if the
// list has more than one of a kind, and "<word> hair" colour tags likewise (one hair length
// tag is kept); finally a one-word tag (or "hair ornament") is dropped when a longer tag ends
// with it ("shirt" beside "white shirt"). "Word" is Python's Unicode \w (letters, digits, "_")
// plus "-".
//
// Captions (a BLIP sentence): kohya's replacement list applied in order, each until nothing
// changes ("anime girl" -> "girl", "woman" -> "girl", "young " -> "", ...).
#pragma once

#include <string>
#include <vector>

namespace sumi::app::tools {

struct CleanedTags {
  std::string tags;
  bool multiple_ratings = false;  // kohya then prints "multiple ratings:" and the key with
  std::string rating_report;      // the tags as they were before the cut
};
CleanedTags clean_tags(const std::string& tags);
std::string clean_caption(const std::string& caption);

}  // namespace sumi::app::tools
