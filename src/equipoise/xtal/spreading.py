"""Spreading atoms as Gaussians on a periodic grid, and the band-limited real FFT, with analytic
backwards.

Used by ``FFTStructureFactors`` (``equipoise.xtal.structure_factors``). An isotropic atom with
form-factor Gaussians (a_k, b_k), B and blur B_add has the density (Å^-3)

    rho(p) = occ sum_k a_k (4 pi / T_k)^(3/2) exp(-4 pi^2 |p - x|^2 / T_k),  T_k = b_k + B + B_add

(the Fourier transform of a_k exp(-T_k s^2 / 4); Ten Eyck 1977, Agarwal 1978).

``spread_separable`` is the fast path for grids with orthogonal axes: each Gaussian is a product
of three 1-D factors, so an atom's box is an outer product (one batched matmul). Every atom's box
is one contiguous block of a grid padded on the high side of each axis (size n + L - 1 for boxes
of L nodes), so no index wraps; the padding is folded back periodically afterwards. Atoms come
sorted by box position (neighbouring boxes share cache lines). The backward gathers the
periodically padded gradient map over the same boxes and contracts it with the 1-D factors and
their first and second moments (the adjoint of the forward, recomputed chunk by chunk so memory
stays small). ``spread_blocked`` is the path for grids with oblique axes (monoclinic,
hexagonal, trigonal, triclinic): boxes on the same padded grid, each the outer product of a 1-D
and a 2-D factor where one axis is orthogonal to the others (every node where none is), with a
backward that recomputes each chunk under autograd.
"""

from __future__ import annotations

import math

import numpy as np
import torch

FOUR_PI2 = 4.0 * math.pi ** 2


class BandFFT(torch.autograd.Function):
    """Real 3-D FFT restricted to the band |k_1| <= h_1, 0 <= k_2 <= h_2 (all k_0), where the
    reflections lie (pruned: the last-axis rfft, then the other two axes on the kept band only).

    Output (n0, 2 h_1 + 1, h_2 + 1) complex: column j holds k_1 = j for j <= h_1 and
    k_1 = j - 2 h_1 - 1 (mod n1) above. The backward is the adjoint of the same steps: for real
    x, dL/dx_n = Re sum_band g_k exp(+2 pi i k.n / N), the last step an irfft with the k_2 = 0
    plane doubled, so it costs about one real FFT (torch's default backward of
    rfftn does a complex transform of the whole zero-padded spectrum).
    """

    @staticmethod
    def forward(ctx, rho, h1, h2):  # type: ignore[override]
        n0, n1, n2 = rho.shape
        rows = band_rows(n1, h1, rho.device)
        ctx.meta = (tuple(rho.shape), rows, h2)
        y = torch.fft.rfft(rho, dim=2)[:, :, :h2 + 1]
        y = torch.fft.fft(y, dim=1).index_select(1, rows)
        return torch.fft.fft(y, dim=0)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (n0, n1, n2), rows, h2 = ctx.meta
        # unnormalised inverse transforms (norm="forward"); halving the k_2 > 0 planes is the
        # same as doubling the k_2 = 0 plane and halving the result (the Nyquist plane is
        # outside the band: n2 > 2 h2 + 1)
        g = torch.fft.ifft(grad, dim=0, norm="forward")
        g[:, :, 1:] *= 0.5
        full = torch.zeros(n0, n1, h2 + 1, dtype=g.dtype, device=g.device)
        full.index_copy_(1, rows, g)
        g = torch.fft.ifft(full, dim=1, norm="forward")
        return torch.fft.irfft(g, n=n2, dim=2, norm="forward"), None, None     # zero-pads k_2 > h_2


def band_rows(n1: int, h1: int, device: torch.device) -> torch.Tensor:
    """Indices k_1 (mod n1) kept by ``BandFFT``: 0..h1, then n1-h1..n1-1."""
    return torch.cat([torch.arange(h1 + 1, device=device), torch.arange(n1 - h1, n1, device=device)])


def _axis_factors(x: torch.Tensor, t: torch.Tensor, spacing: float, half: int, n: int):
    """Per-axis data of one chunk: 1-D Gaussians (c, 5, L), node - atom distances (c, 1, L) Å,
    and the first node's grid index in [0, n) (c,). x (c,) Å along this axis, t (c, 5) Å^2."""
    u = x.detach() / spacing
    fl = torch.floor(u)
    j = torch.arange(-half, half + 2, dtype=x.dtype, device=x.device)
    d = ((j[None] - (u - fl)[:, None]) * spacing)[:, None, :]
    e = torch.exp(-FOUR_PI2 * d * d / t[:, :, None])
    start = torch.remainder(fl.to(torch.int64) - half, n)
    return e, d, start


class _Boxes:
    """Padded-grid geometry shared by the forward and backward of ``spread_separable``."""

    def __init__(self, shape: tuple[int, int, int], halves: list[list[int]], device: torch.device) -> None:
        self.shape = shape
        length = [max(h[i] for h in halves) * 2 + 2 for i in range(3)]
        self.padded = tuple(n + lng - 1 for n, lng in zip(shape, length))

    def add(self, padded: torch.Tensor, half: list[int], starts: list[torch.Tensor], box: torch.Tensor) -> None:
        """Add boxes (c, L0, L1, L2) whose first nodes are ``starts`` (3 x (c,)) to ``padded``."""
        if padded.device.type == "cpu":
            # an accumulating index_put_ runs serially on CPU, so overlapping windows are safe
            self.windows(padded, half).index_put_(tuple(starts), box, accumulate=True)
            return
        padded.view(-1).index_add_(0, self.flat_index(half, starts), box.reshape(-1))

    def flat_index(self, half: list[int], starts: list[torch.Tensor]) -> torch.Tensor:
        """(c L0 L1 L2,) flat indices into the padded grid of boxes starting at ``starts``."""
        p1, p2 = self.padded[1], self.padded[2]
        i, j, k = (torch.arange(2 * h + 2, device=starts[0].device) for h in half)
        local = ((i[:, None, None] * p1 + j[None, :, None]) * p2 + k[None, None, :]).reshape(-1)
        base = (starts[0] * p1 + starts[1]) * p2 + starts[2]
        return (base[:, None] + local[None]).reshape(-1)

    def gather(self, padded: torch.Tensor, half: list[int], starts: list[torch.Tensor]) -> torch.Tensor:
        """Boxes (c, L0, L1, L2) of ``padded`` starting at ``starts`` (3 x (c,))."""
        flat = padded.view(-1).index_select(0, self.flat_index(half, starts))
        return flat.reshape(-1, *(2 * h + 2 for h in half))

    def fold(self, padded: torch.Tensor) -> torch.Tensor:
        """(P0, P1, P2) padded grid -> (n0, n1, n2) periodic grid (padding added back, in place)."""
        for axis, n in enumerate(self.shape):
            for off in range(n, padded.shape[axis], n):
                size = min(n, padded.shape[axis] - off)
                padded.narrow(axis, 0, size).add_(padded.narrow(axis, off, size))
        return padded[:self.shape[0], :self.shape[1], :self.shape[2]]

    def unfold(self, grid: torch.Tensor) -> torch.Tensor:
        """(n0, n1, n2) periodic grid -> (P0, P1, P2) padded copy (the adjoint of ``fold``)."""
        out = torch.empty(self.padded, dtype=grid.dtype, device=grid.device)
        n0, n1, n2 = self.shape
        out[:n0, :n1, :n2] = grid
        views = [out[:n0, :n1], out[:n0], out]          # axis 2 on the core rows, then 1, then 0
        for axis, view in zip((2, 1, 0), views):
            n, p = self.shape[axis], self.padded[axis]
            for off in range(n, p, n):
                size = min(n, p - off)
                view.narrow(axis, off, size).copy_(view.narrow(axis, 0, size))
        return out

    def windows(self, padded: torch.Tensor, half: list[int]) -> torch.Tensor:
        """View (P0', P1', P2', L0, L1, L2) of every box of half-widths ``half`` in a padded grid."""
        w = padded
        for axis, h in enumerate(half):
            w = w.unfold(axis, 2 * h + 2, 1)
        return w


class _SpreadSeparable(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xyz, b_iso, occ, a, b, groups, shape, spacing, b_add, chunk):  # type: ignore[override]
        boxes = _Boxes(shape, [h for _, h in groups], xyz.device)
        ctx.save_for_backward(xyz, b_iso, occ, a, b)
        ctx.meta = (groups, boxes, spacing, b_add, chunk)
        padded = torch.zeros(boxes.padded, dtype=xyz.dtype, device=xyz.device)
        for sel, half, sl in _group_chunks(groups, chunk):
            idx = sel[sl]
            t = b[idx] + b_iso[idx, None] + b_add
            p = occ[idx, None] * a[idx] * (4.0 * math.pi / t) ** 1.5
            axes = [_axis_factors(xyz[idx, i], t, spacing[i], half[i], shape[i]) for i in range(3)]
            box = torch.einsum("ct,cti,ctj,ctk->cijk", p, axes[0][0], axes[1][0], axes[2][0])
            boxes.add(padded, half, [ax[2] for ax in axes], box)
        return boxes.fold(padded)

    @staticmethod
    def backward(ctx, grad_grid):  # type: ignore[override]
        xyz, b_iso, occ, a, b = ctx.saved_tensors
        groups, boxes, spacing, b_add, chunk = ctx.meta
        g_pad = boxes.unfold(grad_grid)
        gx, gb, go = torch.zeros_like(xyz), torch.zeros_like(b_iso), torch.zeros_like(occ)
        shape = boxes.shape
        for sel, half, sl in _group_chunks(groups, chunk):
            idx = sel[sl]
            t = b[idx] + b_iso[idx, None] + b_add
            p = a[idx] * (4.0 * math.pi / t) ** 1.5
            (ex, dx, sx), (ey, dy, sy), (ez, dz, sz) = (
                _axis_factors(xyz[idx, i], t, spacing[i], half[i], shape[i]) for i in range(3))
            g = boxes.gather(g_pad, half, [sx, sy, sz])                               # (c, I, J, K)
            c, n_i, n_j, n_k = g.shape
            zv = torch.stack([ez, ez * dz, ez * dz * dz], 2).reshape(c, 15, n_k)      # (c, t v, K)
            # contract K first (the largest step, one batched matmul), then J, then I
            tz = torch.bmm(zv, g.reshape(c, n_i * n_j, n_k).transpose(1, 2))          # (c, t v, I J)
            tz = tz.reshape(c * 15, n_i, n_j)
            yv = torch.stack([ey, ey * dy, ey * dy * dy], 2)                          # (c, t, w, J)
            yv = yv[:, :, None].expand(c, 5, 3, 3, n_j).reshape(c * 15, 3, n_j)
            y = torch.bmm(tz, yv.transpose(1, 2)).reshape(c, 5, 3, n_i, 3)            # (c, t, v, I, w)
            y00, y01, y02 = y[:, :, 0, :, 0], y[:, :, 0, :, 1], y[:, :, 0, :, 2]
            y10, y20 = y[:, :, 1, :, 0], y[:, :, 2, :, 0]
            s0 = (y00 * ex).sum(-1)
            grad_d = torch.stack([(y00 * ex * dx).sum(-1), (y01 * ex).sum(-1), (y10 * ex).sum(-1)], -1)
            r2_term = (y00 * ex * dx * dx).sum(-1) + (y02 * ex).sum(-1) + (y20 * ex).sum(-1)
            o = occ[idx, None]
            go[idx] = (p * s0).sum(-1)
            # d/dx exp(-4 pi^2 d^2 / T) = exp(.) 8 pi^2 d / T (d = node - x);
            # d/dB [(4 pi / T)^1.5 exp(-4 pi^2 r^2 / T)] = (.) (-1.5 / T + 4 pi^2 r^2 / T^2)
            gx[idx] = (o[..., None] * (p * 2.0 * FOUR_PI2 / t)[..., None] * grad_d).sum(1)
            gb[idx] = (o * p * (-1.5 / t * s0 + FOUR_PI2 / t ** 2 * r2_term)).sum(-1)
        return gx, gb, go, None, None, None, None, None, None, None


def _group_chunks(groups, chunk_points: int):
    for sel, half in groups:
        step = max(1, chunk_points // int(np.prod([2 * h + 2 for h in half])))
        for s in range(0, sel.numel(), step):
            yield sel, half, slice(s, min(sel.numel(), s + step))


def spread_separable(xyz: torch.Tensor, b_iso: torch.Tensor, occ: torch.Tensor, a: torch.Tensor,
                     b: torch.Tensor, groups: list[tuple[torch.Tensor, list[int]]], shape: tuple[int, int, int],
                     spacing: list[float], b_add: float, chunk_points: int) -> torch.Tensor:
    """Density (n0, n1, n2) Å^-3 of isotropic atoms on an orthogonal grid, differentiable in xyz
    (n, 3) Å, b_iso (n,) Å^2 and occ (n,). a, b (n, 5): form-factor Gaussians; groups: (atom
    indices, box half-widths in nodes per axis) — boxes span nodes floor(x/h) - half .. + half + 1;
    spacing: grid spacing per axis (Å); chunk_points: box nodes per chunk (memory ~100 B each)."""
    return _SpreadSeparable.apply(xyz, b_iso, occ, a, b, groups, shape, spacing, b_add, chunk_points)


def single_axis(orth_grid: torch.Tensor) -> int | None:
    """The grid axis orthogonal to both others when the other two are oblique to each other
    (monoclinic: b; hexagonal and trigonal: c), else None. orth_grid (3, 3): grid steps (Å) as
    columns."""
    g = orth_grid.T @ orth_grid
    tol = 1e-9 * float(g.abs().max())
    ortho = [all(abs(float(g[i, j])) <= tol for j in range(3) if j != i) for i in range(3)]
    return ortho.index(True) if sum(ortho) == 1 else None


def spread_blocked(xyz: torch.Tensor, b_iso: torch.Tensor, occ: torch.Tensor, a: torch.Tensor,
                   b: torch.Tensor, groups: list[tuple[torch.Tensor, list[int]]], shape: tuple[int, int, int],
                   orth_grid: torch.Tensor, frac: torch.Tensor, axis: int | None, b_add: float,
                   chunk_points: int) -> torch.Tensor:
    """Density (n0, n1, n2) Å^-3 of isotropic atoms on a grid with oblique axes, differentiable
    in xyz (n, 3) Å, b_iso (n,) Å^2 and occ (n,).

    With one axis (``axis``, from ``single_axis``) orthogonal to the two oblique others
    (monoclinic, hexagonal, trigonal) each Gaussian factorises into a 1-D factor along ``axis``
    and a 2-D factor over the other two (|p - x|^2 = G_kk d_k^2 + the quadratic form of the
    oblique pair, G the grid metric), so an atom's box is the outer product of L_k and L_p x L_q
    values; with ``axis`` None (triclinic) every node of the box is evaluated. Boxes are
    contiguous blocks of a padded grid (``_Boxes``, as in ``spread_separable``): no per-node
    index arithmetic, and the box (wider than the spreading sphere) drops nothing inside it. The
    backward recomputes each chunk's boxes under autograd and contracts them with the gathered
    gradient boxes, so memory stays that of one chunk. a, b (n, 5): form-factor Gaussians;
    groups: (atom indices, box half-widths per axis); frac (3, 3) fractionalisation;
    chunk_points: box nodes per chunk.
    """
    return _SpreadBlocked.apply(xyz, b_iso, occ, a, b, groups, shape, orth_grid, frac, axis, b_add, chunk_points)


def _blocked_boxes(xyz, b_iso, occ, a, b, half, shape, orth_grid, frac, axis, b_add):
    """Boxes (c, L0, L1, L2) of one chunk and their first nodes (3 x (c,)) on the periodic grid
    (``axis`` None: every node's squared distance from the full grid metric)."""
    g = orth_grid.T @ orth_grid
    t = b + b_iso[:, None] + b_add                                                     # (c, 5)
    pre = occ[:, None] * a * (4.0 * math.pi / t) ** 1.5
    u = (xyz @ frac.T) * torch.tensor(shape, dtype=xyz.dtype, device=xyz.device)      # grid units
    fl = torch.floor(u.detach())
    d = [torch.arange(2 * half[i] + 2, dtype=xyz.dtype, device=xyz.device)[None]
         - (u[:, i] - fl[:, i] + half[i])[:, None] for i in range(3)]                 # node - atom, grid units
    starts = [torch.remainder(fl[:, i].to(torch.int64) - half[i], shape[i]) for i in range(3)]
    k = -FOUR_PI2 / t
    if axis is None:
        di, dj, dl = d[0][:, :, None, None], d[1][:, None, :, None], d[2][:, None, None, :]
        r2 = (g[0, 0] * di ** 2 + g[1, 1] * dj ** 2 + g[2, 2] * dl ** 2
              + 2.0 * (g[0, 1] * di * dj + g[0, 2] * di * dl + g[1, 2] * dj * dl))     # (c, L0, L1, L2) Å^2
        return torch.einsum("ct,ctijl->cijl", pre, torch.exp(k[:, :, None, None, None] * r2[:, None])), starts
    p, q = [i for i in range(3) if i != axis]
    letters = "ijl"
    formula = f"ct,ct{letters[p]}{letters[q]},ct{letters[axis]}->c{letters}"
    e1 = torch.exp(k[:, :, None] * (g[axis, axis] * d[axis] ** 2)[:, None, :])
    dp, dq = d[p][:, :, None], d[q][:, None, :]
    r2 = g[p, p] * dp ** 2 + 2.0 * g[p, q] * dp * dq + g[q, q] * dq ** 2               # (c, L_p, L_q) Å^2
    e2 = torch.exp(k[:, :, None, None] * r2[:, None])
    return torch.einsum(formula, pre, e2, e1), starts


class _SpreadBlocked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xyz, b_iso, occ, a, b, groups, shape, orth_grid, frac, axis, b_add, chunk):  # type: ignore[override]
        boxes = _Boxes(shape, [h for _, h in groups], xyz.device)
        ctx.save_for_backward(xyz, b_iso, occ, a, b)
        ctx.meta = (groups, boxes, orth_grid, frac, axis, b_add, chunk)
        padded = torch.zeros(boxes.padded, dtype=xyz.dtype, device=xyz.device)
        for sel, half, sl in _group_chunks(groups, chunk):
            idx = sel[sl]
            box, starts = _blocked_boxes(xyz[idx], b_iso[idx], occ[idx], a[idx], b[idx], half, shape,
                                         orth_grid, frac, axis, b_add)
            boxes.add(padded, half, starts, box)
        return boxes.fold(padded)

    @staticmethod
    def backward(ctx, grad_grid):  # type: ignore[override]
        xyz, b_iso, occ, a, b = ctx.saved_tensors
        groups, boxes, orth_grid, frac, axis, b_add, chunk = ctx.meta
        g_pad = boxes.unfold(grad_grid)
        gx, gb, go = torch.zeros_like(xyz), torch.zeros_like(b_iso), torch.zeros_like(occ)
        for sel, half, sl in _group_chunks(groups, chunk):
            idx = sel[sl]
            with torch.enable_grad():
                leaves = [t[idx].detach().requires_grad_(True) for t in (xyz, b_iso, occ)]
                box, starts = _blocked_boxes(*leaves, a[idx], b[idx], half, boxes.shape, orth_grid, frac,
                                             axis, b_add)
                grads = torch.autograd.grad(box, leaves, boxes.windows(g_pad, half)[tuple(starts)])
            gx[idx], gb[idx], go[idx] = grads
        return gx, gb, go, None, None, None, None, None, None, None, None, None
