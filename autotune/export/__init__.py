"""Export a best.yaml to a serving system: `autotune export BEST.yaml --to vllm|sglang|tgi|transformers`.

A registry of exporters, one module each. Every module states its compatibility rules in one dict
(`RULES`) at its top: what maps exactly, what approximately (the comment written next to the
setting), and what cannot be exported (an error naming the setting and the nearest exportable
alternative, which `allow_approximate=True` writes instead).

    from autotune.export import export
    result = export("outputs/x/best.yaml", "vllm", tensor_parallel_size=2)
    print(result.text)       # the file for `vllm serve --config`
    print(result.command)    # the equivalent command line
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from autotune.errors import ExportError, unknown_name_message
from autotune.export import sglang, tgi, transformers, vllm
from autotune.export.base import DEFAULT_HEADROOM, ExportOptions, ExportResult, Rule, write_export
from autotune.spec import DeploymentConfig

Exporter = Callable[[DeploymentConfig, ExportOptions], ExportResult]

EXPORTERS: dict[str, Exporter] = {}
RULES: dict[str, dict[str, Rule]] = {}


def register(name: str, exporter: Exporter, rules: dict[str, Rule]) -> None:
    EXPORTERS[name] = exporter
    RULES[name] = rules


register(vllm.NAME, vllm.export, vllm.RULES)
register(sglang.NAME, sglang.export, sglang.RULES)
register(tgi.NAME, tgi.export, tgi.RULES)
register(transformers.NAME, transformers.export, transformers.RULES)


def get_exporter(target: str) -> Exporter:
    try:
        return EXPORTERS[target]
    except KeyError:
        raise ExportError(unknown_name_message("export target", target, EXPORTERS)) from None


def export(
    config: DeploymentConfig | str | Path,
    target: str,
    *,
    allow_approximate: bool = False,
    tensor_parallel_size: int | None = None,
    headroom: float = DEFAULT_HEADROOM,
    gpu_memory_gib: float | None = None,
    model: str | None = None,
) -> ExportResult:
    """Export a DeploymentConfig (or the path of a best.yaml) to `target`. Raises ExportError (one
    line) for an unknown target, an unexportable setting without `allow_approximate`, or a model
    no checkpoint is known for. `tensor_parallel_size` None: the GPUs best.yaml was measured on
    (settings.num_gpus)."""
    from autotune.deploy import check_deployment, read_deployment

    exporter = get_exporter(target)
    if isinstance(config, DeploymentConfig):
        check_deployment(config, "the DeploymentConfig")  # what read_deployment checks of a file
    else:
        config = read_deployment(config)
    options = ExportOptions(allow_approximate=allow_approximate, tensor_parallel_size=tensor_parallel_size,
                            headroom=headroom, gpu_memory_gib=gpu_memory_gib, model=model)
    return exporter(config, options)


__all__ = ["EXPORTERS", "RULES", "ExportOptions", "ExportResult", "Rule", "export", "get_exporter", "register", "write_export"]
