"""Open a page in headless Chromium (Debian's `chromium`; make test installs it) and read
what the browser made of it: the DOM after its scripts ran, a screenshot, the load time."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# headless, as root, on a machine with no network: nothing started that would reach out
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--mute-audio")


def have_chromium() -> bool:
    return os.access(CHROMIUM, os.X_OK)


def chromium(url: str, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    """Run headless Chromium on `url` with a fresh profile."""
    with tempfile.TemporaryDirectory(prefix="lalm-chromium-") as profile:
        done = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args, url],
                              capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, f"chromium exited {done.returncode}:\n{done.stderr[-2000:]}"
    return done


def dump_dom(path: str) -> str:
    """The page's DOM as the browser holds it once loaded, serialized."""
    return chromium("file://" + os.path.abspath(path), "--dump-dom").stdout


def screenshot(path: str, png: str, size: str = "1280,2000") -> None:
    chromium("file://" + os.path.abspath(path), f"--screenshot={png}", f"--window-size={size}")


def load_time_s(path: str) -> tuple[float, float, int]:
    """How long the page takes to load in the browser, measured by the browser.

    A frame page loads it in an iframe and notes, in its title, the time from
    its own start to the iframe's load event and how many turn rows the page
    then holds; returns those and the wall time of the whole browser run
    (start-up included).
    """
    with tempfile.TemporaryDirectory(prefix="lalm-page-") as tmp:
        shutil.copy(path, os.path.join(tmp, "page.html"))
        frame = os.path.join(tmp, "frame.html")
        with open(frame, "w", encoding="utf-8") as fp:
            fp.write("<!DOCTYPE html><title>-</title><script>var t0 = performance.now();</script>"
                     "<iframe src=\"page.html\" onload=\"document.title = (performance.now() - t0) + ' ' + "
                     "this.contentDocument.querySelectorAll('details.turn').length\"></iframe>")
        t = time.perf_counter()
        dom = chromium("file://" + frame, "--dump-dom", "--allow-file-access-from-files").stdout
        wall = time.perf_counter() - t
    ms, rows = parse(dom).find("title").text().split()
    return float(ms) / 1000, wall, int(rows)


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


@dataclass
class Element:
    tag: str
    attrs: dict
    children: list = field(default_factory=list)

    def iter(self, tag: str | None = None):
        """This element and every element under it (of `tag`), in document order."""
        if tag is None or self.tag == tag:
            yield self
        for child in self.children:
            if isinstance(child, Element):
                yield from child.iter(tag)

    def find(self, tag: str, cls: str | None = None) -> Element | None:
        return next(iter(self.find_all(tag, cls)), None)

    def find_all(self, tag: str, cls: str | None = None) -> list[Element]:
        return [e for e in self.iter(tag) if cls is None or cls in e.attrs.get("class", "").split()]

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)


class _Builder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(element)
        if tag not in VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag, attrs):
        self.stack[-1].children.append(Element(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def parse(html: str) -> Element:
    """A tree of the page's elements and their text, character references read."""
    builder = _Builder()
    builder.feed(html)
    builder.close()
    return builder.root
