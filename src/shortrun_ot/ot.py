"""Optimal transport correction of the inferred latents (Sec. 5.2, Alg. 2, Eq. 10-12).

``assign`` maps n source points (the short-run latents) one-to-one onto n target
points (a sample of the prior) with the least total squared distance, Eq. (11).
As sum_i ||x_i - y_s(i)||^2 = sum ||x||^2 + sum ||y||^2 - 2 sum_i <x_i, y_s(i)>,
that is the permutation s with the largest summed inner product. Three stages:

1. Dual descent, Alg. 2. Adam minimises the energy of Eq. (12),
   E(h) = mean_i max_j (<x_i, y_j> + h_j) - mean_j h_j, whose gradient is
   (#J_j - 1) / n with J_j the sources whose argmax is target j. Departures from
   the paper: h starts from the potentials of the OT map between Gaussians
   fitted to the two clouds (not from 0), each fit leaving out far-off points
   (latents of chains that ran off would spoil it: ``_bulk``); beta2 is 0.99
   (the paper's 0.5 is below beta1^2 = 0.81, so m / sqrt(v) grows geometrically
   on every target whose gradient has just become zero and the descent stalls
   with about a third of the targets unmatched); the learning rate decays
   geometrically (a constant one stalls at a few per cent unmatched).
   Stopping rule: ||grad E||_1 <= eps. The L1 norm of the gradient is exactly
   twice the fraction of targets that no source picks, so the rule means "the
   argmax map leaves at most n eps / 2 points unmatched", whatever n is. With the
   paper's eps = 0.05 that is 2.5 %, within its statement that no more than n eps
   samples are removed. The Euclidean norm, also a reading of the paper, is
   smaller by a factor growing like sqrt(n), so a fixed eps would allow ever more
   unmatched points as n grows.

2. Repair (default). The candidate graph holds each source's k best targets by
   <x_i, y_j> + h_j, each target's k best sources by the slack
   <x_i, y_j> + h_j - max_l (<x_i, y_l> + h_l), and one perfect matching (the
   argmax map with its leftovers paired up), so a perfect matching exists. It is
   solved exactly (``scipy.sparse.csgraph.min_weight_full_bipartite_matching``, or
   scipy's dense ``linear_sum_assignment`` for small or low-dimensional problems);
   potentials h that certify it on the graph come from shortest paths; one pass
   over all n^2 pairs in float64 then checks that every source prefers its own
   target under h. Sources that do not get their best targets added and the
   matching is solved again. Once no source objects, the permutation is optimal
   for the full problem. With ``repair=False`` the paper's rule is used instead:
   a target picked by several sources keeps one at random, the others are
   unmatched (-1). On a CPU the repair runs without descent by default
   (max_iter=1): there a descent step costs about as much as a repair round,
   and the repair from the Gaussian start is already exact (n = 10,000, d = 30:
   about 10 s instead of 40 s).

3. Certificate. For any h, n E(h) >= max_s sum_i <x_i, y_s(i)> (weak duality),
   so ``lower_bound = mean ||x||^2 + mean ||y||^2 - 2 E(h)`` never exceeds the
   optimal mean squared distance. It is evaluated in float64 over all pairs, and
   ``gap = cost - lower_bound`` bounds the excess cost of the returned map (zero
   up to rounding when the repair certifies optimality).

The n x n score matrix is never stored: inner products are computed in row blocks
of about 256 MiB. The descent and the candidate search run in float32 (CUDA TF32
switched off: it can flip near-tied argmaxes), the certificate in float64.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import min_weight_full_bipartite_matching
from tqdm import tqdm

_CHUNK_BYTES = 2**28
_EDGE_CHUNK = 2**20
_MAX_REPAIR_ROUNDS = 10
_DENSE_MATCHING_BYTES = 2**31
_FAR_OFF = 4.0


@dataclass
class AssignmentResult:
    """Outcome of ``assign``; ``summary()`` gives its statistics as a JSON-able dict."""

    target_index: torch.Tensor  # (n,) int64: target of each source, -1 if unmatched
    h: torch.Tensor  # (n,) float64 dual potentials, reusable as ``init_h``
    cost: float  # mean squared distance over the matched pairs
    lower_bound: float  # certified lower bound on the optimal mean squared distance
    unmatched_before_repair: int  # sources left unmatched by the argmax map of Alg. 2
    unmatched: int  # sources with target_index == -1 (0 with repair)
    iterations: int  # dual descent iterations (gradient evaluations)
    repair_rounds: int  # exact sparse matchings solved (0 without repair)
    seconds: float

    @property
    def gap(self) -> float:
        """``cost - lower_bound``: the most by which ``cost`` can exceed the optimum."""
        return self.cost - self.lower_bound

    def summary(self) -> dict:
        """All statistics, without the tensors."""
        return {
            "n": len(self.target_index),
            "cost": self.cost,
            "lower_bound": self.lower_bound,
            "gap": self.gap,
            "unmatched_before_repair": self.unmatched_before_repair,
            "unmatched": self.unmatched,
            "iterations": self.iterations,
            "repair_rounds": self.repair_rounds,
            "seconds": self.seconds,
        }


def assign(
    source: torch.Tensor,
    target: torch.Tensor,
    *,
    eps: float = 0.05,
    max_iter: int | None = None,
    lr: tuple[float, float] = (0.3, 1e-3),
    init_h: torch.Tensor | None = None,
    repair: bool = True,
    candidates: int = 8,
    device: torch.device | str | None = None,
    compute_dtype: torch.dtype = torch.float32,
    seed: int | None = None,
    progress: bool = False,
) -> AssignmentResult:
    """One-to-one map from ``source`` (n, d) to ``target`` (n, d) minimising Eq. (11).

    eps: stopping threshold on ||grad E||_1 (Alg. 2, line 8).
    max_iter: cap on descent iterations. None means 100, except with repair on a
        CPU, where a descent step costs as much as a repair round and the repair
        alone is several times faster: there it means 1 (no step).
    lr: first and last Adam learning rates of a geometric schedule over
        ``max_iter`` steps, in units of sqrt(mean ||x||^2 mean ||y||^2) / d
        over the clouds without their far-off points (1 for standard normal points).
    init_h: starting potentials, e.g. ``h`` of the previous correction; by
        default those of the Gaussian OT map between the two clouds.
    repair: make the result a full, certified permutation (see the module
        docstring); False keeps the paper's drop-the-leftovers map.
    candidates: k of the repair's candidate graph.
    device: where to compute (default: the inputs' device); results live there.
    compute_dtype: precision of the descent and candidate search.
    seed: random choice among duplicates when ``repair=False`` (None: torch's
        global generator).
    progress: show a progress bar and the repair rounds.
    """
    started = time.perf_counter()
    _check_points(source, target)
    n = source.shape[0]
    device = source.device if device is None else torch.device(device)
    if max_iter is None:
        max_iter = 1 if repair and device.type == "cpu" else 100
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")
    if not (len(lr) == 2 and lr[0] > 0 and lr[1] > 0):
        raise ValueError(f"lr must be two positive learning rates, got {lr}")
    if candidates < 1:
        raise ValueError(f"candidates must be at least 1, got {candidates}")
    if compute_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"compute_dtype must be torch.float32 or torch.float64, got {compute_dtype}")
    if init_h is not None and not (
        isinstance(init_h, torch.Tensor) and init_h.shape == (n,) and torch.isfinite(init_h).all()
    ):
        raise ValueError(f"init_h must be a finite tensor of shape ({n},)")

    x64, y64 = source.to(device, torch.float64), target.to(device, torch.float64)
    x, y = x64.to(compute_dtype), y64.to(compute_dtype)
    x_bulk, y_bulk = _bulk(x64), _bulk(y64)
    h = _gaussian_potentials(x_bulk, y_bulk, y64) if init_h is None else init_h.to(device, torch.float64)
    with _ieee_float32():
        lr_unit = math.sqrt(x_bulk.square().sum(1).mean() * y_bulk.square().sum(1).mean()) / x.shape[1]
        h, choice, iterations = _dual_descent(x, y, h.to(compute_dtype), eps, max_iter, lr, lr_unit, progress)
        unmatched_before_repair = n - len(torch.unique(choice))
        if repair:
            target_index, h64, energy, rounds = _repair(x64, y64, x, y, h, choice, candidates, progress)
        else:
            target_index, h64, rounds = _drop_duplicates(choice, seed), h.double(), 0
            energy = _dual_energy(x64, y64, h64)

    matched = target_index >= 0
    squared = (x64[matched] - y64[target_index[matched]]).square().sum(1)
    return AssignmentResult(
        target_index=target_index,
        h=h64,
        cost=float(squared.mean()) if len(squared) else 0.0,
        lower_bound=float(x64.square().sum(1).mean() + y64.square().sum(1).mean() - 2 * energy),
        unmatched_before_repair=unmatched_before_repair,
        unmatched=int((~matched).sum()),
        iterations=iterations,
        repair_rounds=rounds,
        seconds=time.perf_counter() - started,
    )


def transport_correction(
    latents: torch.Tensor, prior_sample: torch.Tensor, alpha: float, **assign_kwargs
) -> tuple[torch.Tensor, AssignmentResult]:
    """Eq. (10): z_i <- alpha z_T(i) + (1 - alpha) z_i, with T from ``assign``.

    Unmatched latents (only with ``repair=False``) are left as they are. The
    endpoints are exact: alpha = 0 returns the latents bit for bit (the ABP
    baseline), alpha = 1 returns the matched prior points.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    result = assign(latents, prior_sample, **assign_kwargs)
    corrected = latents.clone()
    matched = (result.target_index >= 0).to(latents.device)
    moved = prior_sample[result.target_index.to(prior_sample.device)[matched]]
    if alpha == 1:
        corrected[matched] = moved
    elif alpha > 0:
        corrected[matched] = alpha * moved + (1 - alpha) * latents[matched]
    return corrected, result


def _check_points(source: torch.Tensor, target: torch.Tensor) -> None:
    for name, points in (("source", source), ("target", target)):
        if not isinstance(points, torch.Tensor) or points.ndim != 2 or not points.is_floating_point():
            raise ValueError(f"{name} must be a 2-D floating-point tensor")
    if source.shape != target.shape:
        raise ValueError(f"source and target shapes differ: {tuple(source.shape)} vs {tuple(target.shape)}")
    if source.shape[0] == 0 or source.shape[1] == 0:
        raise ValueError(f"need at least one point of dimension >= 1, got shape {tuple(source.shape)}")
    if source.dtype != target.dtype:
        raise ValueError(f"source and target dtypes differ: {source.dtype} vs {target.dtype}")
    if source.device != target.device:
        raise ValueError(f"source and target devices differ: {source.device} vs {target.device}")
    if not (torch.isfinite(source).all() and torch.isfinite(target).all()):
        raise ValueError("source and target must not contain NaN or Inf")


@contextlib.contextmanager
def _ieee_float32():
    """Keep CUDA float32 matmuls in full precision: TF32 can flip near-tied argmaxes."""
    matmul = torch.backends.cuda.matmul
    saved = matmul.fp32_precision
    matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        matmul.fp32_precision = saved


def _row_chunks(n_rows: int, n_cols: int, dtype: torch.dtype):
    """Row slices whose n_rows x n_cols score block takes about ``_CHUNK_BYTES``."""
    step = max(1, _CHUNK_BYTES // (n_cols * dtype.itemsize))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def _bulk(points: torch.Tensor) -> torch.Tensor:
    """The points within ``_FAR_OFF`` median distances of the coordinate-wise median: all of a Gaussian
    sample (of 60,000 points the farthest lies about 3.8 median distances out in 2 dimensions, 1.6 in 30),
    not the latents of chains that ran off (||z|| of about 100 where the others have about 5)."""
    distance = (points - points.median(0).values).norm(dim=1)
    return points[distance <= _FAR_OFF * distance.median()]


def _gaussian_potentials(x64: torch.Tensor, y64: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Starting h of the ``targets``: the dual potentials of the OT map between Gaussians fitted to x and y
    (the bulks of the two clouds: a few far-off points would inflate the covariance, the map would
    crowd the other points onto a few targets, and the repair would take many rounds of large matchings).

    That map is affine, T(x) = A x + b with A symmetric positive definite, and
    h_j = -(y_j - b)^T A^-1 (y_j - b) / 2 makes argmax_j <x, y_j> + h_j the y_j
    nearest to T(x) in the A^-1 metric. A small ridge keeps A invertible.
    """
    d = x64.shape[1]
    identity = torch.eye(d, dtype=torch.float64, device=x64.device)

    def covariance(points):
        centred = points - points.mean(0)
        cov = centred.T @ centred / len(points)
        return cov + (1e-6 * cov.trace() / d + 1e-12) * identity

    def matrix_power(matrix, power):
        values, vectors = torch.linalg.eigh(matrix)
        return (vectors * values.clamp_min(1e-12) ** power) @ vectors.T

    root_x = matrix_power(covariance(x64), 0.5)
    a_inverse = root_x @ matrix_power(root_x @ covariance(y64) @ root_x, -0.5) @ root_x
    b = y64.mean(0) - torch.linalg.solve(a_inverse, x64.mean(0))
    centred = targets - b
    return -0.5 * ((centred @ a_inverse) * centred).sum(1)


def _dual_descent(x, y, h, eps, max_iter, lr, lr_unit, progress):
    """Alg. 2: Adam on E(h) of Eq. (12) until ||grad E||_1 <= eps or ``max_iter``
    gradient evaluations (beta2 = 0.99, see the module docstring).

    Returns the final h, each source's argmax target under it (the map of Alg. 2)
    and the number of gradient evaluations.
    """
    n = x.shape[0]
    beta1, beta2, adam_eps = 0.9, 0.99, 1e-8
    h = h.clone()
    first_moment = torch.zeros_like(h)
    second_moment = torch.zeros_like(h)
    choice = torch.empty(n, dtype=torch.long, device=x.device)
    bar = tqdm(total=max_iter, desc="OT dual descent", disable=not progress)
    for iteration in range(1, max_iter + 1):
        for rows in _row_chunks(n, n, x.dtype):
            choice[rows] = torch.addmm(h, x[rows], y.T).argmax(1)
        grad = (torch.bincount(choice, minlength=n).to(h.dtype) - 1) / n  # mean zero already
        grad_l1 = float(grad.abs().sum())
        bar.update()
        bar.set_postfix(unmatched=f"{grad_l1 / 2:.4f}")
        if grad_l1 <= eps or iteration == max_iter:
            break
        first_moment.mul_(beta1).add_(grad, alpha=1 - beta1)
        second_moment.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = lr_unit * lr[0] * (lr[1] / lr[0]) ** ((iteration - 1) / max(max_iter - 2, 1))
        corrected_first = first_moment / (1 - beta1**iteration)
        corrected_second = second_moment / (1 - beta2**iteration)
        h -= step_size * corrected_first / (corrected_second.sqrt() + adam_eps)
    bar.close()
    return h, choice, iteration


def _drop_duplicates(choice: torch.Tensor, seed: int | None) -> torch.Tensor:
    """The paper's map (Sec. 5.2): each picked target keeps one random source, the rest get -1."""
    n = len(choice)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    priority = torch.randperm(n, generator=generator).to(choice.device)
    winner = torch.full((n,), n, dtype=torch.long, device=choice.device)
    winner.scatter_reduce_(0, choice, priority, reduce="amin")
    return torch.where(priority == winner[choice], choice, -1)


def _complete(partial: torch.Tensor) -> torch.Tensor:
    """A permutation extending a partial one-to-one map (-1 = unmatched): the
    leftover sources and targets are paired in index order."""
    taken = torch.zeros(len(partial), dtype=torch.bool, device=partial.device)
    taken[partial[partial >= 0]] = True
    completed = partial.clone()
    completed[partial < 0] = (~taken).nonzero().squeeze(1)
    return completed


def _candidate_edges(x, y, h, k):
    """Each source's k best targets by <x_i, y_j> + h_j and each target's k best
    sources by the slack <x_i, y_j> + h_j - max_l (<x_i, y_l> + h_l)."""
    n = x.shape[0]
    best_targets = torch.empty(n, k, dtype=torch.long, device=x.device)
    best_score = torch.empty(n, dtype=x.dtype, device=x.device)
    for rows in _row_chunks(n, n, x.dtype):
        top = torch.addmm(h, x[rows], y.T).topk(k, dim=1)
        best_targets[rows], best_score[rows] = top.indices, top.values[:, 0]
    best_sources = torch.empty(n, k, dtype=torch.long, device=x.device)
    for cols in _row_chunks(n, n, x.dtype):
        best_sources[cols] = torch.addmm(-best_score, y[cols], x.T).topk(k, dim=1).indices
    every = torch.arange(n, device=x.device).repeat_interleave(k)
    return torch.cat([every, best_sources.flatten()]), torch.cat([best_targets.flatten(), every])


def _repair(x64, y64, x, y, h, choice, k, progress):
    """Exact matching on a sparse candidate graph, grown until it is certified optimal.

    The graph starts with the candidate edges and one perfect matching (the map
    of Alg. 2 with its leftovers paired up), so a full matching always exists.
    Returns the permutation, the float64 potentials with the lowest energy, that
    energy E(h) (Eq. 12) and the number of sparse matchings solved.
    """
    n = x.shape[0]
    k = min(k, n)
    sources, targets = _candidate_edges(x, y, h, k)
    sources = torch.cat([sources, torch.arange(n, device=x.device)])
    targets = torch.cat([targets, _complete(_drop_duplicates(choice, seed=0))])
    h64 = h.double().cpu().numpy()
    best_h, best_energy = None, math.inf
    for rounds in range(1, _MAX_REPAIR_ROUNDS + 1):
        edge_key = torch.unique(sources * n + targets).cpu().numpy()
        rows, cols = edge_key // n, edge_key % n
        scores = _edge_scores(x64, y64, rows, cols)
        permutation = _sparse_matching(n, rows, cols, scores, h64, _use_dense(n, x.shape[1]))
        h64 = _feasible_potentials(rows, cols, scores, permutation, h64)
        permutation = torch.from_numpy(permutation).to(x64.device)
        h_device = torch.from_numpy(h64).to(x64.device)
        energy, better_rows, better_targets = _certify(x64, y64, h_device, permutation, k)
        if energy < best_energy:
            best_h, best_energy = h64, energy
        if progress:
            tqdm.write(f"OT repair round {rounds}: {len(rows)} edges, {len(better_rows) // k} sources object")
        if len(better_rows) == 0:
            break
        sources = torch.cat([torch.from_numpy(rows).to(x.device), better_rows.to(x.device)])
        targets = torch.cat([torch.from_numpy(cols).to(x.device), better_targets.to(x.device)])
    return permutation, torch.from_numpy(best_h).to(x64.device), best_energy, rounds


def _edge_scores(x64, y64, rows, cols):
    """<x_i, y_j> in float64 for the listed edges (numpy in, numpy out)."""
    scores = np.empty(len(rows))
    for start in range(0, len(rows), _EDGE_CHUNK):
        i = torch.from_numpy(rows[start : start + _EDGE_CHUNK]).to(x64.device)
        j = torch.from_numpy(cols[start : start + _EDGE_CHUNK]).to(x64.device)
        scores[start : start + len(i)] = (x64[i] * y64[j]).sum(1).cpu().numpy()
    return scores


def _use_dense(n: int, d: int) -> bool:
    """Dense matching for small problems (n <= 2,048: under a second) and for latents of at most
    3 dimensions (nearly tied scores), where an n x n float64 matrix fits in 2 GiB."""
    return n * n * 8 <= _DENSE_MATCHING_BYTES and (n <= 2048 or d <= 3)


def _sparse_matching(n, rows, cols, scores, h, dense: bool):
    """Maximum-score perfect matching on the candidate edges (exact): sparse LAPJVsp, or
    with ``dense`` scipy's ``linear_sum_assignment`` with the other pairs forbidden.
    LAPJVsp hung on the 900 2-D latents of a Fig. 3 run (scipy has known infinite loops
    with float weights, gh-17269); the dense solver is slower (n = 5,000, d = 30: 12 s
    against 2 s) and is used where that run's conditions hold (``_use_dense``).

    The solver sees the reduced costs max_l (s_il + h_l) - (s_ij + h_j): the same
    optimum, since every perfect matching shifts by the same constant, but with
    good potentials h its greedy start is nearly optimal and it finishes several
    times sooner.
    """
    shifted = scores + h[cols]
    row_best = np.full(n, -np.inf)
    np.maximum.at(row_best, rows, shifted)
    weights = row_best[rows] - shifted + 1.0  # positive: scipy drops explicit zeros
    if dense:
        dense = np.full((n, n), np.inf)
        dense[rows, cols] = weights
        _, permutation = linear_sum_assignment(dense)
        return permutation.astype(np.int64)
    graph = scipy.sparse.csr_array((weights, (rows, cols)), shape=(n, n))
    _, permutation = min_weight_full_bipartite_matching(graph)
    return permutation.astype(np.int64)


def _feasible_potentials(rows, cols, scores, permutation, h):
    """Potentials h under which each source's matched target is its best candidate.

    Complementary slackness for the matching s asks, for every edge (i, j),
    <x_i, y_j> + h_j <= <x_i, y_s(i)> + h_s(i): a shortest-path condition on the
    arcs s(i) -> j of length <x_i, y_s(i)> - <x_i, y_j>. Label correcting from the
    given h (Bellman-Ford, relaxing only the arcs out of targets lowered in the
    previous sweep) ends because an optimal matching leaves no negative cycle.
    The result is the largest feasible h below the given one.
    """
    n = len(permutation)
    on_matching = cols == permutation[rows]
    own_score = np.empty(n)
    own_score[rows[on_matching]] = scores[on_matching]
    off = ~on_matching
    tail, head = permutation[rows[off]], cols[off]
    length = own_score[rows[off]] - scores[off]
    order = np.argsort(tail, kind="stable")
    tail, head, length = tail[order], head[order], length[order]
    first_arc = np.searchsorted(tail, np.arange(n + 1))
    tolerance = 1e-12 * float(np.abs(scores).max())
    h = h.copy()
    lowered = np.arange(n)
    for _ in range(n):
        counts = first_arc[lowered + 1] - first_arc[lowered]
        arcs = np.repeat(first_arc[lowered] - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        relaxed = np.full(n, np.inf)
        np.minimum.at(relaxed, head[arcs], h[tail[arcs]] + length[arcs])
        lowered = np.flatnonzero(relaxed < h - tolerance)
        if len(lowered) == 0:
            break
        h[lowered] = relaxed[lowered]
    return h


def _dual_energy(x64, y64, h64):
    """E(h) of Eq. (12) in float64 over all n^2 pairs."""
    n = x64.shape[0]
    best_total = 0.0
    for rows in _row_chunks(n, n, torch.float64):
        best_total += float(torch.addmm(h64, x64[rows], y64.T).max(1).values.sum())
    return best_total / n - float(h64.mean())


def _certify(x64, y64, h64, permutation, k):
    """E(h) of Eq. (12) in float64 over all n^2 pairs, and the sources whose
    matched target is not their best under h (beyond rounding), each listed with
    its k best targets. No such source means the permutation is optimal."""
    n = x64.shape[0]
    best_total = 0.0
    better_rows, better_targets = [], []
    tolerance = 1e-9 * float(x64.abs().max() * y64.abs().max() * x64.shape[1])
    for rows in _row_chunks(n, n, torch.float64):
        scores = torch.addmm(h64, x64[rows], y64.T)
        best = scores.max(1).values
        best_total += float(best.sum())
        own = scores.gather(1, permutation[rows, None]).squeeze(1)
        violated = (best - own > tolerance).nonzero().squeeze(1)
        better_rows.append((violated + rows.start).repeat_interleave(k))
        better_targets.append(scores[violated].topk(k, dim=1).indices.flatten())
    energy = best_total / n - float(h64.mean())
    return energy, torch.cat(better_rows), torch.cat(better_targets)
