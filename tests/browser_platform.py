"""The platform in one test process for the browser tests: the API under uvicorn on a loopback port,
the bridge, the dashboard feed and the scheduler as tasks, and Debian's Chromium driven by Playwright.
"""

import asyncio
import importlib.util
import json
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import httpx
import uvicorn
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright

from api.main import create_app
from core.settings import Settings
from tests.helpers import bridge_whereabouts, ready_or_raise, wait_until

CHROMIUM = Path("/usr/bin/chromium")
TEARDOWN_S = 30.0  # one step of a teardown; the test's whole budget is pytest's 120 s
# Without the background-networking flags Chromium keeps dialling Google's hosts, which this
# machine's closed network refuses; --no-sandbox because the tests may run as root.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-results" / "browser"


def have_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Worker(Protocol):
    def request_stop(self) -> None: ...

    def run(self) -> Coroutine[Any, Any, None]: ...


@asynccontextmanager
async def running(
    worker: Worker, ready: Callable[[], bool], name: str, state: Callable[[], str] = lambda: ""
) -> AsyncIterator[None]:
    """`worker.run()` as a task until the block ends; fails early if it dies before it is ready.
    `state` says where a worker that never became ready stood."""
    task = asyncio.create_task(worker.run(), name=name)
    try:
        await ready_or_raise(task, ready, name, 30, state)
        yield
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 30)


@asynccontextmanager
async def served_api(settings: Settings, port: int) -> AsyncIterator[str]:
    """The API (with its lifespan) on 127.0.0.1:`port`; yields its base URL. Can be served again on the same port."""
    app = create_app(settings)
    async with bounded_exit(app.router.lifespan_context(app), "the API's lifespan shutdown"):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
        task = asyncio.create_task(server.serve(sockets=[sock]), name="uvicorn")
        try:
            await wait_until(lambda: server.started or task.done(), 20, message="uvicorn never started")
            if task.done():
                task.result()
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 30)
            sock.close()


def settings_env(settings: Settings) -> dict[str, str]:
    """`settings` as the PRESENCE_* environment a child process builds the same Settings from."""
    env = dict(os.environ)
    for name, value in settings.model_dump(mode="json").items():
        if value is not None:
            env[f"PRESENCE_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env


@asynccontextmanager
async def api_process(settings: Settings, port: int) -> AsyncIterator[str]:
    """The API as its own process (`uvicorn --factory`), for a real restart: SIGTERM at the end of the block."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app", "--host", "127.0.0.1",
        "--port", str(port), "--log-level", "warning", env=settings_env(settings),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as http:

            async def healthy() -> bool:
                if process.returncode is not None:
                    raise AssertionError(f"the API exited with {process.returncode}")
                try:
                    return (await http.get(f"{url}/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_until(healthy, 30, interval=0.2, message="the API never became ready")
        yield url
    finally:
        if process.returncode is None:
            process.terminate()
        await asyncio.wait_for(process.wait(), 30)


@asynccontextmanager
async def platform_workers(settings: Settings) -> AsyncIterator[None]:
    """Bridge, dashboard feed, scheduler and aggregator (those in the tree), as the platform runs them."""
    from bridge.worker import Bridge

    async with AsyncExitStack() as stack:
        bridge = Bridge(settings, uuid.uuid4().hex[:8])
        where = partial(bridge_whereabouts, bridge)  # seen once (fresh40): not converged after 30 s
        await stack.enter_async_context(running(bridge, bridge.converged.is_set, "bridge", where))
        if have_module("feed.consumer"):
            from feed.consumer import FeedConsumer

            feed = FeedConsumer(settings)
            await stack.enter_async_context(running(feed, feed.ready.is_set, "feed"))
        if have_module("scheduler.worker"):
            from scheduler.worker import Scheduler

            scheduler = Scheduler(settings)
            await stack.enter_async_context(running(scheduler, scheduler.rebuilt.is_set, "scheduler"))
        if have_module("aggregator.worker"):
            from aggregator.worker import Aggregator

            aggregator = Aggregator(settings)
            await stack.enter_async_context(running(aggregator, aggregator.ready.is_set, "aggregator"))
        yield


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, with a fresh profile (Playwright never downloads a browser here)."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            # Bounded, and named when it overruns: a teardown once used up the test's whole 120 s
            # waiting on something the traceback did not name (Chromium's close, or the API's shutdown).
            try:
                await asyncio.wait_for(browser.close(), TEARDOWN_S)
            except TimeoutError:
                raise TimeoutError(f"Chromium took over {TEARDOWN_S} s to close") from None


@asynccontextmanager
async def bounded_exit(context: AbstractAsyncContextManager[Any], what: str) -> AsyncIterator[None]:
    """`async with context`, whose exit must end within TEARDOWN_S or fail naming `what`."""
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(context)
        try:
            yield
        finally:
            try:
                await asyncio.wait_for(stack.aclose(), TEARDOWN_S)
            except TimeoutError:
                raise TimeoutError(f"{what} took over {TEARDOWN_S} s") from None


class PageErrors:
    """Uncaught exceptions and console errors of the pages it watches: a test ends by asserting there were none."""

    def __init__(self, ignore: tuple[str, ...] = ()) -> None:
        self.ignore = ignore
        self.errors: list[str] = []

    def watch(self, page: Page, name: str) -> Page:
        page.on("pageerror", lambda exc: self.errors.append(f"{name}: uncaught {exc}"))
        page.on("console", lambda msg: self._console(name, msg))
        return page

    def _console(self, name: str, message: ConsoleMessage) -> None:
        # A failed request is reported with the page's text only; its address is in the location.
        text = f"{message.text} ({message.location.get('url', '')})"
        if message.type == "error" and not any(part in text for part in self.ignore):
            self.errors.append(f"{name}: console {text}")


async def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


async def log_in(page: Page, base: str, username: str, password: str, landing: str) -> None:
    await page.goto(f"{base}/ui/login")
    await page.fill("#username", username)
    await page.fill("#password", password)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base}{landing}*")


async def tile_kind(page: Page, rid: str) -> Any:
    """The kind shown on `rid`'s dashboard tile (online / closed / unavailable / disconnected), or None."""
    return await page.evaluate(
        "rid => { const t = document.querySelector(`.tile[data-rid=\"${rid}\"]`); return t ? t.dataset.kind : null; }",
        rid,
    )
