-- Mark a device stale when its last heartbeat is a window or more old (DESIGN.md §3: connected while
-- now - last_seen < window), so last_seen == cutoff is stale, as the sweep's inclusive range and
-- heartbeat_batch.lua have it. (It once said not stale there while the sweep still dropped the device
-- from the index: the device was never flagged and its DISCONNECTED interval went missing.)
-- KEYS[1] restaurant hash
-- ARGV: device_id, cutoff_ms, now_ms, outbox_field, offline_event_json, "1" to refuse while the
-- restaurant has unsettled facts (`u`, see apply_presence.lua)
-- Returns {code, version}: 0 not stale (fresh, offline or already stale), 2 marked stale (and `u` set);
-- or {3, u}: nothing done, settle the restaurant first.
local key = KEYS[1]
local did, cutoff = ARGV[1], tonumber(ARGV[2])
local unsettled = redis.call("HGET", key, "u")
if unsettled and ARGV[6] == "1" then
  return {3, tonumber(unsettled)}
end
local current = redis.call("HGET", key, "d:" .. did)
if not current then
  return {0, 0}
end
local c_epoch, c_state, _, c_stale = string.match(current, "^(%d+)|(%a+)|(%d+)|(%d)$")
local last_seen = tonumber(redis.call("HGET", key, "l:" .. did) or "0")
if c_state ~= "online" or c_stale == "1" or last_seen > cutoff then
  return {0, 0}
end
redis.call("HSET", key, "d:" .. did, c_epoch .. "|online|" .. ARGV[3] .. "|1")
local version = redis.call("HINCRBY", key, "v", 1)
redis.call("HSET", key, ARGV[4], ARGV[5], "u", math.max(tonumber(unsettled or "0"), tonumber(ARGV[3])))
return {2, version}
