// The sales dashboard: every restaurant's live status from WS /ws/dashboard, as a virtualised grid
// filtered by group, kind and id, with counts per kind. The feed carries every group; filtering is
// local, so changing the group is instant and the counts of all groups stay right.

import { DashboardFeed } from "./dashboard-feed.js";
import { TileGrid } from "./dashboard-grid.js";
import { renderHeader, requireUser } from "./session.js";
import { KIND_LABEL, KINDS, statusKind } from "./status-text.js";

const user = requireUser(["sales", "admin"]);
if (user) start(user);

function start(user) {
  renderHeader(user, { beforeLogout: async () => feed.stop() });

  const statuses = new Map(); // rid → status (+ group)
  const changedAt = new Map(); // rid → ms of its last change, for the flash
  const counts = new Map(); // group → {online, closed, unavailable, disconnected}
  let sortedIds = [];
  let idsDirty = false;
  let filterDirty = true;
  let frame = 0;

  const params = new URLSearchParams(location.search);
  const filter = { group: params.get("group") || "", kind: params.get("kind") || "", search: params.get("q") || "" };

  const groupSelect = document.getElementById("group");
  const searchInput = document.getElementById("search");
  const countsBox = document.getElementById("counts");
  const feedState = document.getElementById("feed-state");
  const shown = document.getElementById("shown");
  searchInput.value = filter.search;

  const grid = new TileGrid(document.getElementById("grid"), {
    statusOf: (rid) => statuses.get(rid),
    changedAt: (rid) => changedAt.get(rid) || 0,
  });

  const chips = new Map();
  for (const kind of ["all", ...KINDS]) {
    const chip = document.createElement("button");
    chip.type = "button";
    chip.className = `count${kind === "all" ? "" : ` k-${kind}`}`;
    chip.dataset.kind = kind;
    chip.innerHTML = `<span class="n">0</span><span><span class="label"></span><br><span class="of"></span></span>`;
    chip.querySelector(".label").textContent = kind === "all" ? "Restaurants" : KIND_LABEL[kind];
    chip.addEventListener("click", () => {
      filter.kind = kind === "all" || filter.kind === kind ? "" : kind;
      filterChanged();
    });
    countsBox.append(chip);
    chips.set(kind, chip);
  }

  function bump(status, delta) {
    const group = status.group ?? "";
    let perKind = counts.get(group);
    if (!perKind) {
      perKind = Object.fromEntries(KINDS.map((k) => [k, 0]));
      counts.set(group, perKind);
    }
    perKind[statusKind(status)] += delta;
  }

  function matches(rid) {
    const status = statuses.get(rid);
    if (filter.group && status.group !== filter.group) return false;
    if (filter.kind && statusKind(status) !== filter.kind) return false;
    return !filter.search || rid.toLowerCase().includes(filter.search.toLowerCase());
  }

  function schedule() {
    if (!frame) frame = requestAnimationFrame(update);
  }

  function update() {
    frame = 0;
    if (idsDirty) {
      sortedIds = [...statuses.keys()].sort();
      idsDirty = false;
      filterDirty = true;
      refreshGroups();
    }
    if (filterDirty) {
      filterDirty = false;
      const filtered = filter.kind || filter.search;
      const ids = filter.group || filtered ? sortedIds.filter(matches) : sortedIds;
      grid.setIds(ids);
      // The chips count the group; when a kind or a search narrows it further, say how many are shown.
      shown.textContent = filtered ? `${ids.length.toLocaleString("en")} shown` : "";
    } else {
      grid.schedule();
    }
    renderCounts();
  }

  function renderCounts() {
    const shown = Object.fromEntries(KINDS.map((k) => [k, 0]));
    const everywhere = Object.fromEntries(KINDS.map((k) => [k, 0]));
    for (const [group, perKind] of counts) {
      for (const kind of KINDS) {
        everywhere[kind] += perKind[kind];
        if (!filter.group || group === filter.group) shown[kind] += perKind[kind];
      }
    }
    const total = (c) => KINDS.reduce((sum, k) => sum + c[k], 0);
    for (const [kind, chip] of chips) {
      const n = kind === "all" ? total(shown) : shown[kind];
      const all = kind === "all" ? total(everywhere) : everywhere[kind];
      chip.querySelector(".n").textContent = n.toLocaleString("en");
      chip.querySelector(".of").textContent = filter.group ? `of ${all.toLocaleString("en")} in all groups` : "";
      chip.setAttribute("aria-pressed", String(kind === "all" ? !filter.kind : filter.kind === kind));
    }
  }

  function refreshGroups() {
    const known = new Set([...groupSelect.options].map((o) => o.value));
    const groups = [...counts.keys()].filter((g) => g && !known.has(g));
    if (filter.group && !known.has(filter.group)) groups.push(filter.group);
    for (const group of [...new Set(groups)].sort()) {
      const option = new Option(`Group ${group}`, group);
      const after = [...groupSelect.options].find((o) => o.value && o.value > group);
      groupSelect.add(option, after || null);
    }
    groupSelect.value = filter.group;
  }

  function filterChanged() {
    const query = new URLSearchParams();
    if (filter.group) query.set("group", filter.group);
    if (filter.kind) query.set("kind", filter.kind);
    if (filter.search) query.set("q", filter.search);
    history.replaceState(null, "", `${location.pathname}${query.size ? `?${query}` : ""}`);
    filterDirty = true;
    schedule();
  }

  groupSelect.addEventListener("change", () => {
    filter.group = groupSelect.value;
    filterChanged();
  });
  searchInput.addEventListener("input", () => {
    filter.search = searchInput.value.trim();
    filterChanged();
  });

  const feed = new DashboardFeed(user.token, {
    onSnapshot(list) {
      statuses.clear();
      counts.clear();
      changedAt.clear();
      for (const status of list) {
        statuses.set(status.restaurant_id, status);
        bump(status, +1);
      }
      idsDirty = true;
      schedule();
    },
    onStatus(status) {
      const rid = status.restaurant_id;
      const previous = statuses.get(rid);
      if (previous) {
        bump(previous, -1);
        // Only a change of kind or group can move a tile in or out of the filtered list.
        if (statusKind(previous) !== statusKind(status) || previous.group !== status.group) filterDirty = true;
      } else {
        idsDirty = true;
      }
      statuses.set(rid, status);
      bump(status, +1);
      changedAt.set(rid, Date.now());
      schedule();
    },
    onReset(reason) {
      console.info("dashboard feed reset (%s): taking a new snapshot", reason);
    },
    onState({ live, text }) {
      feedState.classList.toggle("live", live);
      feedState.querySelector(".text").textContent = text;
    },
    onAuthFailed() {
      location.replace(`/ui/login?next=${encodeURIComponent(location.pathname + location.search)}`);
    },
  });
  feed.start();
  refreshGroups();
  // For tests and the console: the feed's counters and the statuses it holds.
  window.presenceDashboard = { feed, statuses, grid, filter };
}
