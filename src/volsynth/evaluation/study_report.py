"""The outputs of ``volsynth study run``: DIR/study.json (schema ``study_version`` 1), DIR/study.html, and
DIR/study.md with its plot DIR/study-dice.png (the tables in Markdown, for a document).

study.json::

    {"kind": "augmentation-study-run", "study_version": 1, "name", "spec", "data", "runs": [...],
     "ci_method", "test_method",
     "summary":     {GROUP: {ARM: {"dice"|"nsd": {CLASS: {"mean", "ci", "n_cases"}}}}},
     "comparisons": {GROUP: {ARM: {"dice"|"nsd": {CLASS: {"mean", "ci", "p_wilcoxon", "p_bootstrap"}}}}},
     "large_lesion": {"class", "min_diameter_mm", "test_cases", "summary": {GROUP: {ARM: ...}},
                      "comparisons": {GROUP: {ARM: ...}}},
     "adherence": null | {"generated": [bins], "real_floor": [bins], ...}, "provenance": {...}}

GROUP is each architecture and ``pooled`` (all runs); comparisons are ARM - real, paired (``study_stats``).
"""

from __future__ import annotations

import base64
import html
import platform
import time

import numpy as np

from volsynth import __version__
from volsynth.evaluation.figures import _png, _pyplot
from volsynth.evaluation.report import _table as html_table
from volsynth.evaluation.report import to_json_ready
from volsynth.evaluation.study_spec import StudySpec
from volsynth.evaluation.study_stats import bootstrap_interval, paired_comparison
from volsynth.evaluation.study_units import StudyFolder
from volsynth.io.atomic import atomic_output
from volsynth.io.jsonfile import write_json

STUDY_VERSION = 1
KIND = "augmentation-study-run"
FIGURE_FILE = "study-dice.png"
TEST_METHOD = ("two-sided Wilcoxon signed-rank test over the held-out test cases of each case's difference "
               "(arm - real) averaged over the runs (p_wilcoxon); p_bootstrap: the paired two-level bootstrap "
               "interval inverted")


def _matrix(runs: list[dict], metric: str, name: str, cases: list[int] | None = None) -> np.ndarray:
    rows = [np.array(r["scores"][metric][name], dtype=np.float64) for r in sorted(
        runs, key=lambda r: (r["architecture"], r["seed"]))]
    matrix = np.array(rows)
    return matrix if cases is None else matrix[:, cases]


def summarise_runs(runs: list[dict], spec: StudySpec, cases: list[int] | None = None,
                   classes: list[str] | None = None) -> tuple[dict, dict]:
    """(summary, comparisons) per group, arm, metric and class; ``cases`` restricts to some test cases."""
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    groups = {a: [r for r in runs if r["architecture"] == a] for a in spec.architectures}
    groups["pooled"] = runs
    options = {"replicates": spec.bootstrap, "confidence": spec.confidence}
    summary: dict = {}
    comparisons: dict = {}
    for group, members in groups.items():
        by_arm = {a: [r for r in members if r["arm"] == a] for a in arms}
        names = classes or list(members[0]["scores"]["dice"])
        for arm, arm_runs in by_arm.items():
            for metric in ("dice", "nsd"):
                matrices = {n: _matrix(arm_runs, metric, n, cases) for n in names}
                summary.setdefault(group, {}).setdefault(arm, {})[metric] = {
                    n: bootstrap_interval(m, **options) for n, m in matrices.items()}
                if arm != "real":
                    comparisons.setdefault(group, {}).setdefault(arm, {})[metric] = {
                        n: paired_comparison(m, _matrix(by_arm["real"], metric, n, cases), **options)
                        for n, m in matrices.items()}
    return summary, comparisons


def dice_figure(summary: dict, group: str = "pooled") -> str:
    """A PNG (base64) of Dice per arm with its interval, one panel per class."""
    plt = _pyplot()
    arms = list(summary[group])
    classes = list(summary[group][arms[0]]["dice"])
    fig, axes = plt.subplots(1, len(classes), figsize=(3.2 * len(classes), 3.2), squeeze=False)
    for ax, name in zip(axes[0], classes, strict=True):
        entries = [summary[group][a]["dice"][name] for a in arms]
        means = [e["mean"] if e["mean"] is not None else np.nan for e in entries]
        low = [m - e["ci"][0] if e["mean"] is not None else 0 for m, e in zip(means, entries, strict=True)]
        high = [e["ci"][1] - m if e["mean"] is not None else 0 for m, e in zip(means, entries, strict=True)]
        ax.errorbar(range(len(arms)), means, yerr=[low, high], fmt="o", capsize=4)
        ax.set_xticks(range(len(arms)), arms, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{name} ({'all runs' if group == 'pooled' else group})")
        ax.set_ylim(0, 1)
        ax.set_ylabel("Dice")
    fig.tight_layout()
    return _png(fig)


def _fmt(entry: dict | None, signed: bool = False) -> str:
    if not entry or entry.get("mean") is None:
        return "–"
    form = "{:+.3f}" if signed else "{:.3f}"
    lo, hi = entry["ci"]
    return f"{form.format(entry['mean'])} [{form.format(lo)}, {form.format(hi)}]"


def _p(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


TABLE_HEADERS = ("arm", "class", "Dice [95% CI]", "NSD [95% CI]", "Dice - real [95% CI]", "p Wilcoxon",
                 "p bootstrap")


def _rows(summary: dict, comparisons: dict, group: str) -> list[list[str]]:
    """One row per arm and class: Dice and NSD with their intervals, and the paired difference with real."""
    rows = []
    for arm, metrics in summary.get(group, {}).items():
        for name in metrics["dice"]:
            diff = comparisons.get(group, {}).get(arm, {}).get("dice", {}).get(name)
            rows.append([arm, name, _fmt(metrics["dice"][name]), _fmt(metrics["nsd"][name]),
                         _fmt(diff, signed=True) if diff else "baseline",
                         _p(diff.get("p_wilcoxon") if diff else None), _p(diff.get("p_bootstrap") if diff else None)])
    return rows


def _md_table(headers: tuple[str, ...] | list[str], rows: list[list[str]]) -> str:
    def line(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(headers), line(["---"] * len(headers)), *(line(r) for r in rows)])


def _table(summary: dict, comparisons: dict, group: str) -> str:
    return html_table(TABLE_HEADERS, _rows(summary, comparisons, group))


ADHERENCE_HEADERS = ("size (mm)", "generated n", "lesion found", "median |error| mm", "real n",
                     "real floor median |error| mm")


def _bin_label(edges: list[float], first: bool, last: bool) -> str:
    """A size bin as a reader says it: "< 15", "15–30", "≥ 30"."""
    lo, hi = edges
    return f"< {hi:g}" if first and lo == 0 else f"≥ {lo:g}" if last else f"{lo:g}–{hi:g}"


def _adherence_rows(adherence: dict) -> list[list[str]]:
    pairs = list(zip(adherence["generated"], adherence["real_floor"], strict=True))
    return [[_bin_label(b["bin_mm"], i == 0, i == len(pairs) - 1), str(b["n"]),
             "–" if b["detected"] is None else f"{b['detected']:.0%}", _p(b["median_abs_error_mm"]), str(f["n"]),
             _p(f["median_abs_error_mm"])] for i, (b, f) in enumerate(pairs)]


def _intro(record: dict) -> str:
    return (f"{len(record['data']['train_cases'])} real training cases, {len(record['data']['test_cases'])} "
            f"held-out real test cases; intervals: {record['ci_method']}; test: {record['test_method']}.")


def _large_title(large: dict) -> str:
    return f"Large lesions ({large['class']} ≥ {large['min_diameter_mm']:g} mm, {len(large['test_cases'])} test cases)"


ADHERENCE_TITLE = "Text adherence: stated lesion size against the size measured in the image"
NO_LARGE = "No held-out test case has a lesion this large."


def study_markdown(record: dict, figure: str | None = None) -> str:
    """The study's tables in Markdown (for a document), the plot linked as ``figure`` when given."""
    parts = [f"# Augmentation study: {record['name']}", _intro(record)]
    if figure:
        parts.append(f"![Dice per arm with its 95 % interval]({figure})")
    for group in record["summary"]:
        parts += [f"## {group}", _md_table(TABLE_HEADERS, _rows(record["summary"], record["comparisons"], group))]
    large = record["large_lesion"]
    parts.append(f"## {_large_title(large)}")
    parts.append(_md_table(TABLE_HEADERS, _rows(large["summary"], large["comparisons"], "pooled"))
                 if large["test_cases"] else NO_LARGE)
    if record.get("adherence"):
        parts += [f"## {ADHERENCE_TITLE}", _md_table(ADHERENCE_HEADERS, _adherence_rows(record["adherence"]))]
    return "\n\n".join(parts) + "\n"


def study_html(record: dict, figure_png: str) -> str:
    """The self-contained study page: the plot (``figure_png``, base64 from ``dice_figure``), the table per group,
    the large-lesion table, text adherence."""
    parts = [f"<h1>Augmentation study: {html.escape(str(record['name']))}</h1>",
             f"<p>{html.escape(_intro(record))}</p>",
             f"<img alt='Dice per arm' src='data:image/png;base64,{figure_png}'>"]
    for group in record["summary"]:
        parts += [f"<h2>{html.escape(group)}</h2>", _table(record["summary"], record["comparisons"], group)]
    large = record["large_lesion"]
    parts.append(f"<h2>{html.escape(_large_title(large))}</h2>")
    parts.append(_table(large["summary"], large["comparisons"], "pooled") if large["test_cases"]
                 else f"<p>{NO_LARGE}</p>")
    adherence = record.get("adherence")
    if adherence:
        parts += [f"<h2>{ADHERENCE_TITLE}</h2>", html_table(ADHERENCE_HEADERS, _adherence_rows(adherence))]
    style = "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:2px 6px}</style>"
    return f"<!doctype html><html><head><meta charset='utf-8'>{style}</head><body>{''.join(parts)}</body></html>"


def write_pages(folder: StudyFolder, record: dict) -> None:
    """DIR/study.html, and DIR/study.md with its plot DIR/study-dice.png, from a study.json record."""
    figure = dice_figure(record["summary"])
    with atomic_output(folder.path(FIGURE_FILE)) as tmp:
        tmp.write_bytes(base64.b64decode(figure))
    with atomic_output(folder.path("study.md")) as tmp:
        tmp.write_text(study_markdown(record, FIGURE_FILE))
    with atomic_output(folder.path("study.html")) as tmp:
        tmp.write_text(study_html(record, figure))


def write_outputs(folder: StudyFolder, spec: StudySpec, runs: list[dict], data: dict, adherence: dict | None,
                  command: str | None, synthetic: dict) -> dict:
    """Summarise the runs and write DIR/study.json and DIR/study.html; returns the record."""
    summary, comparisons = summarise_runs(runs, spec)
    large_index = [data["test_cases"].index(c) for c in data["large_test_cases"]]
    large_class = spec.balance.lesion_class
    classes = [large_class] if large_class in runs[0]["scores"]["dice"] else None
    large = {"class": large_class, "min_diameter_mm": spec.balance.min_diameter_mm,
             "test_cases": data["large_test_cases"], "summary": {}, "comparisons": {}}
    if large_index and classes:
        large["summary"], large["comparisons"] = summarise_runs(runs, spec, large_index, classes)
    record = {"kind": KIND, "study_version": STUDY_VERSION, "name": spec.name, "spec": spec.to_dict(), "data": data,
              "ci_method": f"two-level bootstrap ({spec.bootstrap} replicates) over runs and test cases, central "
                           f"{spec.confidence:.0%}; differences paired",
              "test_method": TEST_METHOD, "runs": runs, "summary": summary, "comparisons": comparisons,
              "large_lesion": large, "adherence": adherence,
              "provenance": {"command": command, "volsynth_version": __version__,
                             "python": platform.python_version(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}}
    record = to_json_ready(record)
    write_json(folder.path("study.json"), record)
    write_pages(folder, record)
    return record
