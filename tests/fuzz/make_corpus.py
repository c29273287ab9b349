#!/usr/bin/env python3
"""Writes the seed corpora of the parser fuzz harnesses: tests/fuzz/corpus/<harness>/.

The seeds are committed (all small); this script records where they come from and rebuilds
them: `python3 tests/fuzz/make_corpus.py`. Standard library only (no numpy, no torch):
pickles are made by Python's own pickle module over stand-in `torch` classes that pickle
exactly as torch.save's objects do, zips with zipfile. Text seeds are copies of the repo's
test data (recipes, prompt files) plus a few written here to reach every section and option.
"""
import collections
import io
import json
import pathlib
import pickle
import shutil
import struct
import sys
import types
import zipfile

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CORPUS = HERE / "corpus"


def put(harness, name, data):
    d = CORPUS / harness
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


# --------------------------------------------------------------------------- safetensors
DTYPE_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
              "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def safetensors(tensors, metadata=None):
    """tensors: [(name, dtype, shape)] laid out in order; data bytes count up from 1."""
    header, blob = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape in tensors:
        n = DTYPE_SIZE[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + n]}
        blob += bytes((len(blob) + i) % 251 + 1 for i in range(n))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + blob


def safetensors_seeds():
    put("safetensors", "dtypes.safetensors", safetensors(
        [("w", "F32", [2, 2]), ("h", "F16", [3]), ("step", "I64", []), ("b", "BF16", [1, 2]),
         ("mask", "BOOL", [4]), ("q", "F8_E4M3", [2]), ("i", "I32", [1]), ("u", "U8", [3])],
        {"format": "pt"}))
    put("safetensors", "empty-tensors.safetensors", safetensors(
        [("none", "F32", [0, 4]), ("one", "F16", [1])]))
    put("safetensors", "metadata-only.safetensors", safetensors([], {"ss_network_dim": "4"}))
    # A slice of the LoRA fixture's header: its real names, dtypes and metadata; each weight
    # shrunk to at most 2 elements per dimension so the seed stays small.
    raw = (ROOT / "tests/data/fixtures/tiny-sd1.lora.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", None)
    picked = [(k, v["dtype"], [min(d, 2) for d in v["shape"]]) for k, v in list(header.items())[:9]]
    put("safetensors", "lora-slice.safetensors", safetensors(picked, meta))


# --------------------------------------------------------------------------- pickles (torch.save)
def module(name):
    m = types.ModuleType(name)
    sys.modules[name] = m
    parent, _, leaf = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], leaf, m)
    return m


torch = module("torch")
torch_utils = module("torch._utils")
numpy = module("numpy")
numpy_core = module("numpy.core")
numpy_ma = module("numpy.core.multiarray")


def function(mod, name):
    def f(*args):
        raise RuntimeError("stand-in only")
    f.__module__, f.__qualname__, f.__name__ = mod.__name__, name, name
    setattr(mod, name, f)
    return f


rebuild_v2 = function(torch_utils, "_rebuild_tensor_v2")
rebuild_param = function(torch_utils, "_rebuild_parameter")
np_scalar = function(numpy_ma, "scalar")


class _Dtype:
    def __init__(self, name):
        self.name = name

    def __reduce__(self):
        return self.name  # pickled as the global torch.<name>


_Dtype.__module__ = "torch"
for _name in ("float32", "float16"):
    setattr(torch, _name, _Dtype(_name))

STORAGE_TYPES = {}
for _cls, _dt, _size in (("FloatStorage", "f", 4), ("HalfStorage", "e", 2), ("LongStorage", "q", 8)):
    STORAGE_TYPES[_cls] = type(_cls, (), {"__module__": "torch", "elem": (_dt, _size)})
    setattr(torch, _cls, STORAGE_TYPES[_cls])


class NpDtype:
    def __reduce__(self):
        return (NpDtypeClass, ("i8", False, True), (3, "<", None, None, None, -1, -1, 0))


NpDtypeClass = type("dtype", (), {"__module__": "numpy"})
numpy.dtype = NpDtypeClass


class Storage:
    def __init__(self, cls, key, values):
        self.cls, self.key, self.values = STORAGE_TYPES[cls], key, values

    def data(self):
        fmt, _ = self.cls.elem
        return struct.pack("<%d%s" % (len(self.values), fmt), *self.values)


class Tensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

    def __reduce_ex__(self, proto):
        return (rebuild_v2, self.args)


class Parameter:
    def __init__(self, tensor):
        self.tensor = tensor

    def __reduce_ex__(self, proto):
        return (rebuild_param, (self.tensor, True, collections.OrderedDict()))


class NpScalar:
    def __reduce__(self):
        return (np_scalar, (NpDtype(), struct.pack("<q", 1234)))


class TorchPickler(pickle.Pickler):
    def __init__(self, f, proto, legacy):
        super().__init__(f, protocol=proto)
        self.legacy = legacy

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            pid = ("storage", obj.cls, obj.key, "cpu", len(obj.values))
            return pid + (None,) if self.legacy else pid
        return None


def dumps(obj, proto=2, legacy=False):
    f = io.BytesIO()
    TorchPickler(f, proto, legacy).dump(obj)
    return f.getvalue()


def sd_state():
    """The typical SD checkpoint: epoch, a numpy global_step, and a state_dict with a view, a
    Parameter, a second storage and a nested dict."""
    w = Storage("FloatStorage", "0", [0.5 * i for i in range(12)])
    h = Storage("HalfStorage", "1", [1.0, -2.0, 0.25])
    weight = Tensor(w, 0, [3, 4], [4, 1])
    col = Tensor(w, 1, [3], [4])  # a strided view into the same storage
    state = collections.OrderedDict()
    state["model.diffusion_model.weight"] = weight
    state["model.diffusion_model.col"] = col
    state["model.bias"] = Parameter(Tensor(h, 0, [3], [1]))
    state["first_stage_model"] = {"scale": Tensor(w, 11, [], [])}
    obj = {"epoch": 3, "global_step": NpScalar(), "state_dict": state, "name": b"sd\xff"}
    return obj, [w, h]


def torch_zip(obj, storages, proto=2):
    f = io.BytesIO()
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", dumps(obj, proto))
        z.writestr("archive/byteorder", "little")
        for s in storages:
            z.writestr("archive/data/" + s.key, s.data())
        z.writestr("archive/version", "3\n")
    return f.getvalue()


def torch_legacy(obj, storages):
    out = dumps(0x1950A86A20F9469CFC6C) + dumps(1001)
    out += dumps({"protocol_version": 1001, "little_endian": True,
                  "type_sizes": {"short": 2, "int": 4, "long": 4}})
    out += dumps(obj, legacy=True)
    keys = sorted(s.key for s in storages)
    out += dumps(keys)
    by_key = {s.key: s for s in storages}
    for k in keys:
        out += struct.pack("<q", len(by_key[k].values)) + by_key[k].data()
    return out


def pickle_seeds():
    obj, storages = sd_state()
    put("pickle", "sd-proto2.pkl", dumps(obj, 2))
    put("pickle", "sd-proto4.pkl", dumps(obj, 4))
    put("pickle", "plain-containers.pkl", dumps(
        [None, True, False, -1, 255, 65535, 2 ** 31, -2 ** 63, 1.5, "text", b"bytes", (1, 2, 3),
         {"a": [1, {"b": ()}]}, frozenset(), set()], 2))
    put("pickle", "legacy-stream.pkl", torch_legacy(obj, storages))
    put("torch_checkpoint", "sd-zip.ckpt", torch_zip(obj, storages))
    put("torch_checkpoint", "sd-zip-proto4.ckpt", torch_zip(obj, storages, 4))
    put("torch_checkpoint", "sd-legacy.ckpt", torch_legacy(obj, storages))
    s = Storage("LongStorage", "7", [1, 2, 3, 4])
    put("torch_checkpoint", "flat-legacy.ckpt",
        torch_legacy(collections.OrderedDict(ids=Tensor(s, 0, [2, 2], [2, 1])), [s]))


# --------------------------------------------------------------------------- npz / npy
def npy(descr, shape, values, version=1):
    fmt = {"<f4": "f", "<f8": "d", "<i8": "q", "<i4": "i", "|u1": "B"}[descr]
    shape_text = "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"
    h = "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (descr, shape_text)
    prefix = 12 if version >= 2 else 10
    h += " " * (-(prefix + len(h) + 1) % 64) + "\n"
    head = b"\x93NUMPY" + bytes([version, 0])
    head += struct.pack("<I" if version >= 2 else "<H", len(h))
    return head + h.encode() + struct.pack("<%d%s" % (len(values), fmt), *values)


def npz(members, compression=zipfile.ZIP_STORED):
    f = io.BytesIO()
    with zipfile.ZipFile(f, "w", compression) as z:
        for name, data in members:
            z.writestr(name + ".npy", data)
    return f.getvalue()


def npz_seeds():
    lat = [0.01 * i for i in range(4 * 8 * 8)]
    cache = [("latents", npy("<f4", [4, 8, 8], lat)), ("original_size", npy("<i8", [2], [64, 64])),
             ("crop_ltrb", npy("<f8", [4], [0, 0, 64, 64]))]
    flipped = cache + [("latents_flipped", npy("<f4", [4, 8, 8], lat[::-1]))]
    put("npz", "latent-cache.npz", npz(cache))
    put("npz", "latent-cache-flip-deflated.npz", npz(flipped, zipfile.ZIP_DEFLATED))
    put("npz", "te-outputs.npz", npz([("hidden_state1", npy("<f4", [2, 3], [1, 2, 3, 4, 5, 6])),
                                       ("pool2", npy("<f4", [3], [1, 2, 3])),
                                       ("caption", npy("|u1", [3], list(b"cat")))]))
    put("npz", "array-v1.npy", npy("<i4", [2, 2], [1, -2, 3, -4]))
    put("npz", "array-v2.npy", npy("<f8", [3], [0.5, 1.5, 2.5], version=2))
    put("npz", "scalar.npy", npy("<f4", [], [1.0]))


# --------------------------------------------------------------------------- text formats
def copy(harness, *paths):
    for p in paths:
        src = ROOT / p
        shutil.copyfile(src, CORPUS / harness / src.name)


def recipe_seeds():
    (CORPUS / "recipe").mkdir(parents=True, exist_ok=True)
    copy("recipe", "tests/recipe/data/lora.toml", "tests/recipe/data/lora.yaml",
         "tests/recipe/data/kohya_config.toml", "tests/recipe/data/kohya_equivalent.toml",
         "tests/recipe/data/base_for_kohya.toml", "tests/cli/data/fit-sgd.yaml",
         "tests/cli/data/fit-adamw.toml", "presets/demo-fit.toml", "presets/lora-example.toml")
    put("recipe", "kohya-args.txt",
        "--pretrained_model_name_or_path\nm.safetensors\n--network_module=networks.lora\n"
        "--network_dim\n8\n--optimizer_type\nSGDNesterov\n--optimizer_args\nweight_decay=0.01\n"
        "betas=0.9,0.99\n--lr_scheduler=cosine_with_restarts\n--lr_scheduler_num_cycles\n2\n"
        "--gradient_checkpointing\n--set\ntrain.seed=7\n")
    put("recipe", "set-lines.txt",
        "optimizer.learning_rate=1e-4\nnetwork.dim=16\noptimizer.betas=(0.9,0.99)\n"
        "train.max_train_steps = [1, 2]\nsample.prompts='a cat'\noutput.name=None\n"
        "model.path=0x1f\nlr_scheduler.power=.inf\n")
    put("recipe", "anchors.yaml",
        "model: &m {type: sd, path: a.safetensors}\nnetwork:\n  type: lora\n  dim: 0o17\n"
        "optimizer: {type: adamw, betas: [0.9, 0.999], eps: 1e-8, flag: yes}\n"
        "datasets:\n  - {image_dir: img, num_repeats: 2}\n  - *m\nsample: ~\n")


def dataset_seeds():
    put("dataset_config", "precedence.toml", """[general]
shuffle_caption = true
keep_tokens = 1
caption_extension = ".txt"
flip_aug = true

[[datasets]]
resolution = [768, 512]
batch_size = 4
keep_tokens = 2
enable_bucket = true
min_bucket_reso = 256
max_bucket_reso = 1024
bucket_reso_steps = 64

  [[datasets.subsets]]
  image_dir = "img/a"
  num_repeats = 10
  class_tokens = "sks dog"
  keep_tokens = 3
  caption_dropout_rate = 0.1
  caption_tag_dropout_rate = 0.2
  keep_tokens_separator = "|||"

  [[datasets.subsets]]
  image_dir = "img/reg"
  is_reg = true
  caption_extension = "caption"

[[datasets]]
  [[datasets.subsets]]
  image_dir = "img/b"
  resize_interpolation = "lanczos"
""")
    put("dataset_config", "kinds.toml", """[general]
resolution = 1024
class_tokens = "only for DreamBooth"
[[datasets]]
  [[datasets.subsets]]
  metadata_file = "meta.json"
  image_dir = "train"
[[datasets]]
  [[datasets.subsets]]
  image_dir = "img"
  conditioning_data_dir = "cond"
  caption_extension = ".txt"
""")
    put("dataset_config", "minimal.toml",
        '[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = "a"\ncolor_aug = true\n'
        'random_crop = true\ncaption_prefix = "p, "\ncaption_suffix = ", s"\nsecondary_separator = ";;"\n'
        'enable_wildcard = true\ntoken_warmup_min = 1\ntoken_warmup_step = 10\n')


def prompt_seeds():
    (CORPUS / "prompt").mkdir(parents=True, exist_ok=True)
    copy("prompt", "tests/prompt/data/prompts.txt", "tests/prompt/data/prompts.toml",
         "tests/prompt/data/prompts.json", "tests/prompt/data/bad_line.txt")
    put("prompt", "weights.txt",
        "a (cat:1.3) [dog] ((nested)) \\(escaped\\) BREAK (un)balanced [[x]:0.5] --n (bad:0.5) --s 20\n"
        + "word " * 120 + "--w 512 --h 768 --d 18446744073709551615\n"
        "(a:1.2.3) --ss dpmsolver++ --am -1,.5\n")


def main():
    if CORPUS.exists():
        shutil.rmtree(CORPUS)
    safetensors_seeds()
    pickle_seeds()
    npz_seeds()
    recipe_seeds()
    dataset_seeds()
    prompt_seeds()
    for d in sorted(CORPUS.iterdir()):
        files = sorted(d.iterdir())
        print("%-18s %2d seeds, %6d bytes" % (d.name, len(files), sum(f.stat().st_size for f in files)))


if __name__ == "__main__":
    main()
