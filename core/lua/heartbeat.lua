-- Refresh a device's last_seen from a heartbeat of its live epoch.
-- KEYS[1] restaurant hash
-- ARGV: device_id, epoch, now_ms, outbox_field, online_event_json
-- A heartbeat of an older or ended epoch is ignored. One of a newer epoch than stored means the birth
-- is still in flight (or was lost with Redis): the device is alive at that epoch, so it counts as one.
-- A heartbeat that revives a stale device writes DEVICE_ONLINE to the outbox atomically.
-- Returns {code, version}: 0 ignored, 1 refreshed, 2 device transition.
local key = KEYS[1]
local did, epoch, now = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local current = redis.call("HGET", key, "d:" .. did)
local transition = false
if current then
  local c_epoch, c_state, c_changed, c_stale = string.match(current, "^(%d+)|(%a+)|(%d+)|(%d)$")
  c_epoch = tonumber(c_epoch)
  if epoch < c_epoch or (epoch == c_epoch and c_state == "offline") then
    return {0, 0}
  end
  if epoch > c_epoch then
    transition = not (c_state == "online" and c_stale == "0")
    redis.call("HSET", key, "d:" .. did, ARGV[2] .. "|online|" .. now .. "|0")
  elseif c_stale == "1" then
    transition = true
    redis.call("HSET", key, "d:" .. did, ARGV[2] .. "|online|" .. now .. "|0")
  end
else
  transition = true
  redis.call("HSET", key, "d:" .. did, ARGV[2] .. "|online|" .. now .. "|0")
end
redis.call("HSET", key, "l:" .. did, now)
if transition then
  local version = redis.call("HINCRBY", key, "v", 1)
  redis.call("HSET", key, ARGV[4], ARGV[5])
  return {2, version}
end
return {1, 0}
