"""The shared subspace actor: one per study; extracts each factor once, serves integrated bases.

The driver creates it (``get_or_create``) as a named, detached actor with no CPUs, so it
outlives any trial's placement group; trials find it with ``ray.get_actor``. Mining trials
send it finished adapters' files through Ray (``add_adapter``), so the study's adapters and
banks live on the actor's node and worker nodes need no shared disk. As soon as a factor's
adapters are complete the actor extracts that factor's subspaces with the study's main
extraction method, while the other factors are still training. Fine-tuning trials ask for
a ``BasisSet`` by key (factors, ranks, orthogonalisation, extraction): the actor integrates
it once, ``ray.put``s it, and hands every later caller the same object-store reference.
It is a sync actor, so Ray runs its calls one at a time: however many trials ask for one
key at once, the first call does the work and every later call is a cache hit. Complete
banks are persisted in the study folder (``banks/bank-<extraction>.safetensors``) and
adapters are rediscovered from its ``adapters`` folder, so a restarted actor or a resumed
study picks them up. For a study at a URI that folder is a cache: every adapter and bank is
also published to the URI as it is made, and an actor on a fresh head pulls them back.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import ray

ACTOR_PREFIX = "attrsub-subspaces-"
NAMESPACE = "attrsub"


class SubspaceActor:
    """Holds a study's adapters, extracts banks per extraction method, caches integrations."""

    def __init__(
        self,
        study_dir: str,
        factors: list[str],
        adapters_per_factor: int,
        extract: dict[str, Any],
        published: str | None = None,
    ) -> None:
        import torch

        torch.set_num_threads(1)
        self.study_dir = Path(study_dir)
        self.published = published
        self.adapters_dir = self.study_dir / "adapters"
        self.banks_dir = self.study_dir / "banks"
        self.factors = list(factors)
        self.expected = adapters_per_factor
        self.extract = dict(extract)
        self.adapters: dict[str, set[str]] = {f: set() for f in self.factors}
        self.extracted: dict[tuple[str, str], Any] = {}  # (extraction, factor) -> result
        self.banks: dict[str, Any] = {}
        self.evidence: dict[str, list[dict[str, Any]]] = {}  # extraction -> evidence rows
        self.cache: dict[tuple[Any, ...], ray.ObjectRef] = {}
        self.counts = {"extractions": 0, "bank_loads": 0, "requests": 0, "hits": 0,
                       "pulled": 0, "published": 0}
        if self.published is not None:
            self._pull()
        if self.adapters_dir.is_dir():
            for d in sorted(self.adapters_dir.iterdir()):
                if (d / "attrsub-adapter.json").is_file():
                    self._register(d)
        if self.published is not None:
            self._push_missing()

    def _register(self, folder: Path) -> dict[str, Any]:
        """Count a complete adapter folder; completing a factor extracts it at once with the
        main extraction method (unless a persisted bank already holds it)."""
        from attrsub.adapters.lora import read_sidecar

        meta = read_sidecar(folder)
        factor = meta["factor"]
        if factor not in self.adapters:
            raise ValueError(f"adapter {folder.name!r} is of factor {factor!r}, not in "
                             f"{self.factors}")
        self.adapters[factor].add(os.fspath(folder))
        main = self.extract["method"]
        if len(self.adapters[factor]) == self.expected and not self._bank_file(main).is_file():
            self._extract_factor(main, factor)
        return meta

    def _pull(self) -> None:
        """Copy into the local cache every adapter and bank the study has published that
        the cache lacks (a fresh head, a lost disk), so nothing is mined or extracted again."""
        from attrsub import storage
        from attrsub.adapters.lora import SIDECAR

        for name in storage.list_names(storage.join(self.published, "adapters")):
            src = storage.join(self.published, "adapters", name)
            if not (self.adapters_dir / name).is_dir() and storage.exists(
                    storage.join(src, SIDECAR)):
                storage.get_dir(src, self.adapters_dir / name, SIDECAR)
                self.counts["pulled"] += 1
        for name in storage.list_names(storage.join(self.published, "banks")):
            if name.endswith(".safetensors") and not (self.banks_dir / name).is_file():
                storage.get_file(storage.join(self.published, "banks", name),
                                 self.banks_dir / name)
                self.counts["pulled"] += 1

    def _push_missing(self) -> None:
        """Publish what the cache holds and the storage lacks (a head that died between
        storing an adapter and publishing it)."""
        from attrsub import storage
        from attrsub.adapters.lora import SIDECAR

        for kind, marker in (("adapters", SIDECAR), ("banks", None)):
            folder = self.study_dir / kind
            for item in sorted(folder.iterdir()) if folder.is_dir() else []:
                if item.name.startswith("."):
                    continue  # a folder or file still being written
                if marker is not None:
                    complete = (item / marker).is_file()
                    there = storage.join(self.published, kind, item.name, marker)
                else:
                    complete = item.suffix == ".safetensors"
                    there = storage.join(self.published, kind, item.name)
                if complete and not storage.exists(there):
                    self._publish(item, kind, item.name, marker=marker)

    def _publish(self, local: Path, *parts: str, marker: str | None = None) -> None:
        """Copy a finished adapter folder (``marker`` last) or bank file to the study's
        storage, where a resumed study on any head finds it."""
        if self.published is None:
            return
        from attrsub import storage

        where = storage.join(self.published, *parts)
        if marker is None:
            storage.put_file(local, where)
        else:
            storage.put_dir(local, where, marker)
        self.counts["published"] += 1

    def adapter_meta(self, name: str) -> dict[str, Any] | None:
        """The sidecar of adapter ``name`` when the study already holds it, else None."""
        from attrsub.adapters.lora import read_sidecar

        folder = self.adapters_dir / name
        held = any(os.fspath(folder) in a for a in self.adapters.values())
        return read_sidecar(folder) if held else None

    def add_adapter(self, name: str, files: dict[str, bytes]) -> dict[str, Any]:
        """Store a finished adapter (its files, sent by the trial that trained it) and count
        it; returns its sidecar. The folder appears complete or not at all."""
        from attrsub.adapters.lora import SIDECAR, read_updates
        from attrsub.fsio import publish_dir

        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"adapter name {name!r} must be a plain folder name")
        bad = [f for f in files if f.startswith("/") or ".." in Path(f).parts]
        if bad:
            raise ValueError(f"adapter {name!r} has files outside its folder: {bad}")

        def fill(tmp: Path) -> None:
            for rel, data in files.items():
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                (tmp / rel).write_bytes(data)
            read_updates(tmp)  # a corrupt adapter fails its trial here, not the extraction

        folder = publish_dir(self.adapters_dir / name, fill)
        self._publish(folder, "adapters", name, marker=SIDECAR)
        return self._register(folder)

    def has_bank(self, extraction: str) -> bool:
        """Whether this study's bank for ``extraction`` is persisted (stage 1 can be skipped)."""
        return self._bank_file(extraction).is_file()

    def missing(self) -> dict[str, int]:
        """Adapters still missing per factor (empty when every factor is complete)."""
        return {
            f: self.expected - len(a) for f, a in self.adapters.items() if len(a) < self.expected
        }

    def _bank_file(self, extraction: str) -> Path:
        return self.banks_dir / f"bank-{extraction}.safetensors"

    def _extract_factor(self, extraction: str, factor: str) -> Any:
        from attrsub.subspace.extract import ExtractConfig
        from attrsub.subspace.mine import extract_factor

        key = (extraction, factor)
        if key not in self.extracted:
            cfg = ExtractConfig(**{**self.extract, "method": extraction})
            self.extracted[key] = extract_factor(
                factor, sorted(map(Path, self.adapters[factor])), cfg
            )
            self.counts["extractions"] += 1
        return self.extracted[key]

    def _bank(self, extraction: str) -> Any:
        """The complete bank for one extraction method: from memory, from disk, or extracted."""
        if extraction not in self.banks:
            from attrsub.subspace.bank import load_bank, save_bank
            from attrsub.subspace.extract import ExtractConfig
            from attrsub.subspace.mine import assemble_bank

            path = self._bank_file(extraction)
            if path.is_file():
                self.banks[extraction] = load_bank(path)
                self.counts["bank_loads"] += 1
            else:
                missing = self.missing()
                if missing:
                    raise RuntimeError(f"cannot extract yet; adapters missing: {missing}")
                cfg = ExtractConfig(**{**self.extract, "method": extraction})
                bank = assemble_bank(
                    {f: self._extract_factor(extraction, f) for f in self.factors}, cfg,
                    self._evidence(extraction),
                )
                save_bank(bank, path)
                self._publish(path, "banks", path.name)
                self.banks[extraction] = bank
        return self.banks[extraction]

    def _evidence(self, extraction: str) -> list[dict[str, Any]]:
        """Claim 1's evidence rows for one extraction (attrsub.subspace.evidence), computed once."""
        if extraction not in self.evidence:
            from attrsub.subspace.evidence import evidence_rows, load_adapters
            from attrsub.subspace.extract import ExtractConfig

            cfg = ExtractConfig(**{**self.extract, "method": extraction})
            adapters = {f: sorted(map(Path, self.adapters[f])) for f in self.factors}
            self.evidence[extraction] = evidence_rows(load_adapters(adapters), cfg)
        return self.evidence[extraction]

    def bank_path(self, extraction: str) -> str:
        """The persisted bank file for one extraction method, extracting it if need be."""
        self._bank(extraction)
        return str(self._bank_file(extraction))

    def bases(
        self,
        factors: list[str],
        ranks: dict[str, int] | int | None,
        ortho: str,
        extraction: str,
        total_rank: int | None = None,
    ) -> ray.ObjectRef:
        """An object-store reference to the BasisSet of one key, integrated once."""
        key = (
            tuple(factors),
            tuple(sorted(ranks.items())) if isinstance(ranks, dict) else ranks,
            ortho,
            extraction,
            total_rank,
        )
        self.counts["requests"] += 1
        if key in self.cache:
            self.counts["hits"] += 1
        else:
            basis = self._bank(extraction).basis_set(factors, ranks, ortho, total_rank)
            self.cache[key] = ray.put(basis)
        return self.cache[key]

    def analysis(self, extraction: str, study: str, code_version: str, seed: int) -> dict:
        """Rows for overlaps.parquet, spectra.parquet and evidence.parquet from this
        extraction's bank and the study's adapters."""
        from attrsub.subspace.disentangle import pairwise
        from results.schema import spectra_rows, study_rows

        bank = self._bank(extraction)
        ident = {"study": study, "code_version": code_version, "seed": seed,
                 "extraction": extraction}
        return {
            "overlaps": study_rows(pairwise(bank.subspaces, seed=seed), **ident),
            "spectra": spectra_rows(bank, **ident),
            "evidence": study_rows(self._evidence(extraction), **ident),
        }

    def stats(self) -> dict[str, Any]:
        """Extractions done, bank loads, basis requests and cache hits, adapters per factor."""
        return {
            **self.counts,
            "cached": len(self.cache),
            "hit_rate": self.counts["hits"] / self.counts["requests"]
            if self.counts["requests"] else None,
            "adapters": {f: len(a) for f, a in self.adapters.items()},
        }


def actor_name(study: str) -> str:
    return f"{ACTOR_PREFIX}{study}"


def get_or_create(
    study: str, study_dir: Path, factors: list[str], adapters_per_factor: int, extract: Any,
    published: str | None = None,
) -> Any:
    """The study's actor, created by the driver so it outlives every trial; with
    ``published`` (a URI study) ``study_dir`` is its cache and everything it makes is
    published there too."""
    remote = ray.remote(SubspaceActor).options(
        name=actor_name(study),
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        num_cpus=0,
        scheduling_strategy="DEFAULT",
        # a crashed actor restarts from the study folder; its calls are idempotent
        max_restarts=3,
        max_task_retries=3,
    )
    cfg = dataclasses.asdict(extract) if dataclasses.is_dataclass(extract) else dict(extract)
    return remote.remote(str(study_dir), list(factors), adapters_per_factor, cfg, published)


def get(study: str) -> Any:
    """The study's actor from inside a trial (or a second driver)."""
    return ray.get_actor(actor_name(study), namespace=NAMESPACE)


def fetch_bases(
    study: str,
    factors: list[str],
    ranks: dict[str, int] | int | None,
    ortho: str,
    extraction: str,
    attempts: int = 3,
) -> Any:
    """The BasisSet of one key, from the study's actor.

    The served object belongs to the actor, so an actor killed after handing out the
    reference takes the object with it (OwnerDiedError); the restarted actor reloads its
    bank from the study folder and is simply asked again.
    """
    from ray.exceptions import ObjectLostError, RayActorError

    def once() -> Any:
        return ray.get(ray.get(get(study).bases.remote(factors, ranks, ortho, extraction)))

    for attempt in range(attempts - 1):
        try:
            return once()
        except (ObjectLostError, RayActorError):
            time.sleep(1.0 + attempt)
    return once()
