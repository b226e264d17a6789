#!/usr/bin/env python3
"""Builds the ONNX import-test fixtures and their ONNX Runtime reference outputs.

    python scripts/onnx-fixtures.py FIXTURES_DIR

FIXTURES_DIR is the directory filled by scripts/fetch-fixtures.sh (m1.pth, m2.pth, mnist/,
photos/, imagenet_classes.txt). Everything is written to FIXTURES_DIR/onnx/:

* <name>.onnx for the light models that ship with the onnx wheel (backend/test/data/light:
  resnet50, vgg19, squeezenet, densenet121, inception_v1, inception_v2, shufflenet). Their weights are ConstantOfShape placeholders (plus a few real
  initializers); every float weight is replaced by a seeded random initializer (He-scaled for
  Conv/Gemm, plausible BatchNorm statistics), so that the image is the only graph input.
* m1.onnx (the MNIST CNN of m1.pth), m2.onnx (torchvision MobileNetV2 from m2.pth, BatchNorm
  folded into the convolutions as torch.onnx.export does in eval mode) and m2-bn.onnx (the same
  with BatchNormalization nodes kept). The checkpoints are read without torch.
* <name>.input.npy / <name>.output.npy: a seeded N(0, 1) input (default_rng(1234); batch 2
  where the batch dimension is dynamic) and the first output of ONNX Runtime (CPU, graph
  optimisations disabled). Also m1.mnist64.* (the first 64 MNIST test images) and m2.photos.*
  (FIXTURES_DIR/photos/*.png).
* ppocr-{cls,det,rec}.input.npy / .output.npy: the same for FIXTURES_DIR/ppocr/*.onnx (real
  PP-OCR exports, fetched before this script runs) at the input shapes of PPOCR_INPUTS.
* README.txt: one line per file saying where it comes from.

Needs numpy, onnx (1.23.2), onnxruntime (1.32.0) and Pillow (photo references). The
output is deterministic, so running it again rewrites identical files.
"""

import argparse
import collections
import glob
import io
import os
import pickle
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from PIL import Image, ImageDraw

LIGHT_MODELS = (
    "resnet50",
    "vgg19",
    "squeezenet",
    "densenet121",
    "inception_v1",
    "inception_v2",
    "shufflenet",
)
LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")

M2_OPSET = 17
M1_OPSET = 17
BN_EPS = 1e-5
# (expansion t, output channels c, repeats n, first stride s) of torchvision's MobileNetV2.
MOBILENET_V2_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
REFERENCE_SEED = 1234
DYNAMIC_BATCH = 2


# --------------------------------------------------------------------------------------------
# Torch-free .pth reader
# --------------------------------------------------------------------------------------------

STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


class StorageType:
    """What `torch.FloatStorage` and friends unpickle to: a marker carrying the dtype."""

    def __init__(self, name):
        self.dtype = STORAGE_DTYPES[name]


class Storage:
    """A storage referenced by a persistent id; `data` (a 1-D array) is filled in later."""

    def __init__(self, storage_type, key, numel):
        self.dtype = storage_type.dtype
        self.key = key
        self.numel = numel
        self.data = None


class LazyTensor:
    """The arguments of `torch._utils._rebuild_tensor_v2`, materialised once storages are read."""

    def __init__(self, storage, offset, size, stride):
        self.storage = storage
        self.offset = offset
        self.size = tuple(size)
        self.stride = tuple(stride)

    def to_numpy(self):
        data = self.storage.data
        if data is None:
            raise ValueError(f"storage {self.storage.key} was never read")
        if self.size and min(self.size) == 0:
            return np.zeros(self.size, dtype=data.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if self.offset < 0 or min(self.stride, default=0) < 0 or last >= data.size:
            raise ValueError(
                f"tensor view (offset {self.offset}, size {self.size}, stride {self.stride}) "
                f"outside storage {self.storage.key} of {data.size} elements"
            )
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :],
            shape=self.size,
            strides=[s * data.itemsize for s in self.stride],
            writeable=False,
        )
        return np.ascontiguousarray(view)


def rebuild_tensor_v2(storage, offset, size, stride, requires_grad, backward_hooks, metadata=None):
    """Stands in for torch._utils._rebuild_tensor_v2 (autograd arguments are irrelevant)."""
    return LazyTensor(storage, offset, size, stride)


class TorchUnpickler(pickle.Unpickler):
    """Unpickles a torch state dict, recording the storages it refers to in `self.storages`."""

    def __init__(self, file):
        super().__init__(file)
        self.storages = {}

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return StorageType(name)
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"unexpected global {module}.{name} in checkpoint")

    def persistent_load(self, pid):
        # ('storage', type, key, location, numel) in zip files; legacy files add view metadata.
        if pid[0] != "storage" or len(pid) not in (5, 6) or (len(pid) == 6 and pid[5] is not None):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        storage_type, key, numel = pid[1], str(pid[2]), pid[4]
        if key not in self.storages:
            self.storages[key] = Storage(storage_type, key, numel)
        storage = self.storages[key]
        if storage.dtype != storage_type.dtype or storage.numel != numel:
            raise pickle.UnpicklingError(f"storage {key} referenced with different types/sizes")
        return storage


def read_zip_checkpoint(path):
    with zipfile.ZipFile(path) as zf:
        pkls = [n for n in zf.namelist() if n.endswith("/data.pkl")]
        if len(pkls) != 1:
            raise ValueError(f"{path}: expected one */data.pkl, found {pkls}")
        prefix = pkls[0][: -len("data.pkl")]
        if prefix + "byteorder" in zf.namelist():
            byteorder = zf.read(prefix + "byteorder").decode().strip()
            if byteorder != "little":
                raise ValueError(f"{path}: byte order {byteorder!r} is not supported")
        unpickler = TorchUnpickler(io.BytesIO(zf.read(pkls[0])))
        obj = unpickler.load()
        for key, storage in unpickler.storages.items():
            raw = zf.read(f"{prefix}data/{key}")
            if len(raw) != storage.numel * storage.dtype.itemsize:
                raise ValueError(f"{path}: storage {key} has {len(raw)} bytes, expected "
                                 f"{storage.numel} x {storage.dtype.itemsize}")
            storage.data = np.frombuffer(raw, dtype=storage.dtype)
    return obj


def read_legacy_checkpoint(path):
    with open(path, "rb") as f:
        magic, protocol, sys_info = pickle.load(f), pickle.load(f), pickle.load(f)
        if magic != LEGACY_MAGIC or protocol != LEGACY_PROTOCOL:
            raise ValueError(f"{path}: bad legacy header (magic {magic!r}, protocol {protocol!r})")
        if not sys_info.get("little_endian"):
            raise ValueError(f"{path}: big-endian checkpoints are not supported")
        unpickler = TorchUnpickler(f)
        obj = unpickler.load()
        keys = pickle.load(f)
        if sorted(keys) != sorted(unpickler.storages):
            raise ValueError(f"{path}: storage key list does not match the referenced storages")
        for key in keys:
            storage = unpickler.storages[key]
            numel = int.from_bytes(f.read(8), "little", signed=True)
            if numel != storage.numel:
                raise ValueError(f"{path}: storage {key} holds {numel} elements, pickle says "
                                 f"{storage.numel}")
            raw = f.read(numel * storage.dtype.itemsize)
            if len(raw) != numel * storage.dtype.itemsize:
                raise ValueError(f"{path}: storage {key} is truncated")
            storage.data = np.frombuffer(raw, dtype=storage.dtype)
        if f.read(1):
            raise ValueError(f"{path}: trailing bytes after the last storage")
    return obj


def read_state_dict(path):
    """Reads a torch checkpoint (zip or legacy format) into {name: float32 ndarray}."""
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"PK":
        obj = read_zip_checkpoint(path)
    elif head == b"\x80\x02":
        obj = read_legacy_checkpoint(path)
    else:
        raise ValueError(f"{path}: not a torch checkpoint (starts with {head!r})")
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: top-level object is a {type(obj).__name__}, not a dict")
    for wrapper in ("state_dict", "model"):
        if isinstance(obj.get(wrapper), dict):
            print(f"{os.path.basename(path)}: top-level keys {list(obj)}; using {wrapper!r}")
            obj = obj[wrapper]
            break
    else:
        print(f"{os.path.basename(path)}: plain state dict of {len(obj)} entries")
    state = {}
    for name, value in obj.items():
        if not isinstance(value, LazyTensor):
            raise ValueError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor")
        if value.storage.dtype.kind == "f":
            state[name] = value.to_numpy().astype(np.float32)
    shown = [f"{k}{list(v.shape)}" for k, v in state.items()]
    if len(shown) > 20:
        shown = shown[:12] + ["..."] + shown[-4:]
    print(f"  {len(state)} float tensors ({len(obj) - len(state)} non-float skipped): "
          + ", ".join(shown))
    return state


# --------------------------------------------------------------------------------------------
# Graph building helpers for M1 / M2
# --------------------------------------------------------------------------------------------


class GraphBuilder:
    """Collects nodes and initializers; a node's output is named after the node unless given."""

    def __init__(self):
        self.nodes = []
        self.initializers = {}

    def constant(self, name, array):
        if name in self.initializers:
            raise ValueError(f"initializer {name} defined twice")
        self.initializers[name] = numpy_helper.from_array(np.asarray(array), name)
        return name

    def node(self, op_type, inputs, name, output=None, **attrs):
        output = output or f"{name}/{op_type}_output_0"
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=f"{name}/{op_type}",
                                           **attrs))
        return output

    def model(self, graph_name, input_name, input_shape, output, output_shape, opset):
        graph = helper.make_graph(
            self.nodes,
            graph_name,
            [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, input_shape)],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, output_shape)],
            list(self.initializers.values()),
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                 producer_name="nap scripts/onnx-fixtures.py")


def conv_attrs(kernel, stride, group=1):
    pad = (kernel - 1) // 2
    return dict(kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[pad] * 4,
                group=group)


def build_m1(state, dynamic_hw=False):
    """The MNIST CNN of m1.pth: 3 x (Conv3x3 + Relu + MaxPool2) + Flatten + 2 Gemm.

    With dynamic_hw, the input is [N, 1, H, W] and the flatten is torch's
    `x.view(x.size(0), -1)` export: Shape, Gather, Unsqueeze, Concat and Reshape.
    """
    g = GraphBuilder()
    x = "input"
    in_ch = 1
    for i, out_ch in zip((0, 3, 6), (32, 64, 128)):
        w, b = state[f"conv_layers.{i}.weight"], state[f"conv_layers.{i}.bias"]
        if w.shape != (out_ch, in_ch, 3, 3) or b.shape != (out_ch,):
            raise ValueError(f"conv_layers.{i}: unexpected shapes {w.shape}, {b.shape}")
        name = f"conv_layers.{i}"
        x = g.node("Conv", [x, g.constant(f"{name}.weight", w), g.constant(f"{name}.bias", b)],
                   name, **conv_attrs(3, 1))
        x = g.node("Relu", [x], f"conv_layers.{i + 1}")
        x = g.node("MaxPool", [x], f"conv_layers.{i + 2}", kernel_shape=[2, 2], strides=[2, 2])
        in_ch = out_ch
    if dynamic_hw:
        shape = g.node("Shape", [x], "view")
        n = g.node("Gather", [shape, g.constant("view.zero", np.array(0, np.int64))], "view",
                   axis=0)
        n = g.node("Unsqueeze", [n, g.constant("view.axes", np.array([0], np.int64))], "view")
        target = g.node("Concat", [n, g.constant("view.rest", np.array([-1], np.int64))],
                        "view", axis=0)
        x = g.node("Reshape", [x, target], "view")
    else:
        x = g.node("Flatten", [x], "flatten", axis=1)
    for i, (fan_in, fan_out) in zip((0, 2), ((1152, 256), (256, 10))):
        w, b = state[f"fc_layers.{i}.weight"], state[f"fc_layers.{i}.bias"]
        if w.shape != (fan_out, fan_in) or b.shape != (fan_out,):
            raise ValueError(f"fc_layers.{i}: unexpected shapes {w.shape}, {b.shape}")
        name = f"fc_layers.{i}"
        x = g.node("Gemm", [x, g.constant(f"{name}.weight", w), g.constant(f"{name}.bias", b)],
                   name, output="logits" if i == 2 else None, transB=1)
        if i == 0:
            x = g.node("Relu", [x], "fc_layers.1")
    hw = ["H", "W"] if dynamic_hw else [28, 28]
    return g.model("mnist-cnn", "input", ["N", 1] + hw, "logits", ["N", 10], M1_OPSET)


def build_unsupported():
    """A small CNN with two op types nap has no mapping for (Celu, Hardmax), each after a
    supported Conv, so that both are found and named."""
    g = GraphBuilder()
    rng = np.random.default_rng(REFERENCE_SEED)
    w1 = g.constant("c1.weight", rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    w2 = g.constant("c2.weight", rng.standard_normal((5, 4, 3, 3)).astype(np.float32))
    x = g.node("Conv", ["input", w1], "c1", **conv_attrs(3, 1))
    x = g.node("Celu", [x], "celu")
    x = g.node("Conv", [x, w2], "c2", **conv_attrs(3, 1))
    x = g.node("Hardmax", [x], "hardmax", axis=1)
    return g.model("unsupported", "input", [1, 3, 8, 8], x, [1, 5, 8, 8], 13)


def build_attention_block():
    """A small CNN with a transformer block as torch exports it at opset 17: Conv, Reshape and
    Transpose to rows, LayerNormalization, MatMul + Add by constants, Split into query, key and
    value, Reshape and Transpose into 2 heads, MatMul, Mul by a scale, Softmax, MatMul, back to
    rows, a residual Add, Unsqueeze, and a class vector per row (Softmax over the last axis)."""
    g = GraphBuilder()
    rng = np.random.default_rng(REFERENCE_SEED)
    c, t, heads = 8, 16, 2
    dh = c // heads

    def const(name, shape, scale=0.5):
        return g.constant(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    def i64(name, v):
        return g.constant(name, np.array(v, dtype=np.int64))

    x = g.node("Conv", ["input", const("conv.weight", (c, 3, 3, 3))], "conv", **conv_attrs(3, 2))
    x = g.node("Reshape", [x, i64("rows.shape", [0, c, t])], "rows")
    x = g.node("Transpose", [x], "to_rows", perm=[0, 2, 1])
    h = g.node("LayerNormalization", [x, const("ln.g", (c,)), const("ln.b", (c,))], "ln",
               axis=-1, epsilon=1e-5)
    h = g.node("MatMul", [h, const("qkv.w", (c, 3 * c))], "qkv")
    h = g.node("Add", [h, const("qkv.b", (3 * c,))], "qkv_bias")
    q, k, v = (f"split/{n}" for n in "qkv")
    g.nodes.append(helper.make_node("Split", [h, i64("split.sizes", [c, c, c])], [q, k, v],
                                    name="split", axis=2))

    def heads_of(y, name):
        y = g.node("Reshape", [y, i64(f"{name}.shape", [0, t, heads, dh])], f"{name}_heads")
        return g.node("Transpose", [y], f"{name}_t", perm=[0, 2, 1, 3])

    q, k, v = heads_of(q, "q"), heads_of(k, "k"), heads_of(v, "v")
    kt = g.node("Transpose", [k], "kt", perm=[0, 1, 3, 2])
    s = g.node("MatMul", [q, kt], "scores")
    s = g.node("Mul", [s, g.constant("scale", np.array(dh ** -0.5, dtype=np.float32))], "scaled")
    s = g.node("Softmax", [s], "attn", axis=-1)
    o = g.node("MatMul", [s, v], "context")
    o = g.node("Transpose", [o], "merge_t", perm=[0, 2, 1, 3])
    o = g.node("Reshape", [o, i64("merge.shape", [0, t, c])], "merge")
    o = g.node("MatMul", [o, const("proj.w", (c, c))], "proj")
    x = g.node("Add", [x, o], "residual")
    x = g.node("Unsqueeze", [x, i64("unsq.axes", [1])], "unsq")
    x = g.node("Squeeze", [x, i64("sq.axes", [1])], "sq")
    x = g.node("MatMul", [x, const("cls.w", (c, 5))], "cls")
    x = g.node("Softmax", [x], "probs", axis=-1)
    return g.model("attention_block", "input", ["N", 3, 8, 8], x, ["N", t, 5], 17)


def build_pool_ceil():
    """Poolings with ceil_mode = 1 that add a last window (as torchvision's GoogLeNet and
    SqueezeNet export them): MaxPool 3x3/2 on 8x8 (3 -> 4 outputs), AveragePool 3x3/2 with pads 1
    and count_include_pad 0 on 4x4 (2 -> 3), then a classifier of the flattened map and of its
    mean over height and width (ReduceMean, torch's `x.mean((2, 3))`)."""
    g = GraphBuilder()
    rng = np.random.default_rng(REFERENCE_SEED)
    w = g.constant("conv.weight", rng.standard_normal((6, 3, 3, 3)).astype(np.float32))
    x = g.node("Conv", ["input", w], "conv", **conv_attrs(3, 1))
    x = g.node("Relu", [x], "relu")
    x = g.node("MaxPool", [x], "maxpool", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
    x = g.node("AveragePool", [x], "avgpool", kernel_shape=[3, 3], strides=[2, 2],
               pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=0)
    # torch's x.mean((2, 3)); from opset 18 ReduceMean takes its axes as an input.
    axes = g.constant("mean.axes", np.array([2, 3], dtype=np.int64))
    pooled = g.node("ReduceMean", [x, axes], "mean", keepdims=0)
    x = g.node("Flatten", [x], "flatten", axis=1)
    x = g.node("Concat", [x, pooled], "features", axis=1)
    fc = g.constant("fc.weight", (rng.standard_normal((4, 60)) * 0.2).astype(np.float32))
    x = g.node("Gemm", [x, fc], "fc", transB=1)
    # Opset 19: onnx-ir 0.22 refuses AveragePool ceil_mode below it (ONNX has it since 10).
    return g.model("pool_ceil", "input", ["N", 3, 8, 8], x, ["N", 4], 19)


def write_external_variants(out_dir, m1):
    """m1-external.onnx with its weights in m1-external.onnx.data, and m1-external-missing.onnx
    whose weights point at a file that does not exist. Returns the first model."""
    path = os.path.join(out_dir, "m1-external.onnx")
    ext = onnx.ModelProto()
    ext.CopyFrom(m1)
    onnx.save(ext, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="m1-external.onnx.data", size_threshold=0)
    missing = onnx.load(path, load_external_data=False)
    for t in missing.graph.initializer:
        for kv in t.external_data:
            if kv.key == "location":
                kv.value = "m1-external-missing.onnx.data"
    onnx.save(missing, os.path.join(out_dir, "m1-external-missing.onnx"))
    return onnx.load(path)


class MobileNetV2Writer:
    """Writes torchvision's MobileNetV2 from its state dict, with BatchNorm folded or kept."""

    def __init__(self, state, fold_bn):
        self.state = state
        self.fold_bn = fold_bn
        self.g = GraphBuilder()
        self.used = set()
        self.clip_min = self.g.constant("relu6_min", np.array(0.0, dtype=np.float32))
        self.clip_max = self.g.constant("relu6_max", np.array(6.0, dtype=np.float32))

    def param(self, name):
        self.used.add(name)
        return self.state[name]

    def conv_bn(self, x, conv, bn, stride, group, relu6):
        """Conv `conv` (no bias) + BatchNorm `bn` (+ ReLU6 as Clip)."""
        w = self.param(f"{conv}.weight")
        gamma, beta = self.param(f"{bn}.weight"), self.param(f"{bn}.bias")
        mean, var = self.param(f"{bn}.running_mean"), self.param(f"{bn}.running_var")
        attrs = conv_attrs(w.shape[2], stride, group)
        if self.fold_bn:
            scale = gamma / np.sqrt(var + BN_EPS)
            w_folded = (w * scale[:, None, None, None]).astype(np.float32)
            b_folded = (beta - mean * scale).astype(np.float32)
            x = self.g.node("Conv", [x, self.g.constant(f"{conv}.weight", w_folded),
                                     self.g.constant(f"{conv}.bias", b_folded)], conv, **attrs)
        else:
            x = self.g.node("Conv", [x, self.g.constant(f"{conv}.weight", w)], conv, **attrs)
            params = [self.g.constant(f"{bn}.{k}", self.param(f"{bn}.{k}"))
                      for k in ("weight", "bias", "running_mean", "running_var")]
            x = self.g.node("BatchNormalization", [x] + params, bn, epsilon=BN_EPS)
        if relu6:
            x = self.g.node("Clip", [x, self.clip_min, self.clip_max], f"{bn}.relu6")
        return x

    def inverted_residual(self, x, idx, cin, cout, stride, t):
        p = f"features.{idx}.conv"
        hidden = cin * t
        y = x
        j = 0
        if t != 1:
            y = self.conv_bn(y, f"{p}.0.0", f"{p}.0.1", 1, 1, relu6=True)
            j = 1
        y = self.conv_bn(y, f"{p}.{j}.0", f"{p}.{j}.1", stride, hidden, relu6=True)
        y = self.conv_bn(y, f"{p}.{j + 1}", f"{p}.{j + 2}", 1, 1, relu6=False)
        if stride == 1 and cin == cout:
            y = self.g.node("Add", [x, y], f"features.{idx}.add")
        return y

    def build(self):
        x = self.conv_bn("input", "features.0.0", "features.0.1", 2, 1, relu6=True)
        cin, idx = 32, 1
        for t, c, n, s in MOBILENET_V2_SETTINGS:
            for r in range(n):
                x = self.inverted_residual(x, idx, cin, c, s if r == 0 else 1, t)
                cin, idx = c, idx + 1
        x = self.conv_bn(x, "features.18.0", "features.18.1", 1, 1, relu6=True)
        x = self.g.node("GlobalAveragePool", [x], "pool")
        x = self.g.node("Flatten", [x], "flatten", axis=1)
        w, b = self.param("classifier.1.weight"), self.param("classifier.1.bias")
        if w.shape != (1000, 1280):
            raise ValueError(f"classifier.1.weight has shape {w.shape}")
        x = self.g.node("Gemm", [x, self.g.constant("classifier.1.weight", w),
                                 self.g.constant("classifier.1.bias", b)], "classifier.1",
                        output="logits", transB=1)
        unused = set(self.state) - self.used
        if unused:
            raise ValueError(f"m2.pth tensors not used by the MobileNetV2 graph: {sorted(unused)}")
        return self.g.model("mobilenet_v2", "input", ["N", 3, 224, 224], "logits", ["N", 1000],
                            M2_OPSET)


# --------------------------------------------------------------------------------------------
# Light models: ConstantOfShape placeholders -> seeded random initializers
# --------------------------------------------------------------------------------------------

BN_ROLES = {1: "bn_scale", 2: "bn_bias", 3: "bn_mean", 4: "bn_var"}


def consumer_role(node, index):
    """The role of a constant used as input `index` of `node`, or None if it has none."""
    if node.op_type in ("Conv", "Gemm"):
        return {1: "weight", 2: "bias"}.get(index)
    if node.op_type == "BatchNormalization":
        return BN_ROLES.get(index)
    if node.op_type == "Mul":
        return "affine_scale"
    if node.op_type == "Add":
        return "affine_shift"
    return None


def final_consumers(name, consumers):
    """The (node, input index) pairs that use constant `name`, looking through Unsqueeze and
    Reshape (data input only)."""
    uses = []
    for node, index in consumers[name]:
        if node.op_type in ("Unsqueeze", "Reshape") and index == 0:
            uses += final_consumers(node.output[0], consumers)
        else:
            uses.append((node, index))
    return uses


def fan_in(node, shape):
    """Fan-in of the weight of a Conv ([out, in/group, k...]) or Gemm (shape as consumed)."""
    if node.op_type == "Conv":
        return int(np.prod(shape[1:]))
    trans_b = any(a.name == "transB" and a.i for a in node.attribute)
    return shape[1] if trans_b else shape[0]


def random_weight(role, shape, fan, rng):
    if role == "weight":
        return rng.normal(0.0, np.sqrt(2.0 / fan), shape)
    if role == "bias":
        return rng.normal(0.0, 0.01, shape)
    if role in ("bn_scale", "bn_var", "affine_scale"):
        return rng.uniform(0.5, 1.5, shape)
    if role in ("bn_bias", "bn_mean", "affine_shift"):
        return rng.normal(0.0, 0.1, shape)
    raise ValueError(f"no distribution for role {role}")


def static_shapes(model):
    """Static shapes of every tensor of `model` (shape inference, initializers included)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    shapes = {}
    graph = inferred.graph
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [d.dim_value for d in dims]
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def prune_unused(graph):
    """Drops nodes none of whose outputs are used, then unused initializers and inputs."""
    while True:
        used = {name for node in graph.node for name in node.input}
        used |= {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    for inp in [i for i in graph.input if i.name not in used]:
        graph.input.remove(inp)


def randomise_light_model(model):
    """Replaces every float weight of a light model (ConstantOfShape outputs and float
    initializers) with a seeded random initializer. Returns the model and, in graph order, the
    (output, [weight, bias]) names of each Conv/Gemm."""
    graph = model.graph
    shapes = static_shapes(model)
    inits = {i.name: i for i in graph.initializer}
    consumers = collections.defaultdict(list)
    for node in graph.node:
        for index, name in enumerate(node.input):
            consumers[name].append((node, index))

    weights = [n.output[0] for n in graph.node if n.op_type == "ConstantOfShape"]
    weights += [name for name, init in inits.items()
                if init.data_type == TensorProto.FLOAT and consumers[name]]
    replaced = {}
    layer_params = collections.defaultdict(list)
    for seed, name in enumerate(sorted(weights)):
        uses = final_consumers(name, consumers)
        roles = {consumer_role(node, index) for node, index in uses}
        if len(roles) != 1 or None in roles:
            raise ValueError(f"constant {name} has roles {roles} in "
                             f"{[(n.op_type, i) for n, i in uses]}")
        role = roles.pop()
        fans = {fan_in(node, shapes[node.input[index]]) for node, index in uses
                if role == "weight"}
        if len(fans) > 1:
            raise ValueError(f"weight {name} is used with fan-ins {fans}")
        rng = np.random.default_rng(seed)
        replaced[name] = random_weight(role, shapes[name], fans.pop() if fans else None,
                                       rng).astype(np.float32)
        for node, _ in uses:
            if role in ("weight", "bias"):
                layer_params[node.output[0]].append(name)

    for node in [n for n in graph.node if n.op_type == "ConstantOfShape"]:
        graph.node.remove(node)
    for init in [i for i in graph.initializer if i.name in replaced]:
        graph.initializer.remove(init)
    graph.initializer.extend(numpy_helper.from_array(a, n) for n, a in sorted(replaced.items()))
    # IR 3 requires every initializer to be a graph input; from IR 4 on the image can be the
    # only input. The opset is unchanged.
    model.ir_version = max(model.ir_version, 4)
    for inp in [i for i in graph.input if i.name in inits or i.name in replaced]:
        graph.input.remove(inp)
    prune_unused(graph)
    if len(graph.input) != 1:
        raise ValueError(f"expected one graph input after substitution, got "
                         f"{[i.name for i in graph.input]}")
    layers = [(n.output[0], layer_params[n.output[0]]) for n in graph.node
              if n.op_type in ("Conv", "Gemm")]
    return model, layers


def prefix_model(model, output):
    """The part of `model` that computes `output` (which becomes its only output)."""
    nodes = []
    for node in model.graph.node:
        nodes.append(node)
        if output in node.output:
            break
    needed = {name for node in nodes for name in node.input}
    graph = helper.make_graph(
        nodes, "prefix", model.graph.input, [helper.make_empty_tensor_value_info(output)],
        [i for i in model.graph.initializer if i.name in needed])
    prefix = helper.make_model(graph, opset_imports=model.opset_import,
                               ir_version=model.ir_version)
    prune_unused(prefix.graph)
    return prefix


def normalise_layers(model, layers, x):
    """LSUV (Mishkin & Matas 2016): in graph order, divides each Conv/Gemm's weight and bias by
    the std of its output on `x`. He scaling alone lets activations grow without bound through
    residual sums and BatchNorms whose statistics are random rather than measured."""
    inits = {i.name: i for i in model.graph.initializer}
    for output, params in layers:
        std = float(run_first_output(prefix_model(model, output), x).std())
        if not std > 0:
            raise ValueError(f"{output}: output std is {std}")
        for name in params:
            scaled = numpy_helper.to_array(inits[name]) / np.float32(std)
            inits[name].CopyFrom(numpy_helper.from_array(scaled, name))


# --------------------------------------------------------------------------------------------
# ONNX Runtime, checks and reference files
# --------------------------------------------------------------------------------------------


def check_and_infer(model):
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def session(model):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def run_first_output(model, x):
    sess = session(model)
    y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{model.graph.name}: non-finite output")
    return np.ascontiguousarray(y, dtype=np.float32)


def input_shape(model):
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else DYNAMIC_BATCH for d in dims]


def reference_input(model, shape=None):
    rng = np.random.default_rng(REFERENCE_SEED)
    return rng.standard_normal(shape or input_shape(model)).astype(np.float32)


def save_pair(out_dir, stem, x, y):
    np.save(os.path.join(out_dir, f"{stem}.input.npy"), np.ascontiguousarray(x, np.float32))
    np.save(os.path.join(out_dir, f"{stem}.output.npy"), np.ascontiguousarray(y, np.float32))


def write_model(out_dir, name, model, shape=None):
    """Checks, shape-infers and saves `model` and writes its seeded reference pair (of input
    `shape`, by default the model's with batch DYNAMIC_BATCH where it is dynamic).

    Returns the shape-inferred model, the input and the output."""
    model = check_and_infer(model)
    onnx.save(model, os.path.join(out_dir, f"{name}.onnx"))
    x = reference_input(model, shape)
    y = run_first_output(model, x)
    save_pair(out_dir, name, x, y)
    census = collections.Counter(n.op_type for n in model.graph.node)
    print(f"{name}: {dict(census.most_common())} input {list(x.shape)} output {list(y.shape)}")
    return model, x, y


def softmax_logits(model, x):
    """The input of the final Softmax, or the model output when it does not end in one."""
    last = model.graph.node[-1]
    if last.op_type != "Softmax":
        return run_first_output(model, x)
    return run_first_output(prefix_model(model, last.input[0]), x)


def check_light_output(name, model, x, y):
    """Fails unless the output is finite and varied; prints logit scale, max prob and top-1."""
    logits = softmax_logits(model, x).reshape(x.shape[0], -1)
    scores = y.reshape(y.shape[0], -1)
    if np.ptp(scores) == 0:
        raise ValueError(f"{name}: all outputs are identical")
    print(f"  logits std {logits.std():.3g} max |.| {np.abs(logits).max():.3g}; "
          f"output max {scores.max():.4g} top-1 {scores.argmax(axis=1).tolist()}")


# --------------------------------------------------------------------------------------------
# Data for the sanity checks
# --------------------------------------------------------------------------------------------


def read_idx(path):
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    return data.reshape(dims)


def find_one(pattern):
    found = sorted(glob.glob(pattern))
    if len(found) != 1:
        raise ValueError(f"expected one file matching {pattern}, found {found}")
    return found[0]


def mnist_sanity(out_dir, fixtures, model):
    """M1 on the first 64 MNIST test images, normalised and raw; keeps the more accurate
    (normalised on a tie) for m1.mnist64.*. Returns its description."""
    images = read_idx(find_one(os.path.join(fixtures, "mnist", "t10k-images*")))[:64]
    labels = read_idx(find_one(os.path.join(fixtures, "mnist", "t10k-labels*")))[:64]
    raw = (images.astype(np.float32) / 255.0)[:, None, :, :]
    candidates = {
        f"normalised (mean {MNIST_MEAN}, std {MNIST_STD})": (raw - MNIST_MEAN) / MNIST_STD,
        "raw [0,1]": raw,
    }
    best = None
    for label, x in candidates.items():
        y = run_first_output(model, x.astype(np.float32))
        acc = float(np.mean(y.argmax(axis=1) == labels))
        print(f"  m1 MNIST test[:64] accuracy, {label}: {acc:.4f}")
        if best is None or acc > best[0]:
            best = (acc, label, x.astype(np.float32), y)
    acc, label, x, y = best
    if acc < 0.95:
        raise ValueError(f"m1: best MNIST accuracy {acc:.4f} is too low; the graph is wrong")
    print(f"  m1 uses {label} inputs for m1.mnist64 (accuracy {acc:.4f})")
    save_pair(out_dir, "m1.mnist64", x, y)
    return label


def load_photo(path):
    """Resize (shorter side 256, bilinear), centre crop 224, ImageNet normalisation; CHW."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    scale = 256 / min(w, h)
    img = img.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
    w, h = img.size
    left, top = (w - 224) // 2, (h - 224) // 2
    img = img.crop((left, top, left + 224, top + 224))
    x = np.asarray(img, dtype=np.float32) / 255.0
    return ((x - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


def photo_sanity(out_dir, fixtures, model):
    """M2 on photos/*.png: prints the top-3 ImageNet classes; returns the photo names."""
    paths = sorted(glob.glob(os.path.join(fixtures, "photos", "*.png")))
    if not paths:
        raise ValueError(f"no photos in {fixtures}/photos")
    with open(os.path.join(fixtures, "imagenet_classes.txt")) as f:
        classes = [line.strip() for line in f]
    if len(classes) != 1000:
        raise ValueError(f"imagenet_classes.txt has {len(classes)} lines")
    x = np.stack([load_photo(p) for p in paths]).astype(np.float32)
    y = run_first_output(model, x)
    for path, logits in zip(paths, y):
        top = np.argsort(-logits)[:3]
        shown = "; ".join(f"{i} {classes[i]}" for i in top)
        print(f"  m2 {os.path.basename(path)}: top-3 {shown}")
    save_pair(out_dir, "m2.photos", x, y)
    return [os.path.basename(p) for p in paths]


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


# Per PP-OCR model: the input shape of its reference pair (batch, 3, H, W); H and W are the
# sizes rapidocr feeds (the detector at a small multiple of 32 to keep the reference quick).
PPOCR_INPUTS = {"cls": [2, 3, 48, 192], "det": [1, 3, 96, 128], "rec": [2, 3, 48, 320]}


def text_image(shape):
    """Two lines of black text on white (Pillow's default font), ImageNet mean/std: the
    detector's probability map on noise is ~1e-6 everywhere, on text it spans [0, 1]."""
    _, _, h, w = shape
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    draw.text((8, h // 5), "nap 13 ONNX", fill="black")
    draw.text((8, h // 2), "PP-OCR det", fill="black")
    x = np.asarray(img, np.float32) / 255.0
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    x = np.ascontiguousarray(x.transpose(2, 0, 1)[None], np.float32)
    return x, (f"{w}x{h} image of two lines of black text on white (Pillow's default font), "
               "ImageNet mean/std")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fixtures",
                        help="fixtures directory (holds m1.pth, m2.pth, mnist/, photos/)")
    fixtures = parser.parse_args().fixtures
    out_dir = os.path.join(fixtures, "onnx")
    os.makedirs(out_dir, exist_ok=True)
    readme = []

    def note(file, text):
        readme.append(f"{file:<26} {text}")

    def note_pair(stem, model, input_text=None):
        note(f"{stem}.input.npy", input_text or f"seeded N(0,1) input, numpy default_rng("
             f"{REFERENCE_SEED}).standard_normal, batch {DYNAMIC_BATCH} where dynamic")
        note(f"{stem}.output.npy", f"first output of {model}.onnx on {stem}.input.npy, "
             f"onnxruntime {ort.__version__} CPUExecutionProvider, ORT_DISABLE_ALL")

    for name in LIGHT_MODELS:
        src = os.path.join(LIGHT_DIR, f"light_{name}.onnx")
        model, layers = randomise_light_model(onnx.load(src))
        normalise_layers(model, layers, reference_input(model))
        model, x, y = write_model(out_dir, name, model)
        check_light_output(name, model, x, y)
        note(f"{name}.onnx", f"onnx {onnx.__version__} wheel backend/test/data/light/"
             f"light_{name}.onnx, ConstantOfShape/initializer weights replaced by seeded random "
             "ones (He-init Conv/Gemm, LSUV-rescaled on the reference input; random BatchNorm "
             f"stats), opset {model.opset_import[0].version} kept, IR {model.ir_version}")
        note_pair(name, name)

    m1_state = read_state_dict(os.path.join(fixtures, "m1.pth"))
    m1, _, _ = write_model(out_dir, "m1", build_m1(m1_state))
    mnist_label = mnist_sanity(out_dir, fixtures, m1)
    note("m1.onnx", "m1.pth (MNIST CNN) written as ONNX by hand without torch: 3 x "
         "(Conv3x3+Relu+MaxPool2), Flatten, Gemm+Relu, Gemm; dynamic batch N, opset "
         f"{M1_OPSET}")
    note_pair("m1", "m1")
    note_pair("m1.mnist64", "m1", f"first 64 MNIST t10k images, {mnist_label}")
    _, xd, yd = write_model(out_dir, "m1-dynamic", build_m1(m1_state, dynamic_hw=True),
                            shape=[DYNAMIC_BATCH, 1, 28, 28])
    if not np.allclose(yd, run_first_output(m1, xd), rtol=1e-5, atol=1e-5):
        raise ValueError("m1-dynamic disagrees with m1")
    note("m1-dynamic.onnx", "as m1.onnx with input [N, 1, H, W] and the flatten exported as "
         "torch's x.view(x.size(0), -1) (Shape, Gather, Unsqueeze, Concat, Reshape)")
    note_pair("m1-dynamic", "m1-dynamic")
    ext = write_external_variants(out_dir, m1)
    if not np.array_equal(run_first_output(ext, xd), run_first_output(m1, xd)):
        raise ValueError("m1-external disagrees with m1")
    note("m1-external.onnx", "m1.onnx with every weight in m1-external.onnx.data (external "
         "data); same outputs as m1.onnx")
    note("m1-external-missing.onnx", "m1-external.onnx pointing at a data file that does not "
         "exist (an error case)")

    write_model(out_dir, "unsupported", build_unsupported())
    write_model(out_dir, "pool-ceil", build_pool_ceil())
    note("pool-ceil.onnx", "MaxPool and AveragePool (count_include_pad 0) with ceil_mode 1 "
         "adding a last window")
    note_pair("pool-ceil", "pool-ceil")
    write_model(out_dir, "attention-block", build_attention_block())
    note("attention-block.onnx", "a small CNN with a transformer block, as torch exports it at "
         "opset 17 (LayerNormalization, Split, MatMul of two computed tensors, Softmax over the "
         "last axis, Unsqueeze, Squeeze)")
    note_pair("attention-block", "attention-block")
    note("unsupported.onnx", "a small CNN with a Celu and a Hardmax node (ops nap does not "
         "import: an error case)")

    m2_state = read_state_dict(os.path.join(fixtures, "m2.pth"))
    m2, x2, y2 = write_model(out_dir, "m2", MobileNetV2Writer(m2_state, fold_bn=True).build())
    photos = photo_sanity(out_dir, fixtures, m2)
    _, x2bn, y2bn = write_model(out_dir, "m2-bn",
                                MobileNetV2Writer(m2_state, fold_bn=False).build())
    if not np.array_equal(x2, x2bn) or not np.allclose(y2, y2bn, rtol=1e-3, atol=1e-3):
        raise ValueError(f"m2 and m2-bn disagree (max |diff| {np.abs(y2 - y2bn).max():.3g})")
    print(f"  m2 vs m2-bn max |diff| {np.abs(y2 - y2bn).max():.3g}")
    note("m2.onnx", "m2.pth (torchvision MobileNetV2) written as ONNX by hand without torch, "
         "as torch.onnx.export in eval mode: BatchNorm folded into Conv, ReLU6 as Clip(0,6), "
         f"dynamic batch N, opset {M2_OPSET}")
    note_pair("m2", "m2")
    if photos is not None:
        note_pair("m2.photos", "m2", f"photos/{{{','.join(photos)}}}: resize shorter side to "
                  "256, centre crop 224, ImageNet mean/std")
    note("m2-bn.onnx", "as m2.onnx but with unfolded BatchNormalization nodes after bias-free "
         "Conv")
    note_pair("m2-bn", "m2-bn")

    for name, shape in PPOCR_INPUTS.items():
        stem = f"ppocr-{name}"
        model = onnx.load(os.path.join(fixtures, "ppocr", f"{name}.onnx"))
        if name == "det":
            x, text = text_image(shape)
        else:
            x = reference_input(model, shape)
            text = (f"seeded N(0,1) input of shape {shape}, numpy default_rng({REFERENCE_SEED})"
                    ".standard_normal")
        save_pair(out_dir, stem, x, run_first_output(model, x))
        note_pair(stem, f"../ppocr/{name}", text)
        # The output before the final Sigmoid (det: a relative error is measured against the
        # largest value, which the saturated map, max 1.0, hides) or Softmax (rec: the class
        # scores of each step).
        last_op = {"det": "Sigmoid", "rec": "Softmax"}.get(name)
        if last_op is not None:
            last = [n for n in model.graph.node if n.op_type == last_op][-1]
            logits = prefix_model(model, last.input[0])
            onnx.save(logits, os.path.join(out_dir, f"{stem}-logits.onnx"))
            save_pair(out_dir, f"{stem}-logits", x, run_first_output(logits, x))
            note(f"{stem}-logits.onnx", f"ppocr/{name}.onnx up to the input of its last {last_op}")
            note_pair(f"{stem}-logits", f"{stem}-logits", text)

    with open(os.path.join(out_dir, "README.txt"), "w") as f:
        f.write("Made by scripts/onnx-fixtures.py; do not edit (rerun the script instead).\n")
        f.write("\n".join(readme) + "\n")


if __name__ == "__main__":
    main()
