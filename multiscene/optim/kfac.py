"""K-FAC natural-gradient optimizer for ACKTR (issue 10, item 4; SPEC §4 "Optimizers").

Kronecker-factored approximate curvature (Martens & Grosse 2015, arXiv 1503.05671) for ``nn.Linear`` and, with
the KFC approximation of Grosse & Martens 2016 (arXiv 1602.01407), ``nn.Conv2d``; the trust-region step of ACKTR
(Wu et al. 2017, arXiv 1708.05144, §3.1). Written for this library after reading openai/baselines
``acktr/kfac.py`` and ikostrikov's ``pytorch-a2c-ppo-acktr`` ``algo/kfac.py``; docs/kfac.md holds the formulas.

Per covered layer with weight W [out, in] (a conv kernel is viewed as [out, C*kh*kw]) and, when it has a bias,
the bias appended as the last column (homogeneous coordinate), the Fisher block of vec(W) (column-major) is
approximated as ``A ⊗ G`` with

* ``A = E[a aᵀ]``: the layer input a (with a trailing 1 when there is a bias), averaged over the batch and, for
  conv, over output positions (a = the unfolded input patch, KFC §3.1);
* ``G = E_n[Σ_t Ds_t Ds_tᵀ]``: Ds = d(loss_n)/d(output) of one sample n, summed over output positions t for conv
  (so A ⊗ G carries KFC's factor |T|) and averaged over samples. The Fisher loss is assumed to be a *mean* over
  the N samples that passed through the layer, so the recorded output gradient is Ds/N and is rescaled by N.

Both are exponential running averages with ``stat_decay`` (the first update initializes them). The update of a
layer is ``(A ⊗ G + λI)⁻¹ g`` computed exactly in the eigenbases of A and G (refreshed every ``inverse_every``
steps), as both reference implementations do; ``damping_mode="pi"`` instead uses the factored Tikhonov damping
``(A + π√λ I) ⊗ (G + √λ/π I)`` of Martens & Grosse §6.3 with Cholesky inverses (cheaper on CPU).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from multiscene.config import ConfigError

DAMPING_MODES = ("kron", "pi")


def is_coverable(module: nn.Module) -> bool:
    """True for the layers K-FAC preconditions: ``nn.Linear`` and plain ``nn.Conv2d``.

    A Conv2d is covered when its patches are what ``F.unfold`` extracts: ``groups == 1``, zero padding given as
    numbers (not ``"same"``). Everything else (grouped/depthwise conv, LSTM, LayerNorm, embeddings, free
    parameters such as a Gaussian log-std) takes the plain momentum-SGD step, see :class:`KFAC`.
    """
    if isinstance(module, nn.Linear):
        return module.weight.requires_grad
    if isinstance(module, nn.Conv2d):
        return (
            module.weight.requires_grad
            and module.groups == 1
            and module.padding_mode == "zeros"
            and not isinstance(module.padding, str)
        )
    return False


def layer_input_rows(module: nn.Module, activation: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The rows whose second moment is A (without the homogeneous 1), and the number of samples N.

    Linear: activation [..., in] -> rows [N, in] (all leading dims, e.g. time-major [T, B], are samples).
    Conv2d: activation [N, C, H, W] -> unfolded patches [N * oh * ow, C * kh * kw] (ordered like
    ``weight.view(out, -1)``).
    """
    if isinstance(module, nn.Conv2d):
        if activation.dim() == 3:  # unbatched input [C, H, W]
            activation = activation.unsqueeze(0)
        patches = F.unfold(
            activation,
            module.kernel_size,
            dilation=module.dilation,
            padding=module.padding,
            stride=module.stride,
        )  # [N, C*kh*kw, L]
        return patches.transpose(1, 2).reshape(-1, patches.shape[1]), activation.shape[0]
    rows = activation.reshape(-1, activation.shape[-1])
    return rows, rows.shape[0]


def input_second_moment_sum(rows: torch.Tensor, bias: bool) -> torch.Tensor:
    """Σ_rows ā āᵀ with ā = [a, 1] when ``bias``: [[Σ a aᵀ, Σ a], [Σ aᵀ, n]] [in (+1), in (+1)].

    Built blockwise so the (for an Atari first conv layer, hundreds of MB large) patch matrix is never copied
    to append a column of ones.
    """
    moment = rows.T @ rows
    if not bias:
        return moment
    column = rows.sum(dim=0, keepdim=True)  # [1, in]
    count = rows.new_full((1, 1), float(rows.shape[0]))
    return torch.cat([torch.cat([moment, column.T], dim=1), torch.cat([column, count], dim=1)], dim=0)


def layer_output_rows(module: nn.Module, grad_output: torch.Tensor) -> torch.Tensor:
    """Output gradients as rows [N (* oh * ow), out]; conv positions become rows so that rowsᵀrows sums them."""
    if isinstance(module, nn.Conv2d):
        if grad_output.dim() == 3:
            grad_output = grad_output.unsqueeze(0)
        return grad_output.permute(0, 2, 3, 1).reshape(-1, grad_output.shape[1])
    return grad_output.reshape(-1, grad_output.shape[-1])


def gradient_matrix(
    module: nn.Module, weight_grad: torch.Tensor, bias_grad: torch.Tensor | None
) -> torch.Tensor:
    """The layer's gradient as one matrix [out, in (+1)]: weight viewed as [out, in], bias as the last column."""
    matrix = weight_grad.reshape(weight_grad.shape[0], -1)
    if module.bias is not None:
        if bias_grad is None:
            bias_grad = matrix.new_zeros(matrix.shape[0])
        matrix = torch.cat([matrix, bias_grad.reshape(-1, 1)], dim=1)
    return matrix


def all_finite(*tensors: torch.Tensor) -> bool:
    """True when every entry of every tensor is finite (one host sync for all of them)."""
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def symmetric_eigh(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues [d] and eigenvectors [d, d] (columns) of a symmetric PSD factor, robust to LAPACK failures.

    A factor estimated from fewer samples than its dimension is rank-deficient, and a unit that was zero for
    every sample (a dead ReLU feature) gives an exact zero row and column. The Nature CNN's 3137-wide fc factor
    A from one 4 x 5 Atari rollout has rank 20 and over 1,000 zero rows. On such factors LAPACK's float32
    divide-and-conquer solver (MKL, CPU) either fails to converge or, worse, returns NaN eigenvalues and
    eigenvectors without an error (seen on EnduroNoFrameskip-v4; ACKTR then wrote NaN into the weights and the
    next rollout had NaN logits). Hence:

    1. a zero row/column is an eigenvector (a unit vector) with eigenvalue 0 by itself, so only the block of
       the other rows is decomposed: exact, smaller, and without the large cluster of zero eigenvalues that
       trips the solver (the eigenvalues are then not sorted);
    2. the result is checked for non-finite entries, and a failure (raised or silent) is retried in float64,
       then with a small diagonal shift that is subtracted from the eigenvalues again (it leaves the
       eigenvectors of a symmetric matrix unchanged).
    """
    size = matrix.shape[0]
    active = (matrix != 0).any(dim=1)
    kept = int(active.sum())
    if kept == size:
        return _checked_eigh(matrix)
    eigenvalues = matrix.new_zeros(size)
    basis = torch.eye(size, dtype=matrix.dtype, device=matrix.device)
    if kept > 0:
        index = active.nonzero().squeeze(1)
        block_values, block_basis = _checked_eigh(matrix[index][:, index])
        eigenvalues[index] = block_values
        basis[index.unsqueeze(1), index.unsqueeze(0)] = block_basis
    return eigenvalues, basis


def _checked_eigh(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh`` with its output checked; float64 and shifted float64 retries (see symmetric_eigh)."""
    try:
        eigenvalues, basis = torch.linalg.eigh(matrix)
        if all_finite(eigenvalues, basis):
            return eigenvalues, basis
    except torch.linalg.LinAlgError:
        pass
    wide = matrix.double()
    scale = float(wide.diagonal().abs().mean().clamp_min(1e-30))
    for shift in (0.0, 1e-10 * scale, 1e-7 * scale, 1e-4 * scale):
        try:
            eigenvalues, basis = torch.linalg.eigh(
                wide + shift * torch.eye(wide.shape[0], dtype=wide.dtype, device=wide.device)
            )
        except torch.linalg.LinAlgError:
            continue
        if all_finite(eigenvalues, basis):
            return (eigenvalues - shift).to(matrix.dtype), basis.to(matrix.dtype)
    problem = "" if all_finite(matrix) else " (the factor itself is not finite)"
    raise torch.linalg.LinAlgError(
        f"KFAC: eigendecomposition of a {tuple(matrix.shape)} factor failed even in float64{problem}"
    )


def damped_inverse(factor: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """(factor + shift·I)⁻¹ of a symmetric PSD factor with shift > 0, by Cholesky; by eigenvalues if that fails."""
    identity = torch.eye(factor.shape[0], dtype=factor.dtype, device=factor.device)
    damped = (factor + factor.T) / 2 + shift * identity
    cholesky, info = torch.linalg.cholesky_ex(damped)
    if int(info) == 0:
        return torch.cholesky_inverse(cholesky)
    # Float32 round-off can make a barely damped factor numerically indefinite.
    eigenvalues, basis = symmetric_eigh((factor + factor.T) / 2)
    return (basis / (eigenvalues.clamp_min(0.0) + shift)) @ basis.T


class KFAC(torch.optim.Optimizer):
    """K-FAC preconditioned momentum SGD with ACKTR's trust region (Wu et al. 2017, §3.1).

    Usage (one ACKTR update)::

        opt.zero_grad()
        with opt.record_stats():                    # the only backward that updates A and G
            fisher_loss.backward(retain_graph=True)  # loss sampled from the policy's own distribution, a mean
        opt.zero_grad()
        loss.backward()
        opt.step()

    ``step`` (all in ``torch.no_grad``):

    1. g = grad + weight_decay * p for every parameter with a grad;
    2. each covered layer (``self.covered``) with recorded factors: u = (A ⊗ G + damping·I)⁻¹ g (or the
       ``"pi"`` damping form), curvature (eigendecompositions; Cholesky inverses for ``"pi"``) refreshed every
       ``inverse_every`` steps;
    3. ν = min(1, sqrt(2 kl_clip / (lr² Σ gᵀu))) over the covered layers, u ← ν u (ACKTR §3.1: the step size
       η = min(η_max, sqrt(2δ / (Δᵀ F Δ))) with Δ = lr·u);
    4. every parameter: buf = momentum * buf + u (buf starts at 0); p -= lr * (1 - momentum) * buf. Parameters of
       uncovered modules (LSTM, LayerNorm, log-std, ...) use u = g: plain momentum SGD at the same rate, outside
       the trust region. The (1 - momentum) factor makes ``lr`` the size of the averaged step, as in baselines'
       ``MomentumOptimizer(lr * (1 - momentum), momentum)``, so ACKTR's lr = 0.25 keeps its meaning.

    A covered layer that has no factors yet (its output never received a gradient inside ``record_stats``)
    falls back to the raw gradient, with a warning.

    Every tensor of state (factors, eigenbases or inverses, π, momentum buffers) and the step count are in
    ``state_dict()``, so a resumed run takes exactly the steps the original would have taken.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.25,
        momentum: float = 0.9,
        stat_decay: float = 0.99,
        damping: float = 1e-2,
        kl_clip: float = 1e-3,
        weight_decay: float = 0.0,
        stats_every: int = 1,
        inverse_every: int = 10,
        damping_mode: str = "kron",
    ) -> None:
        """Args:
        model: the network; its Linear / Conv2d layers are found with ``model.modules()``.
        lr: step size of the (momentum-averaged) update; ACKTR's 0.25.
        momentum: heavy-ball coefficient; ACKTR's 0.9.
        stat_decay: running-average coefficient of A and G (ACKTR's 0.99; 0 keeps only the latest batch).
        damping: Tikhonov damping λ (ACKTR's 1e-2).
        kl_clip: trust-region radius δ on the KL of one step (ACKTR's 1e-3).
        weight_decay: L2 coefficient added to every gradient before preconditioning.
        stats_every: ``record_stats`` updates the factors only when ``steps % stats_every == 0``.
        inverse_every: eigendecompositions (inverses) are recomputed when ``steps % inverse_every == 0``.
        damping_mode: ``"kron"`` (exact (A ⊗ G + λI)⁻¹) or ``"pi"`` (factored, Martens & Grosse §6.3).
        """
        for name, value, ok in (
            ("lr", lr, lr > 0),
            ("momentum", momentum, 0 <= momentum < 1),
            ("stat_decay", stat_decay, 0 <= stat_decay < 1),
            ("damping", damping, damping > 0),
            ("kl_clip", kl_clip, kl_clip > 0),
            ("weight_decay", weight_decay, weight_decay >= 0),
            ("stats_every", stats_every, isinstance(stats_every, int) and stats_every >= 1),
            ("inverse_every", inverse_every, isinstance(inverse_every, int) and inverse_every >= 1),
        ):
            if not ok:
                raise ConfigError(
                    f"KFAC: {name}={value!r} is out of range (see the KFAC docstring for allowed values)"
                )
        if damping_mode not in DAMPING_MODES:
            raise ConfigError(f"KFAC: damping_mode={damping_mode!r}; allowed: {', '.join(DAMPING_MODES)}")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            stat_decay=stat_decay,
            damping=damping,
            kl_clip=kl_clip,
            weight_decay=weight_decay,
            stats_every=stats_every,
            inverse_every=inverse_every,
            damping_mode=damping_mode,
        )
        params = [p for p in model.parameters() if p.requires_grad]
        super().__init__(params, defaults)
        self.covered: list[nn.Module] = [m for m in model.modules() if is_coverable(m)]
        self.steps = 0
        self._recording = False
        # module -> [Σ a aᵀ, Σ g gᵀ, samples N, rows of A] of the backward passes inside the open record_stats.
        self._pending: dict[nn.Module, list[Any]] = {}
        self._warned_missing: set[int] = set()
        self.last_nu: torch.Tensor | None = None
        """ν of the latest step (1 when the trust region did not bind); a 0-dim tensor, for logging."""
        self.last_vfv: torch.Tensor | None = None
        """Σ gᵀ(F⁻¹g) of the latest step over the covered layers, before ν; a 0-dim tensor, for logging."""
        self._hooks = [m.register_forward_hook(self._remember_input) for m in self.covered]

    # ---- statistics -------------------------------------------------------------------------------------------

    def _remember_input(
        self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> None:
        # The forward usually runs before record_stats opens (the usage pattern above), so every forward that
        # builds a graph ties its input to its output with a tensor hook; the input then lives exactly as long
        # as the graph does, and a layer called several times in one forward gets one (input, grad) pair per call.
        if not (torch.is_grad_enabled() and isinstance(output, torch.Tensor) and output.requires_grad):
            return
        activation = inputs[0].detach()

        def on_grad(grad_output: torch.Tensor) -> None:
            if self._recording:
                self._accumulate(module, activation, grad_output)

        output.register_hook(on_grad)

    @torch.no_grad()
    def _accumulate(self, module: nn.Module, activation: torch.Tensor, grad_output: torch.Tensor) -> None:
        dtype = module.weight.dtype
        a_rows, samples = layer_input_rows(module, activation.to(dtype))
        g_rows = layer_output_rows(module, grad_output.detach().to(dtype))
        sum_aa = input_second_moment_sum(a_rows, module.bias is not None)
        sum_gg = g_rows.T @ g_rows
        entry = self._pending.get(module)
        if entry is None:
            self._pending[module] = [sum_aa, sum_gg, samples, a_rows.shape[0]]
        else:
            entry[0].add_(sum_aa)
            entry[1].add_(sum_gg)
            entry[2] += samples
            entry[3] += a_rows.shape[0]

    @property
    def stats_due(self) -> bool:
        """True when the next ``record_stats`` block updates the factors (``steps % stats_every == 0``); when it
        is False the Fisher loss need not be back-propagated at all (ACKTR skips that backward pass)."""
        return self.steps % self.param_groups[0]["stats_every"] == 0

    @contextlib.contextmanager
    def record_stats(self) -> Iterator[None]:
        """Backward passes inside this block update the running Kronecker factors (once, on exit).

        Every covered layer whose output receives a gradient contributes; calls of one layer are pooled as
        extra samples (equal to one call on the concatenated batch). Skipped entirely unless
        ``steps % stats_every == 0`` (``stats_due``). Gradients still accumulate into ``.grad`` as usual. A layer
        whose statistics of this block are not finite keeps its previous factors, with a warning.
        """
        if self._recording:
            raise RuntimeError("KFAC.record_stats() is already open; it cannot be nested")
        group = self.param_groups[0]
        if not self.stats_due:
            yield
            return
        self._pending = {}
        self._recording = True
        try:
            yield
        except BaseException:
            self._pending = {}
            raise
        finally:
            self._recording = False
        decay = group["stat_decay"]
        pending, self._pending = self._pending, {}
        # One non-finite Fisher sample would poison a running average for good (decay · NaN = NaN) and, at the
        # next refresh, every step after it; such a batch is left out of that layer's factors instead.
        finite = (
            torch.stack([torch.isfinite(e[0]).all() & torch.isfinite(e[1]).all() for e in pending.values()]).tolist()
            if pending else []
        )
        for ok, (module, (sum_aa, sum_gg, samples, rows)) in zip(finite, pending.items()):
            if not ok:
                warnings.warn(
                    f"KFAC: the Fisher statistics of {module} are not finite (a non-finite gradient of the Fisher "
                    "loss); this batch is left out of its Kronecker factors",
                    stacklevel=3,
                )
                continue
            state = self.state[module.weight]
            batch_a = sum_aa / rows
            # The recorded grad is d(mean loss)/d(output) = Ds / N; N² Σ (Ds/N)(Ds/N)ᵀ / N = E_n[Σ_t Ds Dsᵀ].
            batch_g = sum_gg * samples
            if "A" not in state:
                state["A"], state["G"] = batch_a, batch_g
            else:
                state["A"].mul_(decay).add_(batch_a, alpha=1 - decay)
                state["G"].mul_(decay).add_(batch_g, alpha=1 - decay)

    def factors(self, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """The running factors (A [in(+1), in(+1)], G [out, out]) of a covered layer."""
        state = self.state[module.weight]
        if "A" not in state:
            raise KeyError(f"KFAC: no statistics recorded yet for {module}")
        return state["A"], state["G"]

    # ---- preconditioning --------------------------------------------------------------------------------------

    def _refresh_curvature(self, state: dict[str, Any]) -> None:
        """Recompute what ``precondition`` uses from the current factors (every ``inverse_every`` steps).

        kron: eigendecompositions of A and G. pi: π and the Cholesky inverses of the damped factors, about 7x
        less CPU time than an eigendecomposition for the Nature-CNN's 3137-wide A (docs/kfac.md); λ is baked
        in here, so a changed ``damping`` takes effect at the next refresh.
        """
        group = self.param_groups[0]
        if group["damping_mode"] == "kron":
            for name in ("A", "G"):
                factor = state[name]
                eigenvalues, basis = symmetric_eigh((factor + factor.T) / 2)
                # Round-off leaves tiny negative eigenvalues of a PSD factor; they would flip the damped inverse.
                state[f"eig_{name}"], state[f"basis_{name}"] = eigenvalues.clamp_min(0.0), basis
            return
        a, g = state["A"], state["G"]
        mean_a, mean_g = a.diagonal().mean(), g.diagonal().mean()
        # π of Martens & Grosse §6.3: sqrt of the ratio of the factors' average eigenvalues (trace / dimension).
        ratio = torch.where(mean_g > 0, mean_a / mean_g.clamp_min(torch.finfo(mean_g.dtype).tiny), 1.0)
        pi = torch.where(ratio > 0, ratio.sqrt(), torch.ones_like(ratio))
        root = math.sqrt(group["damping"])
        state["pi"] = pi
        state["inv_A"] = damped_inverse(a, root * pi)
        state["inv_G"] = damped_inverse(g, root / pi)

    def precondition(self, module: nn.Module, matrix: torch.Tensor) -> torch.Tensor:
        """Damped (A ⊗ G)⁻¹ applied to a gradient matrix M [out, in (+1)] of ``module`` (last refreshed curvature).

        kron: Q_G [(Q_Gᵀ M Q_A) / (e_G e_Aᵀ + λ)] Q_Aᵀ = mat((A ⊗ G + λI)⁻¹ vec(M)).
        pi:   (G + √λ/π I)⁻¹ M (A + π√λ I)⁻¹ = mat(((A + π√λ I) ⊗ (G + √λ/π I))⁻¹ vec(M)).
        """
        group = self.param_groups[0]
        state = self.state[module.weight]
        if group["damping_mode"] == "pi":
            return state["inv_G"] @ matrix @ state["inv_A"]
        rotated = state["basis_G"].T @ matrix @ state["basis_A"]
        denominator = state["eig_G"].unsqueeze(1) * state["eig_A"].unsqueeze(0) + group["damping"]
        return state["basis_G"] @ (rotated / denominator) @ state["basis_A"].T

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        """One preconditioned, trust-region-scaled momentum step on every parameter (see the class docstring)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]
        refresh = self.steps % group["inverse_every"] == 0

        updates: dict[torch.Tensor, torch.Tensor] = {}
        for p in group["params"]:
            if p.grad is not None:
                updates[p] = p.grad.add(p, alpha=weight_decay) if weight_decay else p.grad

        natural: list[tuple[nn.Module, torch.Tensor]] = []
        vfv: torch.Tensor | None = None
        for module in self.covered:
            weight, bias = module.weight, module.bias
            if weight not in updates:
                continue
            state = self.state[weight]
            if "A" not in state:
                if id(module) not in self._warned_missing:
                    self._warned_missing.add(id(module))
                    warnings.warn(
                        f"KFAC: {module} has no Kronecker factors (its output got no gradient inside "
                        "record_stats); it takes the raw gradient",
                        stacklevel=2,
                    )
                continue
            if refresh or ("basis_A" not in state and "inv_A" not in state):
                self._refresh_curvature(state)
            matrix = gradient_matrix(module, updates[weight], updates.get(bias) if bias is not None else None)
            preconditioned = self.precondition(module, matrix)
            contribution = (preconditioned * matrix).sum()
            vfv = contribution if vfv is None else vfv + contribution
            natural.append((module, preconditioned))

        if vfv is not None:
            # ACKTR §3.1: the step Δ = lr·u has predicted KL ½ΔᵀFΔ = ½lr² gᵀF⁻¹g; cap it at δ = kl_clip.
            # (baselines and ikostrikov use sqrt(kl_clip / (lr² vFv)), i.e. the paper's δ halved.)
            safe = vfv.clamp_min(torch.finfo(vfv.dtype).tiny)
            nu = torch.where(vfv > 0, (2 * group["kl_clip"] / (lr**2 * safe)).sqrt().clamp(max=1.0), 1.0)
            for module, preconditioned in natural:
                scaled = preconditioned * nu
                weight, bias = module.weight, module.bias
                if bias is not None:
                    if bias in updates:
                        updates[bias] = scaled[:, -1].reshape(bias.shape)
                    scaled = scaled[:, :-1]
                updates[weight] = scaled.reshape(weight.shape)
            self.last_nu, self.last_vfv = nu, vfv
        else:
            self.last_nu, self.last_vfv = None, None

        for p, update in updates.items():
            state = self.state[p]
            buffer = state.get("momentum_buffer")
            if buffer is None:
                buffer = state["momentum_buffer"] = update.clone()
            else:
                buffer.mul_(momentum).add_(update)
            p.add_(buffer, alpha=-lr * (1 - momentum))
        self.steps += 1
        return loss

    # ---- checkpointing ----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Torch's optimizer state (factors, eigenbases, π, momentum per parameter; hyperparameters) + step count."""
        state = super().state_dict()
        state["kfac_steps"] = self.steps
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        if "kfac_steps" not in state_dict:
            raise KeyError("KFAC.load_state_dict: 'kfac_steps' missing; this is not a KFAC state dict")
        self.steps = int(state_dict.pop("kfac_steps"))
        super().load_state_dict(state_dict)

    def remove_hooks(self) -> None:
        """Detach the forward hooks from the model (the optimizer stops recording)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
