// Untrusted JSON (config.json, preprocessor_config.json): nesting is bounded while parsing, so that nothing
// recursive in nlohmann::json (dump(), copies, comparisons) can run out of stack on a hostile file.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "perceiver/error.h"

namespace perceiver {

constexpr int kMaxJsonDepth = 64;

// Parses `text`. Invalid JSON: returns a discarded value and sets *error to the parser's one-line message.
// Nesting deeper than kMaxJsonDepth: throws Error(kind, "<name>: JSON nested deeper than 64 levels").
inline nlohmann::json parse_json_bounded(const std::string& text, const std::string& name, ErrorKind kind,
                                         std::string* error) {
  auto depth_check = [&](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
    if (depth > kMaxJsonDepth)
      throw Error(kind, name + ": JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    return true;
  };
  try {
    return nlohmann::json::parse(text, depth_check, /*allow_exceptions=*/true);
  } catch (const nlohmann::json::exception& e) {
    if (error) *error = e.what();
    return nlohmann::json(nlohmann::json::value_t::discarded);
  }
}

}  // namespace perceiver
