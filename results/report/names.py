"""How the report names and orders what it shows: metrics, methods, factors, layers and
configurations, so every table and figure says the same thing the same way."""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

from attrsub.methods import METHODS, REGISTRY
from results.claims import task_info
from results.schema import FACTORS

# Metric name -> (readable name, unit, lower is better).
METRICS = {
    "pc_acc": ("point-cloud Acc", "scene units", True),
    "pc_comp": ("point-cloud Comp", "scene units", True),
    "pc_nc": ("normal consistency", "mean |cos|", False),
    "depth_absrel": ("depth AbsRel", "ratio", True),
    "depth_delta1": ("depth δ<1.25", "fraction", False),
    "spoof_acc": ("spoof-detection accuracy", "fraction", False),
    "cam_rra15": ("camera RRA@15", "fraction", False),
    "cam_rta15": ("camera RTA@15", "fraction", False),
    "cam_auc30": ("camera AUC@30", "fraction", False),
}
SPLITS = {"test": "test", "in_domain": "in-domain", "cross_domain": "cross-domain",
          "gap": "gap (cross - in)", "train": "train"}
METHOD_ORDER = METHODS  # the registry's order: baselines before the mined subspace


def method_color(m: Any, unknown: str = "black") -> str:
    """A method's plot colour (``Method.color``); ``unknown`` for a method no longer known."""
    return REGISTRY[m].color if m in REGISTRY else unknown


def method_legend(m: Any) -> str:
    """A method's name in a figure legend (``Method.legend``)."""
    return REGISTRY[m].legend if m in REGISTRY else str(m)


def fmt_int(v: Any) -> str:
    """An integer cell; "?" where a rank or width was not recorded."""
    return "?" if v is None or pd.isna(v) else str(int(v))


def config_label(r: pd.Series) -> str:
    """The paper's names for a configuration (``mined subspace d=16``), plus the ablated knob."""
    m, rank, d = r["method"], fmt_int(r["rank"]), fmt_int(r["width"])
    base = REGISTRY[m].label(rank=rank, width=d) if m in REGISTRY else str(m)
    axis = r["axis"]
    if m != "reduced" or axis in ("main", None):
        return base
    knob = {"ranks": f"r={rank}/factor", "subsets": str(r["factors"]),
            "ortho": f"ortho={r['ortho']}", "extraction": f"{r['extraction']} extraction"}
    return f"{base} ({knob.get(axis, axis)})"


def key_label(key: str, r: pd.Series) -> str:
    """An ablation row's value of ``key`` as its table and figure both show it."""
    if key == "factors":
        text = " + ".join(str(r[key]).split("+")) + f" (d={fmt_int(r['width'])})"
    else:
        text = str(r[key])
    return text + (" [default]" if r["default"] else "")


def method_key(m: Any) -> tuple[int, str]:
    """Sort key: METHOD_ORDER (baselines before the mined subspace), unknown methods last."""
    return (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), str(m))


def factor_key(a: Any) -> tuple[int, str]:
    """Sort key: the schema's FACTORS order, unknown factors last."""
    return (FACTORS.index(a) if a in FACTORS else len(FACTORS), str(a))


def layer_depth(layer: str) -> tuple[str, int | None]:
    """("frame" | "global" | other, block index) parsed from a layer name."""
    m = re.search(r"(\w+?)_?blocks\.(\d+)\.", layer)
    if not m:
        return "layers", None
    return m.group(1).split(".")[-1], int(m.group(2))


def metric_label(name: str) -> str:
    """``test/pc_acc`` or ``test__pc_acc`` -> "test point-cloud Acc [scene units]"."""
    split, _, metric = name.replace("__", "/").rpartition("/")
    readable, unit, _ = METRICS.get(metric, (metric, "", True))
    prefix = f"{SPLITS.get(split, split)} " if split else ""
    return f"{prefix}{readable}" + (f" [{unit}]" if unit else "")


def lower_is_better(column: str) -> bool:
    """Direction of a metric column (a gap column follows its metric)."""
    return METRICS.get(column.rpartition("__")[2], ("", "", True))[2]


def axis_label(task: str, value: str = "main", scale: str = "") -> str:
    """Two-line axis label of a task's main metric or its paired change, with units and scale."""
    metric, lower = task_info(task)
    split, _, name = metric.replace("__", "/").rpartition("/")
    readable, unit, _ = METRICS.get(name, (name, "", True))
    unit = f"{unit} {scale}".strip()
    where = f"{SPLITS.get(split, split)} " if split else ""
    better = "lower" if lower else "higher"
    if value == "delta":
        return (f"Δ {where}{readable}\n[{unit}] vs no fine-tuning, same seed\n"
                f"({better} is better)")
    return f"{where}{readable} [{unit}]\n({better} is better)"
