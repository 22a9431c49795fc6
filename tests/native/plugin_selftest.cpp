// Loads libeaglex_tree_attention_trt.so the way IPluginRegistry::loadLibrary does (dlopen + getCreators)
// and checks what TensorRT will ask of the plugin at build time, without TensorRT's runtime or a GPU:
// creator fields, attribute parsing, aliasing, output types and shapes, format combinations, configure
// checks and the serialise/recreate round trip. Prints one line per failed check; exit status = failures.
#include <NvInferRuntime.h>
#include <dlfcn.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>

using namespace nvinfer1;

namespace {

int failures = 0;

void check(bool ok, char const* what) {
    if (!ok) {
        std::printf("FAIL %s\n", what);
        ++failures;
    }
}

DynamicPluginTensorDesc tensor(DataType type, std::initializer_list<int64_t> dims) {
    DynamicPluginTensorDesc desc{};
    desc.desc.type = type;
    desc.desc.format = TensorFormat::kLINEAR;
    desc.desc.dims.nbDims = static_cast<int32_t>(dims.size());
    int i = 0;
    for (int64_t d : dims) desc.desc.dims.d[i++] = d;
    desc.min = desc.max = desc.opt = desc.desc.dims;
    return desc;
}

// query, key, value, past_key, past_value, cache_len, mask_start, tree_mask; output, present_key, present_value
void descs(DynamicPluginTensorDesc* io, DataType type, int64_t kv_heads) {
    io[0] = tensor(type, {1, 5, 9 * 64});
    io[1] = io[2] = tensor(type, {1, 5, kv_heads * 64});
    io[3] = io[4] = tensor(type, {1, kv_heads, 128, 64});
    io[5] = io[6] = tensor(DataType::kINT32, {1});
    io[7] = tensor(DataType::kINT32, {1, 5, 2});
    io[8] = io[0];
    io[9] = io[10] = io[3];
}

void check_plugin(IPluginV3* plugin) {
    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuildV2*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    check(core && build && runtime, "capability interfaces");
    check(std::strcmp(build->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD") == 0
              && build->getInterfaceInfo().major == 2,
        "the build interface is IPluginV3OneBuildV2 (aliasing)");
    check(std::strcmp(core->getPluginName(), "TreeAttention") == 0, "plugin name");
    check(build->getNbOutputs() == 3, "three outputs");
    check(build->getAliasedInput(0) == -1 && build->getAliasedInput(1) == 3 && build->getAliasedInput(2) == 4,
        "present_key/present_value alias past_key/past_value");

    DataType in[8] = {DataType::kHALF, DataType::kHALF, DataType::kHALF, DataType::kHALF, DataType::kHALF,
        DataType::kINT32, DataType::kINT32, DataType::kINT32};
    DataType out[3];
    check(build->getOutputDataTypes(out, 3, in, 8) == 0 && out[0] == DataType::kHALF && out[1] == DataType::kHALF,
        "output types follow the inputs");

    DynamicPluginTensorDesc io[11];
    descs(io, DataType::kFLOAT, 3);
    check(build->supportsFormatCombination(0, io, 8, 3), "float32 query");
    check(build->supportsFormatCombination(3, io, 8, 3), "float32 cache like the query");
    check(build->supportsFormatCombination(7, io, 8, 3), "int32 tree mask");
    check(build->supportsFormatCombination(9, io, 8, 3), "present_key like the query");
    io[3].desc.type = DataType::kHALF;
    check(!build->supportsFormatCombination(3, io, 8, 3), "a half cache with a float query is refused");
    io[7].desc.type = DataType::kFLOAT;
    check(!build->supportsFormatCombination(7, io, 8, 3), "a float tree mask is refused");
    io[0].desc.type = DataType::kINT8;
    check(!build->supportsFormatCombination(0, io, 8, 3), "an int8 query is refused");
    io[0].desc.type = DataType::kBF16;
    check(build->supportsFormatCombination(0, io, 8, 3), "bfloat16 query");
    io[0].desc.format = TensorFormat::kCHW32;
    check(!build->supportsFormatCombination(0, io, 8, 3), "non-linear formats are refused");

    descs(io, DataType::kFLOAT, 3);
    check(build->configurePlugin(io, 8, io + 8, 3) == 0, "configure: 9 heads over 3 KV heads, head dim 64");
    descs(io, DataType::kFLOAT, 2);
    check(build->configurePlugin(io, 8, io + 8, 3) != 0, "configure refuses a cache with 2 KV heads");
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::printf("usage: %s libeaglex_tree_attention_trt.so\n", argv[0]);
        return 2;
    }
    void* library = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!library) {
        std::printf("FAIL dlopen: %s\n", dlerror());
        return 1;
    }
    using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(library, "getCreators"));
    check(getCreators != nullptr, "getCreators is exported");
    check(dlsym(library, "setLoggerFinder") != nullptr, "setLoggerFinder is exported (loadLibrary needs it)");
    if (!getCreators) return failures;
    int32_t count = 0;
    IPluginCreatorInterface* const* creators = getCreators(count);
    check(count == 1, "one creator");
    auto* creator = static_cast<IPluginCreatorV3One*>(creators[0]);
    check(std::strcmp(creator->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0, "an IPluginCreatorV3One");
    check(std::strcmp(creator->getPluginName(), "TreeAttention") == 0
              && std::strcmp(creator->getPluginVersion(), "1") == 0
              && std::strcmp(creator->getPluginNamespace(), "eaglex") == 0,
        "TreeAttention, version 1, namespace eaglex");
    check(creator->getFieldNames()->nbFields == 3, "three fields");

    // As TensorRT's ONNX parser passes the node's attributes (ints may arrive as INT64).
    int64_t heads = 9, kv_heads = 3;
    float scale = 0.125f;
    char const version[] = "1";
    PluginField fields[] = {PluginField("num_heads", &heads, PluginFieldType::kINT64, 1),
        PluginField("kv_num_heads", &kv_heads, PluginFieldType::kINT64, 1),
        PluginField("scale", &scale, PluginFieldType::kFLOAT32, 1),
        PluginField("plugin_version", version, PluginFieldType::kCHAR, 1)};
    PluginFieldCollection collection{4, fields};
    IPluginV3* plugin = creator->createPlugin("attention", &collection, TensorRTPhase::kBUILD);
    check(plugin != nullptr, "createPlugin from ONNX attributes");
    if (!plugin) return failures;
    check_plugin(plugin);

    PluginFieldCollection missing{2, fields};
    check(creator->createPlugin("attention", &missing, TensorRTPhase::kBUILD) == nullptr, "scale is required");

    // What an engine stores, and what deserialisation rebuilds from it.
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    PluginFieldCollection const* stored = runtime->getFieldsToSerialize();
    IPluginV3* restored = creator->createPlugin("attention", stored, TensorRTPhase::kRUNTIME);
    check(restored != nullptr, "createPlugin from the serialised fields");
    if (restored) check_plugin(restored);
    IPluginV3* copy = plugin->clone();
    check(copy != nullptr, "clone");
    if (copy) check_plugin(copy);
    std::printf("%s: %d failed checks\n", failures ? "FAIL" : "ok", failures);
    return failures;
}
