"""How the web dashboard copes with a large fleet (default 1,000 clusters): the fleet table must stay fast.

The bench fills a fresh SQLite hub store through the store API: ``--clusters`` clusters (most
active, some inactive, a few never seen; two labels each), each with a FULL bundle of a few
objects of three types (Pods, Services, ConfigMaps; a stream error on every 50th cluster) and a
``Connected`` event (so the transport column is filled), plus a few other events. It starts a real
``fleetsync hub`` on it (free loopback ports, an admin token with ``--admin-token-file``) and
measures:

1. ``GET /api/v1/clusters`` (and ``GET /metrics``, which the fleet view also reads on every
   refresh): latency p50 / p99 over ``--calls`` calls with aiohttp, and the answer's size;
2. in headless Chromium (Debian's ``/usr/bin/chromium`` through Playwright; one browser, a new
   context per repetition): from navigation + sign-in to the fleet table showing its first page;
3. paging to the next page (a click on "next" until the first row is the 51st cluster);
4. typing a filter that matches one cluster (keystroke by keystroke) until the table shows 1 row;
   also the in-page cost of one filter ``input`` event (re-render) measured with ``performance.now()``;
5. the page's JS heap (``performance.memory``, with ``--enable-precise-memory-info``), the DOM rows
   and DOM nodes in the page (the rows must be a page, 50, not the whole fleet);
   and the hub's CPU while one signed-in dashboard stays open (it re-reads the list every 5 s).

(2)-(4) are repeated ``--repeat`` times for p50 / max.

Run (from the repository root)::

    .venv/bin/python bench/dashboard.py                        # 1,000 clusters, 5 repetitions
    .venv/bin/python bench/dashboard.py --clusters 200 --repeat 2   # quick look
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from benchlib import (
    API_TOKEN,
    DEFAULT_FLEETSYNC,
    HUB_AUTH,
    BenchError,
    Processes,
    cpu_seconds,
    free_port,
    mib,
    ms,
    percentile,
    rss,
    run_bench,
)
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.protocol.codec import make_object
from fleetsync.store import open_store
from fleetsync.store.contract import ClusterRecord, EventRecord, ObjectRecord

CHROMIUM = os.environ.get("FLEETSYNC_CHROMIUM", "/usr/bin/chromium")
PAGE_SIZE = 50  # the fleet table's page (static/fleet.js)
POD, SERVICE, CONFIGMAP = "v1/Pod", "v1/Service", "v1/ConfigMap"
ROW = "#clusters tbody tr[data-cluster]"


def cluster_name(i: int) -> str:
    return f"edge-{i:04d}"


def objects(cluster: str, i: int) -> dict[str, list[ObjectRecord]]:
    """A few objects of three types for cluster number ``i`` (counts vary a little per cluster)."""

    def record(type_: str, kind: str, ns: str, name: str, extra: dict[str, Any]) -> ObjectRecord:
        labels = {"app": name.rsplit("-", 1)[0], "tier": "web"}
        o = make_object(
            {
                "apiVersion": "v1",
                "kind": kind,
                "metadata": {"name": name, "namespace": ns, "uid": f"{cluster}-{ns}-{name}", "resourceVersion": "1", "labels": labels},
                **extra,
            }
        )
        return ObjectRecord(
            cluster=cluster,
            type=type_,
            namespace=o.namespace,
            name=o.name,
            uid=o.uid,
            resource_version=o.resource_version,
            hash=o.hash,
            labels=dict(o.labels),
            owner=o.owner,
            body=o.body,
            compression=pb.COMPRESSION_LZ4,
            incarnation="inc-1",
        )

    pods = [
        record(POD, "Pod", "default", f"web-{k}", {"spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}, "status": {"phase": "Running"}})
        for k in range(4 + i % 5)
    ]
    services = [record(SERVICE, "Service", "default", f"svc-{k}", {"spec": {"ports": [{"port": 80}], "selector": {"app": "web"}}}) for k in range(2)]
    configmaps = [record(CONFIGMAP, "ConfigMap", "kube-system", f"cm-{k}", {"data": {"key": f"value-{k}"}}) for k in range(1 + i % 3)]
    return {POD: pods, SERVICE: services, CONFIGMAP: configmaps}


async def fill_store(db: str, n: int) -> dict[str, Any]:
    """The fleet, through the store API: clusters, a FULL bundle per (cluster, type), events."""
    started = time.monotonic()
    now = time.time()
    store = open_store(db)
    await store.open()
    total = 0
    try:
        events: list[EventRecord] = []
        for i in range(1, n + 1):
            name = cluster_name(i)
            status = "never" if i % 20 == 0 else "inactive" if i % 7 == 0 else "active"
            seen = 0.0 if status == "never" else now - (600 if status == "inactive" else i % 10)
            await store.upsert_cluster(
                ClusterRecord(
                    name=name,
                    agent_id="" if status == "never" else f"agent-{name}",
                    incarnation="" if status == "never" else "inc-1",
                    status=status,
                    metadata={"region": f"region-{i % 8}", "env": "prod" if i % 3 else "staging"},
                    connected_at=seen,
                    last_seen=seen,
                    hub_id="bench",
                )
            )
            if status == "never":
                continue
            for type_, records in objects(name, i).items():
                await store.apply_bundle(
                    name, type_, incarnation="inc-1", seq=1, upserts=records, deletes=[], full_seq=1, full_end=True, move_to=("inc-1", 1), now=seen
                )
                total += len(records)
            if i % 50 == 1:
                await store.set_stream_error(name, CONFIGMAP, "configmaps is forbidden: User cannot list resource", now=seen)
            events.append(
                EventRecord(
                    time=seen, cluster=name, reason="Connected", message=f"agent agent-{name} (incarnation inc-1) from ipv4:10.0.{i // 256}.{i % 256}:40000"
                )
            )
            events.append(EventRecord(time=seen, cluster=name, reason="ResyncFinished", message="digest resync finished: 0 missing, 0 stale", type=POD))
            if status == "inactive":
                events.append(EventRecord(time=seen + 30, cluster=name, reason="Inactive", message="no message for 30s"))
        events.sort(key=lambda e: e.time)
        await store.add_events(events)
    finally:
        await store.close()
    return {"seconds": time.monotonic() - started, "objects": total, "events": len(events)}


async def timed_get(session: aiohttp.ClientSession, url: str, calls: int) -> dict[str, Any]:
    times, size = [], 0
    for _ in range(calls):
        t0 = time.perf_counter()
        async with session.get(url, headers=HUB_AUTH, timeout=aiohttp.ClientTimeout(total=120)) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise BenchError(f"GET {url} answered HTTP {resp.status}: {body[:300]!r}")
        times.append(time.perf_counter() - t0)
        size = len(body)
    return {"p50": percentile(times, 0.5), "p99": percentile(times, 0.99), "max": max(times), "bytes": size, "body": body}


# In the page: run an action, then wait (each animation frame) until a condition holds; the time
# from just before the action to the frame after it holds (so the re-render has been painted).
_TIMED = """async ([action, condition]) => {
  const act = new Function(action), done = new Function(condition);
  const frame = () => new Promise((r) => requestAnimationFrame(() => r()));
  const t0 = performance.now();
  act();
  const deadline = t0 + 60000;
  while (!done()) { if (performance.now() > deadline) return -1; await frame(); }
  await frame();
  return performance.now() - t0;
}"""


async def browser_run(browser: Any, hub: str, n: int, target: str) -> dict[str, Any]:
    """One repetition of (2)-(5) in a fresh context (so the sign-in form is shown)."""
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    out: dict[str, Any] = {}
    try:
        t0 = time.perf_counter()
        await page.goto(hub)
        await page.wait_for_selector("#login:not([hidden])")
        out["login_form"] = time.perf_counter() - t0
        await page.fill("#token", API_TOKEN)
        t_submit = time.perf_counter()
        await page.click("#login button[type=submit]")
        await page.wait_for_selector(ROW, timeout=120_000)
        t1 = time.perf_counter()
        out["first_page"], out["submit_to_rows"] = t1 - t0, t1 - t_submit
        out["rows_first_page"] = await page.locator("#clusters tbody tr").count()
        out["pager"] = await page.locator(".pager .range").text_content()

        # (3) the next page, timed in the page
        second = cluster_name(PAGE_SIZE + 1)
        paged = await page.evaluate(
            _TIMED,
            [
                "document.querySelector('.pager button.next').click()",
                f"const r = document.querySelector('{ROW}'); return r && r.dataset.cluster === '{second}'",
            ],
        )
        if paged < 0:
            raise BenchError(f"page 2 did not start with {second}")
        out["next_page"] = paged / 1000
        out["rows_second_page"] = await page.locator("#clusters tbody tr").count()

        # (4) typing a filter that matches one cluster, key by key, until one row is left
        t2 = time.perf_counter()
        await page.type("#fleet-filter", target)
        await page.wait_for_function(
            f"() => document.querySelectorAll('#clusters tbody tr').length === 1 && document.querySelector('{ROW}')?.dataset.cluster === '{target}'",
            timeout=60_000,
        )
        out["filter_typed"] = time.perf_counter() - t2
        out["rows_filtered"] = await page.locator("#clusters tbody tr").count()
        # one input event (clear the filter: the whole fleet is filtered and page 1 rendered), then set it again
        clear = "const f = document.getElementById('fleet-filter'); f.value = ''; f.dispatchEvent(new Event('input'))"
        out["filter_clear_event"] = (await page.evaluate(_TIMED, [clear, f"return document.querySelectorAll('{ROW}').length === {min(PAGE_SIZE, n)}"])) / 1000
        setf = f"const f = document.getElementById('fleet-filter'); f.value = '{target}'; f.dispatchEvent(new Event('input'))"
        out["filter_set_event"] = (await page.evaluate(_TIMED, [setf, f"return document.querySelectorAll('{ROW}').length === 1"])) / 1000
        await page.evaluate(clear)

        # (5) memory and DOM size, on the unfiltered first page
        await page.wait_for_selector(ROW)
        out["dom_rows"] = await page.evaluate("document.querySelectorAll('#clusters tbody tr').length")
        out["dom_nodes"] = await page.evaluate("document.getElementsByTagName('*').length")
        out["heap"] = await page.evaluate("performance.memory ? {used: performance.memory.usedJSHeapSize, total: performance.memory.totalJSHeapSize} : null")
        cdp = await context.new_cdp_session(page)
        await cdp.send("Performance.enable")
        metrics = {m["name"]: m["value"] for m in (await cdp.send("Performance.getMetrics"))["metrics"]}
        out["cdp_heap_used"], out["cdp_nodes"] = metrics.get("JSHeapUsedSize"), metrics.get("Nodes")
        out["errors"] = errors
        return out
    finally:
        await context.close()


async def idle_hub_cpu(browser: Any, hub: str, procs: Processes, seconds: float) -> dict[str, Any]:
    """The hub's CPU while one signed-in dashboard stays open on the fleet view."""
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    page = await context.new_page()
    try:
        await page.goto(hub)
        await page.fill("#token", API_TOKEN)
        await page.click("#login button[type=submit]")
        await page.wait_for_selector(ROW, timeout=120_000)
        hub_ps = procs.of("hub")[0].ps
        c0, t0 = cpu_seconds(hub_ps), time.monotonic()
        await asyncio.sleep(seconds)
        return {"cores": (cpu_seconds(hub_ps) - c0) / (time.monotonic() - t0), "seconds": seconds, "hub_rss": rss(hub_ps)}
    finally:
        await context.close()


async def bench(args: argparse.Namespace, procs: Processes, tmp: Path, fig: dict[str, Any]) -> None:
    from playwright.async_api import async_playwright

    if not os.path.exists(CHROMIUM):  # noqa: ASYNC240 (once, before anything runs)
        raise BenchError(f"no Chromium at {CHROMIUM}: apt-get install chromium, or set FLEETSYNC_CHROMIUM")
    db = f"sqlite:///{tmp / 'hub.db'}"
    print(f"filling the store: {args.clusters} clusters ...", flush=True)
    fig["store"] = await fill_store(db, args.clusters)
    print(f"  {fig['store']['objects']:,} objects, {fig['store']['events']:,} events in {fig['store']['seconds']:.1f} s", flush=True)
    grpc_port, http_port = free_port(), free_port()
    hub = f"http://127.0.0.1:{http_port}"
    # the active clusters have no agent: keep them active during the run (no Inactive events)
    procs.spawn_hub(db, grpc_port, http_port, "--inactivity-timeout", "3600")
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 60
        while True:
            procs.check_alive("hub")
            try:
                async with session.get(f"{hub}/readyz") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise BenchError("the hub was not ready after 60 s")
            await asyncio.sleep(0.1)

        print(f"(1) GET /api/v1/clusters x {args.calls} ...", flush=True)
        clusters = await timed_get(session, f"{hub}/api/v1/clusters", args.calls)
        items = orjson.loads(clusters.pop("body"))["items"]
        if len(items) != args.clusters:
            raise BenchError(f"/api/v1/clusters lists {len(items)} clusters, not {args.clusters}")
        fig["api_clusters"] = clusters
        metrics = await timed_get(session, f"{hub}/metrics", max(5, args.calls // 5))
        metrics.pop("body")
        fig["api_metrics"] = metrics
        connected = await timed_get(session, f"{hub}/apis/fleetsync.io/v1/fleetsyncevents?reason=Connected&limit=10000", 5)
        connected.pop("body")
        fig["api_connected_events"] = connected

    target = cluster_name(min(args.clusters, 777))
    runs: list[dict[str, Any]] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--enable-precise-memory-info"])
        try:
            for k in range(args.repeat):
                run = await browser_run(browser, hub, args.clusters, target)
                procs.check_alive("hub")
                runs.append(run)
                print(
                    f"  run {k + 1}: first page {ms(run['first_page'])} (submit -> rows {ms(run['submit_to_rows'])}), "
                    f"next page {ms(run['next_page'])}, filter typed {ms(run['filter_typed'])}, rows {run['dom_rows']}, "
                    f"heap {mib(run['heap']['used'] if run['heap'] else run['cdp_heap_used'])}",
                    flush=True,
                )
                if run["errors"]:
                    raise BenchError(f"the page's scripts failed: {run['errors']}")
            print(f"hub CPU with one dashboard open for {args.idle:.0f} s ...", flush=True)
            fig["idle"] = await idle_hub_cpu(browser, hub, procs, args.idle)
        finally:
            await browser.close()
    fig["runs"] = runs

    def stat(key: str) -> str:
        values = [r[key] for r in runs]
        return f"p50 {ms(percentile(values, 0.5))} / max {ms(max(values))}"

    last = runs[-1]
    heap = last["heap"]["used"] if last["heap"] else last["cdp_heap_used"]
    m = fig["machine"]
    api, met = fig["api_clusters"], fig["api_metrics"]
    ok = all(r["dom_rows"] == min(PAGE_SIZE, args.clusters) and r["rows_filtered"] == 1 for r in runs)
    print("\nfleetsync dashboard: summary")
    print(f"  machine                                    {m['nproc']} cores ({m['cpu_model']}), Python {m['python']}")
    print(
        f"  scenario                                   {args.clusters} clusters ({fig['store']['objects']:,} objects of 3 types, "
        f"{fig['store']['events']:,} events), hub on SQLite, no agents; headless Chromium, {args.repeat} runs"
    )
    print(f"  GET /api/v1/clusters                       p50 {ms(api['p50'])} / p99 {ms(api['p99'])} ({args.calls} calls), {api['bytes'] / 1024:,.0f} KiB")
    print(f"  GET /metrics (also read by the fleet view) p50 {ms(met['p50'])} / p99 {ms(met['p99'])}, {met['bytes'] / 1024:,.0f} KiB")
    print(
        f"  GET /apis/fleetsync.io/v1/fleetsyncevents?reason=Connected        p50 {ms(fig['api_connected_events']['p50'])}, {fig['api_connected_events']['bytes'] / 1024:,.0f} KiB"
    )
    print(f"  navigation + sign-in -> first page shown   {stat('first_page')}  (submit -> rows {stat('submit_to_rows')})")
    print(f"  next page                                  {stat('next_page')}")
    print(f"  {f'typing a filter ({len(target)} keys) -> 1 row':<43}{stat('filter_typed')}")
    print(f"  one filter input event -> 1 row            {stat('filter_set_event')}")
    print(f"  one filter input event -> cleared, page 1  {stat('filter_clear_event')}")
    print(f"  DOM rows / DOM nodes (first page)          {last['dom_rows']} / {last['dom_nodes']:,}  ({last['pager']})")
    print(f"  JS heap used                               {mib(heap)}")
    print(f"  {f'hub CPU, one dashboard open {args.idle:.0f} s':<43}{fig['idle']['cores']:.2f} core, hub RSS {mib(fig['idle']['hub_rss'])}")
    print(f"  table paginated (rows = page size)         {'yes' if ok else 'NO'}")
    print(orjson.dumps(fig).decode())
    if not ok:
        raise BenchError("the fleet table did not render one page of rows (or the filter did not leave one row)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clusters", type=int, default=1000, help="clusters in the store")
    p.add_argument("--repeat", type=int, default=5, help="browser runs of sign-in, paging and filtering")
    p.add_argument("--calls", type=int, default=50, help="GET /api/v1/clusters calls for its latency")
    p.add_argument("--idle", type=float, default=20, help="seconds the hub's CPU is measured with one dashboard open")
    p.add_argument("--fleetsync", type=Path, default=DEFAULT_FLEETSYNC, help="the fleetsync command")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = p.parse_args(argv)
    if args.clusters <= PAGE_SIZE:
        p.error(f"--clusters {args.clusters}: the bench pages the fleet table, so it needs more than one page ({PAGE_SIZE + 1} clusters at least)")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_bench("dashboard", parse_args(argv), bench, show_logs=1)


if __name__ == "__main__":
    sys.exit(main())
