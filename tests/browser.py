"""The service under a real uvicorn, and Debian's chromium driving its web page (Playwright): shared by the tests
and by `make screenshot`, which runs this file to refresh docs/screenshot-web.png.

    .venv/bin/python tests/browser.py [--model DIR] [--data ../shared/data/fashion-small] [--out PNG]
"""

from __future__ import annotations

import argparse
import csv
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Real catalog photos of different kinds, all from the test split of the shipped model.
SCREENSHOT_IDS = ["20260", "11520", "49461", "29928", "42841", "24406", "13472", "51667", "41439"]


def chromium_missing() -> str | None:
    """Why the browser cannot run here, or None. The Makefile's test-deps installs it; tests never install."""
    if Path(CHROMIUM).exists():
        return None
    return f"{CHROMIUM} is missing: `make test-deps` installs Debian's chromium (needs apt-get and root)"


@contextmanager
def live_server(app, **uvicorn_options):
    """The app under a real uvicorn, configured as `fashiontag serve` configures it, on a free loopback port."""
    import uvicorn

    from fashiontag.serve.app import server_config
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(server_config(app, **{"log_level": "warning", **uvicorn_options}))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


@contextmanager
def chromium():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@contextmanager
def open_page(browser, url: str):
    """A page that may only talk to our server; anything else it asks for is refused and recorded."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    outside, problems = [], []
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(url)
               else (outside.append(route.request.url), route.abort()))
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    try:
        page.goto(url + "/")
        page.wait_for_selector("body[data-ready=true]", timeout=15000)
        yield page
    finally:
        context.close()
    assert outside == [] and problems == []


def upload_and_wait(page, paths: list[Path]) -> None:
    page.set_input_files("#file-input", [str(p) for p in paths])
    page.wait_for_function(f"document.querySelectorAll('.card.done, .card.error').length === {len(paths)}",
                           timeout=30000)


def shown_tags(page, name: str) -> dict[str, str]:
    card = page.locator(f'.card[data-file="{name}"]')
    return {row.get_attribute("data-task"): row.locator("select").input_value()
            for row in card.locator("tr[data-task]").all()}


def set_threshold(page, percent: int) -> None:
    """Move the "review below" slider as a person would and wait until the server has judged every photo again."""
    page.eval_on_selector("#threshold", "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); "
                                        "el.dispatchEvent(new Event('change')); }", percent)
    page.wait_for_function(f"window.fashiontag.state.items.every((i) => i.status !== 'done' || "
                           f"i.threshold === {percent / 100})", timeout=30000)


def screenshot(browser, model: Path, data: Path, out: Path) -> None:
    """The page as a user sees it: real photos tagged by `model` (every other one with its title, where the model
    reads titles), tags under 60% flagged for review, the first tag where the model and the catalog disagree
    corrected as a cataloguer would, saved as `out`."""
    from fashiontag.serve import create_app
    header, *rows = list(csv.reader((data / "styles.csv").open(encoding="utf-8")))
    truth = {r[0]: dict(zip(header, r)) for r in rows if r and r[0] in SCREENSHOT_IDS}
    paths = [p for p in (data / "images" / f"{i}.jpg" for i in SCREENSHOT_IDS) if p.exists()]
    if not paths:
        raise FileNotFoundError(f"none of the screenshot's photos is in {data / 'images'}")
    with live_server(create_app(model)) as url, open_page(browser, url) as page:
        upload_and_wait(page, paths)
        assert page.locator(".card.done").count() == len(paths)
        for path in paths[::2]:  # every other product with its catalog title, as a seller would type it
            title = page.locator(f'.card[data-file="{path.name}"] .title')
            if title.is_visible():
                title.fill(truth[path.stem]["productDisplayName"])
                title.dispatch_event("change")
        page.wait_for_function(f"document.querySelectorAll('.card.done').length === {len(paths)}", timeout=30000)
        set_threshold(page, 60)
        for path in paths:
            shown = shown_tags(page, path.name)
            wrong = [t for t, label in shown.items() if truth[path.stem].get(t) not in (None, "", label)]
            if wrong:
                page.locator(f'.card[data-file="{path.name}"] tr[data-task="{wrong[0]}"] select').select_option(
                    truth[path.stem][wrong[0]])
                break
        page.mouse.move(0, 0)
        page.screenshot(path=str(out), full_page=True)


def review_screenshot(browser, model: Path, data: Path, out: Path, n: int = 12) -> None:
    """The review page on real photos tagged by `model`: the first photo accepted and the next one's first tag to
    review replaced by its runner-up, as a reviewer would, saved as `out`."""
    import shutil
    import tempfile

    from fashiontag.review.queue import fill_queue
    from fashiontag.review.store import ReviewStore
    from fashiontag.serve import create_app
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "new-arrivals"
        photos.mkdir()
        for i in SCREENSHOT_IDS + sorted(p.stem for p in (data / "images").glob("1*.jpg"))[:n - len(SCREENSHOT_IDS)]:
            shutil.copy(data / "images" / f"{i}.jpg", photos)
        store = ReviewStore(f"sqlite:///{tmp}/review.db")
        fill_queue(store, [str(photos)], model)
        with live_server(create_app(model, review=store)) as url, open_page(browser, url) as page:
            page.fill("#reviewer", "ann")
            page.locator("body").click(position={"x": 5, "y": 5})
            page.keyboard.press("Enter")
            page.wait_for_function("window.fashiontag.state.progress.reviewed === 1")
            page.keyboard.press("1")
            page.wait_for_timeout(500)
            page.screenshot(path=str(out), full_page=True)
        store.close()


def main() -> None:
    from fashiontag.model_folder import default_model_dir
    ap = argparse.ArgumentParser(description="Refresh the README's screenshot of the web page.")
    ap.add_argument("--model", type=Path, help="model folder (default: the shipped model)")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "fashion-small",
                    help="the real catalog (styles.csv and images/)")
    ap.add_argument("--review", action="store_true", help="the review page instead (docs/screenshot-review.png)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if reason := chromium_missing():
        raise SystemExit(reason)
    args.out = args.out or ROOT / "docs" / ("screenshot-review.png" if args.review else "screenshot-web.png")
    with chromium() as browser:
        (review_screenshot if args.review else screenshot)(browser, args.model or default_model_dir(),
                                                           args.data.resolve(), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
