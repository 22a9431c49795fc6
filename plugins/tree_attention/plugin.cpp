// The TensorRT plugin of eaglex::TreeAttention (plugins/README.md): an IPluginV3 whose present_key and
// present_value outputs alias its past_key and past_value inputs (IPluginV3OneBuildV2::getAliasedInput,
// TensorRT 10.3+ with PreviewFeature::kALIASED_PLUGIN_IO_10_03), so the KV cache is written in place.
//
// TensorRT's ONNX parser maps the graphs' TreeAttention nodes here by op type, plugin_version and
// plugin_namespace. The library is loaded with IPluginRegistry::loadLibrary (or trtexec --dynamicPlugins),
// which calls getCreators() below; engines then run from C++ without Python.
#include <NvInferRuntime.h>

#include <cstdio>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "kernel.h"

using namespace nvinfer1;

namespace {

constexpr char kName[] = "TreeAttention";
constexpr char kVersion[] = "1";
constexpr char kNamespace[] = "eaglex";

enum Input : int32_t { kQuery, kKey, kValue, kPastKey, kPastValue, kCacheLen, kMaskStart, kTreeMask, kInputs };
enum Output : int32_t { kOut, kPresentKey, kPresentValue, kOutputs };

struct Attributes {
    int32_t num_heads = 0;
    int32_t kv_num_heads = 0;
    float scale = 0.0f;
};

void report(char const* message) {
    std::fprintf(stderr, "eaglex TreeAttention plugin: %s\n", message);
}

bool floating(DataType type) {
    return type == DataType::kFLOAT || type == DataType::kHALF || type == DataType::kBF16;
}

class TreeAttentionPlugin final : public IPluginV3,
                                  public IPluginV3OneCore,
                                  public IPluginV3OneBuildV2,
                                  public IPluginV3OneRuntime {
public:
    explicit TreeAttentionPlugin(Attributes attributes) : mAttributes(attributes) {}

    IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override {
        switch (type) {
            case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
            case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuildV2*>(this);
            case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    }

    IPluginV3* clone() noexcept override { return new (std::nothrow) TreeAttentionPlugin(mAttributes); }

    AsciiChar const* getPluginName() const noexcept override { return kName; }
    AsciiChar const* getPluginVersion() const noexcept override { return kVersion; }
    AsciiChar const* getPluginNamespace() const noexcept override { return kNamespace; }

    int32_t getNbOutputs() const noexcept override { return kOutputs; }

    int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
        int32_t nbInputs) const noexcept override {
        if (nbInputs != kInputs || nbOutputs != kOutputs) return -1;
        outputTypes[kOut] = inputTypes[kQuery];
        outputTypes[kPresentKey] = inputTypes[kPastKey];
        outputTypes[kPresentValue] = inputTypes[kPastValue];
        return 0;
    }

    int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
        int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& /*builder*/) noexcept override {
        if (nbInputs != kInputs || nbOutputs != kOutputs) return -1;
        outputs[kOut] = inputs[kQuery];
        outputs[kPresentKey] = inputs[kPastKey];
        outputs[kPresentValue] = inputs[kPastValue];
        return 0;
    }

    // Linear layouts; the three int32 inputs stay int32; every float tensor has the query's type.
    bool supportsFormatCombination(
        int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept override {
        if (nbInputs != kInputs || nbOutputs != kOutputs || pos < 0 || pos >= kInputs + kOutputs) return false;
        PluginTensorDesc const& desc = inOut[pos].desc;
        if (desc.format != TensorFormat::kLINEAR) return false;
        if (pos == kCacheLen || pos == kMaskStart || pos == kTreeMask) return desc.type == DataType::kINT32;
        if (pos == kQuery) return floating(desc.type);
        return desc.type == inOut[kQuery].desc.type;
    }

    int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/,
        int32_t nbOutputs) noexcept override {
        if (nbInputs != kInputs || nbOutputs != kOutputs) return -1;
        Dims const& cache = in[kPastKey].desc.dims;
        Dims const& query = in[kQuery].desc.dims;
        if (cache.nbDims != 4 || query.nbDims != 3 || in[kTreeMask].desc.dims.nbDims != 3) {
            report("expects query [1, S, heads*D], caches [1, kv, M, D] and tree_mask [1, S, W]");
            return -1;
        }
        int64_t head_dim = cache.d[3];
        if (mAttributes.num_heads <= 0 || mAttributes.kv_num_heads <= 0
            || mAttributes.num_heads % mAttributes.kv_num_heads != 0 || cache.d[1] != mAttributes.kv_num_heads) {
            report("num_heads must be a multiple of kv_num_heads, which must match the cache's dimension 1");
            return -1;
        }
        if (head_dim <= 0 || head_dim > EAGLEX_MAX_HEAD_DIM
            || (query.d[2] >= 0 && query.d[2] != mAttributes.num_heads * head_dim)) {
            report("head_dim (the caches' last dimension) must be at most 256 and divide the query width");
            return -1;
        }
        return 0;
    }

    int32_t getAliasedInput(int32_t outputIndex) noexcept override {
        if (outputIndex == kPresentKey) return kPastKey;
        if (outputIndex == kPresentValue) return kPastValue;
        return -1;
    }

    int32_t onShapeChange(PluginTensorDesc const* /*in*/, int32_t nbInputs, PluginTensorDesc const* /*out*/,
        int32_t nbOutputs) noexcept override {
        return nbInputs == kInputs && nbOutputs == kOutputs ? 0 : -1;
    }

    int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
        void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept override {
        DataType type = inputDesc[kQuery].type;
        int dtype = type == DataType::kFLOAT ? EAGLEX_FLOAT32 : type == DataType::kHALF ? EAGLEX_FLOAT16 : EAGLEX_BFLOAT16;
        Dims const& cache = inputDesc[kPastKey].dims;
        // The present outputs alias the past inputs: writing through them updates the caller's cache.
        int status = eaglex_tree_attention_cuda(dtype, inputs[kQuery], inputs[kKey], inputs[kValue],
            outputs[kPresentKey], outputs[kPresentValue], outputs[kOut], static_cast<int32_t const*>(inputs[kCacheLen]),
            static_cast<int32_t const*>(inputs[kMaskStart]), static_cast<int32_t const*>(inputs[kTreeMask]),
            static_cast<int>(inputDesc[kQuery].dims.d[1]), static_cast<int>(inputDesc[kTreeMask].dims.d[2]),
            mAttributes.num_heads, mAttributes.kv_num_heads, static_cast<int>(cache.d[3]), static_cast<int>(cache.d[2]),
            mAttributes.scale, stream);
        if (status != 0) report("kernel launch failed");
        return status;
    }

    IPluginV3* attachToContext(IPluginResourceContext* /*context*/) noexcept override { return clone(); }

    PluginFieldCollection const* getFieldsToSerialize() noexcept override {
        mFields = {PluginField("num_heads", &mAttributes.num_heads, PluginFieldType::kINT32, 1),
            PluginField("kv_num_heads", &mAttributes.kv_num_heads, PluginFieldType::kINT32, 1),
            PluginField("scale", &mAttributes.scale, PluginFieldType::kFLOAT32, 1)};
        mCollection.nbFields = static_cast<int32_t>(mFields.size());
        mCollection.fields = mFields.data();
        return &mCollection;
    }

private:
    Attributes mAttributes;
    std::vector<PluginField> mFields;
    PluginFieldCollection mCollection{};
};

// ONNX attributes arrive as INT32/INT64 and FLOAT32/FLOAT64 fields depending on the parser version.
bool read_int(PluginField const& field, int32_t& value) {
    if (field.length != 1 || field.data == nullptr) return false;
    if (field.type == PluginFieldType::kINT32) value = *static_cast<int32_t const*>(field.data);
    else if (field.type == PluginFieldType::kINT64) value = static_cast<int32_t>(*static_cast<int64_t const*>(field.data));
    else return false;
    return true;
}

bool read_float(PluginField const& field, float& value) {
    if (field.length != 1 || field.data == nullptr) return false;
    if (field.type == PluginFieldType::kFLOAT32) value = *static_cast<float const*>(field.data);
    else if (field.type == PluginFieldType::kFLOAT64) value = static_cast<float>(*static_cast<double const*>(field.data));
    else return false;
    return true;
}

class TreeAttentionCreator final : public IPluginCreatorV3One {
public:
    TreeAttentionCreator() {
        mFields = {PluginField("num_heads", nullptr, PluginFieldType::kINT32, 1),
            PluginField("kv_num_heads", nullptr, PluginFieldType::kINT32, 1),
            PluginField("scale", nullptr, PluginFieldType::kFLOAT32, 1)};
        mCollection.nbFields = static_cast<int32_t>(mFields.size());
        mCollection.fields = mFields.data();
    }

    IPluginV3* createPlugin(AsciiChar const* /*name*/, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept override {
        Attributes attributes;
        bool heads = false, kv_heads = false, scale = false;
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
            PluginField const& field = fc->fields[i];
            if (std::strcmp(field.name, "num_heads") == 0) heads = read_int(field, attributes.num_heads);
            else if (std::strcmp(field.name, "kv_num_heads") == 0) kv_heads = read_int(field, attributes.kv_num_heads);
            else if (std::strcmp(field.name, "scale") == 0) scale = read_float(field, attributes.scale);
        }
        if (!heads || !kv_heads || !scale) {
            report("needs the attributes num_heads, kv_num_heads (ints) and scale (float)");
            return nullptr;
        }
        return new (std::nothrow) TreeAttentionPlugin(attributes);
    }

    PluginFieldCollection const* getFieldNames() noexcept override { return &mCollection; }
    AsciiChar const* getPluginName() const noexcept override { return kName; }
    AsciiChar const* getPluginVersion() const noexcept override { return kVersion; }
    AsciiChar const* getPluginNamespace() const noexcept override { return kNamespace; }

private:
    std::vector<PluginField> mFields;
    PluginFieldCollection mCollection{};
};

}  // namespace

// IPluginRegistry::loadLibrary requires both entry points, setLoggerFinder and getCreators (a library
// without the first is refused: "SymbolAddress for setLoggerFinder could not be loaded"). The plugin
// logs nothing, so it keeps no logger finder.
extern "C" __attribute__((visibility("default"))) void setLoggerFinder(ILoggerFinder* finder) {
    (void)finder;
}

extern "C" __attribute__((visibility("default"))) IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
    static TreeAttentionCreator creator;
    static IPluginCreatorInterface* const creators[] = {&creator};
    nbCreators = 1;
    return creators;
}
