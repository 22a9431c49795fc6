"""The `eaglex::TreeAttention` op (plugins/README.md): mask encoding, numpy reference, onnxruntime CPU
registration, CUDA kernel and TensorRT plugin sources."""
