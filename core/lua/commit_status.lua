-- Commit a derived status computed from version `expected` of the facts.
-- KEYS[1] restaurant hash; optional KEYS[2] the state marker and KEYS[3] the rebuilding key (the
-- writer's guard, core/state_marker.py).
-- ARGV: expected_version, core, status_json, outbox_field, event_json, mqtt_outbox_field, the status
-- view's meta and JSON (core/status_view.py; meta "" for none), and with the guard the writer's
-- instance (a bridge rebuilding the state may commit; nobody else meanwhile).
-- Optimistic concurrency on one key: if the facts moved on (another bridge, the scheduler, the API)
-- the caller re-reads and recomputes. Only a change of the status core (online, reason, detail) is a
-- transition, so whoever commits it first writes the one STATUS_CHANGED; the others see it equal.
-- Returns -2 Redis lost the platform's state or is being rebuilt (nothing written), -1 stale version,
-- 0 no transition, 1 transition committed (event and retained status queued; the version bumped).
local key = KEYS[1]
-- The guard. A writer checks the marker before a batch, but Redis can restart empty between that check
-- and this commit (the client reconnects by itself): the restaurant then has no committed status, and
-- its unchanged status would be announced again before the rebuild restores it.
if KEYS[2] and redis.call("EXISTS", KEYS[2]) == 0 then
  return -2
end
if KEYS[3] then
  local rebuilder = redis.call("GET", KEYS[3])
  if rebuilder and rebuilder ~= ARGV[9] then
    return -2
  end
end
local version = redis.call("HGET", key, "v") or "0"
if version ~= ARGV[1] then
  return -1
end
-- The view is the status just derived, from this version of the facts: stored on a transition and
-- without one alike (a clock boundary that changes nothing, a takeover), so it follows the facts.
local function store_view(at_version)
  if ARGV[7] ~= "" then
    redis.call("HSET", key, "wv", at_version, "w", ARGV[7], "wj", ARGV[8])
  end
end
-- Every fact up to this version is settled now (`u`, see apply_presence.lua).
redis.call("HDEL", key, "u")
if redis.call("HGET", key, "sc") == ARGV[2] then
  store_view(version)
  return 0
end
redis.call("HSET", key, "sc", ARGV[2], "s", ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[3])
-- A transition moves the version too. Without it, a writer that read the same version before a clock
-- boundary (an unavailability's start) and commits after another writer committed that boundary
-- passed the check and put the old status back: one status announced twice in a row, twice over.
store_view(redis.call("HINCRBY", key, "v", 1))
return 1
