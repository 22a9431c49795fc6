// manifest.json: the contract between exporter and runtime (docs/ARTIFACT.md), checked as
// runtime/manifest.py checks it, with the same messages.
#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include "core.h"
#include "json.h"
#include "sha256.h"

namespace eaglex {
namespace {

const char *REEXPORT = "re-run eaglex export";

bool is_dir(const std::string &p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// -1 when absent or not a regular file.
int64_t file_size(const std::string &p) {
  struct stat st;
  if (stat(p.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return -1;
  return int64_t(st.st_size);
}

int64_t integer(const Json *section, const char *key, const char *where) {
  const Json *v = section ? section->get(key) : nullptr;
  if (!v || v->kind != Json::Number)
    throw Error(EAGLEX_ERR_ARTIFACT,
                std::string("manifest.json: ") + where + " lacks " + key + "; re-export the artifact");
  return int64_t(v->number);
}

std::string text(const Json *section, const char *key, const char *where) {
  const Json *v = section ? section->get(key) : nullptr;
  if (!v || v->kind != Json::String)
    throw Error(EAGLEX_ERR_ARTIFACT,
                std::string("manifest.json: ") + where + " lacks " + key + "; re-export the artifact");
  return v->string;
}

void verify_files(const std::string &root, const Json *files, bool checksums) {
  if (!files || files->kind != Json::Object) return;
  for (const auto &[name, info] : files->object) {
    std::string path = root + "/" + name;
    int64_t size = file_size(path);
    if (size < 0) throw Error(EAGLEX_ERR_ARTIFACT, "artifact file " + path + " is missing; " + REEXPORT);
    int64_t expected = integer(&info, "bytes", "files");
    if (size != expected)
      throw Error(EAGLEX_ERR_ARTIFACT, "artifact file " + path + " has " + std::to_string(size) +
                                           " bytes, manifest says " + std::to_string(expected) +
                                           ": the file is damaged; " + REEXPORT);
    if (checksums && sha256_file(path) != text(&info, "sha256", "files"))
      throw Error(EAGLEX_ERR_ARTIFACT,
                  "artifact file " + path + " fails its sha256 checksum: it is damaged; " + REEXPORT);
  }
}

// The graphs libeaglex runs: float32 (or weight-only quantized) onnxruntime-flavoured graphs.
void check_flavour(const Json &raw, const Json *section, const char *where) {
  const Json *backend = raw.get("backend");
  if (backend && backend->kind == Json::String && backend->string != "onnxruntime")
    throw Error(EAGLEX_ERR_ARTIFACT, "this artifact's graphs are " + backend->string +
                                         "-flavoured; libeaglex runs onnxruntime-flavoured artifacts: "
                                         "re-export with eaglex export --backend onnxruntime");
  const Json *dtype = section->get("dtype");
  if (dtype && dtype->kind == Json::String && dtype->string != "float32")
    throw Error(EAGLEX_ERR_ARTIFACT, std::string("the ") + where + " graph is " + dtype->string +
                                         "; libeaglex runs float32 graphs on the CPU: re-export without "
                                         "--precision fp16");
}

}  // namespace

Manifest load_manifest(const std::string &dir, bool checksums) {
  std::string path = dir + "/manifest.json";
  if (!is_dir(dir))
    throw Error(EAGLEX_ERR_ARTIFACT, "artifact folder " + dir + " does not exist; create it with eaglex export");
  if (file_size(path) < 0)
    throw Error(EAGLEX_ERR_ARTIFACT, dir + " has no manifest.json: it is not an eaglex artifact; create one "
                                           "with eaglex export");
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  Json raw;
  try {
    raw = parse_json(buffer.str());
  } catch (const std::runtime_error &e) {
    throw Error(EAGLEX_ERR_ARTIFACT, path + " is not valid JSON (" + e.what() + "); " + REEXPORT);
  }
  const Json *format = raw.get("format");
  if (!format || format->kind != Json::String || format->string != "eaglex-artifact")
    throw Error(EAGLEX_ERR_ARTIFACT, path + " is not an eaglex artifact manifest");
  const Json *version = raw.get("version");
  if (!version || version->kind != Json::Number || version->number != 1)
    throw Error(EAGLEX_ERR_ARTIFACT, path + " has an unknown format version; this libeaglex reads version 1: "
                                            "re-export the artifact with a matching eaglex");
  verify_files(dir, raw.get("files"), checksums);

  Manifest m;
  m.root = dir;
  const Json *target = raw.get("target");
  if (!target || target->kind != Json::Object)
    throw Error(EAGLEX_ERR_ARTIFACT, "manifest.json has no target section; re-export the artifact");
  check_flavour(raw, target, "target");
  m.target_file = text(target, "file", "target");
  m.hidden_size = integer(target, "hidden_size", "target");
  m.num_layers = integer(target, "num_layers", "target");
  m.num_kv_heads = integer(target, "num_kv_heads", "target");
  m.head_dim = integer(target, "head_dim", "target");
  m.vocab_size = integer(target, "vocab_size", "target");
  const Json *drafter = raw.get("drafter");
  if (drafter && drafter->kind == Json::Object) {
    check_flavour(raw, drafter, "drafter");
    m.drafter_file = text(drafter, "file", "drafter");
    m.drafter_hidden = integer(drafter, "hidden_size", "drafter");
    m.drafter_kv_heads = integer(drafter, "num_kv_heads", "drafter");
    m.drafter_head_dim = integer(drafter, "head_dim", "drafter");
    m.max_top_k = integer(drafter, "max_top_k", "drafter");
  }
  const Json *tree = raw.get("tree");
  m.tree_top_k = integer(tree, "top_k", "tree");
  m.tree_depth = integer(tree, "depth", "tree");
  m.tree_total_tokens = integer(tree, "total_tokens", "tree");
  m.tree_max_total_tokens = integer(tree, "max_total_tokens", "tree");
  const Json *speculative = tree ? tree->get("speculative") : nullptr;  // omitted: true (older manifests)
  if (speculative && speculative->kind == Json::Bool) m.tree_speculative = speculative->boolean;
  const Json *ngram = tree ? tree->get("ngram") : nullptr;  // omitted: 0 (no prompt lookup)
  if (ngram && ngram->kind == Json::Number) m.tree_ngram = int64_t(ngram->number);
  for (auto [name, value] : {std::pair{"min_path_probability", &m.tree_min_path_probability},
                             std::pair{"min_grow_probability", &m.tree_min_grow_probability}}) {
    const Json *cut = tree ? tree->get(name) : nullptr;  // omitted: 0 (no cut)
    if (cut && cut->kind == Json::Number) *value = cut->number;
  }
  const Json *tokens = raw.get("tokens");
  const Json *eos = tokens ? tokens->get("eos_token_ids") : nullptr;
  if (eos && eos->kind == Json::Array) {
    for (const Json &id : eos->array)
      if (id.kind == Json::Number) m.eos_token_ids.push_back(int64_t(id.number));
  } else if (eos && eos->kind == Json::Number) {
    m.eos_token_ids.push_back(int64_t(eos->number));
  }
  return m;
}

}  // namespace eaglex
