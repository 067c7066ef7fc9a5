"""One training step: forward, loss, backward, clipping and the optimizer's update, eagerly or from a CUDA graph.

At the sizes textrnn trains, a GPU step is a few hundred small kernels and the GPU waits on
Python and launches. With fixed shapes the whole step can be captured once in a CUDA graph
and replayed: the batch is copied into static input buffers, the carried state lives in
static buffers that the graph itself overwrites with the new state (truncated BPTT), the
learning rate lives in a device tensor that the schedule fills (no re-capture), and the
loss and gradient norm come back as device tensors (no host sync). ``--cuda-graphs auto``
does this on CUDA where it is valid and says once why not where it is not (several processes,
fp16's loss scaler, SGD with a changing learning rate, a capture that fails); a batch of
another shape (a short last batch of windows) runs eagerly on the same weights and optimizer.

Precision: ``fp32``; ``tf32`` (fp32 storage, TF32 matrix products: opt-in, it changes numerics);
``bf16`` (autocast; on a GPU only with the scratch backend, since autocast runs cuDNN's recurrent
kernels in fp16); ``fp16`` (CUDA: autocast with a gradient scaler, cuDNN's fp16 kernels). Weights
and the carried state stay fp32 in every mode.
"""

from __future__ import annotations

import contextlib
import math

import torch

from textrnn.errors import TextrnnError
from textrnn.nn import map_state

WARMUP_STEPS = 3  # eager steps (on a side stream) before the capture: lazy initialisation happens there


def check_precision(precision: str, device: torch.device, model: torch.nn.Module | None = None) -> None:
    """Refuse a precision the device cannot run; ``model`` is checked for kernels that refuse it there."""
    if precision in ("fp16", "tf32") and device.type != "cuda":
        raise TextrnnError(f"--precision {precision} runs on CUDA GPUs: use fp32 or bf16 on {device.type}")
    if precision == "bf16" and device.type not in ("cpu", "cuda"):
        raise TextrnnError(f"--precision bf16 runs on CPUs and CUDA GPUs, not on {device.type}: use --precision fp32")
    if precision == "bf16" and device.type == "cpu" and model is not None and not cpu_has_bf16():
        fused_lstm = any(
            isinstance(module, torch.nn.LSTM) and getattr(module, "backend", "fused") == "fused"
            for module in model.modules()
        )
        if fused_lstm:
            raise TextrnnError(
                f"--precision bf16 with the fused LSTM needs a CPU with bf16 instructions (AVX-512 BF16 or AMX; "
                f"torch sees {torch.backends.cpu.get_cpu_capability()}): oneDNN refuses a bf16 LSTM here. "
                "Use --precision fp32, or --backend scratch"
            )


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (without it, its LSTM refuses bf16 inputs)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@contextlib.contextmanager
def matmul_precision(precision: str):
    """TF32 matrix products (and cuDNN's TF32 math) while training with ``--precision tf32``; restored after."""
    if precision != "tf32":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def graph_obstacle(config, device: torch.device, distributed: bool) -> str | None:
    """Why this run cannot capture its step in a CUDA graph (None: it can). Empty: off, nothing to say."""
    mode = getattr(config, "cuda_graphs", "off")
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return ""
    if device.type != "cuda":
        return f"--cuda-graphs on needs a CUDA device; the steps run eagerly on {device.type}"
    if distributed:
        return "CUDA graphs: off under torchrun (DDP's gradient all-reduce is not captured here); eager steps"
    if getattr(config, "precision", "fp32") == "fp16":
        return "CUDA graphs: off with fp16 (the loss scaler reads the gradients' finiteness on the host); eager steps"
    if config.optimizer == "sgd" and (config.schedule != "constant" or config.warmup_steps):
        return (
            "CUDA graphs: off for SGD with a changing learning rate (torch's SGD keeps it on the host); "
            "use adam/adamw, or a constant schedule without warm-up"
        )
    return None


def build_optimizer(model: torch.nn.Module, config, capturable: bool = False) -> torch.optim.Optimizer:
    """SGD, Adam or AdamW with weight decay on matrices only (biases and embeddings are left alone).
    ``capturable``: state and learning rate on the device, so that the update can live in a CUDA graph."""

    def decays(name: str, parameter: torch.nn.Parameter) -> bool:
        return parameter.dim() >= 2 and not name.startswith("embedding")

    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if decays(n, p)], "weight_decay": config.weight_decay},
        {"params": [p for n, p in named if not decays(n, p)], "weight_decay": 0.0},
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr)
    optimizer = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    if capturable:  # on a CPU (the graph logic run eagerly) only the learning rate moves into a tensor
        device = named[0][1].device
        options = {"capturable": True, "foreach": True} if device.type == "cuda" else {"foreach": False}
        return optimizer(groups, lr=torch.tensor(config.lr, device=device), **options)
    return optimizer(groups, lr=config.lr)


def set_learning_rate(optimizer: torch.optim.Optimizer, value: float) -> None:
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(value)  # a kernel, not a host sync: the graph reads it where it is
        else:
            group["lr"] = value


class Step:
    """``step(batch, state, lr) -> (loss, state, norm, applied)`` for the trainer.

    ``loss`` and ``norm`` are device tensors; ``applied`` is False when ``skip_nonfinite`` found a
    non-finite gradient norm (a host read: the trainer asks for it on the CPU only) and the update
    was not made. ``notes`` collects what the trainer should say once (why a graph is not used).
    """

    def __init__(
        self, loss, carries_state: bool, model, stepper, optimizer, config, device, obstacle: str | None, emulate=False
    ):
        self.loss, self.carries_state = loss, carries_state  # loss(model, batch, state) -> (loss, state)
        self.model, self.stepper, self.optimizer = model, stepper, optimizer
        self.device = device
        self.precision = getattr(config, "precision", "fp32")
        self.threshold = config.clip if config.clip > 0 else math.inf  # an infinite threshold only measures
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        self.autocast_dtype = dtype
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.notes = [obstacle] if obstacle else []
        self.use_graph = obstacle is None
        self.emulate = emulate  # tests: the graph's body (static buffers, state copied in place) run eagerly
        self.graph = None
        self.eager_steps = 0
        self.static: dict = {}

    def _autocast(self, cache: bool = True):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, cache_enabled=cache)

    def forward_backward(self, batch, state):
        """Loss, new state (fp32, detached later by the trainer) and clipped gradient norm; no update yet."""
        with self._autocast():
            loss, state = self.loss(self.stepper, batch, state)
        if self.autocast_dtype is not None and state is not None:  # carry the state in fp32 like the weights
            state = map_state(lambda tensor: tensor.float(), state)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.threshold, foreach=True)
        return loss, state, norm

    def update(self) -> None:
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()

    def __call__(self, batch, state, lr: float, skip_nonfinite: bool = False):
        set_learning_rate(self.optimizer, lr)
        if self.use_graph and self._graphable(batch):
            result = self._graphed(batch, state)
            if result is not None:
                return result
        loss, state, norm = self.forward_backward(batch, state)
        if skip_nonfinite and not bool(torch.isfinite(norm)):
            self.optimizer.zero_grad(set_to_none=True)
            return loss, None, norm, False  # the state may be poisoned too
        self.update()
        return loss, state, norm, True

    # ------------------------------------------------------------------ CUDA graphs

    def _graphable(self, batch) -> bool:
        """Batches of the captured shape replay the graph; others (a short last batch) run eagerly."""
        shapes = [tuple(tensor.shape) for tensor in batch]
        return self.graph is None or shapes == self.static["shapes"]

    def _graphed(self, batch, state):
        if self.graph is None:
            if self.eager_steps < WARMUP_STEPS:  # lazy initialisation (cuBLAS, cuDNN, optimizer state) first
                self.eager_steps += 1
                with self._side_stream():
                    loss, state, norm = self.forward_backward(batch, state)
                    self.update()
                self.static["example_state"] = state
                return loss, state, norm, True
            try:
                self._capture(batch)
            except Exception as error:  # any capture failure: the same step, eagerly, from now on
                self.graph, self.use_graph = None, False
                reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
                self.notes.append(f"CUDA graphs: the capture failed ({reason}); eager steps")
                torch.cuda.synchronize(self.device)
                return None
        for static, tensor in zip(self.static["batch"], batch):
            static.copy_(tensor)
        carried = self.static["state"]
        if carried is not None:
            if state is None:  # a fresh epoch: a zero state is what None means to every cell
                map_state(torch.Tensor.zero_, carried)
            elif _first(state).data_ptr() != _first(carried).data_ptr():  # a state from elsewhere (resumed)
                _copy_state(carried, state)
        self.graph()
        return self.outputs["loss"], carried, self.outputs["norm"], True

    @contextlib.contextmanager
    def _side_stream(self):
        if self.emulate:
            yield
            return
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            yield
        torch.cuda.current_stream(self.device).wait_stream(side)

    def _capture(self, batch) -> None:
        static_batch = tuple(tensor.clone() for tensor in batch)
        example = self.static.get("example_state")
        carried = map_state(torch.zeros_like, example) if self.carries_state and example is not None else None
        outputs = {}

        def body():
            with self._autocast(cache=False):  # autocast's cast cache does not survive a capture
                loss, new_state = self.loss(self.stepper, static_batch, carried)
            if self.emulate:
                self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            outputs["norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.threshold, foreach=True)
            self.optimizer.step()
            if carried is not None:  # the graph carries its own state: the input buffers take the output
                _copy_state(carried, map_state(lambda tensor: tensor.detach().float(), new_state))
            outputs["loss"] = loss.detach()

        if self.emulate:
            self.graph = body
        else:
            self.optimizer.zero_grad(set_to_none=True)  # the gradients are allocated inside the graph's pool
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                body()
            self.graph = graph.replay
        self.static = {"batch": static_batch, "shapes": [tuple(t.shape) for t in batch], "state": carried}
        self.outputs = outputs


def _copy_state(target, source) -> None:
    if isinstance(target, torch.Tensor):
        target.copy_(source)
    else:
        for part, other in zip(target, source):
            _copy_state(part, other)


def _first(state) -> torch.Tensor:
    return state if isinstance(state, torch.Tensor) else _first(state[0])
