"""scikit-learn's 8x8 digits: always offline, for tiny tests and smoke runs."""

from __future__ import annotations

import numpy as np

from kdflow.datasets import DATASETS, RawData


@DATASETS.register("digits")
def digits(cfg) -> RawData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = np.clip(d.images * 16.0, 0, 255).astype(np.uint8)[:, None]  # 0..16 -> 0..255
    # A fixed split (seed 0), independent of data.seed, so the test set never moves.
    tr_x, te_x, tr_y, te_y = train_test_split(
        x, d.target, test_size=0.25, stratify=d.target, random_state=0
    )
    return RawData(tr_x, tr_y, te_x, te_y, [str(i) for i in range(10)], "sklearn.load_digits")
