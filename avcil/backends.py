"""One interface over the runtimes that run an encoder: torch, ONNX Runtime and TensorRT.

    backend = load_backend("MODEL/encoders/visual.onnx")          # by suffix: .onnx, .engine / .plan
    backend = load_backend(module, input_names=[...], ...)        # an nn.Module runs in torch
    tokens, = backend(frames)                                     # numpy or torch in, numpy float32 out

Every backend takes its inputs positionally in `input_names` order, each [batch, *input_shape], and returns its
outputs in `output_names` order; the caller never knows which runtime ran. `model_backends` opens a model dir's
encoders (audio, visual, and lite's two audio stream parts) with one runtime; the head is not among them: it runs
in torch from the model dir (docs/architecture.md#backends).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Collection, Sequence

import numpy as np
import torch
from torch import nn

from avcil.errors import InvalidInput, StageFailed

KINDS = ("torch", "onnxruntime", "tensorrt")
SUFFIXES = {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt"}
# ONNX Runtime execution providers, best first; the first one installed wins on a GPU.
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")

Array = np.ndarray | torch.Tensor


class Backend:
    """Runs one graph. Subclasses set the attributes and implement `run` on checked inputs."""

    kind: str
    device: str
    input_names: list[str]
    output_names: list[str]
    input_shapes: list[tuple[int | None, ...]]  # per input, without the batch dimension; None: any size

    def __call__(self, *inputs: Array) -> list[np.ndarray]:
        if len(inputs) != len(self.input_names):
            raise InvalidInput(f"{self}: expected {len(self.input_names)} inputs {self.input_names}, got {len(inputs)}")
        batch = None
        for name, shape, value in zip(self.input_names, self.input_shapes, inputs):
            fits = len(value.shape) == len(shape) + 1 and all(
                want is None or got == want for got, want in zip(value.shape[1:], shape))
            if not fits or (batch is not None and value.shape[0] != batch):
                raise InvalidInput(f"{self}: input {name!r} has shape {tuple(value.shape)}, expected "
                                 f"({batch or 'batch'}, {', '.join('any' if d is None else str(d) for d in shape)})")
            batch = value.shape[0]
        return self.run(list(inputs))

    def run(self, inputs: list[Array]) -> list[np.ndarray]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kind} on {self.device})"


def _numpy(value: Array) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu().numpy()
    return np.ascontiguousarray(value, dtype=np.float32)


def _outputs(result) -> list[torch.Tensor]:
    return list(result) if isinstance(result, (tuple, list)) else [result]


# torch -----------------------------------------------------------------------------------------------------------
class TorchBackend(Backend):
    """An nn.Module on CPU or CUDA. On CUDA: `fp16` runs the module in half precision (inputs cast, outputs back to
    float32); `graph_batch` captures a CUDA graph for that batch size and replays it (other sizes run eagerly)."""

    kind = "torch"

    def __init__(self, module: nn.Module, input_names: Sequence[str], output_names: Sequence[str],
                 input_shapes: Sequence[Sequence[int | None]], device: str = "cpu", fp16: bool = False,
                 graph_batch: int | None = None):
        on_cuda = device.startswith("cuda")
        if (fp16 or graph_batch) and not on_cuda:
            raise InvalidInput("fp16 and CUDA graphs need a CUDA device (torch fp16 on CPU is slower than fp32)")
        self.device = device
        self.dtype = torch.float16 if fp16 else torch.float32
        self.module = module.to(device=device, dtype=self.dtype).eval()
        self.input_names, self.output_names = list(input_names), list(output_names)
        self.input_shapes = [tuple(None if d is None else int(d) for d in s) for s in input_shapes]
        self.graph_batch = graph_batch
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static_inputs: list[torch.Tensor] = []
        self._static_outputs: list[torch.Tensor] = []

    @torch.inference_mode()
    def run(self, inputs: list[Array]) -> list[np.ndarray]:
        tensors = [torch.as_tensor(x).to(self.device, self.dtype, non_blocking=True) for x in inputs]
        if self.graph_batch is not None and tensors[0].shape[0] == self.graph_batch:
            outputs = self._replay(tensors)
        else:
            outputs = _outputs(self.module(*tensors))
        return [_numpy(o) for o in outputs]

    def _replay(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        if self._graph is None:
            self._static_inputs = [t.clone() for t in tensors]
            # Capture needs the lazy CUDA state (cuBLAS handles, autotuning) settled on a side stream first.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    self.module(*self._static_inputs)
            torch.cuda.current_stream().wait_stream(side)
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph):
                self._static_outputs = _outputs(self.module(*self._static_inputs))
        for static, new in zip(self._static_inputs, tensors):
            static.copy_(new)
        self._graph.replay()
        return self._static_outputs


# ONNX Runtime ----------------------------------------------------------------------------------------------------
def session_options(threads: int | None = None, spinning: bool = False):
    """CPU settings that matter for the ViT encoders: every graph optimisation, memory patterns, one intra-op
    thread per core, no inter-op parallelism (the graphs are one chain), threads that sleep between calls unless
    `spinning` (avcil.runtime.threads.SPINNING_GRAPHS: the graph that `avcil run --spin` keeps spinning)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_mem_pattern = True
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: ORT warns about every provider it is not given
    # No spinning by default: a session's threads otherwise spin on after each call and take the cores from the
    # next graph's call. The live lite recogniser runs five graphs one after another; with every session spinning
    # its decision latency on two quiet cores was p50 83 / p95 107 ms (aiSFX 50 ms right after a speech window),
    # without 44 / 72 ms. `avcil run --spin` makes one graph the exception (avcil.runtime.threads.SPINNING_GRAPHS).
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return options


def onnxruntime_providers(device: str, available: Sequence[str], fp16: bool = False,
                          cache_dir: Path | None = None) -> list:
    """Execution providers for `device`: TensorRT EP > CUDA EP > CPU on a GPU, by availability."""
    if not device.startswith("cuda"):
        return ["CPUExecutionProvider"]
    chosen = [p for p in GPU_PROVIDERS if p in available]
    if not chosen:
        raise StageFailed(f"device {device!r}: this onnxruntime has no GPU provider (has {list(available)}); "
                           f"install onnxruntime-gpu, or use device='cpu'")
    device_id = int(device.split(":")[1]) if ":" in device else 0
    options = {"CUDAExecutionProvider": {"device_id": device_id},
               "TensorrtExecutionProvider": {"device_id": device_id, "trt_fp16_enable": fp16,
                                             "trt_engine_cache_enable": cache_dir is not None,
                                             "trt_engine_cache_path": str(cache_dir or "")}}
    return [(p, options[p]) for p in chosen] + ["CPUExecutionProvider"]


class OnnxRuntimeBackend(Backend):
    kind = "onnxruntime"

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None, fp16: bool = False,
                 spinning: bool = False):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such ONNX file (export it with `avcil export --format onnx`)")
        providers = onnxruntime_providers(device, ort.get_available_providers(), fp16, path.parent / ".ort-trt-cache")
        self.session = ort.InferenceSession(str(path), session_options(threads, spinning), providers=providers)
        self.device, self.path = device, path
        self.providers = self.session.get_providers()
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        # A named (dynamic) axis takes any size: the frame count of a frame-by-frame visual graph.
        self.input_shapes = [tuple(d if isinstance(d, int) else None for d in i.shape[1:])
                             for i in self.session.get_inputs()]
        self.device_id = int(device.split(":")[1]) if ":" in device else 0

    def run(self, inputs: list[Array]) -> list[np.ndarray]:
        if not self.device.startswith("cuda"):
            return self.session.run(self.output_names, dict(zip(self.input_names, map(_numpy, inputs))))
        # IOBinding: CUDA tensors are read where they lie, outputs stay on the GPU until the one copy back.
        binding = self.session.io_binding()
        # float32 contiguous copies where needed; held in `ready` so that the memory outlives the run.
        ready = [v.float().contiguous() if isinstance(v, torch.Tensor) and v.is_cuda else _numpy(v) for v in inputs]
        for name, value in zip(self.input_names, ready):
            if isinstance(value, torch.Tensor):
                binding.bind_input(name, "cuda", self.device_id, np.float32, tuple(value.shape), value.data_ptr())
            else:
                binding.bind_cpu_input(name, value)
        for name in self.output_names:
            binding.bind_output(name, "cuda", self.device_id)
        if any(isinstance(v, torch.Tensor) for v in ready):
            torch.cuda.current_stream().synchronize()  # ORT reads them on its own stream
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()


# TensorRT --------------------------------------------------------------------------------------------------------
class TensorRTBackend(Backend):
    """An avcil engine file (header + engine). The header is checked against this machine's TensorRT and GPU and
    the ONNX file beside the engine before anything is deserialised. Batches above the engine's profile run in
    chunks. I/O through torch CUDA tensors, or pycuda where torch has no CUDA."""

    kind = "tensorrt"

    def __init__(self, path: str | Path, device: str = "cuda"):
        from avcil.model import engine_file as engines

        trt = engines.import_tensorrt()
        self.path, self.device = Path(path), device
        self.header, serialized = engines.read_engine(self.path)
        engines.check_header(self.header, self.path, engines.environment(),
                             self.path.parent / self.header.get("onnx_file", ""))
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(serialized)
        if self.engine is None:
            raise engines.EngineError(f"{self.path}: TensorRT could not deserialise the engine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.input_names]
        if self.input_names != self.header["inputs"] or self.output_names != self.header["outputs"]:
            raise engines.EngineError(f"{self.path}: engine I/O {self.input_names} -> {self.output_names} differ from "
                                      f"its header's {self.header['inputs']} -> {self.header['outputs']}")
        profile = self.header["profile"]
        self.input_shapes = engines.backend_input_shapes(profile, self.input_names)
        self.max_batch = profile[self.input_names[0]]["max"][0]
        self.io = _TorchCudaIO(device) if torch.cuda.is_available() else _PycudaIO()

    def run(self, inputs: list[Array]) -> list[np.ndarray]:
        batch = inputs[0].shape[0]
        chunks = [self._run_chunk([x[s:s + self.max_batch] for x in inputs])
                  for s in range(0, batch, self.max_batch)]
        return [np.concatenate(parts) for parts in zip(*chunks)]

    def _run_chunk(self, inputs: list[Array]) -> list[np.ndarray]:
        for name, value in zip(self.input_names, inputs):
            self.context.set_input_shape(name, tuple(value.shape))
            self.context.set_tensor_address(name, self.io.input(name, value))
        for name in self.output_names:
            self.context.set_tensor_address(name, self.io.output(name, tuple(self.context.get_tensor_shape(name))))
        if not self.context.execute_async_v3(self.io.stream_handle):
            raise StageFailed(f"{self.path}: TensorRT execution failed")
        return self.io.fetch(self.output_names)


class _TorchCudaIO:
    """Buffers as torch CUDA tensors. The engine runs on torch's current stream, so it is ordered after the input
    copies and before the output copies without any extra synchronisation."""

    def __init__(self, device: str):
        self.device = torch.device(device)
        self.tensors: dict[str, torch.Tensor] = {}

    @property
    def stream_handle(self) -> int:
        return torch.cuda.current_stream(self.device).cuda_stream

    def input(self, name: str, value: Array) -> int:
        self.tensors[name] = torch.as_tensor(value).to(self.device, torch.float32).contiguous()
        return self.tensors[name].data_ptr()

    def output(self, name: str, shape: tuple[int, ...]) -> int:
        self.tensors[name] = torch.empty(shape, dtype=torch.float32, device=self.device)
        return self.tensors[name].data_ptr()

    def fetch(self, names: list[str]) -> list[np.ndarray]:
        return [self.tensors[n].cpu().numpy() for n in names]  # .cpu() waits for the stream


class _PycudaIO:
    def __init__(self):
        try:
            import pycuda.autoinit  # noqa: F401  (a context on device 0)
            import pycuda.driver as cuda
        except ImportError:
            raise StageFailed("the tensorrt backend needs torch with CUDA or pycuda (pip install pycuda)") from None
        self.cuda = cuda
        self.stream = cuda.Stream()
        self.stream_handle = self.stream.handle
        self.buffers: dict[str, tuple] = {}

    def input(self, name: str, value: Array) -> int:
        host = _numpy(value)
        device = self.cuda.mem_alloc(host.nbytes)
        self.cuda.memcpy_htod_async(device, host, self.stream)
        self.buffers[name] = (host, device)
        return int(device)

    def output(self, name: str, shape: tuple[int, ...]) -> int:
        host = self.cuda.pagelocked_empty(shape, np.float32)
        device = self.cuda.mem_alloc(host.nbytes)
        self.buffers[name] = (host, device)
        return int(device)

    def fetch(self, names: list[str]) -> list[np.ndarray]:
        for name in names:
            host, device = self.buffers[name]
            self.cuda.memcpy_dtoh_async(host, device, self.stream)
        self.stream.synchronize()
        return [self.buffers[n][0].copy() for n in names]


# Loading ---------------------------------------------------------------------------------------------------------
def kind_for(source: str | Path | nn.Module) -> str:
    """The backend kind a source implies: an nn.Module runs in torch, a file by its suffix."""
    if isinstance(source, nn.Module):
        return "torch"
    suffix = Path(source).suffix.lower()
    if suffix not in SUFFIXES:
        raise InvalidInput(f"{source}: cannot tell the backend from the suffix {suffix!r}; expected one of "
                         f"{sorted(SUFFIXES)} or an nn.Module")
    return SUFFIXES[suffix]


def available_kinds() -> list[str]:
    """The backends that can run on this machine."""
    import importlib.util

    kinds = ["torch"]
    if importlib.util.find_spec("onnxruntime"):
        kinds.append("onnxruntime")
    if importlib.util.find_spec("tensorrt") and torch.cuda.is_available():
        kinds.append("tensorrt")
    return kinds


def load_backend(source: str | Path | nn.Module, kind: str | None = None, device: str = "cpu", **options) -> Backend:
    """A backend for `source` (a file, or an nn.Module with `input_names`, `output_names`, `input_shapes` in
    `options`). `kind` overrides the suffix; `options` go to the backend (threads, fp16, graph_batch)."""
    kind = kind or kind_for(source)
    if kind == "torch":
        if not isinstance(source, nn.Module):
            raise InvalidInput(f"{source}: the torch backend runs an nn.Module, not a file")
        return TorchBackend(source, device=device, **options)
    if kind == "onnxruntime":
        return OnnxRuntimeBackend(source, device=device, **options)
    if kind == "tensorrt":
        return TensorRTBackend(source, device=device if device.startswith("cuda") else "cuda")
    raise InvalidInput(f"unknown backend {kind!r}; expected one of {KINDS}")


def check_same_profile(record: dict, other: dict, what: str, other_what: str, fix: str) -> None:
    """Refuse, in one line naming both, encoders whose profile (name, version, shape, settings) is not the one a
    model was trained with."""
    from avcil.data.store import profile_label
    from avcil.model.encoders import ProfileMismatch

    same = json.loads(json.dumps(record)) == json.loads(json.dumps(other))
    if not same:
        raise ProfileMismatch(f"{what} was trained with the {profile_label(record)} encoders, {other_what} are "
                              f"{profile_label(other)}"
                              f"{'' if profile_label(record) != profile_label(other) else ' with other settings'}"
                              f": {fix}")


def checked_file(folder: Path, listed: dict, name: str, suffix: str) -> Path:
    """The exported file of graph `name`, only if the encoder spec lists it with a sha256 that it matches: a file
    put or changed there by anything but `avcil export` is never loaded."""
    from avcil.fileio import sha256_file
    from avcil.modeldir import ModelDirError

    path = folder / f"{name}{suffix}"
    expected = (listed.get(name) or {}).get("sha256")
    if expected is None:
        raise ModelDirError(f"{path}: not listed with a checksum in {folder / 'encoders.json'}; export again: "
                           f"avcil export --model {folder.parent}")
    if not path.is_file() or sha256_file(path) != expected:
        raise ModelDirError(f"{path}: missing or not the file that was exported (checksum mismatch); export again: "
                           f"avcil export --model {folder.parent}")
    return path


def model_backends(model_dir: str | Path, kind: str, device: str = "cpu", profile=None, manifest: dict | None = None,
                   spinning: Collection[str] = (), **options) -> dict[str, Backend]:
    """The audio and visual encoders of a model dir, on one runtime, and the audio encoder's stream parts where the
    profile has them (lite: 'audio_sfx', 'speech_window'). The head is the model's own, in torch (see GRAPH_NAMES).

    onnxruntime/tensorrt run MODEL/encoders/{audio,visual,...}.{onnx,engine}; torch runs the encoder profile
    (`profile`, or rebuilt from the manifest). `manifest`: the model's, when the caller has loaded it already.
    `spinning`: the graphs whose onnxruntime sessions keep their threads spinning between calls."""
    from avcil.model.encoders import profile_from_record
    from avcil.model.graphs import GRAPH_NAMES, dynamic_axes, graph_modules, read_spec
    from avcil.modeldir import ModelDir

    model_dir = Path(model_dir)
    if kind in ("onnxruntime", "tensorrt"):
        folder = model_dir / "encoders"
        spec = read_spec(folder)  # a clear error when nothing was exported
        record = (manifest or ModelDir(model_dir).manifest())["features"].get("profile")
        if record:
            check_same_profile(record, spec["profile"], f"{model_dir}", f"its exported encoders ({folder})",
                               f"export them again: avcil export --model {model_dir} --format onnx")
        suffix = ".onnx" if kind == "onnxruntime" else ".engine"
        listed = spec["graphs"] if kind == "onnxruntime" else spec["engines"]
        # An export from before the head was left out lists it too: it is not loaded.
        names = [n for n in listed if n not in GRAPH_NAMES and n != "head"]
        return {name: load_backend(checked_file(folder, listed, name, suffix), kind, device, **options,
                                   **({"spinning": name in spinning} if kind == "onnxruntime" else {}))
                for name in (*GRAPH_NAMES, *names)}
    record = (manifest or ModelDir(model_dir).manifest())["features"].get("profile")
    if profile is None:
        profile = profile_from_record(record, where=str(model_dir))
    elif record:
        check_same_profile(record, profile.describe(), f"{model_dir}", "the encoders given",
                           "use the profile the model was trained with (leave profile= out to rebuild it)")
    backends = {}
    for name, (module, graph, shapes) in graph_modules(profile).items():
        free = dynamic_axes(graph, profile.frames_independent)[graph.inputs[0]]
        shapes[0] = tuple(None if axis + 1 in free else d for axis, d in enumerate(shapes[0]))
        backends[name] = load_backend(module, kind, device, input_names=graph.inputs, output_names=graph.outputs,
                                      input_shapes=shapes, **options)
    return backends
