# ruff: noqa: B023  (closures are timed immediately inside each loop iteration)
"""Speed / accuracy of orthokit's linalg primitives against anchors measured in the same run.

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/linalg_primitives.py [--quick] [--out DIR]

Writes ``linalg_primitives{,_quick}.md`` and ``.json`` (atomically) into ``--out`` (default
``./orthokit_results``; the committed results: ``--out benchmarks/results``) and prints the paths. Every row quotes a ratio to an anchor timed in the same process, so numbers from a
loaded machine remain comparable. Anchors: a precomputed dense ``x @ H`` (Hadamard), forming the
HRA matrix and multiplying (Householder), ``torch.linalg.svd`` and ``torch.svd_lowrank`` (rSVD),
``scipy.linalg.logm`` / ``scipy.linalg.orthogonal_procrustes`` (SO(n) log, Procrustes), the dense
GPM projector ``x @ (I − BBᵀ)`` (Subspace), ``torch.linalg.matrix_exp`` (accuracy of expm_skew).
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

import torch

from orthokit.bench.report import (
    add_out_argument,
    announce,
    atomic_write_json,
    atomic_write_text,
    machine_info,
    machine_line,
    md_table,
    result_stem,
    results_dir,
    time_call,
)
from orthokit.linalg import (
    Subspace,
    expm_skew,
    hadamard_transform,
    householder_product,
    logm_orthogonal,
    procrustes,
    randomized_svd,
)
from orthokit.linalg.hadamard import hadamard_matrix
from orthokit.linalg.householder import householder_apply

D = torch.float64


def bench_hadamard(quick: bool) -> list[list[Any]]:
    rows = []
    sizes = (
        [(128, 8192), (1024, 1024), (4096, 256)]
        if quick
        else [(64, 16384), (128, 8192), (512, 2048), (1024, 1024), (2048, 512), (4096, 256)]
    )
    for d, b in sizes:
        x = torch.randn(b, d)
        H = hadamard_matrix(d)
        t_anchor = time_call(lambda: x @ H, repeats=5)
        t_fwht = time_call(lambda: hadamard_transform(x, method="fwht"), repeats=5)
        t_dense = time_call(lambda: hadamard_transform(x, method="dense"), repeats=5)
        t_auto = time_call(lambda: hadamard_transform(x), repeats=5)
        err = float(
            (hadamard_transform(x, method="fwht").double() - x.double() @ hadamard_matrix(d, dtype=D))
            .abs()
            .max()
        )
        rows.append(
            [
                d,
                b,
                f"{1e3 * t_anchor:.2f}",
                f"{1e3 * t_fwht:.2f} ({t_fwht / t_anchor:.2f}×)",
                f"{1e3 * t_dense:.2f} ({t_dense / t_anchor:.2f}×)",
                f"{1e3 * t_auto:.2f} ({t_auto / t_anchor:.2f}×)",
                f"{err:.1e}",
            ]
        )
    return rows


def bench_householder(quick: bool) -> list[list[Any]]:
    rows = []
    cfgs = [(1024, 8, 512), (1024, 64, 512)] if quick else [(1024, 8, 512), (1024, 64, 512), (4096, 8, 256)]
    for n, r, m in cfgs:
        V = torch.randn(r, n)
        X = torch.randn(m, n)

        def naive() -> torch.Tensor:  # HRA-style: build W·H_1⋯H_r with r rank-1 updates, then multiply
            H = torch.eye(n)
            for v in V:
                u = v / v.norm()
                H = H - 2 * torch.outer(H @ u, u)
            return X @ H

        t_naive = time_call(naive, repeats=3)
        t_prod = time_call(lambda: X @ householder_product(V), repeats=3)
        t_apply = time_call(lambda: householder_apply(V, X), repeats=5)
        ref = X.double() @ householder_product(V.double())
        err = float((householder_apply(V, X).double() - ref).abs().max())
        rows.append(
            [
                n,
                r,
                m,
                f"{1e3 * t_naive:.2f}",
                f"{1e3 * t_prod:.2f} ({t_prod / t_naive:.2f}×)",
                f"{1e3 * t_apply:.2f} ({t_apply / t_naive:.3f}×)",
                f"{err:.1e}",
            ]
        )
    return rows


def _decaying(m: int, n: int, decay: float) -> torch.Tensor:
    k = min(m, n)
    U = torch.linalg.qr(torch.randn(m, k)).Q
    V = torch.linalg.qr(torch.randn(n, k)).Q
    return (U * decay ** torch.arange(k, dtype=torch.float32)) @ V.T


def bench_rsvd(quick: bool) -> list[list[Any]]:
    rows = []
    m, n = (1024, 512) if quick else (2048, 1024)
    for decay, rank in [(0.9, 32), (0.99, 32)]:
        A = _decaying(m, n, decay)
        s = torch.linalg.svdvals(A.double())
        best = float(s[rank:].square().sum().sqrt())
        t_svd = time_call(lambda: torch.linalg.svd(A, full_matrices=False), repeats=3)

        def err(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor) -> float:
            return float(torch.linalg.norm(A.double() - (U * S).double() @ Vh.double())) / best

        g = torch.Generator().manual_seed(0)
        t_rs = time_call(lambda: randomized_svd(A, rank, generator=g), repeats=3)
        e_rs = err(*randomized_svd(A, rank, generator=torch.Generator().manual_seed(0)))
        torch.manual_seed(0)
        t_lr = time_call(lambda: torch.svd_lowrank(A, q=rank + 10, niter=2), repeats=3)
        torch.manual_seed(0)
        U, S, V = torch.svd_lowrank(A, q=rank + 10, niter=2)
        e_lr = err(U[:, :rank], S[:rank], V[:, :rank].T)
        rows.append(
            [
                f"{m}×{n}",
                decay,
                rank,
                f"{1e3 * t_svd:.1f}",
                f"{1e3 * t_rs:.1f} ({t_rs / t_svd:.3f}×)",
                f"{e_rs:.4f}",
                f"{1e3 * t_lr:.1f} ({t_lr / t_svd:.3f}×)",
                f"{e_lr:.4f}",
            ]
        )
    return rows


def _rotation(n: int, angles: list[float]) -> torch.Tensor:
    M = torch.zeros(n, n, dtype=D)
    for j, t in enumerate(angles):
        M[2 * j, 2 * j + 1], M[2 * j + 1, 2 * j] = -t, t
    P = torch.linalg.qr(torch.randn(n, n, dtype=D)).Q
    return expm_skew(P @ M @ P.T)


def bench_logm(quick: bool) -> list[list[Any]]:
    import scipy.linalg

    rows = []
    for n in [64, 256] if quick else [64, 256, 512]:
        for label, angles in [
            ("random", (torch.rand(n // 2, dtype=D) * math.pi).tolist()),
            ("one angle π−1e-9", [math.pi - 1e-9] + [0.3] * (n // 2 - 1)),
        ]:
            Q = _rotation(n, angles)
            t_sp = time_call(lambda: scipy.linalg.logm(Q.numpy()), repeats=3)
            t_ok = time_call(lambda: logm_orthogonal(Q), repeats=3)
            t_eh = time_call(lambda: logm_orthogonal(Q, method="eigh"), repeats=3)
            e_sp = float(
                (expm_skew(torch.from_numpy(scipy.linalg.logm(Q.numpy()).real), project=True) - Q).abs().max()
            )
            e_ok = float((expm_skew(logm_orthogonal(Q)) - Q).abs().max())
            e_eh = float((expm_skew(logm_orthogonal(Q, method="eigh")) - Q).abs().max())
            rows.append(
                [
                    n,
                    label,
                    f"{1e3 * t_sp:.1f}",
                    f"{1e3 * t_ok:.1f} ({t_ok / t_sp:.2f}×)",
                    f"{1e3 * t_eh:.1f} ({t_eh / t_sp:.2f}×)",
                    f"{e_sp:.1e}",
                    f"{e_ok:.1e}",
                    f"{e_eh:.1e}",
                ]
            )
    return rows


def bench_procrustes(quick: bool) -> list[list[Any]]:
    import scipy.linalg

    rows = []
    for N, d in [(4096, 256)] if quick else [(4096, 256), (8192, 768)]:
        A = torch.randn(N, d)
        B = torch.randn(N, d)
        t_sp = time_call(lambda: scipy.linalg.orthogonal_procrustes(A.numpy(), B.numpy()), repeats=3)
        t_ok = time_call(lambda: procrustes(A, B), repeats=3)
        ref, _ = scipy.linalg.orthogonal_procrustes(A.double().numpy(), B.double().numpy())
        err = float((procrustes(A, B).Q.double() - torch.from_numpy(ref)).abs().max())
        rows.append([N, d, f"{1e3 * t_sp:.1f}", f"{1e3 * t_ok:.1f} ({t_ok / t_sp:.2f}×)", f"{err:.1e}"])
    return rows


def bench_subspace(quick: bool) -> list[list[Any]]:
    rows = []
    for n, k, m in [(784, 100, 256), (4096, 512, 64)] if not quick else [(784, 100, 256)]:
        B = torch.linalg.qr(torch.randn(n, k)).Q
        S = Subspace(B)
        P = torch.eye(n) - B @ B.T  # GPM precomputes this n×n matrix
        X = torch.randn(m, n)
        t_dense = time_call(lambda: X @ P, repeats=5)
        t_sub = time_call(lambda: S.complement_project(X), repeats=5)
        err = float((S.complement_project(X) - X @ P).abs().max())
        rows.append(
            [
                n,
                k,
                m,
                f"{1e3 * t_dense:.2f}",
                f"{1e3 * t_sub:.2f} ({t_sub / t_dense:.2f}×)",
                f"{n * n}",
                f"{n * k}",
                f"{err:.1e}",
            ]
        )
    return rows


def bench_expm_accuracy() -> list[list[Any]]:
    import scipy.linalg

    rows = []
    torch.manual_seed(0)
    for norm in [0.003, 0.01, 0.03, 0.045, 0.5]:
        worst_t = worst_o = 0.0
        for _ in range(20):
            X = torch.randn(3, 3, dtype=D)
            A = X - X.T
            A = A * norm / torch.linalg.matrix_norm(A, ord=1)
            ref = torch.from_numpy(scipy.linalg.expm(A.numpy()))
            worst_t = max(worst_t, float((torch.linalg.matrix_exp(A) - ref).abs().max()))
            worst_o = max(worst_o, float((expm_skew(A) - ref).abs().max()))
        rows.append([norm, f"{worst_t:.1e}", f"{worst_o:.1e}"])
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a few minutes on one loaded core)")
    add_out_argument(ap)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    out = results_dir(args.out)
    stem = result_stem("linalg_primitives", args.quick)
    sections: dict[str, tuple[list[str], list[list[Any]]]] = {
        "Hadamard transform, fp32 (ms; ratio to precomputed dense x@H)": (
            ["d", "batch", "anchor x@H", "fwht", "dense (cached H)", "auto", "max err fwht(fp32) vs f64"],
            bench_hadamard(args.quick),
        ),
        "Householder product applied to activations, fp32 (ms; ratio to HRA-style explicit W·H)": (
            [
                "n",
                "r",
                "rows",
                "anchor: r rank-1 updates + matmul",
                "householder_product + matmul",
                "householder_apply (WY)",
                "max err vs f64",
            ],
            bench_householder(args.quick),
        ),
        "Randomized SVD, fp32 (ms; ratio to torch.linalg.svd; error = ‖A−A_k‖_F / optimal)": (
            [
                "shape",
                "decay",
                "rank",
                "anchor svd",
                "randomized_svd (p=10,q=2)",
                "err ratio",
                "torch.svd_lowrank (q=k+10, niter=2)",
                "err ratio",
            ],
            bench_rsvd(args.quick),
        ),
        "Principal log on SO(n), float64 (ms; round trip max|exp(log Q) − Q|)": (
            [
                "n",
                "angles",
                "anchor scipy.linalg.logm",
                "logm_orthogonal (eig)",
                "logm_orthogonal (eigh)",
                "scipy round trip",
                "eig round trip",
                "eigh round trip",
            ],
            bench_logm(args.quick),
        ),
        "Orthogonal Procrustes, fp32 (ms)": (
            ["N", "d", "anchor scipy orthogonal_procrustes", "procrustes", "max|Q − Q_f64|"],
            bench_procrustes(args.quick),
        ),
        "GPM complement projection, fp32 (ms; ratio to dense x@(I−BBᵀ))": (
            [
                "n",
                "k",
                "rows",
                "anchor dense",
                "Subspace.complement_project",
                "dense floats",
                "basis floats",
                "max err",
            ],
            bench_subspace(args.quick),
        ),
        "expm of skew matrices, float64: max error vs scipy.linalg.expm over 20 draws (3×3)": (
            ["‖A‖₁", "torch.linalg.matrix_exp", "expm_skew"],
            bench_expm_accuracy(),
        ),
    }
    info = machine_info()
    md = [
        f"# linalg primitives benchmark\n\nMachine: {machine_line()}\n\nCommand: `OMP_NUM_THREADS={torch.get_num_threads()} "
        f".venv/bin/python benchmarks/linalg_primitives.py{' --quick' if args.quick else ''}`\n"
    ]
    for title, (header, rows) in sections.items():
        md.append(f"## {title}\n\n{md_table(header, rows)}\n")
    text = "\n".join(md)
    atomic_write_text(out / f"{stem}.md", text)
    atomic_write_json(
        out / f"{stem}.json",
        {"machine": info, "sections": {k: {"header": h, "rows": r} for k, (h, r) in sections.items()}},
    )
    print(text)
    announce([out / f"{stem}.md", out / f"{stem}.json"], "linalg_primitives")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
