"""One PNG with a panel per series of the scaling study, drawn from its JSON figures."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI

# The backend is chosen before pyplot is imported.
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter, LogLocator

LEFT, RIGHT = "tab:blue", "tab:red"
_THOUSANDS = FuncFormatter(lambda value, _: f"{value:,.0f}")
_PLAIN = FuncFormatter(lambda value, _: f"{value:,.0f}" if value >= 10 else f"{value:g}")


def _plain_log(*axes: Axes) -> None:
    """Log scale on y with numbers written out (1, 10, 1,000), not powers of ten."""
    for axis in axes:
        axis.set_yscale("log")
        # 1, 2, 5, 10, ...: a panel whose figures stay within one decade still gets numbers.
        axis.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.yaxis.set_major_formatter(_PLAIN)
        axis.yaxis.set_minor_formatter(FuncFormatter(lambda *_: ""))


def draw(figures: dict[str, Any], path: str) -> None:
    series = figures["series"]
    fig, axes = plt.subplots(2, 3, figsize=(17, 10))
    panels = (
        ("processes", _processes),
        ("group", _group),
        ("size", _size),
        ("backlog", _backlog),
        ("memory", _memory),
        ("processes", _cpu),
    )
    for ax, (name, panel) in zip(axes.flat, panels, strict=True):
        data = series.get(name)
        if not data or "error" in data:
            ax.set_axis_off()
            ax.text(0.5, 0.5, f"{name}: {data.get('error', 'not run') if data else 'not run'}", ha="center")
            continue
        panel(ax, data)
        ax.grid(True, which="major", alpha=0.3)
    postgres = next((line for line in figures["header"] if line.startswith("postgresql:")), "")
    fig.suptitle(
        f"channel_layer_pg: how cost grows, on {figures.get('cpus', '?')} CPUs shared with other work "
        f"(PostgreSQL {postgres.removeprefix('postgresql: ').split(' (')[0]} on the same machine)",
        fontsize=14,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _twin(ax: Axes, label: str) -> Axes:
    other = ax.twinx()
    other.set_ylabel(label, color=RIGHT)
    other.tick_params(axis="y", colors=RIGHT)
    return other


def _left(ax: Axes, label: str) -> None:
    ax.set_ylabel(label, color=LEFT)
    ax.tick_params(axis="y", colors=LEFT)


def _processes(ax: Axes, data: dict[str, Any]) -> None:
    rows = data["rows"]
    n = [int(row["processes"]) for row in rows]
    ax.plot(n, [row["msg_s"] for row in rows], "o-", color=LEFT, label="msg/s, all processes")
    passes = data["raw"].get("runs", [])
    ax.plot([r["processes"] for r in passes], [r["msg_s"] for r in passes], ".", color=LEFT, alpha=0.5)
    ax.set_xscale("log", base=2)
    ax.set_xticks(n, [str(x) for x in n])
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_formatter(_THOUSANDS)
    _left(ax, "messages/s, all processes (dots: each pass)")
    ax.set_xlabel("app-server processes (each sends and receives)")
    latency = _twin(ax, "one hop, ms")
    latency.plot(n, [row["p50_ms"] for row in rows], "s--", color=RIGHT, label="p50")
    latency.plot(n, [row["p99_ms"] for row in rows], "^:", color=RIGHT, label="p99")
    latency.set_ylim(bottom=0)
    latency.legend(loc="center right")
    ax.set_title("1. processes: throughput and latency")


def _group(ax: Axes, data: dict[str, Any]) -> None:
    rows = data["rows"]
    time_axis = _twin(ax, "group_send to last delivery, ms")
    for processes, marker in ((1, "o"), (2, "s")):
        mine = [row for row in rows if row["processes"] == processes]
        members = [row["members"] for row in mine]
        label = f"members in {processes} process{'es' if processes > 1 else ''}"
        ax.plot(members, [r["deliveries_s"] for r in mine], marker + "-", color=LEFT, label=label)
        time_axis.plot(members, [r["last_ms"] for r in mine], marker + "--", color=RIGHT)
    for axis in (ax, time_axis):
        axis.set_xscale("log")
    _plain_log(ax, time_axis)
    ax.xaxis.set_major_formatter(_THOUSANDS)
    _left(ax, "deliveries/s (solid)")
    time_axis.set_ylabel("group_send to last delivery, ms (dashed)", color=RIGHT)
    ax.set_xlabel("group members (process-local)")
    ax.legend(loc="upper left")
    ax.set_title("2. group size: fan-out rate and time to deliver")


def _size(ax: Axes, data: dict[str, Any]) -> None:
    rows = data["rows"]
    sizes = [row["bytes"] for row in rows]
    ax.plot(sizes, [row["p50_ms"] for row in rows], "o-", color=LEFT, label="round trip p50")
    ax.set_xscale("log")
    _plain_log(ax)
    ax.set_xticks(sizes, [row["size"] for row in rows])
    ax.minorticks_off()
    _left(ax, "send + receive round trip p50, ms (solid)")
    ax.set_xlabel("message size")
    rate = _twin(ax, "stream MB/s (dashed)")
    rate.plot(sizes, [row["mb_s"] for row in rows], "s--", color=RIGHT)
    _plain_log(rate)
    ax.set_title("3. message size: latency and bandwidth")


def _backlog(ax: Axes, data: dict[str, Any]) -> None:
    rows = data["rows"]
    rate = _twin(ax, "stream msg/s (dashed)")
    for variant, marker in (("other", "o"), ("same", "s"), ("dead", "^")):
        mine = [row for row in rows if row["variant"] == variant]
        if not mine:
            continue
        levels = [row["rows"] for row in mine]
        ax.plot(levels, [r["p50_ms"] for r in mine], marker + "-", color=LEFT, label=mine[0]["where"])
        rate.plot(levels, [r["msg_s"] for r in mine], marker + "--", color=RIGHT)
    for axis in (ax, rate):
        axis.set_xscale("symlog", linthresh=1000)
    _plain_log(ax, rate)
    levels = sorted({row["rows"] for row in rows})
    ax.set_xticks(levels, [_short(level) for level in levels])
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda *_: ""))
    _left(ax, "round trip p50, ms (solid)")
    ax.set_xlabel("rows already queued (0, then log scale)")
    ax.legend(loc="center left", title="backlog rows", fontsize="small")
    ax.set_title("4. backlog: latency and throughput on a fresh channel")


def _short(count: int) -> str:
    for suffix, scale in (("M", 1_000_000), ("k", 1_000)):
        if count >= scale:
            return f"{count / scale:g}{suffix}"
    return str(count)


def _memory(ax: Axes, data: dict[str, Any]) -> None:
    rows = {row["case_key"]: row for row in data["rows"] if "case_key" in row}
    rows_axis = _twin(ax, "this run's rows in the table (dashed)")
    colors = ("tab:blue", "tab:green", "tab:purple")
    for (case, samples), color in zip(data["raw"].items(), colors, strict=False):
        label = rows[case]["case"] + " receiving" if case in rows else case
        ax.plot(samples["t"], samples["rss"], "-", color=color, label=label)
        rows_axis.plot(samples["rows_t"], samples["rows"], "--", color=color)
    ax.set_xlabel("seconds since the first group_send")
    ax.set_ylabel("receiving process RSS, MB (solid)")
    ax.set_ylim(bottom=0)
    rows_axis.set_ylim(bottom=0)
    ax.legend(loc="lower right", title="members")
    ax.set_title("5. memory of a receiving process under fan-out")


def _cpu(ax: Axes, data: dict[str, Any]) -> None:
    rows = [row for row in data["rows"] if row.get("py_cores") is not None]
    labels = [str(int(row["processes"])) for row in rows]
    pg = [row.get("pg_cores") or 0.0 for row in rows]
    py = [row["py_cores"] for row in rows]
    other = [max(0.0, row["machine_cores"] - p - q) for row, p, q in zip(rows, pg, py, strict=True)]
    ax.bar(labels, pg, label="PostgreSQL (this database)", color="tab:blue")
    ax.bar(labels, py, bottom=pg, label="benchmark's Python processes", color="tab:orange")
    ax.bar(
        labels,
        other,
        bottom=[p + q for p, q in zip(pg, py, strict=True)],
        label="rest of machine",
        color="tab:gray",
    )
    ax.plot(labels, [row.get("cpu_wait") or 0.0 for row in rows], "kD--", label="waiting for a CPU")
    ax.set_xlabel("app-server processes (series 1)")
    ax.set_ylabel("cores (CPU seconds per second)")
    ax.legend(loc="upper left", fontsize="small")
    ax.set_title("CPU during series 1: where the cores went")
