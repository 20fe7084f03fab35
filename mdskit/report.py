"""A self-contained HTML report of a batch of predictions.

Every picture is embedded as a base64 PNG data URI and the style sheet is
inline, so the single file opens offline and can be mailed or archived.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_text

# Pictures shown per case, in order, with their captions.
PICTURES = (
    ("image", "input"),
    ("overlay", "mask overlay"),
    ("similarity", "similarity map (RVLS2M)"),
    ("agreement", "agreement of the sampled paths"),
)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
section { border-top: 1px solid #ccc; padding: 1em 0; }
figure { display: inline-block; margin: 0 1em 1em 0; vertical-align: top; }
figure img { max-width: 320px; max-height: 320px; image-rendering: pixelated; }
figcaption { font-size: 0.85em; color: #555; }
dt { font-weight: bold; } dd { margin: 0 0 0.5em 0; }
.failure { color: #a00; }
"""


def data_uri(path: Path) -> str:
    """Return a PNG file as a ``data:image/png;base64`` URI."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def render_report(cases: list[tuple[dict[str, Any], dict[str, Path]]], title: str = "mdskit predictions") -> str:
    """Render the report of ``(record, output files)`` pairs as one HTML document."""
    sections = [_render_case(number, record, files) for number, (record, files) in enumerate(cases, start=1)]
    method = html.escape(str(cases[0][0].get("method", ""))) if cases else ""
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n<p>Method {method}, {len(cases)} case(s).</p>\n"
            + "\n".join(sections) + "\n</body>\n</html>\n")


def _render_case(number: int, record: dict[str, Any], files: dict[str, Path]) -> str:
    source = record.get("input", {})
    figures = []
    for key, caption in PICTURES:
        if key in files:
            figures.append(f"<figure><img src=\"{data_uri(files[key])}\" alt=\"{html.escape(caption)}\">"
                           f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    if record.get("similarity_map", {}).get("available") is False:
        figures.append(f"<p>{html.escape(record['similarity_map']['reason'])}.</p>")
    details = [
        ("Question", record.get("question")),
        ("Chain of thought", record.get("chain_of_thought")),
        ("Diagnosis", record.get("diagnosis") or record.get("diagnosis_text") or "none"),
        ("Test-time scaling", f"{record.get('ttss')} ({record.get('tts_params', {}).get('num_paths')} path(s))"),
        ("Agreement", _agreement_text(record.get("agreement"))),
        ("Mask area", f"{record.get('mask_area_pixels')} pixels ({100 * record.get('mask_area_fraction', 0):.1f}%)"),
        ("Intensity mapping", _intensity_text(source.get("intensity", {}))),
        ("Time", f"{record.get('seconds')} s"),
    ]
    rows = "".join(f"<dt>{html.escape(name)}</dt><dd>{html.escape(str(value))}</dd>" for name, value in details)
    failure = record.get("failure")
    failure_html = f"<p class=\"failure\">{html.escape(str(failure))}</p>" if failure else ""
    return (f"<section>\n<h2>{number}. {html.escape(Path(str(source.get('path', ''))).name)}</h2>\n"
            f"{failure_html}<div>{''.join(figures)}</div>\n<dl>{rows}</dl>\n</section>")


def _agreement_text(agreement: dict[str, Any] | None) -> str:
    if not agreement:
        return "not computed (one path, or no masks fused)"
    inside = agreement.get("mean_in_mask")
    inside_text = "no mask" if inside is None else f"{100 * inside:.0f}% mean inside the mask"
    return f"{inside_text}, over {agreement.get('masks')} decoded mask(s)"


def _intensity_text(intensity: dict[str, Any]) -> str:
    text = str(intensity.get("mapping", ""))
    if "window_center" in intensity:
        text += (f", centre {intensity['window_center']:.6g} width {intensity['window_width']:.6g} "
                 f"({intensity.get('window_source')})")
    return text


def write_report(path: Path, cases: list[tuple[dict[str, Any], dict[str, Path]]]) -> Path:
    """Write the HTML report of the cases to ``path``, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, render_report(cases))
    return path
