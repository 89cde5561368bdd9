-- The facts of many restaurants' status views (core/status_view.py), one call for a batch: what the
-- reader needs to tell, at any instant, whether a view still stands (core/view_facts.py), and what the
-- API keeps a copy of (core/view_cache.py).
-- ARGV[1] the hashes' key prefix, ARGV[2] the restaurant ids, one per line. The keys are named here
-- rather than passed as KEYS: encoding a thousand arguments cost redis-py 2.8 ms a batch, more than the
-- rest of the read. A standalone Redis allows it; on Redis Cluster the reader would group ids by slot
-- and pass KEYS.
-- Returns three values per restaurant: the view's meta `w` and JSON `wj` and the last seen (ms) of the
-- devices `w` lists, space-separated in its order ("-" where a device has none); or three false values
-- where no view is written for the facts as they are now (`wv` is not the version `v`).
local prefix = ARGV[1]
local out = {}
local n = 0
for rid in string.gmatch(ARGV[2], "[^\n]+") do
  local key = prefix .. rid
  local f = redis.call("HMGET", key, "v", "wv", "w", "wj")
  if f[3] and f[4] and f[1] == f[2] then
    local devices = string.match(f[3], "^[^|]*|[^|]*|[^|]*|[^|]*|[^|]*|(.*)$")
    local seen = {}
    if devices and devices ~= "" then
      local names = {}
      for did in string.gmatch(devices, "[^ ]+") do
        names[#names + 1] = "l:" .. did
      end
      local at = redis.call("HMGET", key, unpack(names))
      for i = 1, #names do
        seen[i] = at[i] or "-"
      end
    end
    out[n + 1], out[n + 2], out[n + 3] = f[3], f[4], table.concat(seen, " ")
  else
    out[n + 1], out[n + 2], out[n + 3] = false, false, false
  end
  n = n + 3
end
return out
