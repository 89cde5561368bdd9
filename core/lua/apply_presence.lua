-- Apply one presence message (birth, will or graceful offline) to a restaurant's hash.
-- KEYS[1] restaurant hash, KEYS[2] heartbeat index (sorted set: the stale sweep's view of last_seen)
-- ARGV: device_id, epoch, state ("online"|"offline"), now_ms, outbox_field, event_json, index member,
-- and "1" to refuse while the restaurant has facts nobody settled ("0": apply anyway).
-- Only an accepted birth moves the device's last_seen and its place in the index: an ignored one (a
-- retained birth read again after a restart, say) must not postpone the stale sweep.
-- The (epoch, state) rule of DESIGN.md §3: within one epoch offline outranks online; an older or
-- equal message is ignored, whatever order messages arrive in on however many bridges.
-- A device transition also sets `u` (unsettled: the newest such fact's instant, ms), which a commit of
-- the restaurant's status deletes (commit_status.lua). A writer that died between the two left `u`: the
-- next message of that restaurant is refused (code 3) until its status is settled, so that the stretch
-- the unsettled fact began is committed before anything newer of the restaurant hides it.
-- Returns {code, version}: code 0 ignored, 1 stored without a device transition, 2 device transition
-- (its event was written to the outbox field in the same atomic step); or {3, u}: nothing done, settle first.
local key = KEYS[1]
local did, epoch, state, now = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local unsettled = redis.call("HGET", key, "u")
if unsettled and ARGV[8] == "1" then
  return {3, tonumber(unsettled)}
end
local rank = epoch * 2 + (state == "offline" and 1 or 0)
local current = redis.call("HGET", key, "d:" .. did)
local was_connected = false
if current then
  local c_epoch, c_state, _, c_stale = string.match(current, "^(%d+)|(%a+)|(%d+)|(%d)$")
  local c_rank = tonumber(c_epoch) * 2 + (c_state == "offline" and 1 or 0)
  if rank <= c_rank then
    return {0, tonumber(redis.call("HGET", key, "v") or "0")}
  end
  was_connected = (c_state == "online" and c_stale == "0")
end
redis.call("HSET", key, "d:" .. did, ARGV[2] .. "|" .. state .. "|" .. now .. "|0")
if state == "online" then
  redis.call("HSET", key, "l:" .. did, now)
  redis.call("ZADD", KEYS[2], now, ARGV[7])
end
local version = redis.call("HINCRBY", key, "v", 1)
local is_connected = (state == "online")
if is_connected ~= was_connected then
  redis.call("HSET", key, ARGV[5], ARGV[6], "u", math.max(tonumber(unsettled or "0"), tonumber(now)))
  return {2, version}
end
return {1, version}
