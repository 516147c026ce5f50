"""GET / on a real `vggexport serve` process: the try-it page, its assets, offline API docs, and a real browser."""

from __future__ import annotations

import io
import re
from pathlib import Path

import httpx
import pytest

from tests.browser.chromium import (  # the browser fixture comes through pytest_plugins (tests/conftest.py)
    assert_not_uniform,
    broken_images,
    overflows_horizontally,
    save_screenshot,
    watched_page,
)
from tests.serve_process import ServerProcess

MODEL = "vgg11_bn"


def test_index_is_an_upload_page_for_the_served_model(server: ServerProcess) -> None:
    response = httpx.get(f"{server.url}/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    assert re.search(r'<input[^>]+type="file"', page) and 'accept="image/png,image/jpeg"' in page
    assert f'data-model="{MODEL}"' in page and "{{" not in page
    assert 'href="docs"' in page


def test_page_and_its_assets_reference_nothing_outside_the_server(server: ServerProcess) -> None:
    texts = [httpx.get(f"{server.url}/").text]
    for asset, kind in (("page.js", "text/javascript"), ("page.css", "text/css")):
        response = httpx.get(f"{server.url}/ui/{asset}")
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind)
        texts.append(response.text)
    for text in texts:
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|@import|@font-face", text, flags=re.IGNORECASE)


@pytest.mark.parametrize("path", ["/ui/nope.js", "/ui/..%2Fapp.py", "/ui/%2e%2e%2fstatic%2findex.html",
                                  "/ui/docs/../../etc/passwd", "/ui/docs/nope.js", "/ui/index.html"])
def test_unknown_assets_are_404_json(server: ServerProcess, path: str) -> None:
    response = httpx.get(f"{server.url}{path}")
    assert response.status_code == 404 and "error" in response.json()


def test_api_docs_are_served_from_this_server(server: ServerProcess) -> None:
    for path in ("/docs", "/redoc"):
        page = httpx.get(f"{server.url}{path}").text
        refs = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page)
        assert refs and all(r.startswith("/ui/docs/") for r in refs), refs
        assert "googleapis" not in page and "cdn." not in page
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png"):
        assert httpx.get(f"{server.url}/ui/docs/{asset}").status_code == 200
    assert httpx.get(f"{server.url}/openapi.json").json()["info"]["title"] == "vggexport"


def test_index_does_not_disturb_the_api(server: ServerProcess) -> None:
    assert httpx.get(f"{server.url}/v2/models/{MODEL}").json()["name"] == MODEL
    assert "/" not in httpx.get(f"{server.url}/openapi.json").json()["paths"]  # the page is not an API route


def sample_png(tmp_path: Path, index: int) -> Path:
    """A real test-split image of the synthetic data the tiny model was trained on, as a PNG file."""
    from PIL import Image

    from vggexport.data.synthetic import make_synthetic

    pixels = make_synthetic().test_images[index, 0].numpy()
    path = tmp_path / f"sample{index}.png"
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return path


@pytest.mark.browser
@pytest.mark.parametrize("index", [0, 7])
def test_upload_in_the_browser_gives_classify_top1(browser, server: ServerProcess, tmp_path: Path,
                                                   index: int) -> None:
    image = sample_png(tmp_path, index)
    expected = httpx.post(f"{server.url}/v2/models/{MODEL}/classify?top_k=5", content=image.read_bytes(),
                          headers={"content-type": "image/png"}).json()["predictions"]
    watched = watched_page(browser)
    page = watched.page
    page.goto(f"{server.url}/")
    page.wait_for_selector("body[data-ready='true']")
    assert page.locator("#card").inner_text().count(MODEL) >= 1
    assert page.locator("#card .chip").count() == 10  # the class names from GET /v2/models/<name>
    page.set_input_files("#file", str(image))
    page.wait_for_selector("body[data-state='classified']")
    bars = page.locator("#predictions li")
    assert bars.count() == 5
    top = bars.first
    assert top.get_attribute("data-label") == expected[0]["label"]
    assert int(top.get_attribute("data-index") or -1) == expected[0]["index"]
    assert float(top.get_attribute("data-probability") or 0) == pytest.approx(expected[0]["probability"], abs=1e-6)
    assert page.locator("#status").inner_text().startswith(expected[0]["label"])
    # The input the model saw: the server's when it returns one, else the browser's 32x32 approximation.
    size = page.eval_on_selector("#model-input", "i => [i.naturalWidth, i.naturalHeight]")
    assert size == [32, 32], size
    assert broken_images(page) == [] and not overflows_horizontally(page)
    png = page.screenshot()
    assert_not_uniform(png)
    if index == 0:
        save_screenshot(png, "page.png")
    watched.assert_clean()
    page.close()


@pytest.mark.browser
def test_top_k_choice_and_a_bad_file_in_the_browser(browser, server: ServerProcess,
                                                   tmp_path: Path) -> None:
    watched = watched_page(browser)
    page = watched.page
    page.goto(f"{server.url}/")
    page.wait_for_selector("body[data-ready='true']")
    page.select_option("#top-k", "3")
    page.set_input_files("#file", str(sample_png(tmp_path, 3)))
    page.wait_for_selector("body[data-state='classified']")
    assert page.locator("#predictions li").count() == 3
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_bytes(b"this is not a PNG")
    page.set_input_files("#file", str(not_an_image))
    page.wait_for_selector("body[data-state='error']")
    status = page.locator("#status").inner_text()
    assert status.startswith("Could not classify notes.png:") and "not a readable" in status  # the server's words
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    page.evaluate("document.body.dataset.state = ''")
    page.set_input_files("#file", str(empty))
    page.wait_for_selector("body[data-state='error']")
    assert "empty image body" in page.locator("#status").inner_text()
    # The browser itself logs the 400 response; that is the only error the page may cause.
    assert all("400" in e for e in watched.errors), watched.errors
    assert not watched.external
    page.close()


@pytest.mark.browser
def test_api_docs_render_offline_in_the_browser(browser, server: ServerProcess) -> None:
    watched = watched_page(browser)
    page = watched.page
    page.goto(f"{server.url}/docs")
    page.wait_for_selector(".swagger-ui .info .title", timeout=20_000)
    assert "vggexport" in page.locator(".swagger-ui .info .title").inner_text()
    page.wait_for_selector(".opblock", timeout=20_000)
    assert page.locator(".opblock").count() >= 5
    watched.assert_clean()
    page.close()


@pytest.mark.browser
def test_the_page_shows_the_servers_own_input_when_it_returns_one(browser, server: ServerProcess,
                                                                  tmp_path: Path) -> None:
    """`return_input=true` answers add "input_image", a PNG data URL of what the model saw; the page shows it."""
    import base64

    from PIL import Image

    image = sample_png(tmp_path, 5)
    direct = httpx.post(f"{server.url}/v2/models/{MODEL}/classify?top_k=3&return_input=true",
                        content=image.read_bytes(), headers={"content-type": "image/png"}).json()
    served = direct.get("input_image")
    # The server itself must return the pixels it fed the model: nothing fills them in for it.
    assert isinstance(served, str) and served.startswith("data:image/png;base64,"), sorted(direct)
    with Image.open(io.BytesIO(base64.b64decode(served.split(",", 1)[1]))) as seen:
        assert seen.size == (32, 32)

    watched = watched_page(browser)
    page = watched.page
    page.goto(f"{server.url}/")
    page.wait_for_selector("body[data-ready='true']")
    page.set_input_files("#file", str(image))
    page.wait_for_selector("body[data-state]")
    assert page.get_attribute("body", "data-state") == "classified", page.locator("#status").inner_text()
    assert page.get_attribute("#model-input", "src") == served
    assert "as the server preprocessed it" in page.locator("#model-input-caption").inner_text()
    assert page.locator("#predictions li").first.get_attribute("data-label") == direct["predictions"][0]["label"]
    assert broken_images(page) == []
    watched.assert_clean()
    page.close()
