"""``orthokit merge CONFIG.yaml OUT_DIR`` — merge checkpoints from a mergekit-style YAML config, streaming.

Inputs may be Hugging Face folders (single or sharded safetensors), bare ``.safetensors`` files, or PEFT LoRA
adapter folders (applied to their base as W + (α/r)·B A). Tensors are read one at a time from memory maps;
the output is written as sharded safetensors with ``model.safetensors.index.json`` into a temporary folder next to
OUT_DIR that is renamed into place at the end (a crash or Ctrl-C leaves no partial output).

Examples::

    orthokit merge ties.yml merged/ --dry-run          # validate and print the plan, write nothing
    orthokit merge ties.yml merged/ --out-shard-size 2GB --overwrite
    orthokit merge dare.yml merged/ --seed 1 --device cuda
    orthokit merge --list-methods

Safety: ``--overwrite`` only replaces an empty folder or an earlier orthokit output (its
``.orthokit-output.json`` lists every file in it); OUT_DIR may never be, contain or lie inside an input model
folder, contain the config file, or be the current directory or a parent of it. Every output tensor is checked
for NaN/inf (also after casting to ``out_dtype``); ``--allow-nonfinite`` (or ``allow_nonfinite: true``) writes
it anyway. A SIGTERM/SIGHUP removes the temporary folder; temporary folders left by killed runs are removed on
the next run into the same parent folder.

Exit status: 0 on success, 1 on a config/input/output error (one line on stderr; ``--verbose`` or
``ORTHOKIT_DEBUG=1`` shows the traceback), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``orthokit merge``."""
    p = argparse.ArgumentParser(
        prog="orthokit merge", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "config", nargs="?", help="YAML merge config (mergekit shape: models, base_model, merge_method, ...)"
    )
    p.add_argument("out_dir", nargs="?", help="output folder (must not exist unless --overwrite)")
    p.add_argument(
        "--dry-run", action="store_true", help="validate the config and inputs, print the plan, write nothing"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR (atomically)")
    p.add_argument(
        "--out-shard-size",
        "--shard-size",
        default="5B",
        help="max bytes per output shard: 500M, 2GB, 2GiB, 5B (= 5e9, mergekit's spelling); default 5B",
    )
    p.add_argument("--device", default="cpu", help="compute device: cpu (default), cuda, cuda:1, auto")
    p.add_argument("--cuda", action="store_true", help="same as --device cuda (mergekit spelling)")
    p.add_argument(
        "--seed", "--random-seed", type=int, default=0, help="seed for stochastic methods (DARE); default 0"
    )
    p.add_argument(
        "--no-copy-files", action="store_true", help="do not copy config.json / tokenizer files from the base"
    )
    p.add_argument("--no-progress", "--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--list-methods", action="store_true", help="list merge methods and their parameters, then exit"
    )
    p.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="write output tensors that hold NaN/inf (default: stop with an error naming the tensor)",
    )
    p.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="show the full traceback of an error (or ORTHOKIT_DEBUG=1)",
    )
    return p


def _os_error_line(e: OSError) -> str:
    """One line for an OS error: what failed, on which path, and why (``strerror``)."""
    import errno

    why = e.strerror or str(e)
    path = e.filename if e.filename is not None else None
    hint = ""
    if e.errno == errno.ENOSPC:
        hint = " (free space there or choose another OUT_DIR; nothing was written)"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = " (choose a writable OUT_DIR; nothing was written)"
    return f"{why}: {path}{hint}" if path else f"{why}{hint}"


def _device(name: str, cuda: bool) -> str | None:
    import torch

    if cuda:
        name = "cuda"
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else None
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return None if name == "cpu" else name


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``orthokit merge``; returns the exit status."""
    import os

    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    debug = args.verbose or os.environ.get("ORTHOKIT_DEBUG", "") not in ("", "0")
    from orthokit.io.config import ConfigError
    from orthokit.io.safetensors_io import SafetensorsError
    from orthokit.merge import MERGE_METHODS, method_schema
    from orthokit.merge.api import check_output_dir, run_merge
    from orthokit.merge.config import load_config
    from orthokit.merge.plan import build_plan, format_bytes, parse_size

    if args.list_methods:
        for name in MERGE_METHODS.names():
            print(method_schema(name).describe())
        return 0
    if not args.config or (not args.out_dir and not args.dry_run):
        build_parser().error("CONFIG and OUT_DIR are required (or --list-methods)")
    try:
        shard = parse_size(args.out_shard_size)
        device = _device(args.device, args.cuda)
        cfg = load_config(args.config)
        plan = build_plan(cfg, shard)
        if args.dry_run:
            try:
                if args.out_dir:  # the same output checks as a real run, so a dry run predicts its refusal
                    check_output_dir(args.out_dir, cfg, args.overwrite)
                print(plan.describe())
            finally:
                plan.close()
            print("dry run: nothing written")
            return 0
        res = run_merge(
            cfg,
            args.out_dir,
            overwrite=args.overwrite,
            max_shard_bytes=shard,
            device=device,
            seed=args.seed,
            progress=False if args.no_progress else None,
            copy_files=not args.no_copy_files,
            plan=plan,
            allow_nonfinite=True if args.allow_nonfinite else None,
        )
    except KeyboardInterrupt:
        print("interrupted: no output written", file=sys.stderr)
        return 130
    except (
        ConfigError,
        SafetensorsError,
        FileNotFoundError,
        FileExistsError,
        KeyError,
        ValueError,
        TypeError,
        OSError,
        MemoryError,
    ) as e:
        if debug:
            raise
        if isinstance(e, (FileNotFoundError, FileExistsError)) and e.filename is None:
            msg = str(e)
        elif isinstance(e, OSError):
            msg = _os_error_line(e)
        elif isinstance(e, KeyError) and e.args:
            msg = e.args[0]
        elif isinstance(e, MemoryError):
            msg = f"out of memory while merging ({e or 'no details'}); nothing was written"
        else:
            msg = str(e)
        print(f"orthokit merge: error: {' '.join(str(msg).split())}", file=sys.stderr)
        return 1
    print(
        f"wrote {res.out_dir} ({res.tensors} tensors, {format_bytes(res.bytes_written)}, "
        f"{len([f for f in res.files if f.endswith('.safetensors')])} shard(s)) in {res.seconds:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
