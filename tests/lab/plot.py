#!/usr/bin/env python3
"""Pictures of a lab run, as PNG files: the demo's timeline, the idle-death matrix, and the
soak's sampled series over time (plot_soak, drawn by soak.py).

    .venv/bin/python tests/lab/plot.py demo .lab/demo-timeline.json .lab/demo.png
    .venv/bin/python tests/lab/plot.py matrix .lab/matrix-short.csv .lab/matrix-short.png

Pure functions, data in, PNG out: demo.py and matrix.py hand over what they recorded, and the
command line above redraws a recorded run (a matrix with the .csv's keys as labels: matrix.py
adds the chains' timings). matplotlib is imported on first use only (Agg, no display), so the
rest of the lab imports without it.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

WIDTH_IN = 14.0  # at DPI: 1400 px, what GitHub shows without scaling much
DPI = 100
PALETTE_COLORS = 64
NOTE_WIDTH = 165  # characters per line of the small print under a picture
OK_COLOR = "#2e7d32"
ERROR_COLOR = "#c62828"
KEEPALIVE_COLOR = "#1565c0"
CONNECTION_COLORS = ("#b0bec5", "#78909c")  # alternate, so back-to-back connections show


def _pyplot():
    """matplotlib.pyplot on the Agg backend (files only), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 12, "savefig.facecolor": "white",
                         "figure.facecolor": "white"})
    return plt


# -- the demo: one timeline per client run ------------------------------------------------
@dataclass
class Command:
    at: float          # seconds since the run's start
    ok: bool
    error: str = ""
    warmup: bool = False


@dataclass
class Connection:
    opened: float                   # seconds since the run's start, as Redis saw it
    closed: Optional[float] = None  # None: still open when the run ended


@dataclass
class Timeline:
    """One client run: its commands (client side), and what Redis saw of it."""
    label: str
    commands: List[Command] = field(default_factory=list)
    keepalives: List[float] = field(default_factory=list)  # PINGs that reached Redis
    connections: List[Connection] = field(default_factory=list)

    @property
    def rounds(self) -> List[Command]:
        return [c for c in self.commands if not c.warmup]


def timelines_to_json(timelines: Sequence[Timeline], title: str, note: str = "") -> str:
    return json.dumps({"title": title, "note": note,
                       "timelines": [asdict(t) for t in timelines]}, indent=1)


def timelines_from_json(text: str) -> Tuple[List[Timeline], str, str]:
    data = json.loads(text)
    out = []
    for t in data["timelines"]:
        out.append(Timeline(t["label"], [Command(**c) for c in t["commands"]],
                            list(t["keepalives"]), [Connection(**c) for c in t["connections"]]))
    return out, data.get("title", ""), data.get("note", "")


def _timeline_title(t: Timeline) -> str:
    rounds = t.rounds
    errors = [c for c in rounds if not c.ok]
    text = (f"{t.label}: errors on {len(errors)}/{len(rounds)} commands after idle, "
            f"{len(t.connections)} connection(s) to Redis, {len(t.keepalives)} keepalive(s)")
    if errors:
        text += f"\nerror: {errors[0].error}"
    return text


def plot_demo(timelines: Sequence[Timeline], png: Path, *, title: str, note: str = "") -> Path:
    """One row per client run, sharing the time axis: commands (ok / error), the keepalive
    PINGs Redis received, and each connection's life as Redis saw it."""
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    ends = [0.0]
    for t in timelines:
        ends += [c.at for c in t.commands] + list(t.keepalives)
        ends += [c.closed for c in t.connections if c.closed is not None]
    end = max(ends) + 0.5
    note = textwrap.fill(note, NOTE_WIDTH)
    head_in, row_in, gap_in = 1.2, 1.5, 0.8
    foot_in = 0.75 + (0.2 * (note.count("\n") + 1) if note else 0)
    height = head_in + len(timelines) * row_in + (len(timelines) - 1) * gap_in + foot_in
    fig, axes = plt.subplots(len(timelines), 1, sharex=True, squeeze=False,
                             figsize=(WIDTH_IN, height))
    fig.subplots_adjust(left=0.145, right=0.985, top=1 - (head_in + 0.45) / height,
                        bottom=foot_in / height, hspace=gap_in / row_in)
    lanes = {"commands": 2, "keepalives": 1, "connections": 0}
    for ax, t in zip(axes[:, 0], timelines):
        for i, c in enumerate(t.connections):
            stop = end if c.closed is None else c.closed
            ax.broken_barh([(c.opened, stop - c.opened)], (lanes["connections"] - 0.22, 0.44),
                           facecolors=CONNECTION_COLORS[i % 2], edgecolor="#37474f", lw=0.8)
        if t.keepalives:
            ax.plot(t.keepalives, [lanes["keepalives"]] * len(t.keepalives), "|",
                    color=KEEPALIVE_COLOR, ms=16, mew=2)
        for c in t.commands:
            if c.ok:
                ax.plot(c.at, lanes["commands"], "o", color=OK_COLOR, ms=10,
                        mfc="white" if c.warmup else OK_COLOR, mew=2)
            else:
                ax.plot(c.at, lanes["commands"], "X", color=ERROR_COLOR, ms=13)
        ax.set_yticks(list(lanes.values()))
        ax.set_yticklabels(["client commands", "keepalive PINGs", "connections to Redis"])
        ax.set_ylim(-0.6, 2.6)
        ax.set_title(_timeline_title(t), loc="left", fontsize=12)
        ax.grid(axis="x", color="#e0e0e0")
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    last = axes[-1, 0]
    last.set_xlim(-0.3, end)
    last.set_xlabel("time since the client's first command (s)")
    step = 1 if end <= 30 else 5 if end <= 150 else 30
    last.set_xticks([x for x in range(0, int(end) + 1, step)])
    handles = [
        Line2D([], [], ls="", marker="o", color=OK_COLOR, mfc="white", mew=2, ms=9,
               label="warm-up command: ok"),
        Line2D([], [], ls="", marker="o", color=OK_COLOR, ms=9, label="command after idle: ok"),
        Line2D([], [], ls="", marker="X", color=ERROR_COLOR, ms=11,
               label="command after idle: error"),
        Line2D([], [], ls="", marker="|", color=KEEPALIVE_COLOR, ms=14, mew=2,
               label="filter keepalive PING"),
        Patch(facecolor=CONNECTION_COLORS[0], edgecolor="#37474f",
              label="connection to Redis open"),
    ]
    fig.suptitle(title, x=0.01, y=1 - 0.12 / height, ha="left", va="top", fontsize=15,
                 fontweight="bold")
    fig.legend(handles=handles, loc="upper left", ncol=len(handles), frameon=False,
               bbox_to_anchor=(0.005, 1 - 0.5 / height), fontsize=11.5)
    if note:
        fig.text(0.01, 0.1 / height, note, fontsize=10.5, color="#424242", ha="left",
                 va="bottom")
    return _save(fig, png)


# -- the idle-death matrix -----------------------------------------------------------------
@dataclass
class MatrixCell:
    fault: str
    fault_title: str
    chain: str
    client: str
    rounds: int
    errors: int
    error_texts: Dict[str, int]
    bites: bool          # the fault bit this client through tcp_proxy alone
    claim: str = ""      # the filter column's verdict (PASS, FAIL, N/A, VACUOUS)


def read_matrix_csv(path: Path) -> List[MatrixCell]:
    """The cells of a matrix.py .csv, in its order."""
    cells = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            texts: Dict[str, int] = {}
            for part in filter(None, (row.get("error_texts") or "").split(" | ")):
                m = re.match(r"^(\d+)× (.*)$", part)
                if m:
                    texts[m.group(2)] = texts.get(m.group(2), 0) + int(m.group(1))
            cells.append(MatrixCell(row["fault"], row["fault_title"], row["chain"],
                                    row["client"], int(row["rounds"] or 0),
                                    int(row["errors"] or 0), texts,
                                    row.get("bites_tcp_proxy_alone") == "yes",
                                    row.get("claim") or ""))
    return cells


def error_class(text: str) -> str:
    """The exception's class, the part before the first colon: a short error kind."""
    return text.split(":", 1)[0].strip()


def _cell_color(c: MatrixCell) -> str:
    if c.rounds == 0:
        return "#e0e0e0"
    share = c.errors / c.rounds
    return "#a5d6a7" if share == 0 else "#ef9a9a" if share == 1 else "#ffcc80"


def plot_matrix(cells: Sequence[MatrixCell], png: Path, *, title: str, note: str = "",
                chain_titles: Optional[Dict[str, str]] = None,
                client_titles: Optional[Dict[str, str]] = None,
                kind: Callable[[str], str] = error_class) -> Path:
    """A grid per fault: clients down, chains across; each cell errors/rounds on the first
    command after the idle spell, its error kinds, and (filter column) the claim's verdict."""
    plt = _pyplot()
    from matplotlib.patches import Patch, Rectangle

    chain_titles, client_titles = chain_titles or {}, client_titles or {}
    faults: List[Tuple[str, str]] = []
    chains: List[str] = []
    clients: List[str] = []
    grid: Dict[Tuple[str, str, str], MatrixCell] = {}
    for c in cells:
        if (c.fault, c.fault_title) not in faults:
            faults.append((c.fault, c.fault_title))
        chains += [c.chain] if c.chain not in chains else []
        clients += [c.client] if c.client not in clients else []
        grid[(c.fault, c.chain, c.client)] = c
    # Client labels on the left, in cell widths (a cell is 1 × 1); fault titles run on a row
    # of their own, across the cells.
    label_w = max(1.4, 0.1 + max(len(client_titles.get(c, c)) for c in clients) * 0.047)
    n_rows = len(faults) * (len(clients) + 1)
    note = textwrap.fill(note, NOTE_WIDTH)
    head_in, row_in = 1.8, 0.33
    foot_in = 0.2 + (0.2 * (note.count("\n") + 1) if note else 0)
    fig_h = head_in + row_in * n_rows + foot_in
    fig = plt.figure(figsize=(WIDTH_IN, fig_h))
    ax = fig.add_axes((0.005, foot_in / fig_h, 0.99, row_in * n_rows / fig_h))
    ax.set_xlim(-label_w, len(chains))
    ax.set_ylim(n_rows, 0)
    ax.axis("off")
    for j, chain in enumerate(chains):
        ax.text(j + 0.5, -0.2, textwrap.fill(chain_titles.get(chain, chain), 22), ha="center",
                va="bottom", fontsize=11.5, fontweight="bold", clip_on=False)
    y = 0
    for fault, fault_title in faults:
        ax.text(-label_w + 0.05, y + 0.6, f"({fault}) {fault_title}", ha="left", va="center",
                fontsize=12.5, fontweight="bold")
        y += 1
        for client in clients:
            ax.text(-0.06, y + 0.5, client_titles.get(client, client), ha="right",
                    va="center", fontsize=11.5)
            for j, chain in enumerate(chains):
                c = grid.get((fault, chain, client))
                if c is None:
                    continue
                ax.add_patch(Rectangle((j + 0.015, y + 0.05), 0.97, 0.9,
                                       facecolor=_cell_color(c), edgecolor="none"))
                ax.text(j + 0.5, y + 0.5, _cell_text(c, chain == chains[0], kind),
                        ha="center", va="center", fontsize=11)
            y += 1
    legend = [Patch(facecolor="#a5d6a7", label="no error"),
              Patch(facecolor="#ffcc80", label="errors in some rounds"),
              Patch(facecolor="#ef9a9a", label="errors in every round"),
              Patch(facecolor="#e0e0e0", label="no measurement")]
    fig.suptitle(title, x=0.01, ha="left", fontsize=15, fontweight="bold",
                 y=1 - 0.12 / fig_h, va="top")
    fig.legend(handles=legend, loc="upper left", ncol=len(legend), frameon=False,
               bbox_to_anchor=(0.005, 1 - 0.45 / fig_h), fontsize=11.5)
    fig.text(0.01, 1 - 0.9 / fig_h, "cell: errors/rounds and their kinds;  (no bite): the "
             "fault did not reach this client through tcp_proxy alone;  [PASS] etc.: the "
             "verdict on the filter's claim", fontsize=11,
             ha="left", va="top", color="#424242")
    if note:
        fig.text(0.01, 0.12 / fig_h, note, fontsize=10.5, color="#424242", ha="left",
                 va="bottom")
    return _save(fig, png)


def _cell_text(c: MatrixCell, first_chain: bool, kind: Callable[[str], str]) -> str:
    if c.rounds == 0:
        return "harness error"
    text = f"{c.errors}/{c.rounds}"
    kinds = sorted({kind(t) for t in c.error_texts})
    if kinds:
        text += " " + ",".join(kinds)
    if first_chain and not c.bites:
        text += "  (no bite)"
    if c.claim:
        text += f"  [{c.claim}]"
    return text


# -- the soak: sampled series over time ----------------------------------------------------
SOAK_FAULT_COLORS = ("#fff59d", "#b3e5fc", "#ffccbc", "#c5e1a5", "#e1bee7", "#cfd8dc",
                     "#ffe0b2", "#d7ccc8")
SOAK_LINE_COLORS = ("#1565c0", "#c62828", "#2e7d32", "#6a1b9a", "#ef6c00", "#37474f")


@dataclass
class SoakPanel:
    title: str
    lines: Dict[str, Sequence[float]]  # label → a value per sample time
    from_zero: bool = True             # False: the axis fits the data (small drifts show)
    colors: Dict[str, str] = field(default_factory=dict)  # label → colour (else in turn)


def plot_soak(t: Sequence[float], panels: Sequence[SoakPanel],
              windows: Sequence[Tuple[float, float, str]], checkpoints: Sequence[float],
              png: Path, *, title: str, note: str = "",
              fault_titles: Optional[Dict[str, str]] = None) -> Path:
    """One panel per SoakPanel, sharing the time axis t (seconds); the fault windows (start,
    end, fault) shaded on every panel, a colour per fault; checkpoints as dotted lines."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    fault_titles = fault_titles or {}
    faults: List[str] = []
    for _, _, f in windows:
        faults += [f] if f not in faults else []
    colors = {f: SOAK_FAULT_COLORS[i % len(SOAK_FAULT_COLORS)] for i, f in enumerate(faults)}
    note = textwrap.fill(note, NOTE_WIDTH)
    head_in, row_in = 1.75, 1.75
    foot_in = 0.7 + (0.2 * (note.count("\n") + 1) if note else 0)
    height = head_in + row_in * len(panels) + foot_in
    fig, axes = plt.subplots(len(panels), 1, sharex=True, squeeze=False,
                             figsize=(WIDTH_IN, height))
    fig.subplots_adjust(left=0.07, right=0.80, top=1 - head_in / height,
                        bottom=foot_in / height, hspace=0.32)
    end = max(list(t) + [w[1] for w in windows] + [1.0])
    for ax, panel in zip(axes[:, 0], panels):
        for start, stop, f in windows:
            ax.axvspan(start, stop, color=colors[f], lw=0)
        for x in checkpoints:
            ax.axvline(x, color="#9e9e9e", lw=0.8, ls=":")
        for i, (label, values) in enumerate(panel.lines.items()):
            color = panel.colors.get(label, SOAK_LINE_COLORS[i % len(SOAK_LINE_COLORS)])
            ax.plot(t, values, color=color, lw=1.4, label=label)
        ax.set_title(panel.title, loc="left", fontsize=12)
        ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), frameon=False, fontsize=10)
        ax.grid(axis="y", color="#e0e0e0")
        ax.set_axisbelow(True)
        if panel.from_zero:
            ax.set_ylim(bottom=0)
        else:
            ax.margins(y=0.3)
            ax.ticklabel_format(axis="y", style="plain", useOffset=False)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    last = axes[-1, 0]
    last.set_xlim(0, end)
    last.set_xlabel("time since the soak started (s)")
    handles = [Patch(facecolor=colors[f], label=fault_titles.get(f, f)) for f in faults]
    fig.suptitle(title, x=0.01, y=1 - 0.12 / height, ha="left", va="top", fontsize=15,
                 fontweight="bold")
    if handles:
        fig.legend(handles=handles, loc="upper left", ncol=min(3, len(handles)), frameon=False,
                   bbox_to_anchor=(0.005, 1 - 0.5 / height), fontsize=10.5)
    if note:
        fig.text(0.01, 0.1 / height, note, fontsize=10.5, color="#424242", ha="left",
                 va="bottom")
    return _save(fig, png)


def _save(fig, png: Path) -> Path:
    """Write a palette PNG: a few flat colours and text need no more, and it keeps the file
    small enough for a README."""
    import io

    import matplotlib.pyplot as plt
    from PIL import Image

    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=DPI, format="png")
    plt.close(fig)
    buf.seek(0)
    with Image.open(buf) as img:
        img.convert("RGB").quantize(colors=PALETTE_COLORS).save(png, optimize=True)
    return png


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("demo", "matrix"))
    ap.add_argument("data", type=Path, help="demo: the timeline .json; matrix: the .csv")
    ap.add_argument("png", type=Path)
    args = ap.parse_args(argv)
    if args.what == "demo":
        timelines, title, note = timelines_from_json(args.data.read_text())
        plot_demo(timelines, args.png, title=title, note=note)
    else:
        plot_matrix(read_matrix_csv(args.data), args.png,
                    title=f"Idle-death matrix ({args.data.name})")
    print(args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
