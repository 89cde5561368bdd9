-- After the broker acknowledged a retained status: forget it if it is still the one queued, and say
-- whether the broker may now hold an older status than the committed one.
-- KEYS[1] restaurant hash; ARGV[1] outbox field; ARGV[2] the status that was published.
-- Returns 1 cleared, 0 nothing to do, or the committed status to publish again: it differs from the
-- one just acknowledged, so another writer committed a newer one, and the broker may have taken its
-- retained copy before this older one (two writers' publishes race on separate connections).
-- A script rather than WATCH/MULTI: heartbeats write the same hash all the time, so a watch would
-- abort nearly every time under load.
if redis.call("HGET", KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call("HDEL", KEYS[1], ARGV[1])
end
local committed = redis.call("HGET", KEYS[1], "s")
if committed and committed ~= ARGV[2] then
  return committed
end
return 0
