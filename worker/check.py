"""``memory-worker check``: the config, the model and its backend, the index generation, and
every sink's target, probed once (exit 1 when anything would keep ``run`` from working)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from worker.cli import _config, _env  # the CLI's own config and environment loaders
from worker.config import WorkerConfig, masked
from worker.errors import WorkerError


def cmd_check(args: argparse.Namespace) -> int:
    from worker.backends import choose_backend
    from worker.runtime import build_chunker, build_sinks, load_model

    config = _config(args)
    out: dict[str, Any] = {"config": str(args.config), "settings": masked(config)}
    spec, embedder = load_model(config, _env())
    out["model"] = {"id": spec.id, "dimensions": spec.dimensions, "max_seq_tokens": spec.max_seq_tokens,
                    "device": embedder.device, "dtype": embedder.dtype}
    # The same choice `run` makes, quality gate included; an int8 model quantized here is cached
    # in the state dir, so the next `run` only loads it.
    state = Path(config.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    out["backend"] = choose_backend(config.embedding, embedder, build_chunker(config, spec, embedder),
                                    state).as_json()
    out["generation"] = generation_report(config, spec)
    ok = out["generation"]["matches"] is not False
    sinks_out = {}
    # Probe the targets the config's generation writes (a later generation's own table,
    # collection or namespace), not the configured names.
    for name, sink in build_sinks(generation_targeted(config, spec)).items():
        try:
            info = sink.info()
        except WorkerError as exc:
            sinks_out[name] = {"reachable": False, "error": str(exc)}
            ok = False
            continue
        entry = {"reachable": info.reachable, "target": info.target, "dimension": info.dimension,
                 "metric": info.metric, "records": info.records}
        if info.error:
            entry["error"] = info.error
        if info.warnings:
            entry["warnings"] = list(info.warnings)
        index_state = getattr(sink, "index_state", None)
        if index_state is not None:
            entry["indices"] = index_state()
        if info.dimension is not None and info.dimension != spec.dimensions:
            entry["error"] = f"dimension {info.dimension} != model's {spec.dimensions}"
            ok = False
        elif info.dimension is None and info.reachable:
            entry["note"] = "index/collection does not exist yet; it is created on first write"
        ok = ok and info.reachable
        sinks_out[name] = entry
        sink.close()
    out["sinks"] = sinks_out
    out["ok"] = ok
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        print(f"config  {args.config}: valid")
        m = out["model"]
        print(f"model   {m['id']}: {m['dimensions']}-d, max {m['max_seq_tokens']} tokens, "
              f"{m['device']} {m['dtype']}")
        b = out["backend"]
        print(f"backend {b['backend']} {b['precision']} (embedding.backend: {b['requested']}): {b['reason']}")
        g = out["generation"]
        print(f"generation {g['config']} (serving: {g['serving'] or 'none yet'}): {g['note']}")
        for name, target in g.get("serving_targets", {}).items():
            print(f"        {name} serves {g['serving']} from {target}")
        for b in config.bindings:
            print(f"binding {b.collection} -> {b.preset or 'generic'}")
        for name, s in sinks_out.items():
            state = "ok" if s.get("reachable") and "error" not in s else "FAIL"
            print(f"sink    {name}: {state} {s.get('target', '')} dim={s.get('dimension')} "
                  f"records={s.get('records')} {s.get('error', s.get('note', ''))}".rstrip())
            for warning in s.get("warnings", ()):
                print(f"        warning: {warning}")
        print("settings (secrets masked):")
        print(json.dumps(out["settings"], indent=2, default=str))
    return 0 if ok else 1


def generation_targeted(config: WorkerConfig, spec: Any) -> WorkerConfig:  # noqa: ANN401
    """``config`` pointed at its generation's recorded targets (as is, if none is recorded)."""
    from worker.generation import generation_of, targeted
    from worker.migration import open_registry

    if not (Path(config.state_dir) / "generations.sqlite").exists():
        return config
    registry = open_registry(Path(config.state_dir))
    try:
        row = registry.generation(registry.identify(generation_of(config, spec)).id)
        return targeted(config, row.targets) if row is not None and row.dropped_at is None else config
    finally:
        registry.close()


def generation_report(config: WorkerConfig, spec: Any) -> dict[str, Any]:  # noqa: ANN401
    """Which generation each sink serves, and whether the config's generation is one of them."""
    from worker.generation import generation_of, target_names, targeted
    from worker.migration import open_registry

    gen = generation_of(config, spec)
    out: dict[str, Any] = {"config": gen.id, "serving": None, "matches": None}
    if not (Path(config.state_dir) / "generations.sqlite").exists():
        out["note"] = "no registry yet: the first run adopts this generation with the configured targets"
        return out
    registry = open_registry(Path(config.state_dir))
    try:
        gen = registry.identify(gen)  # a config that only adds or removes bindings keeps its generation
        out["config"] = gen.id
        serving, m = registry.serving(), registry.migration()
        out["serving"] = serving
        row = registry.generation(serving) if serving else None
        if row is not None:
            out["serving_targets"] = target_names(targeted(config, row.targets))
        known = registry.generation(gen.id)
        in_migration = m is not None and gen.id in (m.old, m.new)
        out["matches"] = gen.id == serving or in_migration
        if m is not None:
            out["migration"] = {"old": m.old, "new": m.new, "phase": m.phase}
        out["note"] = ("the config's generation serves" if gen.id == serving else
                       f"part of migration {m.old} → {m.new} ({m.phase})" if in_migration else
                       "MISMATCH: the config's generation " + ("was dropped" if known else "is not known here") +
                       "; `memory-worker migrate plan --config …`")
    finally:
        registry.close()
    return out
