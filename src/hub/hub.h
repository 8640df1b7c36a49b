// Hugging Face hub downloads into the huggingface_hub cache layout (shared with Python tools).
#pragma once

#include <filesystem>
#include <string>

namespace perceiver {

struct HubOptions {
  std::string revision = "main";
  bool quiet = false;  // no progress bar, no "using cached files" notes
};

// The huggingface_hub cache folder: $HF_HUB_CACHE, else $HF_HOME/hub, else
// ${XDG_CACHE_HOME:-~/.cache}/huggingface/hub.
std::filesystem::path hub_cache_dir();

// True when `model` looks like a hub repo id ("org/name" or "name") rather than an existing directory.
bool is_hub_repo_id(const std::string& model);

// Downloads (or finds in the cache) config.json, preprocessor_config.json (optional on the hub) and
// model.safetensors, falling back to pytorch_model.bin. Returns the snapshot directory that holds them.
// Honours HF_ENDPOINT, HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE, HF_TOKEN (see docs/hub.md).
// Throws perceiver::Error(ErrorKind::network or ErrorKind::model, "<repo>/<file>: ...").
std::filesystem::path resolve_hub_model(const std::string& repo_id, const HubOptions& options = {});

}  // namespace perceiver
