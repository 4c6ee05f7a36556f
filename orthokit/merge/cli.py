"""``orthokit merge CONFIG.yaml OUT_DIR`` — merge checkpoints from a mergekit-style YAML config, streaming.

Inputs may be Hugging Face folders (single or sharded safetensors), bare ``.safetensors`` files, or PEFT LoRA
adapter folders (applied to their base as W + (α/r)·B A). Tensors are read one at a time from memory maps;
the output is written as sharded safetensors with ``model.safetensors.index.json`` into a temporary folder next to
OUT_DIR that is renamed into place at the end (a crash or Ctrl-C leaves no partial output).

mergekit-yaml's options are accepted: ``--out-shard-size``, ``--cuda``/``--device``, ``--random-seed``,
``--copy-tokenizer/--no-copy-tokenizer``, ``--write-model-card/--no-write-model-card``, ``--num-threads``/``-j``,
``--quiet`` and ``-v`` are honoured; the others (``--allow-crimes``, ``--lazy-unpickle``, ``--trust-remote-code``,
``--low-cpu-memory``, ``--clone-tensors``, ``--lora-merge-cache``, ...) print one line saying why they have no
effect. The output holds the merged shards, ``config.json`` (with the output dtype and layer count), the
tokenizer files, ``merge_config.yml`` and a ``README.md`` model card. ``slices:`` configs (frankenmerges) and
LoRA-factor methods (``do_merging`` on PEFT adapter folders) run as well.

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
    p.add_argument(
        "--cuda",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="same as --device cuda (mergekit)",
    )
    p.add_argument(
        "--seed", "--random-seed", type=int, default=0, help="seed for stochastic methods (DARE); default 0"
    )
    p.add_argument(
        "--no-copy-files", action="store_true", help="do not copy config.json / tokenizer files from the base"
    )
    p.add_argument(
        "--copy-tokenizer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="copy the tokenizer/generation files from the base (default; --no-copy-tokenizer keeps config.json only)",
    )
    p.add_argument(
        "--write-model-card",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write README.md describing the merge (default; also --no-model-card)",
    )
    p.add_argument("--no-model-card", dest="write_model_card", action="store_false", help=argparse.SUPPRESS)
    p.add_argument(
        "--num-threads",
        "-j",
        type=int,
        default=None,
        help="CPU threads for tensor math (torch.set_num_threads)",
    )
    p.add_argument(
        "--gpu-rich", action="store_true", help="mergekit alias: --cuda (its other parts have no effect here)"
    )
    p.add_argument("--no-progress", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--no-quiet", dest="no_progress", action="store_false", help=argparse.SUPPRESS)
    g = p.add_argument_group("mergekit options accepted without effect (a one-line notice says why)")
    for flag, (takes_value, why) in NO_EFFECT.items():
        if takes_value:
            g.add_argument(flag, default=None, metavar="VALUE", help=f"no effect: {why}")
        else:
            g.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=f"no effect: {why}"
            )
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
        action="count",
        default=0,
        help="show the full traceback of an error (or ORTHOKIT_DEBUG=1); mergekit's -v/-vv are accepted",
    )
    return p


#: mergekit-yaml options that orthokit accepts but that change nothing here: flag → (takes a value, why).
NO_EFFECT: dict[str, tuple[bool, str]] = {
    "--allow-crimes": (
        False,
        "inputs must have identical tensor names and shapes; mixed architectures are refused",
    ),
    "--unsafe-truncate-embeddings": (False, "vocabularies must already match; no embedding rows are dropped"),
    "--transformers-cache": (True, "orthokit works offline on local paths and never downloads"),
    "--lora-merge-cache": (True, "LoRA adapters are applied lazily in memory, nothing is cached on disk"),
    "--lora-merge-dtype": (True, "LoRA deltas are computed in float32 (float64 for float64 weights)"),
    "--low-cpu-memory": (False, "tensors are already streamed one at a time from memory maps"),
    "--clone-tensors": (False, "every output tensor is written from its own buffer"),
    "--trust-remote-code": (False, "no model code is run; config.json is read as JSON"),
    "--lazy-unpickle": (False, "pickled checkpoints are not read; safetensors are memory-mapped"),
    "--safe-serialization": (False, "the output is always safetensors"),
    "--read-to-gpu": (False, "with --device/--cuda inputs are moved to the device tensor by tensor already"),
    "--multi-gpu": (False, "orthokit merges on one device"),
    "--async-write": (False, "shards are written synchronously while streaming"),
    "--write-threads": (True, "shards are written by one thread while streaming"),
}


def _no_effect_notices(args: argparse.Namespace) -> list[str]:
    """One line per mergekit option given that has no effect (``None`` = not given)."""
    out = []
    for flag, (_tv, why) in NO_EFFECT.items():
        v = getattr(args, flag.lstrip("-").replace("-", "_"))
        if v is None:
            continue
        if flag == "--safe-serialization" and v is False:
            why = "the output is always safetensors (pickled output is never written)"
        shown = flag if v is True else (f"--no-{flag[2:]}" if v is False else f"{flag} {v}")
        out.append(f"orthokit merge: note: {shown} has no effect: {why}")
    if args.gpu_rich:
        out.append(
            "orthokit merge: note: --gpu-rich means --cuda here; its --low-cpu-memory/--read-to-gpu/--multi-gpu "
            "parts have no effect (streaming, one device)"
        )
    return out


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
    debug = args.verbose > 0 or os.environ.get("ORTHOKIT_DEBUG", "") not in ("", "0")
    for line in _no_effect_notices(args):
        print(line, file=sys.stderr)
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
        device = _device(args.device, args.cuda or args.gpu_rich)
        if args.num_threads is not None:
            if args.num_threads < 1:
                raise ValueError(f"--num-threads must be a positive integer, got {args.num_threads}")
            import torch

            torch.set_num_threads(args.num_threads)
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
            copy_tokenizer=args.copy_tokenizer,
            write_model_card=args.write_model_card,
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
