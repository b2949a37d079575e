"""A small document model rendered to Markdown and to one self-contained HTML page.

Blocks are headings, paragraphs (with inline ``code``, **bold** and [links](href)), tables,
figures, code blocks and lists. Figures are files beside the document: Markdown links them,
HTML embeds them as data URIs, so the page opens from disk with no server and no other file.
Inline Markdown (in paragraphs, list items, table cells and captions) is rendered to HTML by
markdown-it-py (CommonMark, raw HTML escaped).
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any


@dataclass
class Document:
    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", (level, text, slug(text))))

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def items(self, items: list[str]) -> None:
        self.blocks.append(("ul", items))

    def table(self, header: list[str], rows: list[list[Any]], caption: str = "") -> None:
        self.blocks.append(("table", (header, [[_cell(c) for c in r] for r in rows], caption)))

    def figure(self, relpath: str, caption: str) -> None:
        self.blocks.append(("img", (relpath, caption)))

    def code(self, text: str, lang: str = "") -> None:
        self.blocks.append(("code", (lang, text)))

    def to_markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, b in self.blocks:
            if kind == "h":
                out += [f"{'#' * b[0]} {b[1]}", ""]
            elif kind == "p":
                out += [b, ""]
            elif kind == "ul":
                out += [f"- {x}" for x in b] + [""]
            elif kind == "table":
                header, rows, caption = b
                if caption:
                    out += [f"*{caption}*", ""]
                out.append("| " + " | ".join(header) + " |")
                out.append("|" + "---|" * len(header))
                out += ["| " + " | ".join(r) + " |" for r in rows]
                out.append("")
            elif kind == "img":
                out += [f"![{b[1]}]({b[0]})", "", f"*{b[1]}*", ""]
            elif kind == "code":
                out += [f"```{b[0]}", b[1].rstrip("\n"), "```", ""]
        return "\n".join(out)

    def to_html(self, base: Path) -> str:
        """The page; figures are read from ``base / relpath`` and embedded."""
        body = [f"<h1>{html.escape(self.title)}</h1>", self._toc()]
        for kind, b in self.blocks:
            if kind == "h":
                body.append(f'<h{b[0]} id="{b[2]}">{html.escape(b[1])}</h{b[0]}>')
            elif kind == "p":
                body.append(f"<p>{inline(b)}</p>")
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{inline(x)}</li>" for x in b) + "</ul>")
            elif kind == "table":
                header, rows, caption = b
                cap = f"<caption>{inline(caption)}</caption>" if caption else ""
                head = "".join(f"<th>{inline(h)}</th>" for h in header)
                trs = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in rows)
                body.append(
                    f'<div class="t"><table>{cap}<thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table></div>'
                )
            elif kind == "img":
                data = base64.b64encode((base / b[0]).read_bytes()).decode("ascii")
                alt = html.escape(b[1], quote=True)
                body.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
                    f"<figcaption>{inline(b[1])}</figcaption></figure>"
                )
            elif kind == "code":
                body.append(f"<pre><code>{html.escape(b[1])}</code></pre>")
        return _PAGE.format(title=html.escape(self.title), body="\n".join(body))

    def _toc(self) -> str:
        entries = [b for kind, b in self.blocks if kind == "h" and b[0] == 2]
        if not entries:
            return ""
        links = "".join(f'<li><a href="#{a}">{html.escape(t)}</a></li>' for _, t, a in entries)
        return f'<nav><p>Contents</p><ul class="toc">{links}</ul></nav>'


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) <= 1 else f"{value:.1f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def inline(text: str) -> str:
    """Inline Markdown (``code``, **bold**, [text](href), ``\\|``) as HTML, raw HTML escaped."""
    return _markdown().renderInline(str(text))


@lru_cache(maxsize=1)
def _markdown() -> Any:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False})


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}
h1, h2, h3 {{ line-height: 1.2; }} h2 {{ border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }}
.t {{ overflow-x: auto; }} table {{ border-collapse: collapse; margin: .8em 0; font-size: .85em; }}
th, td {{ border: 1px solid #ccc; padding: .25em .5em; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; max-width: 8em; }} caption {{ text-align: left; font-style: italic; padding: .3em 0; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; height: auto; border: 1px solid #eee; }}
figcaption {{ font-size: .9em; color: #555; }} pre {{ background: #f6f6f6; padding: .8em; overflow-x: auto; }}
code {{ background: #f6f6f6; padding: 0 .2em; }}
nav {{ background: #fafafa; border: 1px solid #eee; padding: .2em 1em; }}
</style>
</head>
<body>
{body}
</body>
</html>
"""
