-- Read the status views of many restaurants at once (core/status_view.py): one call for a batch.
-- ARGV[1] now in microseconds, ARGV[2] the reader's presence window in µs, ARGV[3] the hashes' key
-- prefix, ARGV[4] the restaurant ids, one per line. The keys are named here rather than passed as KEYS:
-- encoding a thousand arguments cost redis-py 2.8 ms a batch, more than the rest of the read. A
-- standalone Redis allows it; on Redis Cluster the reader would group ids by slot and pass KEYS.
-- A view is the status derived at t0 from version `wv` of the facts. It is served while it must still
-- equal a status derived now: the facts are still at that version (every fact change but a heartbeat
-- of a live device bumps `v`), now is in [t0, until) (no clock boundary passed), the window is the
-- same, every device connected at t0 is still heard within the window, and every device online but
-- lapsed at t0 is still not (a heartbeat stamped before t0 may come in after it without a transition).
-- Returns two values per key: the view's JSON with a NUL where last_seen goes, and last_seen in ms
-- ("" for null); or two false values where the status must be derived instead.
local now, window, prefix = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local out = {}
local n = 0
for rid in string.gmatch(ARGV[4], "[^\n]+") do
  local key = prefix .. rid
  local f = redis.call("HMGET", key, "v", "wv", "w", "wj")
  local ok, last = false, -1
  if f[3] and f[1] == f[2] then
    -- meta: t0|until|window|how many devices were connected|how many lapsed|device ids in that order
    local t0, till, w, nc, nl, devices = string.match(f[3], "^(%d+)|(%d+)|(%d+)|(%d+)|(%d+)|(.*)$")
    ok = t0 ~= nil and tonumber(t0) <= now and now < tonumber(till) and tonumber(w) == window
    if ok and devices ~= "" then
      local names = {}
      for did in string.gmatch(devices, "[^ ]+") do
        names[#names + 1] = "l:" .. did
      end
      local seen = redis.call("HMGET", key, unpack(names))
      nc, nl = tonumber(nc), tonumber(nl)
      for i = 1, #names do
        local at = seen[i] and tonumber(seen[i]) * 1000
        local heard = at and now - at < window
        if (i <= nc and not heard) or (i > nc and i <= nc + nl and heard) then
          ok = false
          break
        end
        if at and at <= now and at > last then
          last = at
        end
      end
    end
  end
  if ok then
    out[n + 1], out[n + 2] = f[4], last >= 0 and string.format("%d", last / 1000) or ""
  else
    out[n + 1], out[n + 2] = false, false
  end
  n = n + 2
end
return out
