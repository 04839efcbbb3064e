"""K-FAC (multiscene/optim/kfac.py) against hand computations: factors from per-sample loops, the preconditioned
step against an explicit ``torch.kron`` solve, the ACKTR trust-region formula, plain SGD for uncovered layers,
exact resume, and learning on small regression problems (issue 10, "Tests")."""

from __future__ import annotations

import copy
import io
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from multiscene.config import ConfigError
from multiscene.optim import KFAC
from multiscene.optim.kfac import damped_inverse, gradient_matrix, symmetric_eigh

torch.set_num_threads(1)
DTYPE = torch.float64


def sampled_nll(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Per-sample -log p(action) for logits [..., A] and actions [...]: the ACKTR policy Fisher loss terms."""
    return -torch.log_softmax(logits, dim=-1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)


def record(opt: KFAC, fisher_loss: torch.Tensor) -> None:
    opt.zero_grad()
    with opt.record_stats():
        fisher_loss.backward(retain_graph=True)
    opt.zero_grad()


def with_one(rows: torch.Tensor) -> torch.Tensor:
    return torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)


# ---- factors equal hand-computed covariances of one batch ------------------------------------------------------


class TinyMLP(nn.Module):
    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.hidden = nn.Linear(3, 4, bias=bias)
        self.head = nn.Linear(4, 2, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.hidden(x)))


def hand_linear_factors(model: TinyMLP, x: torch.Tensor, actions: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample loop: A = mean a aᵀ (with 1 when biased), G = mean Ds Dsᵀ, Ds = d loss_n / d layer output."""
    rows_x, rows_actions = x.reshape(-1, x.shape[-1]), actions.reshape(-1)
    n = rows_x.shape[0]
    bias = model.hidden.bias is not None
    sums = {k: 0.0 for k in ("A_hidden", "G_hidden", "A_head", "G_head")}
    for i in range(n):
        pre = model.hidden(rows_x[i])
        hidden = torch.tanh(pre)
        logits = model.head(hidden)
        loss_i = sampled_nll(logits, rows_actions[i])
        d_pre, d_logits = torch.autograd.grad(loss_i, [pre, logits])
        a_hidden = torch.cat([rows_x[i], torch.ones(1, dtype=DTYPE)]) if bias else rows_x[i]
        a_head = torch.cat([hidden.detach(), torch.ones(1, dtype=DTYPE)]) if bias else hidden.detach()
        sums["A_hidden"] = sums["A_hidden"] + torch.outer(a_hidden, a_hidden)
        sums["G_hidden"] = sums["G_hidden"] + torch.outer(d_pre, d_pre)
        sums["A_head"] = sums["A_head"] + torch.outer(a_head, a_head)
        sums["G_head"] = sums["G_head"] + torch.outer(d_logits, d_logits)
    return {k: v / n for k, v in sums.items()}


@pytest.mark.parametrize("bias", [True, False])
def test_linear_factors_equal_hand_covariances_of_the_batch(bias: bool) -> None:
    torch.manual_seed(0)
    model = TinyMLP(bias).to(DTYPE)
    opt = KFAC(model, stat_decay=0.0)
    assert opt.covered == [model.hidden, model.head]
    for _ in range(2):  # stat_decay=0: after the second batch the running factor is that batch's alone
        x = torch.randn(3, 5, 3, dtype=DTYPE)  # time-major [T, B, D], the layers see it unflattened
        actions = torch.randint(0, 2, (3, 5))
        record(opt, sampled_nll(model(x), actions).mean())
        expected = hand_linear_factors(model, x, actions)
        for name, module in (("hidden", model.hidden), ("head", model.head)):
            a, g = opt.factors(module)
            assert a.shape == expected[f"A_{name}"].shape
            torch.testing.assert_close(a, expected[f"A_{name}"], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(g, expected[f"G_{name}"], rtol=1e-10, atol=1e-12)
        opt.step()


def test_running_average_with_stat_decay_and_first_update_initializes() -> None:
    torch.manual_seed(1)
    model = TinyMLP().to(DTYPE)
    opt = KFAC(model, stat_decay=0.75)
    batches = [(torch.randn(6, 3, dtype=DTYPE), torch.randint(0, 2, (6,))) for _ in range(2)]
    hand = [hand_linear_factors(model, x, a) for x, a in batches]  # parameters stay fixed: no step taken
    for x, a in batches:
        record(opt, sampled_nll(model(x), a).mean())
    a_run, g_run = opt.factors(model.head)
    torch.testing.assert_close(a_run, 0.75 * hand[0]["A_head"] + 0.25 * hand[1]["A_head"])
    torch.testing.assert_close(g_run, 0.75 * hand[0]["G_head"] + 0.25 * hand[1]["G_head"])


def test_layer_called_several_times_pools_calls_like_one_flat_batch() -> None:
    torch.manual_seed(2)
    model = TinyMLP().to(DTYPE)
    twin = copy.deepcopy(model)
    x = torch.randn(4, 3, 3, dtype=DTYPE)
    actions = torch.randint(0, 2, (4, 3))
    stepwise, flat = KFAC(model), KFAC(twin)
    record(stepwise, torch.stack([sampled_nll(model(x[t]), actions[t]) for t in range(4)]).mean())
    record(flat, sampled_nll(twin(x.reshape(12, 3)), actions.reshape(12)).mean())
    for m_step, m_flat in zip(stepwise.covered, flat.covered, strict=True):
        for f_step, f_flat in zip(stepwise.factors(m_step), flat.factors(m_flat), strict=True):
            torch.testing.assert_close(f_step, f_flat)


class TinyConvNet(nn.Module):
    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, kernel_size=3, stride=2, padding=1, bias=bias)
        self.head = nn.Linear(3 * 3 * 3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).flatten(1))


@pytest.mark.parametrize("bias", [True, False])
def test_conv_factors_equal_hand_covariances_over_batch_and_positions(bias: bool) -> None:
    torch.manual_seed(3)
    model = TinyConvNet(bias).to(DTYPE)
    opt = KFAC(model, stat_decay=0.0)
    x = torch.randn(4, 2, 6, 6, dtype=DTYPE)
    actions = torch.randint(0, 2, (4,))
    record(opt, sampled_nll(model(x), actions).mean())

    padded = F.pad(x, (1, 1, 1, 1))
    sum_a, sum_g, positions = 0.0, 0.0, 0
    for n in range(4):
        out = model.conv(x[n : n + 1])
        logits = model.head(torch.relu(out).flatten(1))
        (d_out,) = torch.autograd.grad(sampled_nll(logits, actions[n : n + 1]).sum(), [out])
        for i in range(3):
            for j in range(3):
                patch = padded[n, :, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].reshape(-1)
                if bias:
                    patch = torch.cat([patch, torch.ones(1, dtype=DTYPE)])
                sum_a = sum_a + torch.outer(patch, patch)
                sum_g = sum_g + torch.outer(d_out[0, :, i, j], d_out[0, :, i, j])
                positions += 1
    # KFC (Grosse & Martens 2016 §3.1): A averaged over samples and positions, G summed over positions and
    # averaged over samples, so that A ⊗ G = |T| E[a aᵀ] ⊗ E[Ds Dsᵀ].
    a, g = opt.factors(model.conv)
    assert a.shape == (2 * 9 + bias, 2 * 9 + bias)
    torch.testing.assert_close(a, sum_a / positions, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g, sum_g / 4, rtol=1e-10, atol=1e-12)


# ---- the preconditioned step against torch.kron ----------------------------------------------------------------


def explicit_natural_gradient(
    a: torch.Tensor, g: torch.Tensor, matrix: torch.Tensor, damping: float, mode: str
) -> torch.Tensor:
    """Solve with the full Kronecker matrix on vec(M) (column-major: vec(G M A) = (A ⊗ G) vec(M))."""
    vec = matrix.T.reshape(-1)
    if mode == "kron":
        fisher = torch.kron(a, g) + damping * torch.eye(vec.numel(), dtype=a.dtype)
    else:
        pi = math.sqrt((torch.trace(a) / a.shape[0]) / (torch.trace(g) / g.shape[0]))
        root = math.sqrt(damping)
        fisher = torch.kron(
            a + pi * root * torch.eye(a.shape[0], dtype=a.dtype),
            g + root / pi * torch.eye(g.shape[0], dtype=a.dtype),
        )
    return torch.linalg.solve(fisher, vec).reshape(matrix.shape[1], matrix.shape[0]).T


CASES = [("linear", True), ("linear", False), ("conv", True), ("conv", False)]


@pytest.mark.parametrize("mode", ["kron", "pi"])
@pytest.mark.parametrize(("kind", "bias"), CASES)
def test_step_equals_explicit_kronecker_solve(kind: str, bias: bool, mode: str) -> None:
    torch.manual_seed(4)
    model = (TinyMLP(bias) if kind == "linear" else TinyConvNet(bias)).to(DTYPE)
    x = torch.randn(8, 3, dtype=DTYPE) if kind == "linear" else torch.randn(8, 2, 6, 6, dtype=DTYPE)
    damping = 0.03
    # momentum 0, huge kl_clip: the step is exactly -lr * u, u = damped (A ⊗ G)⁻¹ g.
    opt = KFAC(model, lr=1.0, momentum=0.0, damping=damping, kl_clip=1e9, stat_decay=0.0, damping_mode=mode)
    logits = model(x)
    record(opt, sampled_nll(logits, torch.randint(0, 2, (8,))).mean())
    loss = F.cross_entropy(logits, torch.randint(0, 2, (8,)))
    loss.backward()
    layer = model.hidden if kind == "linear" else model.conv
    before = [p.detach().clone() for p in layer.parameters()]
    grads = [p.grad.clone() for p in layer.parameters()]
    a, g = (f.clone() for f in opt.factors(layer))
    opt.step()
    expected = explicit_natural_gradient(
        a, g, gradient_matrix(layer, grads[0], grads[1] if bias else None), damping, mode
    )
    taken = gradient_matrix(
        layer, before[0] - layer.weight.detach(), before[1] - layer.bias.detach() if bias else None
    )
    torch.testing.assert_close(taken, expected, rtol=1e-7, atol=1e-10)
    assert opt.last_nu is not None and opt.last_nu.item() == 1.0


# ---- trust region -----------------------------------------------------------------------------------------------


class RecurrentNet(nn.Module):
    """Covered Linear layers around an uncovered LSTM and LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(3, 5)
        self.norm = nn.LayerNorm(5)
        self.core = nn.LSTM(5, 4)
        self.policy = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [T, B, 3] -> logits [T, B, 2]
        hidden, _ = self.core(self.norm(torch.tanh(self.encoder(x))))
        return self.policy(hidden)


def one_update(
    model: RecurrentNet, opt: KFAC, x: torch.Tensor, fisher_actions: torch.Tensor, actions: torch.Tensor
) -> None:
    logits = model(x)
    record(opt, sampled_nll(logits, fisher_actions).mean())
    sampled_nll(logits, actions).mean().backward()
    opt.step()


def test_kl_clip_scales_the_covered_step_by_the_acktr_formula() -> None:
    torch.manual_seed(5)
    model = RecurrentNet().to(DTYPE)
    twin = copy.deepcopy(model)
    lr, kl_clip = 0.25, 1e-7
    free = KFAC(model, lr=lr, momentum=0.0, kl_clip=1e9)
    clipped = KFAC(twin, lr=lr, momentum=0.0, kl_clip=kl_clip)
    x, fisher_actions, actions = (
        torch.randn(4, 3, 3, dtype=DTYPE),
        torch.randint(0, 2, (4, 3)),
        torch.randint(0, 2, (4, 3)),
    )
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    grads: dict[str, torch.Tensor] = {}
    for m, opt in ((model, free), (twin, clipped)):
        logits = m(x)
        record(opt, sampled_nll(logits, fisher_actions).mean())
        sampled_nll(logits, actions).mean().backward()
        grads = {name: p.grad.clone() for name, p in m.named_parameters()}
        opt.step()
    free_step = {name: (start[name] - p.detach()) / lr for name, p in model.named_parameters()}
    clipped_step = {name: (start[name] - p.detach()) / lr for name, p in twin.named_parameters()}
    covered = [n for n in start if n.startswith(("encoder.", "policy."))]
    # gᵀF⁻¹g over the covered layers, from the unclipped natural gradient u and the raw gradient g.
    vfv = sum((free_step[n] * grads[n]).sum() for n in covered)
    nu = math.sqrt(2 * kl_clip / (lr**2 * vfv))
    assert 0 < nu < 1
    assert free.last_nu is not None and free.last_nu.item() == 1.0
    assert clipped.last_nu is not None and clipped.last_nu.item() == pytest.approx(nu, rel=1e-9)
    for n in start:
        expected = nu * free_step[n] if n in covered else free_step[n]  # uncovered: raw gradient, no ν
        torch.testing.assert_close(clipped_step[n], expected, rtol=1e-8, atol=1e-14)


def test_uncovered_lstm_and_layernorm_take_plain_sgd_momentum_at_the_same_rate() -> None:
    torch.manual_seed(6)
    model = RecurrentNet().to(DTYPE)
    lr, momentum, weight_decay = 0.1, 0.9, 0.01
    opt = KFAC(model, lr=lr, momentum=momentum, kl_clip=1e-6, weight_decay=weight_decay)
    assert opt.covered == [model.encoder, model.policy]
    uncovered = [*model.norm.parameters(), *model.core.parameters()]
    reference = [p.detach().clone().requires_grad_(True) for p in uncovered]
    # torch's SGD with (1 - momentum) * lr has the same trajectory as buf = m buf + g; p -= lr (1 - m) buf.
    sgd = torch.optim.SGD(reference, lr=lr * (1 - momentum), momentum=momentum, weight_decay=weight_decay)
    covered_start = model.policy.weight.detach().clone()
    gen = torch.Generator().manual_seed(7)
    for _ in range(3):
        x = torch.randn(5, 2, 3, dtype=DTYPE, generator=gen)
        one_update(
            model,
            opt,
            x,
            torch.randint(0, 2, (5, 2), generator=gen),
            torch.randint(0, 2, (5, 2), generator=gen),
        )
        for p, ref in zip(uncovered, reference, strict=True):
            ref.grad = p.grad.clone()
        sgd.step()
        for p, ref in zip(uncovered, reference, strict=True):
            torch.testing.assert_close(p.detach(), ref.detach(), rtol=1e-12, atol=1e-14)
    # The trust region bound (ν < 1), yet the uncovered parameters moved exactly as SGD moves them.
    assert opt.last_nu is not None and opt.last_nu.item() < 1
    assert not torch.allclose(model.policy.weight, covered_start)


# ---- exact resume -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["kron", "pi"])
def test_state_dict_round_trip_gives_identical_next_steps(mode: str) -> None:
    torch.manual_seed(8)
    model = TinyConvNet().to(DTYPE)
    opt = KFAC(model, stat_decay=0.9, inverse_every=2, stats_every=2, damping_mode=mode)
    gen = torch.Generator().manual_seed(9)
    batches = [
        (torch.randn(4, 2, 6, 6, dtype=DTYPE, generator=gen), torch.randint(0, 2, (4,), generator=gen))
        for _ in range(6)
    ]

    def update(m: TinyConvNet, o: KFAC, x: torch.Tensor, a: torch.Tensor) -> None:
        logits = m(x)
        record(o, sampled_nll(logits, torch.roll(a, 1)).mean())
        sampled_nll(logits, a).mean().backward()
        o.step()

    for x, a in batches[:3]:
        update(model, opt, x, a)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, buffer)
    for x, a in batches[3:]:
        update(model, opt, x, a)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_model = TinyConvNet().to(DTYPE)
    resumed_model.load_state_dict(saved["model"])
    resumed = KFAC(resumed_model)  # other hyperparameters: restored from the state dict
    resumed.load_state_dict(saved["optim"])
    assert resumed.steps == 3 and resumed.param_groups[0]["inverse_every"] == 2
    for x, a in batches[3:]:
        update(resumed_model, resumed, x, a)
    for p, q in zip(model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_state_dict_refuses_a_foreign_state_dict() -> None:
    model = TinyMLP()
    with pytest.raises(KeyError, match="kfac_steps"):
        KFAC(model).load_state_dict(torch.optim.SGD(model.parameters(), lr=0.1).state_dict())


# ---- it learns --------------------------------------------------------------------------------------------------


def test_kfac_solves_ill_conditioned_least_squares_like_newton() -> None:
    # For y = Wx + b with a unit-variance Gaussian likelihood, A = E[x̄x̄ᵀ] and G ≈ I: K-FAC is (damped) Newton.
    torch.manual_seed(10)
    scales = torch.tensor([100.0, 10.0, 1.0, 0.1], dtype=DTYPE)
    x = torch.randn(512, 4, dtype=DTYPE) * scales
    y = x @ torch.tensor([0.3, -2.0, 1.0, 4.0], dtype=DTYPE) + 0.5 + 0.01 * torch.randn(512, dtype=DTYPE)
    design = with_one(x)
    best = ((design @ torch.linalg.lstsq(design, y.unsqueeze(1)).solution).squeeze(1) - y).pow(2).mean()

    model = nn.Linear(4, 1).to(DTYPE)
    opt = KFAC(model, lr=1.0, momentum=0.0, damping=1e-6, kl_clip=1e9, stat_decay=0.0, inverse_every=1)
    losses = []
    for _ in range(8):
        pred = model(x).squeeze(1)
        # Fisher loss: targets drawn from the model's own Gaussian N(pred, 1) (ACKTR's value-function Fisher).
        record(opt, 0.5 * (pred - (pred.detach() + torch.randn_like(pred))).pow(2).mean())
        loss = 0.5 * (pred - y).pow(2).mean()
        losses.append(2 * loss.item())
        loss.backward()
        opt.step()
    final = (model(x).squeeze(1) - y).pow(2).mean().item()
    assert losses[0] > 1e3 * final
    assert final == pytest.approx(best.item(), rel=1e-2)


def test_kfac_fits_a_small_logistic_regression() -> None:
    torch.manual_seed(11)
    x = torch.randn(256, 6)
    labels = (x @ torch.randn(6) + 0.3 * torch.randn(256) > 0).long()
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2))
    opt = KFAC(model, lr=0.25, kl_clip=1e-2, inverse_every=5)
    losses = []
    for _ in range(60):
        logits = model(x)
        sampled = torch.distributions.Categorical(logits=logits.detach()).sample()
        record(opt, sampled_nll(logits, sampled).mean())
        loss = F.cross_entropy(logits, labels)
        losses.append(loss.item())
        loss.backward()
        opt.step()
    assert losses[-1] < 0.5 * losses[0]
    accuracy = (model(x).argmax(-1) == labels).float().mean().item()
    assert accuracy > 0.9


def test_eigendecomposition_falls_back_when_lapack_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    # LAPACK failed to converge on a Nature-CNN A factor while measuring docs/kfac.md; simulate two failures
    # (the float32 call and the unshifted float64 call) and check the shifted retry still decomposes the matrix.
    torch.manual_seed(16)
    rows = torch.randn(5, 8)
    matrix = rows.T @ rows / 5  # rank 5 of 8: repeated zero eigenvalues
    real_eigh, calls = torch.linalg.eigh, []

    def flaky_eigh(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(m.dtype)
        if len(calls) <= 2:
            raise torch.linalg.LinAlgError("simulated: failed to converge")
        return real_eigh(m)

    monkeypatch.setattr(torch.linalg, "eigh", flaky_eigh)
    eigenvalues, basis = symmetric_eigh(matrix)
    assert calls == [torch.float32, torch.float64, torch.float64]
    assert eigenvalues.dtype == basis.dtype == torch.float32
    torch.testing.assert_close(basis @ torch.diag(eigenvalues) @ basis.T, matrix, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(eigenvalues, real_eigh(matrix.double())[0].float(), rtol=1e-4, atol=1e-5)


def test_damped_inverse_by_cholesky_and_by_the_eigen_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(17)
    rows = torch.randn(3, 6, dtype=DTYPE)
    factor = rows.T @ rows / 3  # singular: only the shift makes it invertible
    expected = torch.linalg.inv(factor + 0.05 * torch.eye(6, dtype=DTYPE))
    torch.testing.assert_close(damped_inverse(factor, torch.tensor(0.05, dtype=DTYPE)), expected)

    def failing_cholesky(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros_like(m), torch.tensor(1)

    monkeypatch.setattr(torch.linalg, "cholesky_ex", failing_cholesky)
    torch.testing.assert_close(damped_inverse(factor, torch.tensor(0.05, dtype=DTYPE)), expected)


# ---- schedule and misuse ----------------------------------------------------------------------------------------


def test_stats_every_skips_recording_between_updates() -> None:
    torch.manual_seed(12)
    model = TinyMLP().to(DTYPE)
    opt = KFAC(model, stats_every=2, stat_decay=0.0)
    x = torch.randn(6, 3, dtype=DTYPE)
    record(opt, sampled_nll(model(x), torch.zeros(6, dtype=torch.long)).mean())
    model(x).sum().backward()
    opt.step()  # steps = 1: the next record_stats is skipped
    a_before = opt.factors(model.head)[0].clone()
    record(opt, sampled_nll(model(torch.randn(6, 3, dtype=DTYPE)), torch.ones(6, dtype=torch.long)).mean())
    assert torch.equal(opt.factors(model.head)[0], a_before)


def test_backward_outside_record_stats_leaves_factors_alone_and_nesting_is_refused() -> None:
    torch.manual_seed(13)
    model = TinyMLP().to(DTYPE)
    opt = KFAC(model)
    logits = model(torch.randn(6, 3, dtype=DTYPE))
    record(opt, sampled_nll(logits, torch.zeros(6, dtype=torch.long)).mean())
    g_before = opt.factors(model.head)[1].clone()
    sampled_nll(logits, torch.ones(6, dtype=torch.long)).mean().backward()
    assert torch.equal(opt.factors(model.head)[1], g_before)
    with pytest.raises(RuntimeError, match="nested"), opt.record_stats(), opt.record_stats():
        pass


def test_layer_without_statistics_takes_the_raw_gradient_with_a_warning() -> None:
    torch.manual_seed(14)
    model = TinyMLP().to(DTYPE)
    value_head = nn.Linear(4, 1).to(DTYPE)
    both = nn.ModuleDict({"mlp": model, "value": value_head})
    opt = KFAC(both, lr=1.0, momentum=0.0)
    x = torch.randn(6, 3, dtype=DTYPE)
    record(opt, sampled_nll(model(x), torch.zeros(6, dtype=torch.long)).mean())  # the value head is not in it
    value_head(torch.tanh(model.hidden(x))).pow(2).mean().backward()
    before, grad = value_head.weight.detach().clone(), value_head.weight.grad.clone()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.step()
    assert any("no Kronecker factors" in str(w.message) for w in caught)
    torch.testing.assert_close(value_head.weight.detach(), before - grad)


def test_bad_arguments_name_the_argument_and_allowed_values() -> None:
    with pytest.raises(ConfigError, match="damping_mode='exact'; allowed: kron, pi"):
        KFAC(TinyMLP(), damping_mode="exact")
    with pytest.raises(ConfigError, match="momentum=1.0"):
        KFAC(TinyMLP(), momentum=1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_step_matches_cpu() -> None:
    torch.manual_seed(15)
    cpu_model = TinyConvNet()
    gpu_model = copy.deepcopy(cpu_model).cuda()
    x, a = torch.randn(8, 2, 6, 6), torch.randint(0, 2, (8,))
    for model, device in ((cpu_model, "cpu"), (gpu_model, "cuda")):
        opt = KFAC(model, kl_clip=1e-2)
        for _ in range(3):
            logits = model(x.to(device))
            record(opt, sampled_nll(logits, a.to(device)).mean())
            sampled_nll(logits, 1 - a.to(device)).mean().backward()
            opt.step()
        assert all(
            t.device.type == device for s in opt.state.values() for t in s.values() if torch.is_tensor(t)
        )
    for p, q in zip(cpu_model.parameters(), gpu_model.parameters(), strict=True):
        torch.testing.assert_close(p, q.cpu(), rtol=1e-3, atol=1e-5)


# ---- rank-deficient factors: a batch smaller than a factor's dimension (docs/kfac.md, "Small batches") ----------


def test_acktr_atari_at_4_envs_x_5_steps_keeps_the_weights_finite() -> None:
    # docs/benchmarks.md: `multiscene train --preset acktr-atari --num-envs 4 --num-steps 5` had NaN logits in the
    # second rollout. This is that run's first rollout and updates, in process, on Enduro (whose first rollout
    # triggers it on the dev machine; Breakout's does not). With 20 samples the fc layer's 3137-wide A has rank
    # <= 20 and over 1,000 exact zero rows (dead features); MKL's float32 eigh returned NaN eigenvectors for it
    # without an error, the trust region read the NaN contraction as "not binding" and the step wrote NaN into
    # the weights.
    pytest.importorskip("ale_py")
    from multiscene.algos.onpolicy.acktr import ACKTR
    from multiscene.algos.onpolicy.rollout import RolloutCollector
    from multiscene.config import replace
    from multiscene.envs import make_env
    from multiscene.presets import get_preset
    from multiscene.runtime import env_spec, make_agent, seed_everything

    cfg = replace(get_preset("acktr-atari"), env="EnduroNoFrameskip-v4", num_envs=4, num_steps=5)
    seed_everything(cfg.seed, False)
    envs = make_env(env_spec(cfg, "train", cfg.num_envs))
    try:
        agent = make_agent(cfg, envs)
        algo = ACKTR()
        optimizer = algo.make_optimizer(agent, cfg)
        collector = RolloutCollector(envs, agent, cfg, torch.device("cpu"))
        for _ in range(2):  # the second rollout is where the NaN logits showed
            rollout = collector.collect(agent)
            adv = algo.advantages(agent.critic, rollout, cfg)
            result = algo.update(agent, optimizer, rollout, adv, {}, cfg, torch.device("cpu"))
            assert not result.skipped, result.bad_term
            nu = result.metrics["losses/kfac_nu"]
            assert math.isfinite(nu) and 0 < nu <= 1
    finally:
        envs.close()
    assert all(bool(torch.isfinite(p).all()) for p in agent.parameters())
    a, g = optimizer.factors(agent.encoder.fc)
    # The case this is about: far fewer samples than the factor's dimension, and dead features (zero rows).
    assert a.shape == (3137, 3137) and rollout.obs.shape[:2].numel() == 20
    assert int((a.diagonal() == 0).sum()) > 100


def test_eigendecomposition_retries_when_lapack_returns_nan_without_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # The failure above, made deterministic: float32 eigh "succeeds" with NaN eigenvectors (LAPACK's
    # divide-and-conquer solver on a rank-deficient factor; pytorch issue 59720 shows the same silent mode).
    torch.manual_seed(18)
    rows = torch.randn(3, 7)
    matrix = rows.T @ rows / 3  # rank 3 of 7, no zero rows
    real_eigh, calls = torch.linalg.eigh, []

    def silently_broken_eigh(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(m.dtype)
        eigenvalues, basis = real_eigh(m)
        if m.dtype == torch.float32:
            basis = basis.clone()
            basis[:, 0] = float("nan")
        return eigenvalues, basis

    monkeypatch.setattr(torch.linalg, "eigh", silently_broken_eigh)
    eigenvalues, basis = symmetric_eigh(matrix)
    assert calls == [torch.float32, torch.float64]
    assert eigenvalues.dtype == basis.dtype == torch.float32
    torch.testing.assert_close(basis @ torch.diag(eigenvalues) @ basis.T, matrix, rtol=1e-5, atol=1e-5)


def test_zero_rows_are_split_off_before_the_eigendecomposition(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(19)
    rows = torch.randn(2, 6, dtype=DTYPE)
    rows[:, [1, 4]] = 0.0  # two dead features: zero rows and columns
    matrix = rows.T @ rows
    real_eigh, shapes = torch.linalg.eigh, []

    def spy(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shapes.append(tuple(m.shape))
        return real_eigh(m)

    monkeypatch.setattr(torch.linalg, "eigh", spy)
    eigenvalues, basis = symmetric_eigh(matrix)
    assert shapes == [(4, 4)]  # only the live block reaches LAPACK
    torch.testing.assert_close(basis.T @ basis, torch.eye(6, dtype=DTYPE))
    torch.testing.assert_close(basis @ torch.diag(eigenvalues) @ basis.T, matrix)
    for dead in (1, 4):  # a dead feature is its own eigenvector, with eigenvalue 0
        column = (basis[dead].abs() == 1).nonzero().squeeze(1)
        assert column.numel() == 1 and eigenvalues[column].item() == 0.0
    assert symmetric_eigh(torch.zeros(3, 3, dtype=DTYPE))[0].tolist() == [0.0, 0.0, 0.0]


def test_step_with_dead_units_and_fewer_samples_than_inputs_equals_the_kronecker_solve() -> None:
    # A batch of 3 into a 4-wide head with one dead hidden unit: A is singular (rank <= 3 of 5, one zero row);
    # the damped solve must still be the exact (A ⊗ G + λI)⁻¹ g.
    torch.manual_seed(20)
    model = TinyMLP().to(DTYPE)
    with torch.no_grad():
        model.hidden.weight[2] = 0.0
        model.hidden.bias[2] = 0.0  # tanh(0) = 0 for every input: a dead unit
    damping = 0.02
    opt = KFAC(model, lr=1.0, momentum=0.0, damping=damping, kl_clip=1e9, stat_decay=0.0)
    x = torch.randn(3, 3, dtype=DTYPE)
    logits = model(x)
    record(opt, sampled_nll(logits, torch.randint(0, 2, (3,))).mean())
    F.cross_entropy(logits, torch.randint(0, 2, (3,))).backward()
    before = [p.detach().clone() for p in model.head.parameters()]
    grads = [p.grad.clone() for p in model.head.parameters()]
    a, g = (f.clone() for f in opt.factors(model.head))
    assert a[2].abs().sum().item() == 0.0
    opt.step()
    expected = explicit_natural_gradient(a, g, gradient_matrix(model.head, grads[0], grads[1]), damping, "kron")
    taken = gradient_matrix(model.head, before[0] - model.head.weight.detach(), before[1] - model.head.bias.detach())
    torch.testing.assert_close(taken, expected, rtol=1e-7, atol=1e-10)


def test_non_finite_fisher_statistics_leave_the_factors_as_they_were() -> None:
    torch.manual_seed(21)
    model = TinyMLP().to(DTYPE)
    opt = KFAC(model, stat_decay=0.5)
    x = torch.randn(6, 3, dtype=DTYPE)
    record(opt, sampled_nll(model(x), torch.zeros(6, dtype=torch.long)).mean())
    a_before, g_before = (f.clone() for f in opt.factors(model.head))
    poisoned = model(x) * torch.tensor([1.0, float("nan")], dtype=DTYPE)  # a NaN in the head's output grad
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        record(opt, sampled_nll(poisoned, torch.ones(6, dtype=torch.long)).mean())
    assert any("not finite" in str(w.message) and "Linear(in_features=4" in str(w.message) for w in caught)
    assert torch.equal(opt.factors(model.head)[0], a_before) and torch.equal(opt.factors(model.head)[1], g_before)
    assert all(bool(torch.isfinite(f).all()) for f in opt.factors(model.hidden))
