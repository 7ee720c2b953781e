"""A linear probe solved to convergence: multinomial logistic regression on frozen embeddings.

The convention of CLIP and Kornblith et al. (2019): logistic regression on the frozen features
solved to convergence, the L2 strength chosen by stratified k-fold cross-validation on the
labelled examples only (never the test set), then refit on all of them. The solution becomes an
ordinary ``nn.Linear`` head. The solver is Newton-CG, not CLIP's L-BFGS: a MobileNet's
embeddings are ill-conditioned (singular values 485 to 5e-5), where L-BFGS ran 1,000 iterations
at every C from 10 up and stopped far from the optimum (docs/benchmarks.md#the-linear-probe).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdflow.metrics import eval_batch

C_GRID = tuple(float(c) for c in np.logspace(-3, 3, 7))  # inverse L2 strengths tried
MAX_ITER = 1000


@torch.inference_mode()
def embeddings(net: nn.Module, x: Tensor, batch_size: int | None = None) -> np.ndarray:
    """Pooled backbone features of ``x`` in eval mode (float64, for the solver)."""
    device = next(net.parameters()).device
    batch_size = eval_batch(x, batch_size, device)
    was = net.training
    net.eval()
    out = [
        net.embed(x[i : i + batch_size].to(device)).double().cpu()
        for i in range(0, len(x), batch_size)
    ]
    net.train(was)
    return torch.cat(out).numpy()


def cv_folds(y: np.ndarray, folds: int) -> int:
    """Folds that leave every class in every training fold (0: too few labels to cross-validate)."""
    smallest = int(np.bincount(y).min()) if len(y) else 0
    k = min(folds, smallest)
    return k if k >= 2 else 0


def fit_logistic(
    features: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0, c_grid=C_GRID
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Weights (classes x dim) and bias of the probe in the original feature space, and info.

    Features are standardised for the solver; the scaling is folded back into the weights.
    """
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    mean, std = features.mean(0), features.std(0) + 1e-8
    z = (features - mean) / std
    k = cv_folds(y, folds)
    # Newton-CG at scikit-learn's tolerance: 17 iterations at most on the own case's 1,024-dim
    # embeddings of 500 shots, 5 s for the whole C path where L-BFGS took 192 s, same C chosen
    solver = {"solver": "newton-cg", "max_iter": MAX_ITER, "tol": 1e-4}
    if k:  # warm-started along the C path; refit on every shot with the best C
        split = StratifiedKFold(k, shuffle=True, random_state=seed)
        # pure L2 and scikit-learn 1.10's attribute layout, asked for explicitly (no notices)
        clf = LogisticRegressionCV(
            Cs=list(c_grid), cv=split, scoring="accuracy", l1_ratios=(0.0,),
            use_legacy_attributes=False, **solver,
        ).fit(z, y)  # fmt: skip
        best = float(np.ravel(clf.C_)[0])
        scores = np.asarray(clf.scores_)  # (folds, l1 ratios, Cs)
        cv_acc = float(scores.reshape(k, -1).mean(0).max())
    else:
        clf = LogisticRegression(C=1.0, **solver).fit(z, y)
        best, cv_acc = 1.0, None
    coef, bias = clf.coef_, clf.intercept_
    if coef.shape[0] == 1:  # two classes: sklearn keeps one row; softmax wants both
        coef, bias = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], bias])
    weight = coef / std
    info = {
        "C": best,
        "cv_folds": k,
        "cv_accuracy": cv_acc,
        "iterations": int(clf.n_iter_.max()),
        "converged": bool(clf.n_iter_.max() < MAX_ITER),
    }
    return weight, bias - weight @ mean, info


def solve_head(
    head: nn.Linear, net: nn.Module, x: Tensor, y: Tensor, seed: int = 0
) -> dict[str, Any]:
    """Set ``head`` to the cross-validated logistic-regression solution on ``net``'s embeddings."""
    weight, bias, info = fit_logistic(embeddings(net, x), y.numpy(), seed=seed)
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
        head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))
    return info
