"""The dashboard's files keep to what its Content-Security-Policy allows ('self' only).

A violation would not fail loudly in production: the browser would just refuse to
run an inline script or apply an inline style. So the files are checked here."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from app.dashboard import INDEX, STATIC_DIR, load_assets


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline_script = ""
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.inline_script += data


def parsed_index() -> _Collector:
    collector = _Collector()
    collector.feed((STATIC_DIR / INDEX).read_text())
    return collector


def test_index_has_no_inline_script_style_or_handlers() -> None:
    page = parsed_index()
    assert page.inline_script.strip() == ""
    for tag, attrs in page.tags:
        assert tag != "style", "a <style> element is inline CSS"
        assert "style" not in attrs, f"<{tag} style=...> is inline CSS"
        handlers = [name for name in attrs if name.startswith("on")]
        assert not handlers, f"<{tag}> has inline handlers {handlers}"
        if tag == "script":
            assert attrs.get("src", "").startswith("/dashboard/")


def test_everything_the_page_loads_is_served_from_this_origin() -> None:
    served = set(load_assets())
    for tag, attrs in parsed_index().tags:
        for name in ("src", "href"):
            url = attrs.get(name)
            if url is None:
                continue
            assert url.startswith("/dashboard/"), f"<{tag} {name}={url!r}> is not ours"
            assert url.removeprefix("/dashboard/") in served


@pytest.mark.parametrize("name", ["dashboard.js", "actions.js"])
def test_the_script_builds_the_dom_without_strings_of_markup_or_eval(name: str) -> None:
    script = (STATIC_DIR / name).read_text()
    for forbidden in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert forbidden not in script
    assert not re.search(r"new Function\s*\(", script)
    assert not re.search(r"setAttribute\(\s*[\"']style", script), "style attributes are inline CSS"
    # The SVG namespace is a name, not a URL anything fetches.
    elsewhere = script.replace('"http://www.w3.org/2000/svg"', "")
    assert "http://" not in elsewhere and "https://" not in elsewhere


def test_assets_have_media_types_and_content_etags() -> None:
    assets = load_assets()
    assert assets["dashboard.js"].media_type.startswith("text/javascript")
    assert assets["dashboard.css"].media_type.startswith("text/css")
    assert assets[INDEX].media_type.startswith("text/html")
    etags = {asset.etag for asset in assets.values()}
    assert len(etags) == len(assets)
