"""TensorRT engines built from the exported ONNX files with the TensorRT 10 Python API.

An engine only runs under the TensorRT version and on the GPU that built it (docs/architecture.md#exported-encoders),
so every engine file starts with a metadata header that the loader checks before deserialising:

    b"AVCILTRT"  uint32 little-endian header length  header (UTF-8 JSON)  serialized engine

The pure parts (the header, the optimization profile, the precision choice, which layers stay in fp32) need no
TensorRT and are tested everywhere; `build_engine` and `load_engine` need `tensorrt` and a CUDA GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from avcil.errors import InvalidInput
from avcil.fileio import atomic_write
from avcil.model.engine_file import EngineError, _cc, environment, import_tensorrt, make_header, write_engine
from avcil.model.graphs import free_axis_minimum

PRECISIONS = ("fp32", "fp16", "int8")
# Layer types that overflow or lose too much in fp16 (docs/architecture.md#exported-encoders): pinned to fp32 in fp16
# and int8 engines.
# At opset >= 17 LayerNorm arrives as one ONNX LayerNormalization node, which TensorRT parses into a single
# normalization layer, so pinning by type catches every LayerNorm.
ACCURATE_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX")
# Jetson boards share 4-8 GiB between CPU and GPU; 1 GiB of tactic workspace leaves room for the rest.
DEFAULT_WORKSPACE_MIB = 1024
# Lowest compute capability with fast fp16 (Jetson TX1, sm_53) and with fast int8 (dp4a, sm_61).
FAST_FP16_FROM = (5, 3)
FAST_INT8_FROM = (6, 1)


# The optimization profile ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchRange:
    """The batch sizes an engine accepts: any in [min, max], tuned for opt."""

    min: int = 1
    opt: int = 1
    max: int = 8

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise InvalidInput(f"batch range needs 1 <= min <= opt <= max, got min={self.min} opt={self.opt} "
                             f"max={self.max}")

    @classmethod
    def parse(cls, text: str) -> "BatchRange":
        """'1,4,8' (min,opt,max) or '4' (a fixed batch)."""
        try:
            values = [int(v) for v in text.split(",")]
        except ValueError:
            raise InvalidInput(f"batch range {text!r}: expected MIN,OPT,MAX or one batch size, as integers") from None
        if len(values) == 1:
            values *= 3
        if len(values) != 3:
            raise InvalidInput(f"batch range {text!r}: expected MIN,OPT,MAX or one batch size")
        return cls(*values)


def optimization_profile(input_shapes: dict[str, Sequence[int]], batch: BatchRange,
                         free: dict[str, set[int]] | None = None, minimum: int = 1) -> dict[str, dict[str, list[int]]]:
    """Per input: the min/opt/max shapes of one profile. `input_shapes` holds each input's shape without the
    batch dimension, fixed by the encoder profile; an axis in `free` (the lite visual graph's frames, counted
    without the batch) ranges from `minimum` (avcil.model.graphs.free_axis_minimum: one frame, so that the engine
    also encodes one frame at a time) to that size."""
    profile = {}
    for name, shape in input_shapes.items():
        if any(int(d) < 1 for d in shape):
            raise InvalidInput(f"input {name!r}: every dimension but the batch must be fixed and positive, got {shape}")
        ranged = (free or {}).get(name, set())
        profile[name] = {key: [size, *(minimum if key == "min" and axis in ranged else int(d)
                                       for axis, d in enumerate(shape))]
                         for key, size in (("min", batch.min), ("opt", batch.opt), ("max", batch.max))}
    return profile


# Precision ------------------------------------------------------------------------------------------------------
def choose_precision(requested: str, compute_capability: tuple[int, int], has_calibration: bool) -> str:
    """The precision to build, or a clear error when this GPU or the inputs cannot give the one asked for.

    No silent fallback: an fp16 request on a GPU without fast fp16 would build an engine slower than fp32."""
    if requested not in PRECISIONS:
        raise InvalidInput(f"precision {requested!r}: expected one of {PRECISIONS}")
    capability = tuple(compute_capability)
    if requested == "fp16" and capability < FAST_FP16_FROM:
        raise EngineError(f"fp16 needs a GPU of compute capability >= {_cc(FAST_FP16_FROM)}; this one is "
                          f"{_cc(capability)}: build with --precision fp32")
    if requested == "int8":
        if capability < FAST_INT8_FROM:
            raise EngineError(f"int8 needs a GPU of compute capability >= {_cc(FAST_INT8_FROM)}; this one is "
                              f"{_cc(capability)}: build with --precision fp16 or fp32")
        if not has_calibration:
            raise EngineError("int8 needs calibration data: pass real clips (--calibration FILES) or an existing "
                              "calibration cache")
    return requested


def builder_flags(precision: str) -> list[str]:
    """TensorRT BuilderFlag names for a precision. int8 also allows fp16, so that layers TensorRT cannot run in
    int8 fall back to fp16 rather than fp32; the accurate layers are pinned to fp32 in both reduced modes."""
    flags = {"fp32": [], "fp16": ["FP16"], "int8": ["INT8", "FP16"]}[precision]
    return flags + (["OBEY_PRECISION_CONSTRAINTS"] if flags else [])


def accurate_layers(layer_types: Sequence[str]) -> list[int]:
    """Indices of the network's layers (given by TensorRT LayerType name) to keep in fp32."""
    return [i for i, kind in enumerate(layer_types) if kind in ACCURATE_LAYER_TYPES]


# Needs TensorRT -------------------------------------------------------------------------------------------------


def engine_input_shapes(onnx_inputs: dict[str, Sequence[int | str]], window_shapes: Sequence[Sequence[int]] | None
                        ) -> tuple[dict[str, list[int]], dict[str, set[int]]]:
    """Each input's shape without the batch for an engine, and the axes the ONNX file leaves free beside the batch
    (the lite visual graph's frame count): those take the size of a whole window from `window_shapes` (same
    order) as their largest size."""
    shapes, free = {}, {}
    for index, (name, dims) in enumerate(onnx_inputs.items()):
        free[name] = {axis for axis, d in enumerate(dims) if not (isinstance(d, int) and d > 0)}
        shapes[name] = [int(window_shapes[index][axis]) if axis in free[name] and window_shapes is not None else
                        0 if axis in free[name] else int(d) for axis, d in enumerate(dims)]
    return shapes, free


def build_engine(onnx_path: Path, engine_path: Path, precision: str, batch: BatchRange,
                 workspace_mib: int = DEFAULT_WORKSPACE_MIB, timing_cache: Path | None = None,
                 calibration: Iterable[dict[str, np.ndarray]] | None = None,
                 calibration_cache: Path | None = None, window_shapes: Sequence[Sequence[int]] | None = None) -> dict:
    """Parse `onnx_path`, build an engine at `precision` for `batch`, write it with its header to `engine_path`
    and return the header. The timing cache file is read when present and written back, so rebuilds are fast;
    int8 calibrates on `calibration` batches (dicts input name -> array) or reuses `calibration_cache`."""
    import onnx

    trt = import_tensorrt()
    env = environment()
    has_calibration = calibration is not None or (calibration_cache is not None and calibration_cache.is_file())
    precision = choose_precision(precision, tuple(int(c) for c in env["compute_capability"].split(".")),
                                 has_calibration)
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    input_shapes, free = engine_input_shapes(
        {i.name: [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim[1:]]
         for i in graph.input if i.name not in initializers}, window_shapes)
    outputs = [o.name for o in graph.output]
    profile_shapes = optimization_profile(input_shapes, batch, free, free_axis_minimum(Path(onnx_path).stem))

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"{onnx_path}: TensorRT cannot parse it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    for flag in builder_flags(precision):
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if precision != "fp32":
        layers = [network.get_layer(i) for i in range(network.num_layers)]
        for index in accurate_layers([layer.type.name for layer in layers]):
            layers[index].precision = trt.float32
            for output in range(layers[index].num_outputs):
                layers[index].set_output_type(output, trt.float32)
    profile = builder.create_optimization_profile()
    for name, shapes in profile_shapes.items():
        profile.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    if precision == "int8":
        # The config keeps only a pointer: the local name keeps the calibrator alive through the build.
        calibrator = _calibrator(trt, calibration, calibration_cache, list(input_shapes), batch.opt)
        config.int8_calibrator = calibrator
        config.set_calibration_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"{onnx_path}: TensorRT failed to build a {precision} engine (see its log above)")
    if timing_cache is not None:
        atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
    header = make_header(environment=env, precision=precision, profile=profile_shapes, inputs=list(input_shapes),
                         outputs=outputs, onnx_path=onnx_path, workspace_mib=workspace_mib)
    write_engine(engine_path, header, bytes(serialized))
    return header


def _calibrator(trt, batches: Iterable[dict[str, np.ndarray]] | None, cache: Path | None, names: list[str],
                batch_size: int):
    """An entropy calibrator fed from host batches of `batch_size` (the profile's opt batch, the shape TensorRT
    calibrates at) through torch CUDA tensors; the cache is read when it exists (then no batch is needed) and
    written after calibration."""
    import torch

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self.batches = iter(batches or ())
            self.current: list[torch.Tensor] = []

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, requested: list[str]):
            batch = next(self.batches, None)
            if batch is None:
                return None
            self.current = [torch.from_numpy(np.ascontiguousarray(batch[n], dtype=np.float32)).cuda() for n in names]
            torch.cuda.synchronize()  # TensorRT reads the buffers on its own stream once this returns
            return [self.current[names.index(n)].data_ptr() for n in requested]

        def read_calibration_cache(self):
            return cache.read_bytes() if cache is not None and cache.is_file() else None

        def write_calibration_cache(self, data) -> None:
            if cache is not None:
                atomic_write(cache, bytes(data))

    return Calibrator()

