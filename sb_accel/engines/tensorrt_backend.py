"""TensorRT selection engine: FP16, INT8 or FP8 loss graphs on an NVIDIA GPU, refitted in place.

TensorRT is optional and imported inside the constructor: without it (or without CUDA) building
this engine raises :class:`~sb_accel.engines.errors.EngineError` naming the ``[tensorrt]`` extra
and the alternatives. Export, graphs and the refresh schedule are
:class:`~sb_accel.engines.onnx_engine.OnnxEngine`'s; this module builds, refits and runs engines.

Precision comes from the ONNX graph, never from builder flags: TensorRT 11 removed the precision
``BuilderFlag`` s and always builds strongly typed networks, and on 10.x this engine asks for a
strongly typed network too, so both versions obey the graph's types.

* ``fp16``: the graph converted to FP16 with the classifier and loss head kept FP32.
* ``int8``: explicit Q/DQ with symmetric int8 activations and per-channel weights, FP32 biases
  (:func:`~sb_accel.engines.quantize.quantize_int8`, format ``"s8s8-symmetric"``).
* ``fp8``: Q/DQ FP8 (E4M3) from NVIDIA ModelOpt, if importable; needs compute capability >= 8.9.

Engines are built with ``BuilderFlag.REFIT`` and one optimization profile over batch
``1..max_batch``; the timing cache persists in the keyed cache folder so rebuilds skip most tactic
timing. A cheap refresh writes the new weights into the ONNX graph (re-quantizing INT8 weights in
numpy with the kept activation scales; FP8 is recalibrated, ModelOpt has no weights-only path) and
refits through ``OnnxParserRefitter``, which also recomputes what the parser derived from the ONNX
weights (BatchNorm scales). If the refit is refused (whether Q/DQ weights are refittable is not
documented for every version: the weights TensorRT reports missing and the parser's errors go into
:attr:`refresh_detail` and the refresh event), the engine is recalibrated and rebuilt; a periodic
rebuild only with ``rebuild_every > 0`` (default 0: a refit is exact for FP16, and a rebuild costs
a tactic search). Refit and rebuild change the engine in place, after waiting for queued
executions: refresh it only when no ``losses`` call is running (the background refresher
refreshes a standby engine).

Inference runs on torch-owned CUDA tensors (``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``) on a dedicated ``torch.cuda.Stream``: inputs are cast and made contiguous on
torch's current stream (:func:`prepare_inputs`; channels_last batches are copied to NCHW), the
engine stream then waits for torch's, executes, and torch's stream waits for the engine's before
the losses are used; tensors the engine stream reads are ``record_stream`` -ed so torch's allocator
does not hand them out early. No pycuda (its context handling conflicts with torch's).

Not executed anywhere yet: no GPU with TensorRT was available to this project (the lent GPUs cannot
install it); the GPU tests in tests/test_tensorrt.py are written to run where it is.

Recipe keys used (``context.options`` overrides them): ``rebuild_every``, ``workspace_mib``,
``builder_optimization_level``, ``calibration_method``, ``calibration_rows``, ``exporter``, ``opset``.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import onnx
import torch

from ..files import atomic_write
from .base import EngineContext
from .errors import EngineError
from .graph import INPUT_NAMES, OUTPUT_NAME, float_tail_nodes
from .onnx_engine import OnnxEngine

__all__ = ["TensorRTEngine", "INSTALL_HINT", "prepare_inputs"]

INSTALL_HINT = ("install it with: pip install 'sb-accel[tensorrt]' (the wheels fetch NVIDIA's libraries at install "
                "time and need an NVIDIA GPU with a recent driver). Alternatives: '--engine onnxruntime "
                "--precision int8' (CPU), or '--engine torch --precision bf16' (torch-bf16, any GPU)")


class TensorRTEngine(OnnxEngine):
    """Per-example losses from a TensorRT engine built from the exported loss graph.

    Attributes:
        refresh_kind: ``"cheap"`` (refit) or ``"rebuild"`` (rebuilt; INT8/FP8 recalibrated) for the
            last refresh.
    """

    backend = "tensorrt"
    precisions = ("fp16", "int8", "fp8")
    rebuild_every_key = "rebuild_every"
    int8_format = "s8s8-symmetric"

    # --- runtime ------------------------------------------------------------------------------
    def _start_runtime(self, context: EngineContext) -> None:
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise EngineError(f"the tensorrt engine needs TensorRT, which is not installed; {INSTALL_HINT}") from exc
        if not torch.cuda.is_available():
            raise EngineError(f"the tensorrt engine needs a CUDA GPU and torch sees none; {INSTALL_HINT}")
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        if self.device.type != "cuda":
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.max_batch = int(context.max_batch)
        self._workspace = int(context.setting("workspace_mib")) << 20
        self._level = int(context.setting("builder_optimization_level"))
        self._stream = torch.cuda.Stream(self.device)
        self._image_shape = tuple(context.sample_batches[0][0].shape[1:])
        if self.precision == "fp8":
            self._modelopt_quantize = _fp8_quantizer(self.device)

    @property
    def timing_cache_path(self) -> Path:
        """TensorRT's timing cache, kept beside this engine's ONNX files."""
        return self.artifacts / "tensorrt-timing.cache"

    def _network_flags(self) -> int:
        trt = self._trt
        # TensorRT 10 still has precision BuilderFlags and weakly typed networks by default; ask for
        # strong typing so it obeys the graph's types (FP32 loss head, Q/DQ) as TensorRT 11 does.
        if hasattr(trt.BuilderFlag, "FP16") and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        return 0

    def _load(self, graph: onnx.ModelProto) -> None:
        """Parse ``graph`` and build a refittable engine and its execution context."""
        trt = self._trt
        builder = trt.Builder(self._logger)
        network = builder.create_network(self._network_flags())
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(graph.SerializeToString()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineError(f"TensorRT could not parse the {self.precision} loss graph: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self._workspace)
        config.builder_optimization_level = self._level
        config.set_flag(trt.BuilderFlag.REFIT)
        profile = builder.create_optimization_profile()
        shape = self._image_shape
        profile.set_shape(INPUT_NAMES[0], (1, *shape), (self.max_batch, *shape), (self.max_batch, *shape))
        profile.set_shape(INPUT_NAMES[1], (1,), (self.max_batch,), (self.max_batch,))
        config.add_optimization_profile(profile)
        cache_path = self.timing_cache_path
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=True)  # a cache from another GPU/version is just ignored
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise EngineError(f"TensorRT failed to build the {self.precision} engine (see the TensorRT log above)")
        atomic_write(cache_path, bytes(config.get_timing_cache().serialize()))
        engine = trt.Runtime(self._logger).deserialize_cuda_engine(plan)
        if engine is None:
            raise EngineError("TensorRT could not deserialize the engine it just built")
        self._dtypes = {name: _torch_dtype(trt, engine.get_tensor_dtype(name)) for name in (*INPUT_NAMES, OUTPUT_NAME)}
        context = engine.create_execution_context()
        self.close()  # the old engine goes only after its queued executions
        self._engine, self._context = engine, context

    def _reload(self, graph: onnx.ModelProto) -> bool:
        """Refit the engine's weights from ``graph``; False if TensorRT refuses, with
        :attr:`refresh_detail` naming the weights it reported missing and the parser's errors."""
        trt = self._trt
        refitter = trt.Refitter(self._engine, self._logger)
        parser_refitter = trt.OnnxParserRefitter(refitter, self._logger)
        parsed = parser_refitter.refit_from_bytes(graph.SerializeToString())
        missing: List[str] = list(refitter.get_missing_weights())
        if not parsed or missing:
            errors = [str(parser_refitter.get_error(i)) for i in range(getattr(parser_refitter, "num_errors", 0))]
            self.refresh_detail = (f"TensorRT refused the refit (missing weights: {missing[:10]}, "
                                   f"parser errors: {errors[:3]}); rebuilt instead")
            return False
        self._stream.synchronize()  # no execution of the old weights may still be running
        if not refitter.refit_cuda_engine():
            self.refresh_detail = "TensorRT refit_cuda_engine() failed (see the TensorRT log); rebuilt instead"
            return False
        return True

    # --- FP8 graphs ---------------------------------------------------------------------------
    def _make_graph(self) -> onnx.ModelProto:
        return self._quantize_fp8() if self.precision == "fp8" else super()._make_graph()

    def _write_weights(self, arrays: dict) -> None:
        if self.precision == "fp8":  # ModelOpt has no weights-only path: recalibrate
            self._remake_graph(arrays)
        else:
            super()._write_weights(arrays)

    def _quantize_fp8(self) -> onnx.ModelProto:
        images = np.concatenate([b[0] for b in self._calibration])
        labels = np.concatenate([b[1] for b in self._calibration])
        with tempfile.TemporaryDirectory(prefix="sb-accel-fp8-") as tmp:
            source, target = Path(tmp) / "float.onnx", Path(tmp) / "fp8.onnx"
            onnx.save(self._float, source)
            try:
                self._modelopt_quantize(str(source), quantize_mode="fp8", calibration_method="max",
                                        calibration_data={INPUT_NAMES[0]: images, INPUT_NAMES[1]: labels},
                                        nodes_to_exclude=float_tail_nodes(self._float), high_precision_dtype="fp32",
                                        output_path=str(target))
            except Exception as exc:  # ModelOpt raises assorted types
                raise EngineError(f"ModelOpt FP8 quantization failed: {exc}") from exc
            return onnx.load(target)

    # --- SelectionEngine ----------------------------------------------------------------------
    @torch.no_grad()
    def losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        step = self.max_batch  # the optimization profile ends at max_batch
        starts = range(0, len(y), step)
        current = torch.cuda.current_stream(self.device)
        # Casts and copies on torch's stream first, then the engine stream waits for all of it.
        chunks = [prepare_inputs(x[s:s + step], y[s:s + step], self.device, self._dtypes) for s in starts]
        out = torch.empty(len(y), dtype=torch.float32, device=self.device)
        self._stream.wait_stream(current)
        for start, tensors in zip(starts, chunks):
            self._run(tensors, out[start:start + step])
        current.wait_stream(self._stream)  # the losses are read on torch's stream
        return out.to(x.device)

    def _run(self, tensors: Dict[str, torch.Tensor], out: torch.Tensor) -> None:
        dtype = self._dtypes[OUTPUT_NAME]
        result = out if dtype == torch.float32 else torch.empty_like(out, dtype=dtype)
        context = self._context
        for name, tensor in tensors.items():
            if not context.set_input_shape(name, tuple(tensor.shape)):
                raise EngineError(f"TensorRT refused the shape {tuple(tensor.shape)} of {name!r} (the engine's "
                                  f"profile covers batches 1..{self.max_batch})")
        unresolved = context.infer_shapes()
        if unresolved:
            raise EngineError(f"TensorRT lacks shape information for {list(unresolved)}")
        for name, tensor in (*tensors.items(), (OUTPUT_NAME, result)):
            if not context.set_tensor_address(name, tensor.data_ptr()):
                raise EngineError(f"TensorRT refused the address of {name!r}")
        if not context.execute_async_v3(self._stream.cuda_stream):
            raise EngineError("TensorRT execution failed (see the TensorRT log above)")
        for tensor in (*tensors.values(), result):
            tensor.record_stream(self._stream)  # freed by torch's allocator only after our stream is done
        if result is not out:
            with torch.cuda.stream(self._stream):
                out.copy_(result)

    def close(self) -> None:
        """Drop the engine and its context, after the executions queued on them."""
        if getattr(self, "_context", None) is not None:
            self._stream.synchronize()
        self._context = None
        self._engine = None


def prepare_inputs(x: torch.Tensor, y: torch.Tensor, device: torch.device,
                   dtypes: Dict[str, torch.dtype]) -> Dict[str, torch.Tensor]:
    """The engine's input tensors from a batch: on ``device``, in the engine's dtypes, and
    contiguous in NCHW order (``set_tensor_address`` passes a bare pointer: TensorRT reads a
    channels_last batch as if it were NCHW unless it is copied first). Runs on the current stream."""
    return {INPUT_NAMES[0]: x.to(device, dtypes[INPUT_NAMES[0]]).contiguous(),
            INPUT_NAMES[1]: y.to(device, dtypes[INPUT_NAMES[1]]).contiguous()}


def _fp8_quantizer(device: torch.device) -> Any:
    """ModelOpt's ONNX ``quantize`` function, after checking the GPU can run FP8."""
    if torch.cuda.get_device_capability(device) < (8, 9):
        raise EngineError("tensorrt-fp8 needs an Ada or Hopper GPU (compute capability >= 8.9); "
                          "use tensorrt-int8 or tensorrt-fp16")
    try:
        from modelopt.onnx.quantization import quantize
    except ImportError as exc:
        raise EngineError("tensorrt-fp8 needs NVIDIA ModelOpt to write the FP8 Q/DQ graph: "
                          "pip install 'nvidia-modelopt[onnx]' (it pins its own onnx/onnxruntime; a separate "
                          "environment may be needed), or use tensorrt-int8 / tensorrt-fp16") from exc
    return quantize


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table: Dict[Any, torch.dtype] = {trt.float32: torch.float32, trt.float16: torch.float16,
                                     trt.int32: torch.int32, trt.int64: torch.int64}
    if dtype not in table:
        raise EngineError(f"unexpected TensorRT I/O dtype {dtype}")
    return table[dtype]
