"""Make an SVG document safe to place inside an HTML page.

matplotlib draws names from the records (the model, tiers, a ceiling's
reason) into its figures. It escapes them, but a page should not rest on
that: the document is parsed and written again keeping only the drawing
elements matplotlib uses, with no comments, no metadata and no style sheet,
no event handler attributes, and links that point only inside the figure
(or to an embedded PNG). Every id gets a prefix, so that several figures on
one page never share one.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"
# the elements a matplotlib figure is drawn with; anything else is dropped, children and all
DRAWING = {"svg", "g", "defs", "path", "use", "clipPath", "rect", "circle", "ellipse", "line",
           "polyline", "polygon", "text", "tspan", "image", "pattern", "linearGradient",
           "radialGradient", "stop", "mask"}
HREFS = ("href", f"{{{XLINK_NS}}}href")
LOCAL_URL = re.compile(r"url\(\s*#")
EMBEDDED_PNG = "data:image/png;base64,"


def inline_svg(document: str, id_prefix: str) -> str:
    """Return the <svg> element of `document`, cleaned, for an HTML page."""
    ET.register_namespace("", SVG_NS)
    ET.register_namespace("xlink", XLINK_NS)
    root = ET.fromstring(document.encode("utf-8"))   # comments and the doctype are not kept
    if _local(root.tag) != "svg":
        raise ValueError("not an SVG document")
    _clean(root, id_prefix)
    return ET.tostring(root, encoding="unicode")


def _local(tag) -> str:
    """An element's name without its namespace; '' for what is not an element."""
    if not isinstance(tag, str):
        return ""
    ns, _, name = tag.rpartition("}")
    return name if ns in ("", "{" + SVG_NS) else ""


def _clean(element, prefix: str) -> None:
    for child in list(element):
        if _local(child.tag) in DRAWING:
            _clean(child, prefix)
        else:
            element.remove(child)
    for name, value in list(element.attrib.items()):
        kept = _attribute(name, value, prefix)
        if kept is None:
            del element.attrib[name]
        else:
            element.attrib[name] = kept


def _attribute(name: str, value: str, prefix: str) -> str | None:
    """The attribute's value as kept, or None to drop it."""
    local = name.rpartition("}")[2].lower()
    if local.startswith("on") or "javascript:" in value.lower().replace(" ", ""):
        return None
    if name in HREFS:
        if value.startswith("#"):
            return "#" + prefix + value[1:]
        return value if value.startswith(EMBEDDED_PNG) else None
    if local == "id":
        return prefix + value
    if "url(" in value:
        if re.search(r"url\(\s*[^#\s]", value):
            return None
        return LOCAL_URL.sub("url(#" + prefix, value)
    return value
