"""metrics.json and a self-contained report.html (figures from ``figures.py`` embedded as base64 PNG).

Every section of the report states what it was computed from; the Provenance section lists the command,
versions, the real data (path and sha256), every generated volume's model, seed and prompt, the
segmentor and the settings, so each number can be reproduced.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np

from volsynth.io.atomic import atomic_output
from volsynth.io.jsonfile import write_json

METRIC_NAMES = {"dice": "Dice", "nsd": "NSD"}
SECTIONS = (("provenance", "Provenance"), ("fid", "FID per plane"), ("mmd", "MMD"),
            ("diversity", "Diversity (MS-SSIM)"), ("mask-faithfulness", "Mask faithfulness (Dice_orig vs Dice_gen)"),
            ("text-adherence", "Text adherence"), ("anatomy", "Anatomy volumes"), ("memorization", "Memorization"),
            ("study", "Augmentation study"), ("montages", "Montages"),
            ("intensity", "Intensity histograms per tissue"))
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1100px;padding:1em 2em;
color:#222;line-height:1.4}
h1{font-size:1.6em;border-bottom:2px solid #345;padding-bottom:.2em}h2{font-size:1.25em;margin-top:1.8em;color:#234;
border-bottom:1px solid #ccd}h3{font-size:1.05em;margin-bottom:.3em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}th,td{border:1px solid #ccd;padding:.25em .6em;
text-align:left;vertical-align:top}th{background:#eef1f6}td.n{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#555;font-size:.9em;background:#f7f7f2;border-left:3px solid #cc9;padding:.3em .6em}
.skip{color:#777;font-style:italic}img{max-width:100%;border:1px solid #ddd;margin:.3em 0}nav a{margin-right:.8em}
.flag{color:#b00;font-weight:bold}code{background:#f2f2f2;padding:0 .2em;word-break:break-all}
.pair{display:flex;gap:1em;flex-wrap:wrap}.pair>div{flex:1 1 480px}
"""


def to_json_ready(value):
    """Plain JSON values: numpy scalars and arrays converted, NaN and infinities as null, paths as strings."""
    if isinstance(value, dict):
        return {str(k): to_json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_json_ready(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def write_metrics(path: Path, metrics: dict) -> Path:
    """Write metrics.json atomically."""
    return write_json(path, to_json_ready(metrics))


# -- HTML ------------------------------------------------------------------------------------------------------

def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    return html.escape(str(value))


def _table(headers: list[str] | None, rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers or [])
    body = "".join("<tr>" + "".join(
        f"<td class='n'>{_fmt(c)}</td>" if isinstance(c, (int, float, np.number)) and not isinstance(c, bool)
        else f"<td>{c if isinstance(c, _Raw) else _fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    head = f"<thead><tr>{head}</tr></thead>" if head else ""
    return f"<table>{head}<tbody>{body}</tbody></table>"


class _Raw(str):
    """HTML that a table cell must not escape."""


def _range(window) -> str:
    return "per-volume percentiles" if window is None else f"[{window[0]:.1f}, {window[1]:.1f}]"


def _ci(entry: dict | None) -> str:
    if not entry or entry.get("mean") is None:
        return "–"
    lo, hi = entry["ci"]
    return f"{entry['mean']:.3f}" + ("" if lo is None else f" [{lo:.3f}, {hi:.3f}]")


def _img(figures: dict, key: str, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{figures[key]}'>" if key in figures else ""


def _skip(section: dict) -> str | None:
    if not section or section.get("computed") is False:
        return f"<p class='skip'>Not computed: {html.escape((section or {}).get('reason', 'no data'))}.</p>"
    return None


def _provenance(m: dict, figures: dict) -> str:
    p = m["provenance"]
    real, gen, seg, opts = p["real"], p["generated"], p.get("segmentor"), p["options"]
    rows = [["command", _Raw(f"<code>{html.escape(str(p.get('command') or '(library call)'))}</code>")],
            ["versions", f"volsynth {p['volsynth_version']}, python {p['python']}, torch {p['torch']}, "
                         f"monai {p['monai']}"],
            ["time", p["time"]], ["seconds", p.get("seconds")],
            ["real data", f"{real['path']} ({real['name']}, {real['layout']}, {real['modality']}, {real['cases']} "
                          f"cases{', prepared folder mapped back to its units' if real['prepared'] else ''})"],
            ["real data sha256", real["sha256"]],
            ["generated", f"{gen['count']} volumes in {gen['path']} ({gen.get('layout', 'volsynth')} layout"
                          + (f", classes from --generated-labels {gen['labels']}" if gen.get("labels") else "") + ")"],
            ["segmentor", "none" if seg is None else f"{seg['path']} ({seg['architecture']}, {seg['spatial_dims']}D, "
                          f"seed {seg['seed']}, {seg['steps']} steps, trained on "
                          f"{len(seg['training_cases'] or [])} cases of {seg['dataset']})"],
            ["feature extractor", opts["extractor"]], ["evaluation seed", opts["seed"]],
            ["comparison shape", str(opts["comparison_shape"])], ["intensity range", _range(opts["intensity_range"])]]
    models = _table(["model", "model sha256", "volumes"],
                    [[g["model"] or "unknown", g["model_sha256"] or "–", g["volumes"]] for g in gen["models"]])
    shown = gen["volumes"][:50]
    volumes = _table(["id", "model", "seed", "steps", "sampler", "mask", "prompt"],
                     [[v["id"], Path(v["model"]).name if v["model"] else "–", v["seed"], v["steps"], v["sampler"],
                       Path(v["mask"]).name if v["mask"] else "–", (v["prompt"] or "")[:160]] for v in shown])
    more = f"<p class='note'>{len(gen['volumes']) - 50} more volumes in metrics.json.</p>" if len(gen["volumes"]) > 50 \
        else ""
    return _table(None, rows) + "<h3>Models</h3>" + models + "<h3>Generated volumes</h3>" + volumes + more


def _fid(m: dict, figures: dict) -> str:
    fid = m["fid"]
    if _skip(fid):
        return _skip(fid)
    floor = fid.get("real_vs_real") or {}
    rows = [[plane, value, floor.get(plane)] for plane, value in fid["fid"].items()]
    rows.append(["mean", fid["fid_mean"], fid.get("real_vs_real_mean")])
    note = f"<p class='note'>{html.escape(fid['note'])}</p>" if fid.get("note") else ""
    return (f"<p>Extractor <code>{html.escape(fid['extractor'])}</code>, {fid['slices_per_volume']} slices per volume "
            f"and plane, intensity range {_range(fid['intensity_range'])}. The floor is the FID between two disjoint "
            "halves of the real set: the score a perfect model would get at this sample size.</p>" + note
            + _table(["plane", "FID generated vs real", "real vs real (floor)"], rows) + _img(figures, "fid", "FID"))


def _mmd(m: dict, figures: dict) -> str:
    mmd = m["mmd"]
    return _skip(mmd) or (_table(["MMD² generated vs real", "MMD² real half vs real half"],
                                 [[mmd["mmd"], mmd.get("real_vs_real")]])
                          + f"<p class='note'>Unbiased Gaussian-kernel MMD² (median bandwidth) on {mmd['features']}; "
                            "it can be slightly negative when the sets agree.</p>")


def _diversity(m: dict, figures: dict) -> str:
    d = m["diversity"]
    return _skip(d) or (_table(["set", "mean pairwise MS-SSIM"], [["real", d["real"]], ["generated", d["generated"]]])
                        + f"<p class='note'>{html.escape(d['note'])}; data range {_fmt(d['data_range'])}.</p>")


def _mask(m: dict, figures: dict) -> str:
    f = m["mask_faithfulness"]
    if _skip(f):
        return _skip(f)
    classes = list(dict.fromkeys([*f["orig"]["dice"], *f["gen"]["dice"]]))
    rows = [[c, f["orig"]["dice"].get(c), f["gen"]["dice"].get(c), f["orig"]["nsd"].get(c), f["gen"]["nsd"].get(c)]
            for c in classes]
    held = "held-out real cases" if f["held_out"] else "real cases (NOT held out: the segmentor saw them)"
    note = f"<p class='note'>{html.escape(f['note'])}</p>" if f.get("note") else ""
    return (f"<p>Dice_orig: segmentor on {len(f['orig']['cases'])} {held} against ground truth (an upper bound). "
            f"Dice_gen: segmentor on {len(f['gen']['cases'])} generated volumes against their conditioning masks. "
            f"NSD at {f['tolerance_mm']} mm. Cases lacking a class do not count for it.</p>" + note
            + _table(["class", "Dice_orig", "Dice_gen", "NSD_orig", "NSD_gen"], rows) + _confusion(f))


def _confusion(f: dict) -> str:
    """Where each class's errors go, real beside generated: a mask class's voxels the segmentor gave another
    class (missed), and voxels it gave the class that the mask calls something else (false)."""
    def shares(parts: dict) -> str:
        return ", ".join(f"{name} {share:.1%}" for name, share in parts.items()) or "–"

    rows = []
    for key, label in (("orig", "real"), ("gen", "generated")):
        for name, c in (f[key].get("confusion") or {}).items():
            rows.append([name, label, c["voxels"], f"{c['missed']:.1%}", shares(c["missed_as"]),
                         f"{c['false']:.1%}", shares(c["false_from"])])
    if not rows:
        return ""
    rows.sort(key=lambda r: r[0])  # a class's real and generated rows side by side
    return ("<h3>Where the errors go</h3><p class='note'>Summed over each set's cases; shares are of the class's "
            "voxels in the masks. Missed: mask voxels of the class the segmentor labels otherwise (as what). "
            "False: voxels the segmentor labels as the class where the mask has another (what the mask has).</p>"
            + _table(["class", "set", "mask voxels", "missed", "missed as", "false", "false where the mask has"],
                     rows))


def _adherence(m: dict, figures: dict) -> str:
    a = m["text_adherence"]
    if _skip(a):
        return _skip(a)
    rows, organs = [], []
    for group, s in a["summary"].items():
        rows.append([group, s["volumes_with_stated_count"], s["count_accuracy"], s["count_mae"], s["diameter_pairs"],
                     s["diameter_mae_mm"], s["diameter_median_ae_mm"]])
        organs += [[group, name, o["n"], o["mae_ml"], o["mean_rel_error"]] for name, o in s["organ_volume"].items()]
    detail = []
    for group, entries in a["per_volume"].items():
        for e in entries[:20]:
            detail.append([group, e["id"], e["stated"]["source"], e["stated"]["lesion_count"],
                           e["measured"]["lesion_count"], ", ".join(f"{d:.0f}" for d in e["stated"]["diameters_mm"]),
                           ", ".join(f"{d:.0f}" for d in e["measured"]["diameters_mm"])])
    return ("<p>Stated: structured facts when a volume carries them (or its prompt is a real report word for word), "
            "else the prompt parsed by rules. Measured: connected components of the lesion classes, diameter = "
            "maximum 3D extent; diameters paired largest with largest. Real rows are the floor of the "
            f"measurement.</p><p class='note'>{html.escape(a['note'])}</p>"
            + _table(["set / measured on", "volumes with stated count", "count accuracy", "count MAE",
                      "diameter pairs", "diameter MAE (mm)", "diameter median AE (mm)"], rows)
            + ("<h3>Organ volumes stated in the text</h3>" + _table(["set / measured on", "organ", "n", "MAE (ml)",
                                                                      "mean relative error"], organs) if organs else "")
            + "<h3>Per volume (first 20 per row group)</h3>"
            + _table(["set / measured on", "id", "stated from", "stated count", "measured count",
                      "stated diameters (mm)", "measured diameters (mm)"], detail))


def _anatomy(m: dict, figures: dict) -> str:
    a = m["anatomy_volumes"]
    if _skip(a):
        return _skip(a)
    def cell(s):
        return "–" if s is None else f"{s['mean_ml']:.1f} ± {s['sd_ml']:.1f} (n={s['n']})"
    names = list(dict.fromkeys([*a["real"], *a["generated"]]))
    return ("<p>Volume (ml) of every class in the real label maps and in the generated label maps (or the "
            "segmentor's predictions), e.g. the airway volume MedSyn reports.</p>"
            + _table(["class", "real mean ± SD (ml)", "generated mean ± SD (ml)"],
                     [[n, cell(a["real"].get(n)), cell(a["generated"].get(n))] for n in names]))


def _memorization(m: dict, figures: dict) -> str:
    mem = m["memorization"]
    if _skip(mem):
        return _skip(mem)
    s = mem["settings"]
    rows = [[e["id"], e["ssim"]["nearest"], e["ssim"]["similarity"],
             _Raw("<span class='flag'>yes</span>") if e["ssim"]["flagged"] else "no", e["feature_cosine"]["nearest"],
             e["feature_cosine"]["similarity"],
             _Raw("<span class='flag'>yes</span>") if e["feature_cosine"]["flagged"] else "no"]
            for e in mem["per_volume"]]
    which = ("training volumes (" + html.escape(str(mem.get("reference_path"))) + ")"
             if mem.get("reference") == "training" else "real volumes (no training set given: --training)")
    return (f"<p>Nearest of {s['training_volumes']} {which} for each generated one, by 3D SSIM (volumes "
            f"resized to {s['size']}³) and by cosine of standardised <code>{html.escape(s['extractor'])}</code> "
            f"features. Threshold ({s['threshold_rule']} of real-vs-real nearest-neighbour similarities): SSIM "
            f"{mem['thresholds']['ssim']:.4f}, cosine {mem['thresholds']['feature_cosine']:.4f}. "
            f"<b>{mem['near_copies']}</b> of {len(mem['per_volume'])} generated volumes are near-copies (flagged by "
            "both measures).</p>"
            + _img(figures, "memorization", "memorisation")
            + _table(["generated", "nearest (SSIM)", "SSIM", "flag", "nearest (features)", "cosine", "flag"], rows))


def _study(m: dict, figures: dict) -> str:
    st = m["study"]
    if st.get("kind") != "augmentation-study":
        return _skip(st) or ""
    d, s = st["data"], st["settings"]
    rows, per_class = [], []
    for group, entry in st["summary"].items():
        for metric in ("dice", "nsd"):
            rows.append([group, METRIC_NAMES[metric], _ci(entry["real"][metric]), _ci(entry["real+synthetic"][metric]),
                         _ci(entry["difference"][metric])])
            for name in entry["real"]["per_class"][metric]:
                per_class.append([group, METRIC_NAMES[metric], name, _ci(entry["real"]["per_class"][metric][name]),
                                  _ci(entry["real+synthetic"]["per_class"][metric][name]),
                                  _ci(entry["difference"]["per_class"][metric][name])])
    return (f"<p>{len(d['train_cases'])} real training cases vs the same plus {len(d['synthetic_cases'])} synthetic "
            f"pairs from <code>{html.escape(d['generated'])}</code>; {len(d['test_cases'])} held-out real test cases "
            f"of <code>{html.escape(d['real'])}</code>; architectures {', '.join(s['architectures'])}; seeds "
            f"{s['seeds']}. Mean over classes per case. CI: {html.escape(st['ci_method'])}. Command: "
            f"<code>{html.escape(str(st['provenance'].get('command') or '(library call)'))}</code>.</p>"
            + _table(["architecture", "metric", "real [95% CI]", "real+synthetic [95% CI]", "difference [95% CI]"],
                     rows) + _img(figures, "study", "study")
            + "<h3>Per class</h3>" + _table(["architecture", "metric", "class", "real", "real+synthetic",
                                             "difference"], per_class))


def _montages(m: dict, figures: dict) -> str:
    if "montage_real" not in figures and "montage_generated" not in figures:
        return "<p class='skip'>Not computed: no volumes.</p>"
    return ("<p>Axial, coronal and sagittal planes through the centre of the labelled voxels (radiological "
            "convention), label map overlaid (generated: the conditioning mask, or the segmentor's prediction "
            "marked 'pred.').</p><div class='pair'>"
            f"<div><h3>Real</h3>{_img(figures, 'montage_real', 'real')}</div>"
            f"<div><h3>Generated</h3>{_img(figures, 'montage_generated', 'generated')}</div></div>")


def _intensity(m: dict, figures: dict) -> str:
    i = m["intensity"]
    if _skip(i):
        return _skip(i)
    rows = [[n, r["real_mean"], r["real_sd"], r["generated_mean"], r["generated_sd"], r["wasserstein"]]
            for n, r in i["per_tissue"].items()]
    return ("<p>Intensities inside each class of the label maps (generated: mask or prediction), "
            "in the volumes' units.</p>" + _img(figures, "intensity", "intensity histograms")
            + _table(["tissue", "real mean", "real SD", "generated mean", "generated SD", "Wasserstein distance"],
                     rows))


RENDERERS = {"provenance": _provenance, "fid": _fid, "mmd": _mmd, "diversity": _diversity,
             "mask-faithfulness": _mask, "text-adherence": _adherence, "anatomy": _anatomy,
             "memorization": _memorization, "study": _study, "montages": _montages, "intensity": _intensity}


def render_report(metrics: dict, figures: dict[str, str]) -> str:
    """The report as one HTML string (every section present; sections without data say why)."""
    nav = "".join(f"<a href='#{key}'>{html.escape(title)}</a>" for key, title in SECTIONS)
    body = "".join(f"<section id='{key}'><h2>{html.escape(title)}</h2>{RENDERERS[key](metrics, figures)}</section>"
                   for key, title in SECTIONS)
    real, gen = metrics["provenance"]["real"], metrics["provenance"]["generated"]
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>volsynth evaluation report</title>"
            f"<style>{STYLE}</style></head><body><h1>volsynth evaluation report</h1>"
            f"<p>{gen['count']} generated volumes against {real['cases']} real cases of "
            f"<code>{html.escape(real['path'])}</code>.</p><nav>{nav}</nav>{body}</body></html>\n")


def write_report(path: Path, metrics: dict, figures: dict[str, str]) -> Path:
    """Write report.html atomically."""
    with atomic_output(Path(path)) as tmp:
        tmp.write_text(render_report(to_json_ready(metrics), figures), encoding="utf-8")
    return Path(path)
