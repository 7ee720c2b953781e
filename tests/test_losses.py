"""Distillation losses against formulas written out by hand on small fixed tensors.

The references below use plain Python loops and ``math`` on ``tolist()`` copies of the
inputs, never the modules' helpers, so a wrong formula in a loss cannot also be in its check.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from kdflow.errors import ParamsError
from kdflow.losses import LOSSES
from kdflow.outputs import Outputs
from kdflow.params import parse_params, validate_options

TOL = 1e-5
SDIMS = [(8, 14, 14), (16, 7, 7), (32, 3, 3)]
TDIMS = [(16, 14, 14), (32, 7, 7), (64, 3, 3)]


# ---------------------------------------------------------------- hand-written references


def softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    s = sum(e)
    return [v / s for v in e]


def kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0)


def cross_entropy(logits: list[list[float]], target: list[int]) -> float:
    return sum(-math.log(softmax(row)[y]) for row, y in zip(logits, target, strict=True)) / len(
        target
    )


def pearson(a: list[float], b: list[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
    va = sum((x - ma) ** 2 for x in a)
    vb = sum((y - mb) ** 2 for y in b)
    return cov / math.sqrt(va * vb)


def huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1.0 else abs(x) - 0.5


def pool2(fmap: list[list[float]]) -> list[list[float]]:
    """Average non-overlapping 2x2 blocks of an (H, W) list."""
    h, w = len(fmap) // 2, len(fmap[0]) // 2
    out = [[0.0] * w for _ in range(h)]
    for i in range(h):
        for j in range(w):
            block = [fmap[2 * i + a][2 * j + b] for a in (0, 1) for b in (0, 1)]
            out[i][j] = sum(block) / 4
    return out


def close(value: torch.Tensor, expected: float, tol: float = TOL) -> bool:
    return abs(float(value.detach()) - expected) <= tol


def fixed_logits(n: int = 4, k: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(n, k, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    t = torch.randn(n, k, generator=g, dtype=torch.float64) * 3
    return s, t


TARGET = torch.tensor([0, 3, 2, 3])


def build(name: str, sdims=SDIMS, tdims=TDIMS, **kwargs):
    """A method built as a stage builds it: options validated once, then the registry."""
    options = {**kwargs.pop("options", {}), **kwargs}
    return LOSSES.build(
        name, validate_options(LOSSES, "distill.methods", name, options), sdims, tdims
    )


def assert_finite_grad(*tensors: torch.Tensor) -> None:
    for t in tensors:
        assert t.grad is not None
        assert torch.isfinite(t.grad).all()


# ---------------------------------------------------------------- KD


def test_kd_alpha_zero_is_cross_entropy_exactly() -> None:
    s, t = fixed_logits()
    out = build("kd", alpha=0.0)(Outputs(s), Outputs(t), TARGET)
    assert torch.equal(out["loss"], F.cross_entropy(s, TARGET))


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_soft_term_has_t_squared(temperature: float) -> None:
    s, t = fixed_logits()
    out = build("kd", alpha=1.0, temperature=temperature)(Outputs(s), Outputs(t), TARGET)
    rows_s = (s / temperature).tolist()
    rows_t = (t / temperature).tolist()
    by_hand = sum(kl(softmax(b), softmax(a)) for a, b in zip(rows_s, rows_t, strict=True)) / len(
        rows_s
    )
    assert close(out["loss"], temperature**2 * by_hand)
    out["loss"].backward()
    assert_finite_grad(s)


# ---------------------------------------------------------------- DKD


def dkd_by_hand(
    s: torch.Tensor, t: torch.Tensor, target: list[int], temperature: float
) -> tuple[list[float], list[float], list[float]]:
    """Per-sample TCKD, NCKD (without T^2) and the teacher's target probability."""
    tckd, nckd, pt = [], [], []
    for a, b, y in zip(s.tolist(), t.tolist(), target, strict=True):
        ps = softmax([v / temperature for v in a])
        pt_ = softmax([v / temperature for v in b])
        tckd.append(kl([pt_[y], 1 - pt_[y]], [ps[y], 1 - ps[y]]))
        qs = [p / (1 - ps[y]) for k, p in enumerate(ps) if k != y]
        qt = [p / (1 - pt_[y]) for k, p in enumerate(pt_) if k != y]
        nckd.append(kl(qt, qs))
        pt.append(pt_[y])
    return tckd, nckd, pt


def test_dkd_matches_hand_computation() -> None:
    s, t = fixed_logits()
    temp = 3.0
    opts = {"alpha": 0.7, "beta": 3.0, "warmup_epochs": 0, "ce_weight": 0.5}
    out = build("dkd", temperature=temp, options=opts)(Outputs(s), Outputs(t), TARGET)
    tckd, nckd, _ = dkd_by_hand(s, t, TARGET.tolist(), temp)
    tckd_m = sum(tckd) / len(tckd) * temp**2
    nckd_m = sum(nckd) / len(nckd) * temp**2
    ce = cross_entropy(s.tolist(), TARGET.tolist())
    assert close(out["tckd"], tckd_m)
    assert close(out["nckd"], nckd_m)
    assert close(out["ce"], ce)
    assert close(out["loss"], 0.5 * ce + 0.7 * tckd_m + 3.0 * nckd_m)
    out["loss"].backward()
    assert_finite_grad(s)
    assert not out["tckd"].requires_grad and not out["nckd"].requires_grad


def test_dkd_terms_recompose_classical_kd() -> None:
    # Per sample: KL(full) = TCKD + (1 - p_t[target]) * NCKD (Zhao et al., eq. 3).
    s, t = fixed_logits(seed=1)
    temp = 2.0
    loss = build("dkd", temperature=temp, options={"warmup_epochs": 0})
    for i in range(len(TARGET)):
        one = slice(i, i + 1)
        out = loss(Outputs(s[one]), Outputs(t[one]), TARGET[one])
        full = kl(softmax((t[i] / temp).tolist()), softmax((s[i] / temp).tolist())) * temp**2
        p_target = softmax((t[i] / temp).tolist())[int(TARGET[i])]
        assert close(out["tckd"] + (1 - p_target) * out["nckd"], full)


def test_dkd_warmup() -> None:
    s, t = fixed_logits()
    loss = build("dkd", options={"warmup_epochs": 5})
    kd_part = [
        float(out["loss"].detach() - out["ce"])
        for out in (loss(Outputs(s), Outputs(t), TARGET, epoch=e) for e in (0, 2, 4, 50))
    ]
    assert kd_part[3] > 0
    assert math.isclose(kd_part[0], kd_part[3] / 5, rel_tol=1e-9)
    assert math.isclose(kd_part[1], kd_part[3] * 3 / 5, rel_tol=1e-9)
    assert kd_part[2] == kd_part[3]
    no_warmup = build("dkd", options={"warmup_epochs": 0})(Outputs(s), Outputs(t), TARGET, 0)
    assert math.isclose(
        float(no_warmup["loss"].detach() - no_warmup["ce"]), kd_part[3], rel_tol=1e-9
    )


# ---------------------------------------------------------------- DIST


def test_dist_matches_hand_computation() -> None:
    s, t = fixed_logits()
    temp = 2.0
    opts = {"beta": 2.0, "gamma": 0.5}
    out = build("dist", temperature=temp, options=opts)(Outputs(s), Outputs(t), TARGET)
    ps = [softmax([v / temp for v in row]) for row in s.tolist()]
    pt = [softmax([v / temp for v in row]) for row in t.tolist()]
    n, k = len(ps), len(ps[0])
    inter = (1 - sum(pearson(ps[i], pt[i]) for i in range(n)) / n) * temp**2
    cols = [([ps[i][c] for i in range(n)], [pt[i][c] for i in range(n)]) for c in range(k)]
    intra = (1 - sum(pearson(a, b) for a, b in cols) / k) * temp**2
    ce = cross_entropy(s.tolist(), TARGET.tolist())
    assert close(out["inter"], inter)
    assert close(out["intra"], intra)
    assert close(out["loss"], ce + 2.0 * inter + 0.5 * intra)
    out["loss"].backward()
    assert_finite_grad(s)


def test_dist_identical_logits_give_zero_relations() -> None:
    s, _ = fixed_logits()
    out = build("dist")(Outputs(s), Outputs(s.detach().clone()), TARGET)
    assert abs(float(out["inter"])) < 1e-6
    assert abs(float(out["intra"])) < 1e-6
    assert close(out["loss"], float(F.cross_entropy(s.detach(), TARGET)))
    out["loss"].backward()
    assert_finite_grad(s)


# ---------------------------------------------------------------- FitNet


def test_fitnet_matches_hand_computation() -> None:
    g = torch.Generator().manual_seed(2)
    n, cs, ct = 3, 2, 3
    sdims, tdims = [(cs, 4, 4), (5, 2, 2)], [(7, 8, 8), (ct, 2, 2)]
    loss = build(
        "fitnet",
        sdims,
        tdims,
        options={"weight": 2.0, "student_layer": 0, "teacher_layer": -1, "ce_weight": 0.0},
    ).double()
    assert loss.needs_features
    conv, bn = loss.regressor[0], loss.regressor[1]
    w = torch.randn(ct, cs, generator=g, dtype=torch.float64)
    gamma = torch.rand(ct, generator=g, dtype=torch.float64) + 0.5
    beta = torch.randn(ct, generator=g, dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_(w.view(ct, cs, 1, 1))
        bn.weight.copy_(gamma)
        bn.bias.copy_(beta)
    s_feat = torch.randn(n, cs, 4, 4, generator=g, dtype=torch.float64).requires_grad_(True)
    other = torch.randn(n, 5, 2, 2, generator=g, dtype=torch.float64)
    t_feat = torch.randn(n, ct, 2, 2, generator=g, dtype=torch.float64)
    s, t = fixed_logits(n=n)
    out = loss(
        Outputs(s, [s_feat, other]),
        Outputs(t, [torch.zeros(n, 7, 8, 8, dtype=torch.float64), t_feat]),
        TARGET[:n],
    )

    # pool 4x4 -> 2x2, 1x1 conv, then BatchNorm with the batch's biased statistics
    pooled = [[pool2(s_feat[i, c].tolist()) for c in range(cs)] for i in range(n)]
    y = [
        [
            [
                [sum(w[o, c].item() * pooled[i][c][h][x] for c in range(cs)) for x in range(2)]
                for h in range(2)
            ]
            for o in range(ct)
        ]
        for i in range(n)
    ]
    total, count = 0.0, 0
    for o in range(ct):
        vals = [y[i][o][h][x] for i in range(n) for h in range(2) for x in range(2)]
        mean = sum(vals) / len(vals)
        var = sum((v - mean) ** 2 for v in vals) / len(vals)
        for i in range(n):
            for h in range(2):
                for x in range(2):
                    z = (y[i][o][h][x] - mean) / math.sqrt(var + 1e-5) * gamma[o].item()
                    z += beta[o].item()
                    total += (z - t_feat[i, o, h, x].item()) ** 2
                    count += 1
    mse = total / count
    assert close(out["hint"], mse)
    assert close(out["loss"], 2.0 * mse)
    out["loss"].backward()
    assert_finite_grad(s_feat, conv.weight, bn.weight)
    assert s.grad is None or float(s.grad.abs().sum()) == 0.0  # ce_weight 0


def test_fitnet_rejects_out_of_range_layer() -> None:
    with pytest.raises(ParamsError, match="student_layer"):
        build("fitnet", options={"student_layer": 3})


# ---------------------------------------------------------------- attention transfer


def attention_by_hand(fmap: list[list[list[float]]], p: float) -> list[float]:
    """(C, H, W) list -> normalised flattened channel mean of |f|^p."""
    c, h, w = len(fmap), len(fmap[0]), len(fmap[0][0])
    a = [sum(abs(fmap[k][i][j]) ** p for k in range(c)) / c for i in range(h) for j in range(w)]
    norm = math.sqrt(sum(v * v for v in a))
    return [v / norm for v in a]


def test_at_matches_hand_computation() -> None:
    g = torch.Generator().manual_seed(3)
    n = 2
    sdims = [(2, 8, 8), (3, 4, 4), (4, 2, 2)]
    tdims = [(5, 2, 2), (6, 4, 4)]
    s_feats = [torch.randn(n, *d, generator=g, dtype=torch.float64) for d in sdims]
    t_feats = [torch.randn(n, *d, generator=g, dtype=torch.float64) for d in tdims]
    for f in s_feats:
        f.requires_grad_(True)
    s, t = fixed_logits(n=n)
    target = TARGET[:n]
    loss = build("at", sdims, tdims, options={"weight": 10.0})
    assert loss.needs_features
    out = loss(Outputs(s, s_feats), Outputs(t, t_feats), target)

    def pair(sf: torch.Tensor, tf: torch.Tensor, pool_student: bool) -> float:
        total, count = 0.0, 0
        for i in range(n):
            a_s = [sf[i, c].tolist() for c in range(sf.shape[1])]
            a_t = [tf[i, c].tolist() for c in range(tf.shape[1])]
            if pool_student:
                a_s = [pool2(m) for m in a_s]
            else:
                a_t = [pool2(m) for m in a_t]
            for x, y in zip(attention_by_hand(a_s, 2.0), attention_by_hand(a_t, 2.0), strict=True):
                total += (x - y) ** 2
                count += 1
        return total / count

    # last two student stages pair with the two teacher stages; 4x4 vs 2x2 pools the student,
    # 2x2 vs 4x4 pools the teacher
    p0 = pair(s_feats[1], t_feats[0], pool_student=True)
    p1 = pair(s_feats[2], t_feats[1], pool_student=False)
    ce = cross_entropy(s.tolist(), target.tolist())
    assert close(out["at"], (p0 + p1) / 2)
    assert close(out["loss"], ce + 10.0 * (p0 + p1) / 2)
    out["loss"].backward()
    assert_finite_grad(s, s_feats[1], s_feats[2])
    assert s_feats[0].grad is None  # unpaired stage

    only_last = build("at", sdims, tdims, options={"layers": [1]})
    assert close(only_last(Outputs(s, s_feats), Outputs(t, t_feats), target)["at"], p1)


def test_at_rejects_out_of_range_layer() -> None:
    with pytest.raises(ParamsError, match="layers"):
        build("at", options={"layers": [0, 3]})


@pytest.mark.parametrize(
    ("method", "options", "expect"),
    [
        ("fitnet", {"teacher_layer": -9}, r"fitnet\.teacher_layer = -9 is out of range: the teacher"),
        ("rkd", {"student_layer": 7}, r"rkd\.student_layer = 7 is out of range: the student"),
        ("at", {"layers": [[0, 0], [1, 5]]}, r"at\.layers\[1\]\[1\] = 5 is out of range: the teacher"),
        ("at", {"layers": [[0, "layer9"]]}, r"at\.layers\[0\]\[1\] = 'layer9': a layer name needs"),
    ],
)  # fmt: skip
def test_layer_errors_name_the_key(method: str, options: dict, expect: str) -> None:
    """One helper (losses/_base.layer_index) checks every method's layer indices."""
    with pytest.raises(ParamsError, match=expect):
        build(method, options=options)


# ---------------------------------------------------------------- RKD


def rkd_by_hand(es: list[list[float]], et: list[list[float]]) -> tuple[float, float]:
    def dist(e: list[list[float]]) -> list[list[float]]:
        d = [[math.dist(a, b) for b in e] for a in e]
        nonzero = [v for row in d for v in row if v > 0]
        mean = sum(nonzero) / len(nonzero)
        return [[v / mean for v in row] for row in d]

    def angles(e: list[list[float]]) -> list[float]:
        out = []
        for i in range(len(e)):
            for j in range(len(e)):
                for k in range(len(e)):
                    u = [x - y for x, y in zip(e[j], e[i], strict=True)]
                    v = [x - y for x, y in zip(e[k], e[i], strict=True)]
                    nu, nv = math.hypot(*u), math.hypot(*v)
                    if nu == 0 or nv == 0:
                        out.append(0.0)
                    else:
                        out.append(sum(x * y for x, y in zip(u, v, strict=True)) / (nu * nv))
        return out

    ds, dt = dist(es), dist(et)
    n = len(es)
    d_term = sum(huber(ds[i][j] - dt[i][j]) for i in range(n) for j in range(n)) / n**2
    a_s, a_t = angles(es), angles(et)
    a_term = sum(huber(x - y) for x, y in zip(a_s, a_t, strict=True)) / len(a_s)
    return d_term, a_term


@pytest.mark.parametrize("duplicate", [False, True])
def test_rkd_matches_hand_computation(duplicate: bool) -> None:
    g = torch.Generator().manual_seed(4)
    n = 4
    e_s = torch.randn(n, 3, generator=g, dtype=torch.float64)
    e_t = torch.randn(n, 5, generator=g, dtype=torch.float64) * 4
    if duplicate:  # two samples with the same student embedding: zero distance, no angle
        e_s[1] = e_s[0]
    e_s.requires_grad_(True)
    s, t = fixed_logits(n=n)
    loss = build("rkd", options={"distance_weight": 3.0, "angle_weight": 5.0})
    assert loss.needs_features
    out = loss(Outputs(s, embedding=e_s), Outputs(t, embedding=e_t), TARGET)
    d_term, a_term = rkd_by_hand(e_s.tolist(), e_t.tolist())
    ce = cross_entropy(s.tolist(), TARGET.tolist())
    assert close(out["distance"], d_term)
    assert close(out["angle"], a_term)
    assert close(out["loss"], ce + 3.0 * d_term + 5.0 * a_term)
    out["loss"].backward()
    assert_finite_grad(s, e_s)
    assert float(e_s.grad.abs().sum()) > 0


def test_rkd_all_embeddings_equal_is_finite() -> None:
    e_s = torch.ones(4, 3, requires_grad=True)
    s, t = fixed_logits(n=4)
    out = build("rkd")(
        Outputs(s.float(), embedding=e_s), Outputs(t.float(), embedding=torch.ones(4, 6)), TARGET
    )
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert_finite_grad(e_s)


# ---------------------------------------------------------------- option schemas and config

DEFAULTS = {  # the defaults the validation sweep chose (docs/sweeps.md)
    "kd": {"temperature": 1.0, "alpha": 0.5, "logit_standardization": False},
    "dkd": {
        "temperature": 4.0,
        "alpha": 1.0,
        "beta": 2.0,
        "warmup_epochs": 5,
        "ce_weight": 1.0,
        "logit_standardization": False,
    },
    "dist": {"temperature": 4.0, "beta": 1.0, "gamma": 1.0, "ce_weight": 1.0},
    "fitnet": {"weight": 1.0, "student_layer": -1, "teacher_layer": -1, "ce_weight": 1.0},
    "at": {"weight": 100.0, "p": 2.0, "layers": None, "ce_weight": 1.0},
    "rkd": {
        "distance_weight": 25.0,
        "angle_weight": 50.0,
        "ce_weight": 1.0,
        "student_layer": None,
        "teacher_layer": None,
    },
}


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_schema_defaults_and_unknown_key(name: str) -> None:
    schema = LOSSES.schema(name)
    assert schema().model_dump() == DEFAULTS[name]
    assert parse_params({"distill": {"method": name}}).distill.options() == DEFAULTS[name]
    with pytest.raises(ValidationError):
        schema.model_validate({"no_such_option": 1})


@pytest.mark.parametrize(
    ("name", "key", "value"),
    [
        ("dkd", "alpha", -1.0),
        ("dkd", "beta", -0.5),
        ("dkd", "warmup_epochs", -1),
        ("dkd", "ce_weight", -1.0),
        ("dist", "beta", -1.0),
        ("dist", "gamma", -1.0),
        ("fitnet", "weight", -1.0),
        ("at", "weight", -1.0),
        ("at", "p", 0.5),
        ("at", "layers", []),
        ("rkd", "distance_weight", -1.0),
        ("rkd", "angle_weight", float("nan")),
    ],
)
def test_schema_rejects_bad_values(name: str, key: str, value: object) -> None:
    with pytest.raises(ValidationError):
        LOSSES.schema(name).model_validate({key: value})


def test_params_error_names_the_key() -> None:
    with pytest.raises(ParamsError, match=r"distill\.methods\.dkd\.beta"):
        parse_params({"distill": {"method": "dkd", "methods": {"dkd": {"beta": -1}}}})
    with pytest.raises(ParamsError, match=r"distill\.methods\.rkd\.gamma"):
        parse_params({"distill": {"method": "rkd", "methods": {"rkd": {"gamma": 1}}}})
    ok = parse_params({"distill": {"method": "dkd", "methods": {"dkd": {"beta": 2}}}})
    assert ok.distill.options()["beta"] == 2.0


# ---------------------------------------------------------------- every registered method


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_method_builds_and_runs(name: str) -> None:
    torch.manual_seed(0)
    n, k = 6, 5
    loss = build(name)

    def outputs(dims: list[tuple[int, ...]], grad: bool) -> Outputs:
        feats = [torch.randn(n, *d).relu().requires_grad_(grad) for d in dims]
        emb = torch.randn(n, dims[-1][0]).requires_grad_(grad)
        return Outputs(torch.randn(n, k).requires_grad_(grad), feats, emb)

    student, teacher = outputs(SDIMS, True), outputs(TDIMS, False)
    target = torch.randint(0, k, (n,))
    out = loss(student, teacher, target, epoch=0)
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    for key, value in out.items():
        if key != "loss":
            assert not value.requires_grad, key
    out["loss"].backward()
    assert_finite_grad(student.logits)
    for p in loss.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    if name in DEFAULTS:
        assert loss.needs_features == (name in {"fitnet", "at", "rkd"})


# ---------------------------------------------------------------- logit standardisation


def zscore_by_hand(row: list[float]) -> list[float]:
    """Sun et al. (CVPR 2024), as their code: (z - mean) / (sample std + 1e-7)."""
    n = len(row)
    mean = sum(row) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in row) / (n - 1))
    return [(v - mean) / (std + 1e-7) for v in row]


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kd_logit_standardization_matches_hand_computation(temperature: float) -> None:
    s, t = fixed_logits()
    out = build("kd", alpha=0.7, temperature=temperature, logit_standardization=True)(
        Outputs(s), Outputs(t), TARGET
    )
    zs = [[v / temperature for v in zscore_by_hand(row)] for row in s.tolist()]
    zt = [[v / temperature for v in zscore_by_hand(row)] for row in t.tolist()]
    soft = sum(kl(softmax(b), softmax(a)) for a, b in zip(zs, zt, strict=True)) / len(zs)
    ce = cross_entropy(s.tolist(), TARGET.tolist())  # the labels see the raw logits
    assert close(out["kd"], temperature**2 * soft)
    assert close(out["loss"], 0.3 * ce + 0.7 * temperature**2 * soft)
    out["loss"].backward()
    assert_finite_grad(s)


def test_dkd_logit_standardization_matches_hand_computation() -> None:
    s, t = fixed_logits(seed=2)
    temp = 2.0
    opts = {"alpha": 0.7, "beta": 3.0, "warmup_epochs": 0, "ce_weight": 0.5}
    loss = build("dkd", temperature=temp, logit_standardization=True, options=opts)
    out = loss(Outputs(s), Outputs(t), TARGET)
    zs = torch.tensor([zscore_by_hand(row) for row in s.tolist()], dtype=torch.float64)
    zt = torch.tensor([zscore_by_hand(row) for row in t.tolist()], dtype=torch.float64)
    tckd, nckd, _ = dkd_by_hand(zs, zt, TARGET.tolist(), temp)
    tckd_m = sum(tckd) / len(tckd) * temp**2
    nckd_m = sum(nckd) / len(nckd) * temp**2
    ce = cross_entropy(s.tolist(), TARGET.tolist())
    assert close(out["tckd"], tckd_m) and close(out["nckd"], nckd_m)
    assert close(out["loss"], 0.5 * ce + 0.7 * tckd_m + 3.0 * nckd_m)
    out["loss"].backward()
    assert_finite_grad(s)


@pytest.mark.parametrize("name", ["kd", "dkd", "adversarial"])
def test_logit_standardization_ignores_each_samples_scale_and_shift(name: str) -> None:
    # Only the relations between a sample's logits transfer: z and a*z + b (a > 0) agree.
    s, t = fixed_logits(seed=3)
    scale = torch.tensor([[0.5], [2.0], [3.0], [1.0]], dtype=torch.float64)
    terms = "kd" if name != "dkd" else "nckd"
    a = build(name, logit_standardization=True)
    b = build(name, logit_standardization=True)
    a.eval(), b.eval()  # the adversarial D does not learn in eval mode
    out_a = a(Outputs(s), Outputs(t), TARGET)
    out_b = b(Outputs(s * scale + 5.0), Outputs(t * scale.flip(0) - 2.0), TARGET)
    assert close(out_b[terms], float(out_a[terms]), tol=1e-6)


def test_logit_standardization_off_changes_no_bit() -> None:
    """Off (the default), kd and dkd compute exactly what they did before the option."""
    from kdflow.losses.dkd import _binary_kl, _non_target_kl
    from kdflow.metrics import soft_kl

    s, t = fixed_logits(seed=4)
    target = torch.tensor([1, -1, 4, 0])  # with an image whose label is hidden
    kd = build("kd", temperature=3.0, alpha=0.6)(Outputs(s), Outputs(t), target)
    labelled = target >= 0
    hard = F.cross_entropy(s[labelled], target[labelled])
    assert torch.equal(kd["loss"], (1.0 - 0.6) * hard + 0.6 * (soft_kl(s, t, 3.0) * 3.0**2))
    opts = {"warmup_epochs": 0, "beta": 3.0}
    dkd = build("dkd", temperature=4.0, options=opts)(Outputs(s), Outputs(t), target)
    y = torch.where(labelled, target, t.argmax(1))
    tckd = _binary_kl(s / 4.0, t / 4.0, y).mean() * 16.0
    nckd = _non_target_kl(s / 4.0, t / 4.0, y).mean() * 16.0
    assert torch.equal(dkd["loss"], 1.0 * hard + 1.0 * (1.0 * tckd + 3.0 * nckd))
