// A virtualised grid of restaurant tiles: the scroll area is as tall as every tile would make it, but
// only the rows in view (plus a margin) exist in the DOM, so 100,000 restaurants cost the browser a
// few hundred elements. Tiles are plain links to the restaurant's page.

import { describeStatus, shortLabel, statusKind } from "./status-text.js";

const TILE_W = 150;
const TILE_H = 46;
const GAP = 6;
const PAD = 8;
const MARGIN_ROWS = 3;
const FLASH_MS = 1500;
const LOCAL_ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone;

export class TileGrid {
  /** `statusOf(rid)` gives the current status; `changedAt(rid)` when it last changed (ms) or 0. */
  constructor(viewport, { statusOf, changedAt }) {
    this.viewport = viewport;
    this.canvas = viewport.querySelector(".grid-canvas");
    this.empty = viewport.querySelector(".grid-empty");
    this.statusOf = statusOf;
    this.changedAt = changedAt;
    this.ids = [];
    this.pool = [];
    this.frame = 0;
    this.flashTimer = 0;
    viewport.addEventListener("scroll", () => this.schedule(), { passive: true });
    new ResizeObserver(() => this.schedule()).observe(viewport);
  }

  /** The ids to show, in order. */
  setIds(ids) {
    this.ids = ids;
    this.schedule();
  }

  /** Redraw at the next animation frame; many calls in one frame draw once. */
  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this._render());
  }

  _render() {
    this.frame = 0;
    const width = this.viewport.clientWidth - 2 * PAD;
    const columns = Math.max(1, Math.floor((width + GAP) / (TILE_W + GAP)));
    const rowHeight = TILE_H + GAP;
    const rows = Math.ceil(this.ids.length / columns);
    this.canvas.style.height = `${rows * rowHeight + 2 * PAD}px`;
    this.empty.classList.toggle("hidden", this.ids.length > 0);

    // The list may just have shrunk under a scrolled viewport: clamp, so the range is never inverted.
    const top = this.viewport.scrollTop - PAD;
    const lastRow = Math.min(rows, Math.ceil((top + this.viewport.clientHeight) / rowHeight) + MARGIN_ROWS);
    const firstRow = Math.min(lastRow, Math.max(0, Math.floor(top / rowHeight) - MARGIN_ROWS));
    const first = firstRow * columns;
    const last = Math.max(first, Math.min(this.ids.length, lastRow * columns));
    const now = Date.now();
    let flashing = false;

    for (let index = first; index < last; index++) {
      const tile = this._tile(index - first);
      const rid = this.ids[index];
      const status = this.statusOf(rid);
      const kind = statusKind(status);
      const label = shortLabel(status);
      const x = PAD + (index % columns) * (TILE_W + GAP);
      const y = PAD + Math.floor(index / columns) * rowHeight;
      // Touch the DOM only where something differs: most frames change a handful of tiles.
      if (tile.dataset.rid !== rid) {
        tile.dataset.rid = rid;
        tile.href = `/ui/restaurants/${encodeURIComponent(rid)}`;
        tile.firstChild.textContent = rid;
      }
      if (tile.dataset.kind !== kind || tile.lastChild.textContent !== label) {
        tile.dataset.kind = kind;
        tile.className = `tile k-${kind}`;
        tile.lastChild.textContent = label;
      }
      tile.title = `${rid} · group ${status?.group ?? "?"}\n${describeStatus(status, LOCAL_ZONE)}`;
      const left = `${x}px`;
      const topPx = `${y}px`;
      if (tile.style.left !== left) tile.style.left = left;
      if (tile.style.top !== topPx) tile.style.top = topPx;
      const flash = now - this.changedAt(rid) < FLASH_MS;
      tile.classList.toggle("flash", flash);
      flashing ||= flash;
      tile.hidden = false;
    }
    for (let spare = last - first; spare < this.pool.length; spare++) {
      if (!this.pool[spare].hidden) {
        this.pool[spare].hidden = true;
        this.pool[spare].dataset.rid = "";
      }
    }
    if (flashing && !this.flashTimer) {
      this.flashTimer = setTimeout(() => {
        this.flashTimer = 0;
        this.schedule();
      }, FLASH_MS);
    }
  }

  _tile(slot) {
    while (this.pool.length <= slot) {
      const tile = document.createElement("a");
      tile.className = "tile";
      tile.style.width = `${TILE_W}px`;
      tile.style.height = `${TILE_H}px`;
      const id = document.createElement("span");
      id.className = "id";
      const what = document.createElement("span");
      what.className = "what";
      tile.append(id, what);
      this.canvas.append(tile);
      this.pool.push(tile);
    }
    return this.pool[slot];
  }
}
