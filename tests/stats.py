"""A chi-square goodness-of-fit check without scipy."""

import numpy as np

Z_999 = 3.0902  # one-sided normal quantile for a false-alarm rate of 0.1 %


# Tabulated 99.9 % chi-square quantiles for small df, where the approximation is weakest.
TABLE_999 = {1: 10.828, 2: 13.816, 3: 16.266, 4: 18.467, 5: 20.515,
             6: 22.458, 7: 24.322, 8: 26.124, 9: 27.877, 10: 29.588}


def chi2_critical(df: int) -> float:
    """The 99.9 % chi-square quantile: tabulated, else Wilson-Hilferty (within 1 % past df 10)."""
    if df in TABLE_999:
        return TABLE_999[df]
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + Z_999 * np.sqrt(a)) ** 3


def chi2_fits(counts: np.ndarray, probs: np.ndarray, min_expected: float = 5.0):
    """(statistic, critical value) for observed counts against probabilities.

    Cells expected to hold fewer than `min_expected` draws are pooled, as usual.
    The test fails to fit (statistic > critical) by chance 0.1 % of the time.
    """
    counts = np.asarray(counts, dtype=np.float64)
    expected = np.asarray(probs, dtype=np.float64) * counts.sum()
    big = expected >= min_expected
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    stat = float(((obs - exp) ** 2 / exp).sum())
    return stat, chi2_critical(len(obs) - 1)
