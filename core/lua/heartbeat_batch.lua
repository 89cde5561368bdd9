-- Refresh last_seen for a batch of heartbeats in one call (one round trip for thousands of them).
-- KEYS[1] heartbeat index (sorted set); KEYS[2..n+1] restaurant hashes, one per heartbeat.
-- ARGV[1] now_ms, ARGV[2] now ISO-8601, ARGV[3] event id base (a UUID without its last 4 hex digits),
-- ARGV[4] key prefix length, ARGV[5] the presence window in ms (0: not checked), ARGV[6] the caller's
-- outbox sequence number (12 digits: orders fields within a millisecond), ARGV[7] "1" to refuse the
-- heartbeats of restaurants with unsettled facts (`u`, see apply_presence.lua), ARGV[8] each heartbeat's
-- "device_id epoch" in the order of KEYS[2..], one per line (one argument: redis-py packed ~2 µs per
-- argument, a third of the bridge's cost of a heartbeat once paho's was cut; ids never hold a space).
-- Per heartbeat the (epoch, state) rule of DESIGN.md §3: an older or ended epoch is ignored; the live
-- epoch refreshes last_seen; a newer epoch (birth still in flight, or Redis lost) counts as online.
-- A device counts as connected again (a transition) when it was flagged stale, and also when its last
-- heartbeat is older than the window but the sweep has not flagged it yet: the status read it as
-- disconnected meanwhile (a bridge restarted after the window passed, or any settle in that gap), and
-- without the transition nothing would settle it back to online.
-- A heartbeat that makes a device connected again writes DEVICE_ONLINE to that restaurant's outbox in
-- the same atomic step, and sets `u`. All keys of one call must share a cluster slot (on a standalone
-- Redis: any).
-- Returns {ignored_count, i1, field1, event1, i2, ...} for the transitions, and {-i, u, ""} for each
-- heartbeat refused (nothing done) because its restaurant must be settled first.
local now, now_iso, id_base, prefix_len = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local now_ms, window = tonumber(ARGV[1]), tonumber(ARGV[5])
local index = KEYS[1]
local check = ARGV[7] == "1"
local out = {0}
local scored = {}  -- score, member, ...: the index's updates, one ZADD a chunk (every score is `now`)

-- `last` is the device's l: field (false when absent), read with the others in one HMGET.
local function heard_within_window(last)
  if window <= 0 then return true end
  return last ~= false and now_ms - tonumber(last) < window
end

local i = 0
for did, epoch_s in string.gmatch(ARGV[8], "([^ \n]+) ([^\n]+)") do
  i = i + 1
  local key = KEYS[i + 1]
  local epoch = tonumber(epoch_s)
  local fields = redis.call("HMGET", key, "d:" .. did, "l:" .. did, "u")
  local current, last = fields[1], fields[2]
  local unsettled = check and fields[3]
  local accept, transition = true, false
  if unsettled then
    accept = false
    table.insert(out, -i)
    table.insert(out, unsettled)
    table.insert(out, "")
  elseif current then
    local c_epoch, c_state, _, c_stale = string.match(current, "^(%d+)|(%a+)|(%d+)|(%d)$")
    c_epoch = tonumber(c_epoch)
    if epoch < c_epoch or (epoch == c_epoch and c_state == "offline") then
      accept = false
    elseif epoch > c_epoch then
      transition = not (c_state == "online" and c_stale == "0" and heard_within_window(last))
      redis.call("HSET", key, "d:" .. did, epoch_s .. "|online|" .. now .. "|0")
    elseif c_stale == "1" or not heard_within_window(last) then
      transition = true
      redis.call("HSET", key, "d:" .. did, epoch_s .. "|online|" .. now .. "|0")
    end
  else
    transition = true
    redis.call("HSET", key, "d:" .. did, epoch_s .. "|online|" .. now .. "|0")
  end
  if accept then
    local rid = string.sub(key, prefix_len + 3)
    redis.call("HSET", key, "l:" .. did, now)
    scored[#scored + 1] = now
    scored[#scored + 1] = rid .. "/" .. did
    if transition then
      redis.call("HINCRBY", key, "v", 1)
      local event_id = id_base .. string.format("%04x", i % 65536)
      local field = "o:" .. string.format("%013d", tonumber(now)) .. ":" .. ARGV[6] .. ":" .. event_id
      local event = '{"event_id":"' .. event_id .. '","type":"DEVICE_ONLINE","restaurant_id":"' .. rid ..
        '","device_id":"' .. did .. '","ts":"' .. now_iso .. '","data":{"epoch":' .. epoch_s ..
        ',"cause":"heartbeat"}}'
      local prior = tonumber(fields[3] or "0")
      redis.call("HSET", key, field, event, "u", math.max(prior, now_ms))
      table.insert(out, i)
      table.insert(out, field)
      table.insert(out, event)
    end
  elseif not unsettled then
    out[1] = out[1] + 1
  end
end
-- Lua's unpack is bounded by its C stack (LUAI_MAXCSTACK, 8,000): 1,000 members a call.
for start = 1, #scored, 2000 do
  redis.call("ZADD", index, unpack(scored, start, math.min(start + 1999, #scored)))
end
return out
