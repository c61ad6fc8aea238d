"""Parse exported server configs with the server's OWN argument parser. Runs inside a virtual
environment that has vLLM or SGLang installed (not autotune's: it imports neither autotune nor
pytest). tests/test_export_parsers.py calls it; bench/check_export_parsers.sh builds the venvs.

    python tests/export_parsers_check.py vllm|sglang MANIFEST.json

MANIFEST.json lists {"case", "config", "script"}: the exported YAML and the .sh next to it. For
each, the YAML is parsed through `--config` and the command line of the .sh through the same
parser, and the parsed value of every key in the YAML is reported. The last stdout line is
`RESULT <json>`: {case: {"config": {dest: value}, "command": {dest: value}}}, or {"error": "..."}.
"""

from __future__ import annotations

import json
import shlex
import sys
import traceback

import yaml


def command_tokens(script_path: str) -> list[str]:
    """The command line of an exported .sh: comments dropped, continuations joined, `exec` removed."""
    lines = [line for line in open(script_path).read().splitlines() if line and not line.startswith("#")]
    tokens = shlex.split(" ".join(line.rstrip("\\").rstrip() for line in lines))
    return tokens[1:] if tokens and tokens[0] == "exec" else tokens


def parse_vllm(argv: list[str]) -> object:
    """`vllm serve ARGV` as vLLM's CLI parses it (vllm/entrypoints/cli/serve.py), then the engine
    arguments built from it, as `vllm serve` does before it starts the engine."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS
    from vllm.utils.argparse_utils import FlexibleArgumentParser
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    parser = FlexibleArgumentParser()
    ServeSubcommand().subparser_init(parser.add_subparsers(dest="subparser"))
    args = parser.parse_args(argv)
    if getattr(args, "model_tag", None):  # `vllm serve MODEL` sets the model positionally
        args.model = args.model_tag
    EngineArgs.from_cli_args(args)
    if args.quantization is not None and args.quantization not in QUANTIZATION_METHODS:
        raise ValueError(f"quantization {args.quantization!r} is not one of vLLM's {QUANTIZATION_METHODS}")
    for name in ("attention_backend", "mm_encoder_attn_backend"):
        value = getattr(args, name, None)
        if value is not None and str(value) not in AttentionBackendEnum.__members__:
            raise ValueError(f"{name} {value!r} is not an AttentionBackendEnum member")
    return args


def parse_sglang(argv: list[str]) -> object:
    """`python -m sglang.launch_server ARGV` as SGLang parses it: prepare_server_args builds the
    ServerArgs dataclass and runs its validation (__post_init__)."""
    from sglang.srt.server_args import prepare_server_args

    return prepare_server_args(argv)


def main() -> None:
    target, manifest_path = sys.argv[1], sys.argv[2]
    results: dict[str, dict] = {}
    for item in json.load(open(manifest_path)):
        keys = [k.replace("-", "_") for k in yaml.safe_load(open(item["config"]))]
        try:
            if target == "vllm":
                from_config = parse_vllm(["serve", "--config", item["config"]])
                from_command = parse_vllm(command_tokens(item["script"])[1:])  # drop "vllm"
            else:
                from_config = parse_sglang(["--config", item["config"]])
                from_command = parse_sglang(command_tokens(item["script"])[3:])  # drop "python -m sglang.launch_server"
            results[item["case"]] = {
                "config": {k: getattr(from_config, k, "<missing>") for k in keys},
                "command": {k: getattr(from_command, k, "<missing>") for k in keys},
            }
        except BaseException as e:  # report every case, not only the first failure
            results[item["case"]] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
    print("RESULT " + json.dumps(results, default=str), flush=True)


if __name__ == "__main__":
    main()
