"""A compiled sweep of Gibbs sampling for a Bayesian FM (libFM's MCMC; Freudenthaler, Schmidt-
Thieme and Rendle, "Bayesian Factorization Machines", 2011), or, drawing nothing, of
alternating least squares (libFM's and fastFM's ALS; Rendle et al., "Fast Context-aware
Recommendations with Factorization Machines", 2011).

The model: y = y_hat(x) + noise of precision ``alpha``; every linear weight is drawn from
N(mu_w, 1/lambda_w) and every factor coordinate f from N(mu_v[f], 1/lambda_v[f]); those
hyperparameters and ``alpha`` have libFM's Gamma and normal hyperpriors (alpha_0 = beta_0 =
gamma_0 = 1, mu_0 = 0), so nothing is tuned: no learning rate, no regularization. A classifier
is a probit model: each row's latent target z ~ N(y_hat, 1), truncated to z > 0 for label 1 and
z < 0 for label 0, is drawn first and then regressed on with ``alpha`` = 1.

One sweep draws, in turn, the bias, each linear weight, each factor coordinate (a factor column
at a time), then the hyperparameters, each from its conditional given all the others: for a
parameter theta whose derivative in row n is h_n,

    sigma^2 = 1 / (alpha * sum h_n^2 + lambda_theta)
    mean    = sigma^2 * (alpha * sum h_n * (e_n + theta * h_n) + mu_theta * lambda_theta)

with e_n = target_n - y_hat_n, kept up to date after every draw (as are the factor column's
row sums q_n = sum_i v_if x_ni). A feature's draw reads its column of the data: the sweep takes
the training rows in both CSR and CSC layout, in memory (as libFM and myFM do).

Random numbers come from numba's generator, seeded at the start of each sweep: a sweep repeats
for the same seed and state (a resumed run draws what one run draws).

ALS (``sample`` false) takes each parameter's conditional mean instead of a draw, with
``alpha`` = 1, prior means 0 and fixed precisions (the L2 weights of the objective
sum_n (y_n - y_hat_n)^2 + lambda_0 w0^2 + lambda_w |w|^2 + lambda_v |V|^2): each update
minimizes that objective in its coordinate. A classifier's target is then the latent z's
expectation given its label (the EM step of libFM's ALS for probit), and no hyperparameter is
drawn.
"""

from __future__ import annotations

import math

import numpy as np

from fmkit.compile_cache import kernel

ALPHA_0 = BETA_0 = GAMMA_0 = 1.0  # libFM's hyperprior settings
MU_0 = 0.0
LAMBDA_BIAS = 0.0  # the bias's prior precision: flat, as libFM's w0
# positions in the hyperparameter array: alpha, lambda_w, mu_w, then lambda_v[k], mu_v[k]
ALPHA, LAMBDA_W, MU_W, FACTORS = 0, 1, 2, 3


@kernel(nogil=True)
def standard_normal_above(a):
    """A draw of N(0, 1) truncated to values above ``a`` (Robert 1995: plain rejection where
    that accepts at least half the draws, an exponential proposal in the tail)."""
    if a <= 0.0:
        while True:
            z = np.random.normal()
            if z > a:
                return z
    rate = 0.5 * (a + math.sqrt(a * a + 4.0))
    while True:
        z = a + np.random.exponential(1.0 / rate)
        if np.random.random() <= math.exp(-0.5 * (z - rate) * (z - rate)):
            return z


@kernel(nogil=True)
def gamma(shape, rate):
    """A Gamma(``shape`` >= 1, ``rate``) draw by Marsaglia and Tsang's method (2000), from
    standard normal and uniform draws only, whose stream numba and NumPy's ``RandomState``
    share for a seed: the tests replay a sweep in plain Python (numba's own gamma is another
    algorithm)."""
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        x = np.random.normal()
        v = 1.0 + c * x
        if v <= 0.0:
            continue
        v = v * v * v
        u = np.random.random()
        if u < 1.0 - 0.0331 * x ** 4 or math.log(u) < 0.5 * x * x + d * (1.0 - v + math.log(v)):
            return d * v / rate


@kernel(nogil=True)
def predict_rows(indptr, indices, values, w0, w, V, out):
    """y_hat of every row into ``out`` (float64)."""
    k = V.shape[1]
    sums = np.zeros(k)
    for n in range(indptr.size - 1):
        linear, squares = w0, 0.0
        sums[:] = 0.0
        for p in range(indptr[n], indptr[n + 1]):
            i, x = indices[p], values[p]
            linear += w[i] * x
            for f in range(k):
                t = V[i, f] * x
                sums[f] += t
                squares += t * t
        pair = 0.0
        for f in range(k):
            pair += sums[f] * sums[f]
        out[n] = linear + 0.5 * (pair - squares)


@kernel(nogil=True)
def _draw(sum_hh, sum_h_target, prior_mean, prior_precision, alpha, sample=True):
    """The conditional draw of one parameter from its sums (see the module's docstring); its
    mean when not ``sample`` (ALS). With no rows and no prior (a feature training never sees,
    ALS without its L2 weight) nothing constrains it: the prior's mean."""
    precision = alpha * sum_hh + prior_precision
    if precision <= 0.0:
        return prior_mean
    variance = 1.0 / precision
    mean = variance * (alpha * sum_h_target + prior_mean * prior_precision)
    return mean + math.sqrt(variance) * np.random.normal() if sample else mean


@kernel(nogil=True)
def mills_ratio(a):
    """phi(a) / (1 - Phi(a)): how far above ``a`` a standard normal truncated to values above
    ``a`` lies on average, beyond a (its asymptotic series far in the tail, where both
    underflow)."""
    if a > 25.0:
        return a + 1.0 / a - 2.0 / (a * a * a)
    return math.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi) / (0.5 * math.erfc(a / math.sqrt(2.0)))


@kernel(nogil=True)
def _draw_prior(values, mu_prior):
    """lambda then mu of a group of parameters ``values`` (libFM's Normal-Gamma draw)."""
    count = values.size
    mean = mu_prior
    spread = 0.0
    for j in range(count):
        spread += (values[j] - mean) * (values[j] - mean)
    precision = gamma(0.5 * (ALPHA_0 + count + 1),
                       0.5 * (BETA_0 + spread + GAMMA_0 * (mean - MU_0) ** 2))
    total = 0.0
    for j in range(count):
        total += values[j]
    mu = (total + GAMMA_0 * MU_0) / (count + GAMMA_0)
    mu += math.sqrt(1.0 / ((count + GAMMA_0) * precision)) * np.random.normal()
    return precision, mu


@kernel(nogil=True)
def sweep(indptr, indices, values, colptr, rows, column_values, labels, classifier,
          w0, w, V, hyper, seed, e, q, sample=True, bias_precision=LAMBDA_BIAS):
    """One sweep (module docstring) over the rows (CSR: ``indptr``, ``indices``, ``values``;
    the same in CSC: ``colptr``, ``rows``, ``column_values``) with targets ``labels``; updates
    ``w0`` (shape 1), ``w``, ``V`` and ``hyper`` in place (all float64). ``e`` and ``q`` are
    scratch of one float64 per row. ``sample``: Gibbs sampling, else ALS with the precisions
    ``hyper`` holds and the bias's ``bias_precision``. Returns the sum of squared residuals of
    the targets before the sweep (regressor), or of the rows' probit log loss (classifier)."""
    np.random.seed(seed)
    n_rows, d, k = indptr.size - 1, w.size, V.shape[1]
    predict_rows(indptr, indices, values, w0[0], w, V, e)  # e holds y_hat here
    loss = 0.0
    for n in range(n_rows):
        y_hat = e[n]
        if classifier:
            p = 0.5 * math.erfc(-y_hat / math.sqrt(2.0))  # Phi(y_hat)
            p = min(max(p, 1e-15), 1.0 - 1e-15)
            loss -= math.log(p) if labels[n] > 0.5 else math.log(1.0 - p)
            if not sample:  # E[z | label] for z ~ N(y_hat, 1)
                target = (y_hat + mills_ratio(-y_hat) if labels[n] > 0.5
                          else y_hat - mills_ratio(y_hat))
            elif labels[n] > 0.5:
                target = y_hat + standard_normal_above(-y_hat)
            else:
                target = y_hat - standard_normal_above(y_hat)
        else:
            target = labels[n]
            loss += (target - y_hat) * (target - y_hat)
        e[n] = target - y_hat
    alpha = 1.0
    if sample and not classifier:
        squares = 0.0
        for n in range(n_rows):
            squares += e[n] * e[n]
        alpha = gamma(0.5 * (ALPHA_0 + n_rows), 0.5 * (BETA_0 + squares))
        hyper[ALPHA] = alpha

    # the bias: h = 1 in every row
    total = 0.0
    for n in range(n_rows):
        total += e[n] + w0[0]
    old = w0[0]
    w0[0] = _draw(float(n_rows), total, 0.0, bias_precision, alpha, sample)
    for n in range(n_rows):
        e[n] -= w0[0] - old

    # the linear weights: h = x_ni
    for i in range(d):
        old = w[i]
        sum_hh, sum_ht = 0.0, 0.0
        for p in range(colptr[i], colptr[i + 1]):
            x = column_values[p]
            sum_hh += x * x
            sum_ht += x * (e[rows[p]] + old * x)
        w[i] = _draw(sum_hh, sum_ht, hyper[MU_W], hyper[LAMBDA_W], alpha, sample)
        change = w[i] - old
        for p in range(colptr[i], colptr[i + 1]):
            e[rows[p]] -= change * column_values[p]

    # the factors, a column f at a time: h = x_ni * (q_nf - v_if * x_ni)
    for f in range(k):
        for n in range(n_rows):
            total = 0.0
            for p in range(indptr[n], indptr[n + 1]):
                total += V[indices[p], f] * values[p]
            q[n] = total
        lam, mu = hyper[FACTORS + f], hyper[FACTORS + k + f]
        for i in range(d):
            old = V[i, f]
            sum_hh, sum_ht = 0.0, 0.0
            for p in range(colptr[i], colptr[i + 1]):
                n, x = rows[p], column_values[p]
                h = x * (q[n] - old * x)
                sum_hh += h * h
                sum_ht += h * (e[n] + old * h)
            V[i, f] = _draw(sum_hh, sum_ht, mu, lam, alpha, sample)
            change = V[i, f] - old
            if change != 0.0:
                for p in range(colptr[i], colptr[i + 1]):
                    n, x = rows[p], column_values[p]
                    e[n] -= change * x * (q[n] - old * x)
                    q[n] += change * x

    if not sample:
        return loss
    # the hyperparameters of the weights' priors
    hyper[LAMBDA_W], hyper[MU_W] = _draw_prior(w, hyper[MU_W])
    for f in range(k):
        hyper[FACTORS + f], hyper[FACTORS + k + f] = _draw_prior(V[:, f].copy(),
                                                                 hyper[FACTORS + k + f])
    return loss
