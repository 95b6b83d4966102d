"""Open the rendered book in headless Chromium and report, per chapter page, the exercises and
solutions it shows, whether a solution's drop-down is closed and then opens on a click, and how
many widget controls (drop-downs, sliders, progress bars) render from the saved widget state.

Not a test: it needs Chromium and playwright, which the book does not install. The pages load
the widget manager's JavaScript from a CDN; where the CDN cannot be reached, it is served from
the npm registry's copies of the same releases, fetched beforehand:

    mkdir npm && cd npm && npm pack @jupyter-widgets/html-manager@1.0.6 requirejs@2.3.4
    mkdir -p widgets rj && tar xzf jupyter-widgets-html-manager-1.0.6.tgz -C widgets
    tar xzf requirejs-2.3.4.tgz -C rj && cd ..
    python benchmarks/render_check.py _build/html npm      # or _build/student/_build/html
"""

import pathlib
import re
import sys
import urllib.parse

from playwright.sync_api import sync_playwright

html = pathlib.Path(sys.argv[1])
NPM = pathlib.Path(sys.argv[2] if len(sys.argv) > 2 else "npm")


def serve(route):
    url = route.request.url
    if url.endswith("require.min.js") or url.endswith("require.js"):
        return route.fulfill(path=str(NPM / "rj/package/require.js"), content_type="application/javascript")
    if "@jupyter-widgets/html-manager@" in url and "/dist/" in url:
        f = NPM / "widgets/package/dist" / url.split("/dist/")[1]
        if f.exists():
            return route.fulfill(path=str(f))
    if url.startswith("file://") and url.endswith(".html"):
        # the stand-in files are the same releases from npm, not cdnjs's minified bytes, so the
        # page's integrity hashes (which the real CDN files meet) are dropped here
        text = pathlib.Path(urllib.parse.unquote(url[len("file://") :])).read_text()
        return route.fulfill(body=re.sub(r'\s+integrity="[^"]*"', "", text), content_type="text/html")
    if url.startswith("file://"):
        return route.continue_()
    return route.abort()


with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.route("**/*", serve)
    report = {}
    for chapter in sorted((html / "book" / "chapters").glob("*.html")):
        page.goto(chapter.as_uri())
        page.wait_for_timeout(2500)
        ex = page.locator("div.exercise").count()
        sol = page.locator("div.solution").count()
        opened = None
        if sol:
            first = page.locator("div.solution").first
            body = first.locator("section, div.highlight, p").last
            before = body.is_visible()
            first.locator("button").first.click()
            page.wait_for_timeout(400)
            opened = (before, body.is_visible())
        widgets = page.locator(".widget-dropdown, .widget-hslider, .widget-hprogress, .widget-html").count()
        states = page.locator('script[type="application/vnd.jupyter.widget-state+json"]').count()
        report[chapter.name] = dict(
            exercises=ex,
            solutions=sol,
            solution_hidden_then_open=opened,
            widget_elements=widgets,
            widget_states=states,
        )
    for k, v in report.items():
        print(k, v)
    browser.close()
